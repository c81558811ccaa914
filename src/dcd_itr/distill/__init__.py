"""dcd_itr.distill"""
