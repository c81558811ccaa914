"""dcd_itr.search"""
