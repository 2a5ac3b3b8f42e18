"""Block formats defined once: OCP MX (E8M0 shared exponent) and FP8-scaled blocks (NVFP4).

A :class:`BlockFormat` is a plain value: an element format, a block size, the scale format, the
shared-exponent rule (E8M0 scales only) and whether a per-tensor FP32 scale sits above the block
scales (NVFP4). Formats, quantizer names and the hardware model share it; the arithmetic lives in
``mx.py`` (documented there) and the quantizer (``fmtlab.formats.presets.block_quantizer(bf)``
builds it: a format value knows nothing of quantizers).

Names (``get_block_format``; case-insensitive)::

    mx<element>[_b<block>][_<rule>]    E8M0 scale, block 32, rule floor (OCP MX v1.0)
    nv<element>[_b<block>][_notensor]  E4M3 block scale, block 16, FP32 tensor scale (NVFP4)

<element> is ``fp8`` (= fp8_e4m3), ``fp6`` (= fp6_e3m2), ``fp4`` (= fp4_e2m1), ``int8``
(= int8_sym, MXINT8) or any registry name (``mxfp8_e5m2``, ``mxfp6_e2m3``); <rule> is floor,
ceil, even, rceil, neuron or midmax. Examples: mxfp8, mxfp8_e4m3, mxfp8_e5m2, mxfp6_e3m2, mxfp6_e2m3, mxfp4,
mxint8, nvfp4, mxfp4_b16, mxfp8_ceil. Vocabularies are enums (:class:`ScaleFormat`,
:class:`SharedExpRule`) that also compare equal to their lowercase value strings.
"""

from __future__ import annotations

import dataclasses
import enum
import re

from fmtlab.errors import FormatError
from fmtlab.formats.base import Format
from fmtlab.formats.registry import get_format

__all__ = ["ScaleFormat", "SharedExpRule", "BlockFormat", "get_block_format", "BLOCK_NAMES"]


class _StrEnum(str, enum.Enum):
    """An enum whose members are their value strings (equal, same hash, same str)."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    def __hash__(self) -> int:
        return hash(self.value)

    @classmethod
    def parse(cls, v) -> "_StrEnum":
        if isinstance(v, cls):
            return v
        try:
            return cls(str(v).strip().lower())
        except ValueError:
            raise FormatError(f"{cls.__name__} must be one of {[m.value for m in cls]}, got {v!r}") from None


class ScaleFormat(_StrEnum):
    """How a block's scale is stored."""

    E8M0 = "e8m0"          # a power of two from a shared-exponent rule (OCP MX)
    FP8_E4M3 = "fp8_e4m3"  # an E4M3 number from the block absmax (NVFP4)


class SharedExpRule(_StrEnum):
    """E8M0 shared-exponent rules (exact definitions in ``mx.py``)."""

    FLOOR = "floor"  # OCP MX v1.0
    CEIL = "ceil"
    EVEN = "even"
    RCEIL = "rceil"
    NEURON = "neuron"  # AWS Neuron nki.isa.quantize_mx: twice the FLOOR scale
    MIDMAX = "midmax"  # Brevitas PR 1409: FLOOR, one up where the block max passes the midmax


# INT block elements are symmetric (MX v1.0 MXINT8 clamps to +/-127; MXINT4/6 and NVINT4 use
# [-(2**(n-1) - 1), 2**(n-1) - 1] as in arXiv 2510.25602 and its code, ChenMnZ/INT_vs_FP)
_SHORT = {"fp8": "fp8_e4m3", "fp6": "fp6_e3m2", "fp4": "fp4_e2m1", "int8": "int8_sym",
          "int6": "int6_sym", "int4": "int4_sym"}
_SHORT_OF = {v: k for k, v in _SHORT.items()}


