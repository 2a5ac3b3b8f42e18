"""hwcomponents plug-in: hwcomponents imports top-level modules named ``hwcomponents_*`` and
collects their ``ComponentModel`` subclasses. The model lives in :mod:`fmtlab.hw.hwc_model`."""

from fmtlab.hw.hwc_model import FmtlabMAC, FmtlabPromotedMAC, FmtlabScaleUnit

__all__ = ["FmtlabMAC", "FmtlabPromotedMAC", "FmtlabScaleUnit"]
