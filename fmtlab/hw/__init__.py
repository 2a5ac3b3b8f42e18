"""fmtlab.hw: what a number format costs in silicon.

- :func:`mac_cost` -- area (GE, um^2) and energy (pJ/MAC) of a MAC unit per (weight format,
  activation format, accumulator), with a per-component breakdown (:mod:`fmtlab.hw.mac`);
- :mod:`fmtlab.hw.datapath` -- bit-accurate dot products as that hardware computes them;
- :mod:`fmtlab.hw.rtl`, :mod:`fmtlab.hw.sim`, :mod:`fmtlab.hw.synth` -- Verilog for each unit,
  its bit-exact check against the datapath (Icarus Verilog) and its synthesis (Yosys).
"""

from fmtlab.hw.mac import MacCost, MacUnit, PartCost, mac_cost, make_unit, unit_cost
from fmtlab.hw.accumulators import AccOverflow, AccRounding, FloatAcc, IntAcc, KulischAcc

__all__ = ["mac_cost", "make_unit", "unit_cost", "MacCost", "MacUnit", "PartCost",
           "IntAcc", "FloatAcc", "KulischAcc", "AccOverflow", "AccRounding", "dot", "matvec",
           "mx_dot", "DotResult"]


def __getattr__(name):  # the datapath pulls in numba; import it on first use
    if name in ("dot", "matvec", "mx_dot", "DotResult"):
        from fmtlab.hw import datapath  # lazy: numba (JIT kernels) stays out of `import fmtlab.hw`

        return getattr(datapath, name)
    raise AttributeError(f"module 'fmtlab.hw' has no attribute {name!r}")
