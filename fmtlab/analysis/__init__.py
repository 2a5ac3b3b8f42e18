"""fmtlab.analysis"""
