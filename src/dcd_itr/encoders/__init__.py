"""dcd_itr.encoders"""
