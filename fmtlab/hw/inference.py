"""What a number format costs for a whole inference: energy per decoded token, bytes moved,
memory capacity and MAC-array area.

:func:`inference_cost` prices one decode step of a :class:`~fmtlab.hw.model_shape.ModelShape`
under an :class:`InferenceConfig` (weight / activation / KV-cache quantizers and a transform),
for ``batch`` sequences that each hold ``context`` cached tokens. Model (per token, every term in
the breakdown):

- **MAC array**: every Linear layer's K x N MACs at the MAC unit of the config's (weight,
  activation) element formats (:func:`fmtlab.hw.mac_cost`; MX / NVFP4 blocks at the block-dot
  unit); attention (Q K^T and P V over the context, every head) and the LM head at a bf16 x bf16 ->
  fp32 FMA unit (unquantized, as the report's configs leave them; ``quantize_head=True`` prices the
  head in the config's formats). Softmax, norms and activations functions are not priced.
- **scale and quantizer units** (:mod:`fmtlab.hw.scale_units`): the dynamic activation quantizer
  once per distinct layer input (absmax per element, scale computation per scale, the element
  conversion per element; static scales skip the first two), per-output scale multiplies
  (per-channel x per-token: 2 fp32 multiplies, one otherwise; int accumulators add an int32 ->
  fp32 conversion; per-group weights one multiply and one add per group), NVFP4's E4M3 block-scale
  multiply per block pair and fp32 tensor-scale multiply per output.
- **transforms** (:mod:`fmtlab.hw.transform_cost`): online Hadamard adds, LLM.int8()'s fp16
  outlier MACs, compares and gather; merged transforms cost 0.
- **on-chip SRAM**: every bit read from off-chip is written into and read out of the on-chip
  buffer once (2 accesses); each layer reads its (quantized) input vector once and writes its
  bf16 output once.
- **off-chip DRAM / HBM**: all weights (elements + scales; the LM head / embedding in bf16) are read
  once per decode step and shared by the ``batch`` tokens of that step (so / batch per token); each
  token reads its sequence's whole KV cache (``context`` + ``kv_prefix`` tokens: CushionCache's
  prefix is KV memory) and writes its own K and V.

Energies are at ``node`` (Stillmaker & Baas scaling of the Horowitz-calibrated logic; SRAM scaled
alike, off-chip per-bit energy is the memory device's, :mod:`fmtlab.hw.memory`). MAC-array area:
lanes = MACs per token x ``tokens_per_s`` / ``clock_hz`` (rounded up) per MAC unit, times its
area per MAC lane.
"""

from __future__ import annotations

import dataclasses
import math
from functools import lru_cache
from typing import Any, Mapping

from fmtlab.errors import FmtlabError
from fmtlab.formats import PerBlock, PerChannel, PerGroup, PerTensor, PerToken, Quantizer, get_quantizer
from fmtlab.formats.quantspec import IDENTITY_NAMES
from fmtlab.hw.blocks import Part
from fmtlab.hw.components import BarrelShifter, Incrementer, LeadingZeroCounter
from fmtlab.hw.mac import mac_cost, mx_geometry
from fmtlab.hw.memory import MemorySystem, get_memory
from fmtlab.hw.model_shape import ModelShape
from fmtlab.hw.operands import FloatAcc, parse_operand, view
from fmtlab.hw.scale_units import (FP32, absmax_parts, element_quantize_parts, fp8_scale_multiply_parts,
                                   fp_add, fp_convert_parts, fp_mul, magnitude_compare_parts,
                                   mx_shared_exponent_parts,
                                   price_parts, promoted_mac_cost, scale_compute_parts)
from fmtlab.hw.promoted_acc import parse_promoted
from fmtlab.hw.tech import Technology
from fmtlab.hw.transform_cost import TransformCost, transform_cost

__all__ = ["OperandScheme", "InferenceConfig", "InferenceCost", "inference_cost", "BREAKDOWN_KEYS",
           "MEMORY_KEYS"]

#: energy breakdown terms (J per token), in this order
BREAKDOWN_KEYS = ("mac_linear", "mac_attention", "mac_head", "scale_quant", "transform", "sram",
                  "offchip_weights", "offchip_kv")
