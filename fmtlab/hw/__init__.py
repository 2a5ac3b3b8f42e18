"""fmtlab.hw"""
