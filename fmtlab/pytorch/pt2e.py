"""PT2E flow: ``prepare_pt2e`` -> calibrate -> ``convert_pt2e`` with fmtlab fake-quantizers.

:class:`FmtlabQuantizer` is a torchao PT2E ``Quantizer``. On a ``torch.export``-ed model it
annotates every ``aten.linear`` node (the Linear layers; their fully qualified module name comes
from the node's ``nn_module_stack``) with an fmtlab weight spec on the weight input and an fmtlab
activation spec on the data input, in the layout of :func:`fmtlab.pytorch.quantize_model`:
W as [out, in], activations [..., in] with dynamic scales per sequence or static scales.

- ``prepare_pt2e`` inserts one :class:`FmtlabObserver` per annotated edge. With
  ``activation_scales="static"`` the activation observer holds a
  :class:`~fmtlab.pytorch.StaticActivation` and folds each calibration batch into its statistic
  (per sequence, as :func:`fmtlab.pytorch.calibrate` does: activations pass unquantized while
  observing, weights are fake-quantized, so a layer observes the input that the quantized
  layers before it produce). Dynamic activations pass unquantized in the prepared model.
- ``convert_pt2e`` calls each observer's ``convert``, which freezes the static scales (an
  FmtlabError if the layer saw no calibration data) and replaces the observer call by a
  :class:`FmtlabFakeQuant` module: ``Q_w(W)`` on the weight edge, ``Q_a(x)`` on the input edge.
  The converted graph then computes ``linear(Q_a(x), Q_w(W), b)`` with the same torch ops as
  :class:`~fmtlab.pytorch.QuantLinear`, so its outputs equal ``quantize_model``'s bit for bit
  (tests/pytorch/test_pt2e.py).

Skip patterns (default ``("lm_head",)``) use ``quantize_model``'s rule on the module name; the
exported graph has no ``get_output_embeddings``, so the head is skipped by name only (a ``skip``
argument replaces the default: keep ``"lm_head"`` in it).
Only ``aten.linear`` is annotated (not ``matmul`` / ``bmm`` between activations); GPT-2's
Conv1D, which exports as ``addmm`` on a flattened batch, is refused with an FmtlabError. torchao is
optional: importing this module without it raises ImportError naming the package.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import fx, nn

try:
    from torchao.quantization.pt2e import ObserverBase
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, QuantizationSpec, Quantizer
except ImportError as exc:  # pragma: no cover - exercised only without torchao
    raise ImportError("fmtlab.pytorch.pt2e needs torchao (pip install torchao)") from exc

from fmtlab.errors import FmtlabError
from fmtlab.pytorch.activations import ActivationScales, StaticActivation, quantize_per_sequence
from fmtlab.pytorch.autograd import check_grad
from fmtlab.pytorch.specs import resolve, spec_name
from fmtlab.pytorch.model import matches_name

__all__ = ["FmtlabQuantizer", "FmtlabObserver", "FmtlabFakeQuant"]

_LINEAR_OPS = (torch.ops.aten.linear.default,)
_ROLES = ("weights", "activations", "static_activations")


class FmtlabFakeQuant(nn.Module):
    """A converted edge: ``weights`` -> q(W); ``activations`` -> q(x) with dynamic scales per
    sequence; ``static_activations`` -> the frozen :class:`StaticActivation` ``static``."""

    def __init__(self, role: str, q: Any = None, static: StaticActivation | None = None,
                 grad: str = "ste", layer: str = "") -> None:
        super().__init__()
        self.role, self.q, self.static, self.grad, self.layer = role, q, static, grad, layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.role == "weights":
            return self.q(x, grad=self.grad)
        if self.role == "static_activations":
            return self.static(x, grad=self.grad)
        return quantize_per_sequence(self.q, x, self.grad)

    def extra_repr(self) -> str:
        name = spec_name(self.static if self.static is not None else self.q)
        return f"{self.layer or '<root>'}: {self.role} {name}"


class FmtlabObserver(ObserverBase):
    """The prepared-model observer of one annotated edge (see the module docstring).

    Built by ``prepare_pt2e`` from ``FmtlabObserver.with_args(role=..., spec=..., ...)`` plus
    torchao's QuantizationSpec keywords (dtype, quant_min, ..., unused here)."""

    def __init__(self, dtype: torch.dtype = torch.float32, quant_min: Any = None, quant_max: Any = None,
                 qscheme: Any = None, is_dynamic: bool = False, *, role: str = "weights", spec: Any = None,
                 features: int = 0, grad: str = "ste", layer: str = "") -> None:
        super().__init__(dtype=dtype, is_dynamic=is_dynamic)
        if role not in _ROLES:
            raise FmtlabError(f"FmtlabObserver role must be one of {_ROLES}, got {role!r}")
        self.role, self.grad, self.layer = role, check_grad(grad), layer
        self.q = resolve(spec, role)
        self.static = StaticActivation(self.q, features, layer) if role == "static_activations" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.static is not None:
            if bool(self.static.calibrated):  # already frozen (fmtlab.pytorch.calibrate): quantize
                return self.static(x, grad=self.grad)
            self.static.observe(x)
            return x
        if self.role == "weights":  # weights are quantized while calibrating, as in calibrate()
            return self.q(x, grad=self.grad)
        return x

    def calculate_qparams(self, **kwargs: Any):  # noqa: ARG002 - torchao's abstract API
        raise FmtlabError("fmtlab observers have no affine (scale, zero_point); convert_pt2e "
                          "replaces them through FmtlabObserver.convert")

    def fake_quant(self) -> FmtlabFakeQuant:
        """The converted module (freezes static scales that are not frozen yet)."""
        if self.static is not None and not bool(self.static.calibrated):
            self.static.freeze()
        return FmtlabFakeQuant(self.role, self.q, self.static, self.grad, self.layer)

    def convert(self, model: fx.GraphModule, observer_node: fx.Node) -> None:
        """torchao's hook in ``convert_pt2e``: swap the observer call for a FmtlabFakeQuant."""
        fq = self.fake_quant()
        name = f"{observer_node.target}_fmtlab"
        model.add_submodule(name, fq)
        with model.graph.inserting_before(observer_node):
            new = model.graph.call_module(name, (observer_node.args[0],))
        new.meta = dict(observer_node.meta)
        observer_node.replace_all_uses_with(new)
        model.graph.erase_node(observer_node)

    def extra_repr(self) -> str:
        return f"{self.layer or '<root>'}: {self.role} {spec_name(self.static if self.static is not None else self.q)}"


