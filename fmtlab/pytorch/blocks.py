"""Block formats in torch ops: MX (E8M0 shared exponents) and FP8-scaled blocks (NVFP4).

The rules are ``fmtlab.formats.mx``'s (its module docstring; the element facts come from
``mx.block_elem``), the blocks are the shared layout's slots (``PerBlock`` -> ``Rows(K, nblocks)``):
- E8M0: e from the block's max finite |x| (a float32) by FLOOR / CEIL / EVEN / RCEIL, computed on
  its float32 bit pattern, clamped to [-127, 127], all-zero block -127; scale 2**(e + eoff);
- FP8 (NVFP4): g = fl32(A_tensor / fl32(448 * elem_max)) (``tensor_scale=True``), block scale =
  the E4M3 code of fl32(fl32(A / elem_max) / g) (RNE, saturating, at least code 1), S = fl32(g * e4m3);
- a block holding NaN or Inf gets the NaN scale: outputs NaN, element codes 0.
Stochastic rounding draws one value per element of the working layout (axis moved last).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch

from fmtlab.errors import FmtlabError, FormatError
from fmtlab.formats import NanInput, Quantizer, Rounding, get_format
from fmtlab.formats.blockfmt import ScaleFormat, SharedExpRule
from fmtlab.formats.four_over_six import E4M3_MAX_FOUR_OVER_SIX
from fmtlab.formats.mixfp4 import ALT_ELEMENT, E1M2_FLAG
from fmtlab.formats.scaling import FourOverSix, MixFP4
from fmtlab.formats.mx import block_elem, fp8_block_elem
from fmtlab.pytorch._tables import torch_grid
from fmtlab.pytorch.elements import ElementOps
from fmtlab.pytorch.encoding import encode_codes, stochastic_draws
from fmtlab.pytorch.layout import TorchLayout
from fmtlab.pytorch.scales import TINY32, finite_absmax

__all__ = ["BlockOut", "run_blocks", "mx_exponents"]

_MAN32 = 0x007FFFFF


class BlockOut(NamedTuple):
    """What a block pass returns (working-layout tensors moved back to x's layout)."""

    out: torch.Tensor
    codes: torch.Tensor | None
    scales: torch.Tensor
    scale_codes: torch.Tensor
    tensor_scale: float | None
    mask: torch.Tensor | None


def _floor_log2_bits(b: torch.Tensor) -> torch.Tensor:
    """floor(log2 A) of positive finite float32 patterns b (int64; subnormals included)."""
    E = b >> 23
    f = (b & _MAN32).to(torch.float64)
    _, ef = torch.frexp(torch.where(f > 0, f, 1.0))
    sub = (ef.to(torch.int64) - 1) - 149
    return torch.where(E > 0, E - 127, sub)


def _ceil_log2_bits(b: torch.Tensor) -> torch.Tensor:
    fl = _floor_log2_bits(b)
    E = b >> 23
    man = b & _MAN32
    exact = torch.where(E > 0, man == 0, (man & (man - 1)) == 0)
    return torch.where(exact, fl, fl + 1)


def mx_exponents(amax: torch.Tensor, q: Quantizer) -> torch.Tensor:
    """Unbiased E8M0 exponent per block (mx.py: FLOOR / CEIL / EVEN / RCEIL), clamped to
    [-127, 127]; an all-zero block gets -127."""
    be, rule = block_elem(q.format), SharedExpRule.parse(q.scale_rule.mode)
    bits = amax.view(torch.int32).to(torch.int64)
    if rule is SharedExpRule.FLOOR:
        e = _floor_log2_bits(bits) - be.emax
    elif rule is SharedExpRule.CEIL:
        e = _ceil_log2_bits(bits) - be.emax
    elif rule is SharedExpRule.EVEN:
        if be.mbits < 0:
            raise FmtlabError(f"the EVEN shared-exponent rule needs a minifloat or INT element, "
                              f"not {q.format.name}")
        rb = bits + (1 << (22 - be.mbits))
        rb = torch.where((rb >> 23) > 0, rb & ~((1 << 23) - 1), rb)
        e = _floor_log2_bits(rb) - be.emax
    elif rule is SharedExpRule.NEURON:
        e = _floor_log2_bits(bits) - be.emax + 1
    elif rule is SharedExpRule.MIDMAX:  # mx.py: one up where A / 2**floor(log2 A) > 1 + max / 2**(emax+1)
        fl = _floor_log2_bits(torch.where(bits == 0, 1, bits))
        sig = amax.to(torch.float64) * torch.exp2(-fl.to(torch.float64))
        e = fl - be.emax + (sig > 1.0 + float(be.elem_max) * 2.0 ** -(be.emax + 1)).to(torch.int64)
    elif rule is SharedExpRule.RCEIL:
        d = amax / torch.tensor(float(be.elem_max), dtype=torch.float32)
        db = d.view(torch.int32).to(torch.int64)
        e = torch.where(db == 0, -127, _ceil_log2_bits(torch.where(db == 0, 1, db)))
    else:  # a rule added to SharedExpRule without a torch twin here
        raise FmtlabError(f"the torch block path has no shared-exponent rule {rule!r}")
    e = torch.where(bits == 0, -127, e)
    return e.clamp(-127, 127)


def _fp8_scales(amax: torch.Tensor, bad: torch.Tensor, q: Quantizer, block_max: float | None = None,
                scale_target: float | None = None):
    """NVFP4-style block scales: (E4M3 codes, effective float32 scales, tensor scale g).
    block_max: the element value a block max maps to (default the element's max);
    scale_target: the E4M3 value the tensor max maps to (default 448; Four Over Six: 256)."""
    e4m3 = get_format(ScaleFormat.FP8_E4M3.value)
    full = float(fp8_block_elem(q.format).elem_max)
    elem_max = torch.tensor(full, dtype=torch.float32)
    target = float(e4m3.max) if scale_target is None else scale_target
    if q.granularity.tensor_scale is True:
        a = amax.max()
        if not bool(torch.isfinite(a)):
            raise FmtlabError("the tensor scale needs a finite max |x|")
        if float(a) == 0:
            gt = torch.tensor(1.0, dtype=torch.float32)
        else:
            gt = a.cpu() / (torch.tensor(target, dtype=torch.float32) * elem_max)
            if not float(gt) > 0:
                gt = torch.tensor(TINY32, dtype=torch.float32)
        ts = float(gt)
    else:
        gt = torch.tensor(1.0, dtype=torch.float32)
        ts = None
    gt = gt.to(amax.device)
    if block_max is not None:
        elem_max = torch.tensor(block_max, dtype=torch.float32)
    s_rel = (amax / elem_max.to(amax.device)) / gt
    c8 = encode_codes(s_rel, e4m3, Rounding.NEAREST_EVEN, "saturate", nan="raise")
    c8 = c8.clamp(1, e4m3.max_code())
    val = torch_grid(e4m3, amax.device).values[c8.long()].to(torch.float32)
    S = gt * val
    codes = torch.where(bad, e4m3.canonical_nan_code(), c8).to(torch.uint8)
    S = torch.where(bad, float("nan"), S).to(torch.float32)
    return codes, S, ts


def _block_error(out: torch.Tensor, w: torch.Tensor, metric: str) -> torch.Tensor:
    """As four_over_six._block_error: float64, summed element by element in order."""
    d = out.to(torch.float64) - w.to(torch.float64)
    e = d.abs() if metric != "mse" else d * d
    if metric == "abs_max":
        return e.max(dim=1).values
    acc = e[:, 0].clone()
    for j in range(1, e.shape[1]):
        acc = acc + e[:, j]
    return acc


def _four_over_six_scales(q: Quantizer, ops: ElementOps, w: torch.Tensor, r, amax, bad):
    """Four Over Six (fmtlab.formats.four_over_six): per block the "6" or the "4" E4M3 scale,
    whichever gives the lower block error (ties keep 6); tensor scale amax / (256 * elem_max)."""
    full = float(fp8_block_elem(q.format).elem_max)
    cands = [_fp8_scales(amax, bad, q, None, E4M3_MAX_FOUR_OVER_SIX),
             _fp8_scales(amax, bad, q, full * 2.0 / 3.0, E4M3_MAX_FOUR_OVER_SIX)]
    errs = []
    for _, S, _ in cands:
        s = torch.where(bad, torch.ones_like(S), S)
        wz = torch.where(bad[:, None], torch.zeros_like(w), w)
        out = ops.scaled_values(wz / s[:, None].to(w.dtype), s[:, None], None, r, "raise")
        errs.append(_block_error(out, wz, q.scale_rule.metric))
    pick4 = torch.isfinite(cands[1][1]) & (errs[1] < errs[0])
    codes = torch.where(pick4, cands[1][0], cands[0][0])
    scales = torch.where(pick4, cands[1][1], cands[0][1])
    return codes, scales, cands[0][2]


def _mixfp4(q: Quantizer, ops: ElementOps, w: torch.Tensor, r, amax, bad, want_codes: bool):
    """MixFP4 (fmtlab.formats.mixfp4): per block the E2M1 or the E1M2 candidate, whichever gives
    the lower block error (ties E2M1); E1M2 blocks get bit 7 of their scale code set.
    Returns (out, codes or None, in-range mask, scale codes, scales, tensor scale)."""
    alt_q = dataclasses.replace(q, format=ALT_ELEMENT, scale_rule=None, name=None)
    alt_ops = ElementOps(alt_q)
    alt_max = float(fp8_block_elem(alt_q.format).elem_max)
    cands = [(ops, _fp8_scales(amax, bad, q)), (alt_ops, _fp8_scales(amax, bad, q, alt_max))]
    res = []
    wz = torch.where(bad[:, None], torch.zeros_like(w), w)
    for o, (c8, S, ts) in cands:
        s = torch.where(bad, torch.ones_like(S), S)
        y = wz / s[:, None].to(w.dtype)
        out = o.scaled_values(y, s[:, None], None, r, "raise")
        codes = o.codes(y, q.rounding, draws=r, nan="raise") if want_codes else None
        res.append((y, out, codes, _block_error(out, wz, q.scale_rule.metric)))
    pick = torch.isfinite(cands[1][1][1]) & (res[1][3] < res[0][3])
    rows = pick[:, None]
    out = torch.where(rows, res[1][1], res[0][1])
    codes = torch.where(rows, res[1][2], res[0][2]) if want_codes else None
    mask = torch.where(rows, alt_ops.in_range(res[1][0]), ops.in_range(res[0][0]))
    scale_codes = torch.where(pick, cands[1][1][0].to(torch.int64) | E1M2_FLAG,
                              cands[0][1][0].to(torch.int64)).to(torch.uint8)
    scales = torch.where(pick, cands[1][1][1], cands[0][1][1])
    return out, codes, mask, scale_codes, scales, cands[0][1][2]


def run_blocks(q: Quantizer, ops: ElementOps, tl: TorchLayout, w: torch.Tensor, seed, draws,
               want_codes: bool, need_mask: bool) -> BlockOut:
    """Block quantization of the working data ``w`` (x arranged by ``tl``)."""
    g = q.granularity
    name = str(q)
    w = tl.slot_matrix(w)  # [nblocks, K] in the working layout
    if q.nan is not None:  # explicit policy; None is OCP MX's NaN block (as Quantizer._blocks)
        nanm = torch.isnan(w)
        if bool(nanm.any()):
            if NanInput.parse(q.nan) is NanInput.RAISE:
                raise FormatError(f"{name}: the input holds {int(nanm.sum())} NaN value(s) and "
                                  "nan='raise' (the default nan=None makes their MX blocks NaN; "
                                  "nan='zero' reads them as 0)")
            w = torch.where(nanm, torch.zeros_like(w), w)
    r = None
    if q.rounding is Rounding.STOCHASTIC:
        if draws is None and seed is None:
            seed = q.seed
        r = stochastic_draws(w.numel(), seed, draws, w.device).reshape(w.shape)
    amax, has_nan, has_inf = finite_absmax(w)
    bad = has_nan | has_inf
    ts = None
    if ScaleFormat.parse(g.scale_format) is ScaleFormat.E8M0:
        e = mx_exponents(amax, q)
        scale_codes = torch.where(bad, 255, e + 127).to(torch.uint8)
        ee = (e + block_elem(q.format).eoff).to(torch.float64)
        scales = torch.where(bad, float("nan"), torch.pow(2.0, ee)).to(torch.float32)
    elif isinstance(q.scale_rule, FourOverSix):
        scale_codes, scales, ts = _four_over_six_scales(q, ops, w, r, amax, bad)
    elif isinstance(q.scale_rule, MixFP4):
        out, codes, mask, scale_codes, scales, ts = _mixfp4(q, ops, w, r, amax, bad, want_codes)
        out = torch.where(bad[:, None], torch.full_like(out, float("nan")), out)
        if want_codes:
            codes = tl.from_work(torch.where(bad[:, None], torch.zeros_like(codes), codes))
        mask = tl.from_work(mask & ~bad[:, None]) if need_mask else None
        shape = tl.scale_shape
        return BlockOut(tl.from_work(out), codes, scales.reshape(shape), scale_codes.reshape(shape),
                        ts, mask)
    else:
        scale_codes, scales, ts = _fp8_scales(amax, bad, q)
    any_bad = bool(bad.any())  # no NaN / Inf block (the common case): the where passes are skipped
    s = torch.where(bad, torch.ones_like(scales), scales) if any_bad else scales
    wz = torch.where(bad[:, None], torch.zeros_like(w), w) if any_bad else w
    y = wz / s[:, None].to(w.dtype)
    out = ops.scaled_values(y, s[:, None], None, r, "raise")
    if any_bad:
        out = torch.where(bad[:, None], torch.full_like(out, float("nan")), out)
    codes = None
    if want_codes:
        codes = ops.codes(y, q.rounding, draws=r, nan="raise")
        codes = tl.from_work(torch.where(bad[:, None], torch.zeros_like(codes), codes) if any_bad else codes)
    mask = tl.from_work(ops.in_range(y) & ~bad[:, None]) if need_mask else None
    shape = tl.scale_shape
    return BlockOut(tl.from_work(out), codes, scales.reshape(shape), scale_codes.reshape(shape),
                    ts, mask)
