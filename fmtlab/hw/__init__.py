"""fmtlab.hw: what a number format costs in silicon.

- :func:`inference_cost` -- energy per decoded token of a whole model (MAC array, scale and
  quantizer units, transforms, SRAM and DRAM/HBM traffic), bytes moved, capacity, MAC-array area
  (:mod:`fmtlab.hw.inference`; the model as a :class:`ModelShape`, memories in :mod:`fmtlab.hw.memory`);
- :func:`mac_cost` -- area (GE, um^2) and energy (pJ/MAC) of a MAC unit per (weight format,
  activation format, accumulator), with a per-component breakdown (:mod:`fmtlab.hw.mac`);
- :mod:`fmtlab.hw.datapath` -- bit-accurate dot products as that hardware computes them;
- :mod:`fmtlab.hw.rtl`, :mod:`fmtlab.hw.sim`, :mod:`fmtlab.hw.synth` -- Verilog for each unit,
  its bit-exact check against the datapath (Icarus Verilog) and its synthesis (Yosys).
"""

from fmtlab.hw.mac import MacCost, MacUnit, PartCost, mac_cost, make_unit, unit_cost
from fmtlab.hw.accumulators import AccOverflow, AccRounding, FloatAcc, IntAcc, KulischAcc
from fmtlab.hw.inference import InferenceConfig, InferenceCost, OperandScheme, inference_cost
from fmtlab.hw.memory import MemorySystem, get_memory
from fmtlab.hw.model_shape import SMOLLM2_135M, LinearShape, ModelShape

__all__ = ["mac_cost", "make_unit", "unit_cost", "MacCost", "MacUnit", "PartCost",
           "IntAcc", "FloatAcc", "KulischAcc", "AccOverflow", "AccRounding", "dot", "matvec",
           "mx_dot", "DotResult", "inference_cost", "InferenceConfig", "InferenceCost", "OperandScheme",
           "MemorySystem", "get_memory", "ModelShape", "LinearShape", "SMOLLM2_135M"]


def __getattr__(name):  # the datapath pulls in numba; import it on first use
    if name in ("dot", "matvec", "mx_dot", "DotResult"):
        from fmtlab.hw import datapath  # lazy: numba (JIT kernels) stays out of `import fmtlab.hw`

        return getattr(datapath, name)
    raise AttributeError(f"module 'fmtlab.hw' has no attribute {name!r}")