#: the terms that are memory traffic
MEMORY_KEYS = ("sram", "offchip_weights", "offchip_kv")

_SCALE_BITS = {"none": 0, "fp32": 32, "e8m0": 8, "fp8_e4m3": 8}
FP16 = FloatAcc(5, 10)
BF16_SIG = 8  # significand bits of a bf16 activation entering a quantizer
_UNQUANTIZED = IDENTITY_NAMES + ("bf16", "fp16")  # the identity quantizer names, or a 16-bit model


@dataclasses.dataclass(frozen=True)
class OperandScheme:
    """How one operand (weights, activations or the KV cache) is stored and scaled.

    element: element format name (``bf16`` when unquantized); element_bits / elem_exp_bits (0 for
    integer-like); granularity: none, tensor, channel, token, group or block; scale_format: none,
    fp32 (tensor / channel / token / group scales, as the simulator keeps them), e8m0 (MX) or
    fp8_e4m3 (NVFP4); group: elements per scale along K (group / block); tensor_scale: NVFP4's
    second-level fp32 scale; hw_operand: the name :func:`fmtlab.hw.mac_cost` prices.
    """

    spec: str
    element: str
    element_bits: int
    elem_exp_bits: int
    granularity: str
    scale_format: str
    group: int | None
    tensor_scale: bool
    hw_operand: str

    @property
    def quantized(self) -> bool:
        return self.granularity != "none"

    @property
    def scale_bits(self) -> int:
        """Bits of one stored scale."""
        return _SCALE_BITS[self.scale_format]

    @property
    def block_scale_bits_per_element(self) -> float:
        """Scale bits per element of a group / block scale (NVFP4 8/16 = 0.5, MXFP4 8/32 = 0.25);
        0 for tensor / channel / token scales (those are per matrix row, see :meth:`matrix_bits`)."""
        if self.granularity in ("group", "block"):
            return self.scale_bits / self.group
        return 0.0

    def matrix_bits(self, k: int, n: int) -> tuple[float, float]:
        """(element bits, scale bits) of an [n, k] weight matrix stored in this scheme."""
        el = float(k * n * self.element_bits)
        g = self.granularity
        if g == "none":
            return el, 0.0
        if g == "tensor":
            sc = self.scale_bits
        elif g in ("channel", "token"):
            sc = n * self.scale_bits
        else:
            sc = n * math.ceil(k / self.group) * self.scale_bits
        if self.tensor_scale:
            sc += 32
        return el, float(sc)

    @classmethod
    def unquantized(cls, spec: str = "none") -> "OperandScheme":
        return cls(str(spec), "bf16", 16, 8, "none", "none", None, False, "bf16")

    @classmethod
    def from_spec(cls, spec: Any) -> "OperandScheme":
        """From a quantizer spec (a :func:`fmtlab.formats.get_quantizer` name, ``name(k=v)``, a
        Quantizer) or None / ``"fp32"`` (unquantized: bf16)."""
        if spec is None or (isinstance(spec, str) and spec.strip().lower() in _UNQUANTIZED):
            return cls.unquantized("none" if spec is None else spec)
        if isinstance(spec, Quantizer):
            q = spec
        elif isinstance(spec, str):
            q = get_quantizer(spec)  # the one resolver (name or name(key=value, ...))
            if not isinstance(q, Quantizer):
                raise FmtlabError(f"cannot price quantizer spec {spec!r}: a {type(q).__name__}, not a "
                                  "scaled Quantizer")
        else:
            raise FmtlabError(f"cannot price quantizer spec {spec!r} (give a quantizer name or a Quantizer)")
        fmt, g = q.format, q.granularity
        exp_bits = int(getattr(view(fmt), "exp_bits", 0))  # FloatView: its exponent field; FixedView: 0
        tensor_scale = False
        if isinstance(g, PerBlock):
            sf = str(g.scale_format)
            gran, group = "block", int(g.size)
            tensor_scale = bool(getattr(g, "tensor_scale", False))
            hw = f"mx{fmt.name}" if g.size == 32 else f"mx{fmt.name}_b{g.size}"
        elif isinstance(g, PerGroup):
            sf, gran, group, hw = "fp32", "group", int(g.size), fmt.name
        elif isinstance(g, PerTensor):
            sf, gran, group, hw = "fp32", "tensor", None, fmt.name
        elif isinstance(g, PerToken):
            sf, gran, group, hw = "fp32", "token", None, fmt.name
        elif isinstance(g, PerChannel):
            sf, gran, group, hw = "fp32", "channel", None, fmt.name
        else:
            raise FmtlabError(f"cannot price granularity {g} of {spec!r}")
        label = spec if isinstance(spec, str) else q.name
        return cls(str(label), fmt.name, int(fmt.bits), exp_bits, gran, sf, group, tensor_scale, hw)


