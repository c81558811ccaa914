"""dcd_itr.models"""
