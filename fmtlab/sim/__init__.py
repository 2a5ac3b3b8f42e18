"""fmtlab.sim"""