@dataclasses.dataclass(frozen=True)
class InferenceConfig:
    """A deployable config in hardware terms: weight, activation and KV-cache schemes, whether
    activation scales are static, a transform, and an accumulator (None: the MAC default)."""

    name: str
    weight: OperandScheme
    act: OperandScheme
    transform: TransformCost = TransformCost("none", "none")
    kv: OperandScheme = OperandScheme.unquantized("bf16")
    static_act: bool = False
    accumulator: str | None = None

    @classmethod
    def from_specs(cls, name: str, weight: Any = None, act: Any = None, transform: Any = None, *,
                   act_calib: str | None = None, kv: Any = None, outlier_share: float | None = None,
                   accumulator: str | None = None) -> "InferenceConfig":
        """From quantizer specs as a replay config names them (see :class:`OperandScheme`)."""
        return cls(str(name), OperandScheme.from_spec(weight), OperandScheme.from_spec(act),
                   transform_cost(transform, outlier_share), OperandScheme.from_spec(kv),
                   act_calib is not None, accumulator)

    @classmethod
    def coerce(cls, config: Any, outlier_share: float | None = None) -> "InferenceConfig":
        """An InferenceConfig from itself, a mapping (name, weight, act, transform, act_calib, kv,
        accumulator) or any object with those attributes (e.g. a replay config)."""
        if isinstance(config, InferenceConfig):
            return config
        if isinstance(config, Mapping):
            get = config.get
        elif hasattr(config, "weight") and hasattr(config, "act"):
            def get(k, d=None):
                return getattr(config, k, d)
        else:
            raise FmtlabError(f"cannot price config {config!r}: give an InferenceConfig, a mapping or an "
                              "object with name / weight / act (e.g. a replay config)")
        return cls.from_specs(get("name", "config"), get("weight"), get("act"), get("transform"),
                              act_calib=get("act_calib"), kv=get("kv"), outlier_share=outlier_share,
                              accumulator=get("accumulator"))


@dataclasses.dataclass(frozen=True)
class InferenceCost:
    """Cost of one decoded token (see the module docstring for the model).

    energy_j: J per token; breakdown: J per token per term of :data:`BREAKDOWN_KEYS`; *_bytes:
    bytes moved per token (weights split into elements and scales); capacity: weight bytes and
    KV-cache bytes held for the whole batch; mac_array_area_mm2 at ``tokens_per_s``; notes: what
    the numbers leave out or assume for this config.
    """

    config: str
    model: str
    batch: int
    context: int
    node_nm: int
    memory: str
    energy_j: float
    breakdown: dict[str, float]
    weight_element_bytes: float
    weight_scale_bytes: float
    kv_read_bytes: float
    kv_write_bytes: float
    weight_capacity_bytes: float
    kv_capacity_bytes: float
    macs_per_token: float
    mac_unit: str
    mac_lanes: int
    mac_array_area_mm2: float
    tokens_per_s: float
    notes: tuple[str, ...] = ()

    @property
    def bytes_per_token(self) -> float:
        """Off-chip bytes per token: weight elements + scales (/ batch) + KV read + KV write."""
        return self.weight_element_bytes + self.weight_scale_bytes + self.kv_read_bytes + self.kv_write_bytes

    @property
    def memory_share(self) -> float:
        """Share of the energy spent moving data (SRAM + off-chip)."""
        return sum(self.breakdown[k] for k in MEMORY_KEYS) / self.energy_j

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["notes"] = list(self.notes)
        d["bytes_per_token"] = self.bytes_per_token
        d["memory_share"] = self.memory_share
        d["energy_uj"] = self.energy_j * 1e6
        return d


