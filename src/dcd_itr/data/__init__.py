"""dcd_itr.data"""
