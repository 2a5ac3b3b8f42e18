"""What a quantization transform costs at inference, per token and Linear layer.

A transform is named as in the replay configs (``hadamard``, ``llm_int8(threshold=6.0)``,
``smoothquant(alpha=0.5)``, ``aqas``, ``fptquant``, ``exclude_sink`` ...); :func:`transform_cost`
returns a :class:`TransformCost`: how many extra operations of which kind one token's pass through a
K -> N Linear layer needs. Pricing rules (each stated, with its source):

- **merged** (zero cost): SmoothQuant's per-channel smoothing (Xiao et al., ICML 2023, section 4:
  "the smoothing factor can be fused into the previous layers' parameters offline"), AQAS's
  activation scales (folded the same way) and FPTQuant's mergeable transforms (van Breugel et al.,
  2025: the pre-RoPE, value/output and pre-norm transforms merge into the weights; its online
  parts are not modelled here and are named in the note).
- **online Hadamard** (QuaRot-style rotation of each Linear input, weights pre-rotated offline):
  a fast Walsh-Hadamard transform of the K-vector, K log2 K adds in fp16 per token per layer
  (Ashkboos et al., "QuaRot", 2024, section 3; for K not a power of two, K ceil(log2 K) adds is
  the count of a butterfly network of that depth).
- **LLM.int8()** (Dettmers et al., NeurIPS 2022): outlier feature columns (|x| > threshold in any
  token) run in fp16: ``share`` x K x N fp16 MACs (the int8 array still does all K x N, the
  outlier columns zeroed); detection is one compare per activation element; the gather reads and
  writes ``share`` x K fp16 values through the on-chip buffer. ``share`` is *measured* (the
  caller passes it, e.g. from the trace); without it the outlier path is priced at 0 and the note
  says so.
- **exclude_sink** (attention-sink tokens kept unquantized): affects only the sink positions, not a
  decoded token: 0 at decode.
- anything else: not priced, named in the note.
"""

from __future__ import annotations

import dataclasses
import math

from fmtlab.errors import FmtlabError

__all__ = ["TransformCost", "transform_cost", "MERGED"]

MERGED = ("smoothquant", "aqas", "fptquant", "fptquant_merged")


@dataclasses.dataclass(frozen=True)
class TransformCost:
    """Extra work per token for one K -> N Linear layer.

    The fields are coefficients of the layer shape: fp16 adds = add_k_log_k * K * ceil(log2 K);
    fp16 MACs = mac_share * K * N; compares = compare_per_elem * K; gathered fp16 elements =
    gather_share * K.
    """

    name: str
    kind: str  # "none", "merged", "online", "outlier", "unpriced"
    add_k_log_k: float = 0.0
    mac_share: float = 0.0
    compare_per_elem: float = 0.0
    gather_share: float = 0.0
    note: str = ""

    def fp16_adds(self, k: int) -> float:
        return self.add_k_log_k * k * max(1, math.ceil(math.log2(max(k, 2))))

    def fp16_macs(self, k: int, n: int) -> float:
        return self.mac_share * k * n

    def compares(self, k: int) -> float:
        return self.compare_per_elem * k

    def gathered(self, k: int) -> float:
        return self.gather_share * k


def _base_name(spec) -> str:
    if spec is None:
        return "none"
    name = spec if isinstance(spec, str) else getattr(spec, "name", None) or type(spec).__name__
    return str(name).split("(")[0].strip().lower()


def transform_cost(spec, outlier_share: float | None = None) -> TransformCost:
    """The :class:`TransformCost` of a replay transform spec (a name, ``name(args)``, an object with
    a ``name``, or None). ``outlier_share``: LLM.int8()'s measured share of outlier columns."""
    n = _base_name(spec)
    if n in ("none", "identity", ""):
        return TransformCost("none", "none")
    if n in MERGED:
        note = "merged into the weights (0)"
        if n.startswith("fptquant"):
            note += "; FPTQuant's online transforms, if any, not priced"
        return TransformCost(n, "merged", note=note)
    if n == "hadamard":
        return TransformCost(n, "online", add_k_log_k=1.0, note="online Hadamard: K ceil(log2 K) fp16 adds per layer input")
    if n == "llm_int8":
        if outlier_share is None:
            return TransformCost(n, "outlier", compare_per_elem=1.0,
                                 note="LLM.int8() outlier path: share of outlier columns not measured, priced 0")
        s = float(outlier_share)
        if not 0.0 <= s <= 1.0:
            raise FmtlabError(f"outlier_share must be in [0, 1], got {outlier_share!r}")
        return TransformCost(n, "outlier", mac_share=s, compare_per_elem=1.0, gather_share=s,
                             note=f"LLM.int8() outlier path: {100 * s:.2f}% of input columns in fp16 (measured)")
    if n == "exclude_sink":
        return TransformCost(n, "none", note="sink tokens unquantized: no cost at decode")
    return TransformCost(n, "unpriced", note=f"transform {n} overhead not priced")