# ------------------------------------------------------------------------------------------


@lru_cache(maxsize=512)
def _mac(w: str, a: str, acc: str | None, node: int, vdd: float | None, ftz: bool = False):
    if acc is not None and parse_promoted(acc) is not None:
        return promoted_mac_cost(w, a, acc, node=node, vdd=vdd)
    return mac_cost(w, a, acc, node=node, vdd=vdd, ftz=ftz)


def _e(parts: list[Part], node: int, vdd: float | None) -> float:
    return price_parts("unit", parts, node, vdd).energy_pj


@lru_cache(maxsize=4096)
def _pj(kind: str, args: tuple, node: int, vdd: float | None) -> float:
    """pJ per operation of a unit built by ``kind`` from hashable ``args`` (cached)."""
    return _e(_BUILDERS[kind](*args), node, vdd)


def _int_to_fp32() -> list[Part]:
    return [Part("int32 -> fp32: LZC", LeadingZeroCounter(32)),
            Part("int32 -> fp32: normalise shifter", BarrelShifter(32, 31, "right")),
            Part("int32 -> fp32: round", Incrementer(24))]


def _output_scale_parts(w: OperandScheme, a: OperandScheme, k: int, int_acc: bool) -> list[Part]:
    """Per output element of a K-long dot product: the scale multiplies (module docstring)."""
    parts: list[Part] = _int_to_fp32() if int_acc else []
    if w.granularity == "block" or a.granularity == "block":
        if w.tensor_scale or a.tensor_scale:
            parts += fp_mul(FP32, "fp32 tensor-scale multiply")
        return parts
    if w.granularity == "group":
        ng = math.ceil(k / w.group)
        parts += fp_mul(FP32, "group scale multiply", ng) + fp_add(FP32, "group partial-sum add", ng)
        return parts
    varying = int(w.granularity == "channel") + int(a.granularity == "token")
    n = 0 if not (w.quantized or a.quantized) else (2 if varying == 2 else 1)
    if n:
        parts += fp_mul(FP32, "output scale multiply", n)
    return parts


def _quantizer_energy(s: OperandScheme, n_elems: float, static: bool, node: int, vdd) -> float:
    """pJ to quantize ``n_elems`` activation elements (one vector) at run time.

    E8M0 (MX) blocks: the shared-exponent logic per block (max exponent, scale, per-element
    exponent subtract) and the mantissa rounding per element. Other scales: per element the absmax
    compare and the conversion (x * 1/s, round), per scale its computation; static scales skip the
    absmax and the scale computation."""
    if not s.quantized:
        return 0.0
    if s.scale_format == "e8m0":
        return (n_elems / s.group) * _pj("mx_shared", (s.group,), node, vdd) + n_elems * _pj("convert", (BF16_SIG, s.element_bits, s.elem_exp_bits), node, vdd)
    e = n_elems * _pj("quantize", (s.element_bits, s.elem_exp_bits, False), node, vdd)
    if static:
        return e
    n_scales = 1.0 if s.granularity in ("tensor", "token", "channel") else n_elems / s.group
    e += n_elems * _pj("absmax", (), node, vdd)
    e += n_scales * _pj("scale_compute", (s.scale_format,), node, vdd)
    return e


_BUILDERS = {
    "mx_shared": mx_shared_exponent_parts, "convert": fp_convert_parts, "quantize": element_quantize_parts,
    "absmax": absmax_parts, "scale_compute": scale_compute_parts, "fp8_scale": fp8_scale_multiply_parts,
    "fp16_add": lambda: fp_add(FP16, "fp16 add"), "compare": lambda: magnitude_compare_parts(15),
    "out_scale": _output_scale_parts,
}