@dataclasses.dataclass(frozen=True)
class BlockFormat:
    """``block`` consecutive elements (along the last axis) of ``element`` share one scale.

    element: a Format or registry name (signed; not e8m0); block: elements per scale (>= 1);
    scale_format: E8M0 (MX) or FP8_E4M3 (NVFP4-style); shared_exp: the E8M0 exponent rule (must
    stay FLOOR for FP8 scales, which come from the block absmax); tensor_scale: the FP32
    per-tensor scale of NVFP4 (FP8 scales only).
    """

    element: Format | str
    block: int = 32
    scale_format: ScaleFormat | str = ScaleFormat.E8M0
    shared_exp: SharedExpRule | str = SharedExpRule.FLOOR
    tensor_scale: bool = False

    def __post_init__(self) -> None:
        el = get_format(self.element)
        if el.family == "e8m0" or not el.signed:
            raise FormatError(f"block formats need a signed element format, got {el.name}")
        if isinstance(self.block, bool) or not isinstance(self.block, int) or self.block < 1:
            raise FormatError(f"block size must be a positive int, got block={self.block!r}")
        sf, rule = ScaleFormat.parse(self.scale_format), SharedExpRule.parse(self.shared_exp)
        if sf is ScaleFormat.FP8_E4M3 and rule is not SharedExpRule.FLOOR:
            raise FormatError(f"shared_exp={rule} applies to E8M0 scales only (FP8 block scales "
                              "come from the block absmax)")
        if not isinstance(self.tensor_scale, bool):
            raise FormatError(f"tensor_scale must be a bool, got {self.tensor_scale!r}")
        if self.tensor_scale and sf is not ScaleFormat.FP8_E4M3:
            raise FormatError("tensor_scale=True (two-level NVFP4 scaling) needs scale_format=FP8_E4M3")
        for k, v in (("element", el), ("scale_format", sf), ("shared_exp", rule)):
            object.__setattr__(self, k, v)

    # ---- naming ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        el = _SHORT_OF.get(self.element.name, self.element.name)
        if self.scale_format is ScaleFormat.E8M0:
            s = "mx" + el + ("" if self.block == 32 else f"_b{self.block}")
            return s + ("" if self.shared_exp is SharedExpRule.FLOOR else f"_{self.shared_exp}")
        s = "nv" + el + ("" if self.block == 16 else f"_b{self.block}")
        return s + ("" if self.tensor_scale else "_notensor")

    def __str__(self) -> str:
        return self.name

    @property
    def bits(self) -> int:
        """Bits of one element code (the scale is stored per block on top)."""
        return self.element.bits

    @property
    def bits_per_element(self) -> float:
        """Average storage per element: element bits + 8 scale bits / block (tensor scale aside)."""
        return self.element.bits + 8 / self.block


_OPT_RE = re.compile(r"(.+?)(?:_b(\d+))?(?:_(floor|ceil|even|rceil|neuron|midmax))?(_notensor)?")

#: the standard block format names (each parses with get_block_format)
BLOCK_NAMES = ("mxfp8", "mxfp8_e5m2", "mxfp6", "mxfp6_e2m3", "mxfp4", "mxint8", "nvfp4")


def get_block_format(name: "str | BlockFormat") -> BlockFormat | None:
    """The block format called ``name``; None if ``name`` is not a block-format name (it does not
    start with ``mx``/``nv`` followed by an element format). A block-format name with impossible
    options (``nvfp4_ceil``, ``mxfp4_notensor``) raises FormatError naming the problem."""
    if isinstance(name, BlockFormat):
        return name
    if not isinstance(name, str):
        return None
    key = name.strip().lower()
    kind, body = key[:2], key[2:]
    if kind not in ("mx", "nv") or not body:
        return None
    m = _OPT_RE.fullmatch(body)
    el, block, rule, notensor = m.groups()
    try:
        fmt = get_format(_SHORT.get(el, el))
    except FormatError:
        return None
    if kind == "mx":
        if notensor:
            raise FormatError(f"{name!r}: _notensor applies to nv (FP8-scaled) block formats only")
        return BlockFormat(fmt, int(block) if block else 32, ScaleFormat.E8M0, rule or "floor")
    if rule:
        raise FormatError(f"{name!r}: shared-exponent rules apply to mx (E8M0) block formats only")
    return BlockFormat(fmt, int(block) if block else 16, ScaleFormat.FP8_E4M3,
                       tensor_scale=not notensor)
