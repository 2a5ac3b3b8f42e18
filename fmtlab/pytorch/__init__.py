"""fmtlab.pytorch"""