def node_module_name(node: fx.Node) -> str:
    """The qualified name of the innermost module a graph node came from ("" at the root)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return path.removeprefix("L['self'].").removeprefix("L['self']")


def _module_type(node: fx.Node) -> str:
    """The qualified type name of the innermost module a graph node came from ("" at the root)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    kind = list(stack.values())[-1][1]
    return kind if isinstance(kind, str) else f"{kind.__module__}.{kind.__qualname__}"


class FmtlabQuantizer(Quantizer):
    """Annotate every Linear (``aten.linear``) of an exported model with fmtlab W/A fake-quant.

    weights / activations: specs as :func:`fmtlab.pytorch.quantize_model` takes them (None leaves
    that input in float). activation_scales: ``"dynamic"`` (default) or ``"static"`` (observed
    during calibration, frozen by ``convert_pt2e``). skip: module-name patterns left in float
    (``quantize_model``'s rule; default ``("lm_head",)``). grad: the STE flavour of the converted
    fake-quantizers. Bad specs fail at construction (FmtlabError).
    """

    def __init__(self, weights: Any = None, activations: Any = None, *,
                 activation_scales: "ActivationScales | str" = ActivationScales.DYNAMIC,
                 skip: Iterable[Any] | None = ("lm_head",), grad: str = "ste") -> None:
        super().__init__()
        self.weights, self.activations, self.grad = weights, activations, check_grad(grad)
        self.mode = ActivationScales.parse(activation_scales)
        self.act_role = "static_activations" if self.mode is ActivationScales.STATIC else "activations"
        self.skip = list(skip or ())
        resolve(weights, "weights")
        aq = resolve(activations, self.act_role)
        if aq is not None and self.mode is ActivationScales.STATIC:
            StaticActivation(aq, 1, "<FmtlabQuantizer>")  # fails now if aq cannot be static
        self.annotated: list[str] = []  #: module names of the annotated linears, in graph order

    def _spec(self, role: str, spec: Any, layer: str, features: int) -> QuantizationSpec:
        ctr = FmtlabObserver.with_args(role=role, spec=spec, features=features, grad=self.grad, layer=layer)
        return QuantizationSpec(dtype=torch.float32, observer_or_fake_quant_ctr=ctr)

    def annotate(self, model: fx.GraphModule) -> fx.GraphModule:
        self.annotated = []
        conv1d = sorted({node_module_name(n) for n in model.graph.nodes if n.op == "call_function"
                         and _module_type(n).endswith(".Conv1D")
                         and not any(matches_name(node_module_name(n), p) for p in self.skip)})
        if conv1d:
            raise FmtlabError(f"GPT-2 Conv1D layers ({', '.join(conv1d[:3])}, ...) export as addmm on a "
                              "flattened batch, which FmtlabQuantizer does not annotate; rewire such "
                              "models with quantize_model or FmtlabConfig instead")
        for node in model.graph.nodes:
            if node.op != "call_function" or node.target not in _LINEAR_OPS:
                continue
            layer = node_module_name(node)
            if any(matches_name(layer, p) for p in self.skip):
                continue
            x, w = node.args[0], node.args[1]
            w_val = w.meta.get("val") if isinstance(w, fx.Node) else None
            if w_val is None or w_val.dim() != 2:
                raise FmtlabError(f"layer {layer!r}: linear weight without a 2-D example value in the graph")
            qmap: dict[fx.Node, QuantizationSpec] = {}
            if resolve(self.activations, self.act_role) is not None:
                qmap[x] = self._spec(self.act_role, self.activations, layer, int(w_val.shape[1]))
            if resolve(self.weights, "weights") is not None:
                qmap[w] = self._spec("weights", self.weights, layer, int(w_val.shape[1]))
            if qmap:
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map=qmap, _annotated=True, allow_implicit_sharing=False)
                self.annotated.append(layer)
        return model

    def validate(self, model: fx.GraphModule) -> None:  # noqa: ARG002 - nothing backend-specific
        return None