def inference_cost(model: ModelShape, config: Any, *, batch: int = 1, context: int = 1024,
                   node: int = 45, vdd: float | None = None, memory: "str | MemorySystem" = "hbm2",
                   kv_prefix: int = 0, quantize_head: bool = False, outlier_share: float | None = None,
                   tokens_per_s: float = 1000.0, clock_hz: float = 1e9, ftz: bool = False) -> InferenceCost:
    """Energy per decoded token (J), its breakdown, bytes moved, capacity and MAC-array area.

    model: a :class:`~fmtlab.hw.model_shape.ModelShape`; config: an :class:`InferenceConfig`, a
    mapping or a replay-config-like object (name, weight, act, transform, act_calib); batch:
    sequences decoded together (weights are read once per step for all of them); context: tokens
    already in each sequence's KV cache; kv_prefix: extra KV tokens every sequence attends to
    (CushionCache's prefix); node (nm) / vdd: logic technology; memory: ``"hbm2"``, ``"ddr45"`` or
    a :class:`~fmtlab.hw.memory.MemorySystem`; quantize_head: price the LM head in the config's
    formats instead of bf16; outlier_share: LLM.int8()'s measured outlier-column share;
    tokens_per_s / clock_hz: the aggregate throughput the MAC array is sized for; ftz: price
    minifloat x minifloat -> float MAC units as flush-to-zero, no-special-value units
    (:mod:`fmtlab.hw.ftz`; other units unchanged, said in the notes).
    """
    if not isinstance(model, ModelShape):
        raise FmtlabError(f"model must be a fmtlab.hw.ModelShape, got {type(model).__name__} "
                          "(build one with ModelShape.from_config / from_manifest)")
    for k, v, lo in (("batch", batch, 1), ("context", context, 0), ("kv_prefix", kv_prefix, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise FmtlabError(f"{k} must be an int >= {lo}, got {v!r}")
    if not (tokens_per_s > 0 and clock_hz > 0):
        raise FmtlabError("tokens_per_s and clock_hz must be > 0")
    cfg = InferenceConfig.coerce(config, outlier_share)
    mem = get_memory(memory)
    tech = Technology(node, vdd if vdd is not None else (0.9 if node == 45 else None))
    vdd_ = float(tech.vdd)
    notes: list[str] = []
    w, a = cfg.weight, cfg.act
    if w.quantized != a.quantized:
        raise FmtlabError(f"config {cfg.name}: weights and activations must both be quantized or both not "
                          "(mixed bf16 x int MAC units are not modelled)")
    mac = _mac(w.hw_operand, a.hw_operand, cfg.accumulator, node, vdd_)
    if ftz:
        try:
            mac = _mac(w.hw_operand, a.hw_operand, cfg.accumulator, node, vdd_, True)
        except FmtlabError:
            notes.append(f"ftz: {mac.unit} has no flush-to-zero variant (priced as is)")
    attn = _mac("bf16", "bf16", "fp32", node, vdd_)
    if not w.quantized:
        notes.append("unquantized: bf16 weights and a bf16 FMA")
    int_acc = mac.accumulator.startswith("int")
    pj = {k: 0.0 for k in BREAKDOWN_KEYS}
    w_el = w_sc = 0.0
    a_bits_in = 0.0
    macs_linear = 0.0
    t = cfg.transform
    sram_pj = mem.sram_at(tech)
    # ---- Linear layers (per block, times n_layers)
    for lin in model.linears:
        k, n = lin.in_features, lin.out_features
        macs_linear += k * n
        el, sc = w.matrix_bits(k, n)
        w_el += el
        w_sc += sc
        pj["mac_linear"] += k * n * mac.energy_pj
        if not lin.shares_input:
            pj["scale_quant"] += _quantizer_energy(a, k, cfg.static_act, node, vdd_)
            pj["transform"] += t.fp16_adds(k) * _pj("fp16_add", (), node, vdd_)
            pj["transform"] += t.compares(k) * _pj("compare", (), node, vdd_)
            pj["sram"] += 2 * t.gathered(k) * 16 * sram_pj
        pj["transform"] += t.fp16_macs(k, n) * _mac("fp16", "fp16", "fp32", node, vdd_).energy_pj
        pj["scale_quant"] += n * _pj("out_scale", (w, a, k, int_acc), node, vdd_)
        if w.scale_format == "fp8_e4m3" or a.scale_format == "fp8_e4m3":
            bw = parse_operand(w.hw_operand)
            sb = mx_geometry(view(bw.element), view(parse_operand(a.hw_operand).element), bw.block)["sum_bits"]
            pj["scale_quant"] += n * math.ceil(k / w.group) * _pj("fp8_scale", (sb,), node, vdd_)
        a_bits_in += 0 if lin.shares_input else k * a.element_bits + k * a.block_scale_bits_per_element
        pj["sram"] += n * 16 * sram_pj  # bf16 output written
    L = model.n_layers
    for key in ("mac_linear", "scale_quant", "transform"):
        pj[key] *= L
    pj["sram"] = pj["sram"] * L + L * a_bits_in * sram_pj
    w_el *= L
    w_sc *= L
    if t.kind == "unpriced" or t.note:
        notes.append(t.note)
    # ---- attention, LM head, embedding
    ctx = context + kv_prefix
    macs_attn = model.attention_macs(ctx)
    pj["mac_attention"] = macs_attn * attn.energy_pj
    if quantize_head:
        head_el, head_sc = w.matrix_bits(model.hidden, model.vocab)
        pj["mac_head"] = model.head_params * mac.energy_pj
        pj["scale_quant"] += _quantizer_energy(a, model.hidden, cfg.static_act, node, vdd_)
        pj["scale_quant"] += model.vocab * _pj("out_scale", (w, a, model.hidden, int_acc), node, vdd_)
    else:
        head_el, head_sc = model.head_params * 16.0, 0.0
        pj["mac_head"] = model.head_params * attn.energy_pj
        notes.append("LM head in bf16")
    emb_bits = model.hidden * 16.0 if model.tied else 0.0  # one embedding row per token (tied: head matrix)
    untied_bits = 0.0 if model.tied else model.head_params * 16.0
    # ---- KV cache
    kv = cfg.kv
    kv_el, kv_sc = kv.matrix_bits(model.head_dim, model.kv_elements_per_token // model.head_dim)
    kv_bits_tok = kv_el + kv_sc
    if kv.quantized:
        pj["scale_quant"] += _quantizer_energy(kv, model.kv_elements_per_token, False, node, vdd_)
    kv_read_bits = ctx * kv_bits_tok
    # ---- off-chip traffic
    weight_bits_step = w_el + w_sc + head_el + head_sc
    pj["offchip_weights"] = (weight_bits_step / batch + emb_bits) * mem.offchip_pj_per_bit
    pj["offchip_kv"] = (kv_read_bits + kv_bits_tok) * mem.offchip_pj_per_bit
    offchip_bits = weight_bits_step / batch + emb_bits + kv_read_bits + kv_bits_tok
    pj["sram"] += 2 * offchip_bits * sram_pj
    energy_pj = sum(pj.values())
    macs_tok = L * macs_linear + macs_attn + model.head_params
    # ---- MAC array sized for the throughput
    lanes_lin = math.ceil(L * macs_linear * tokens_per_s / clock_hz)
    lanes_bf16 = math.ceil((macs_attn + (0 if quantize_head else model.head_params)) * tokens_per_s / clock_hz)
    lanes_head_q = math.ceil(model.head_params * tokens_per_s / clock_hz) if quantize_head else 0
    area_um2 = (lanes_lin + lanes_head_q) * mac.area_um2_per_mac + lanes_bf16 * attn.area_um2_per_mac
    if t.kind not in ("none", "merged"):
        notes.append("transform units' area not in the MAC-array area")
    notes.append("softmax / norms / nonlinearities not priced")
    return InferenceCost(
        cfg.name, model.name, batch, context, tech.node_nm, mem.name, energy_pj * 1e-12,
        {k: v * 1e-12 for k, v in pj.items()},
        ((w_el + head_el) / batch + emb_bits) / 8, (w_sc + head_sc) / batch / 8,
        kv_read_bits / 8, kv_bits_tok / 8,
        (weight_bits_step + untied_bits) / 8,
        (batch * context + kv_prefix) * kv_bits_tok / 8,
        float(macs_tok), mac.unit, lanes_lin + lanes_bf16 + lanes_head_q, area_um2 * 1e-6, float(tokens_per_s),
        tuple(dict.fromkeys(x for x in notes if x)))

