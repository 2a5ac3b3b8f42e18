"""``<config>+fptquant`` in `fmtlab report --configs / --ppl-configs`: a replay or perplexity config
measured on the FPTQuant-merged model.

``w8a8_int_tensor_static+fptquant`` is the replay preset ``w8a8_int_tensor_static`` (any config
spec works before the suffix) renamed; what changes is the model. The report fits FPTQuant once
(:func:`fmtlab.methods.fptquant.fit_fptquant` with the paper's / public implementation's defaults:
residual rotation + transforms (a)-(c), L_4 loss of the merged weights, 200 AdamW steps at lr 1e-2,
seed 0; see :data:`FIT`) and merges it (:func:`~fmtlab.methods.fptquant.merge_fptquant`, a copy;
the report's model is unchanged). The merged float model computes the original's function (to
float32 rounding), so its recorded activations are the ones a quantizer sees under FPTQuant:
evaluation and calibration traces are recorded from it (``<out>/traces/*_fptquant``, re-recorded on
every run), ``+fptquant`` configs replay there (static scales and fitted transforms calibrated on
the merged model's calibration trace), and their perplexity is the merged model's, quantized by the
config, on the same evaluation windows as the other configs.

Our reading: the config's own quantizers replace FPTQuant's quantizer set, so FPTQuant's fourth
transform, the dynamic per-token scale on the o_proj / down_proj inputs
(:mod:`fmtlab.methods.fptquant_quant`), is not applied; the claim ``fptquant`` measures it.
Llama-architecture models only (others raise FmtlabError naming the model type). A ``+fptquant``
config cannot also be ``+cushion``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from fmtlab.errors import FmtlabError

__all__ = ["SUFFIX", "FIT", "is_fptquant", "fptquant_config", "method_config", "any_fptquant", "FPTQuantRun"]

SUFFIX = "+fptquant"
#: the report's fit_fptquant settings (its defaults, seed 0; tests shrink the steps)
FIT: dict[str, Any] = {"steps": 200, "lr": 1e-2, "p": 4.0, "seed": 0}


def is_fptquant(name: Any) -> bool:
    return isinstance(name, str) and name.strip().endswith(SUFFIX)


def fptquant_config(spec: Any):
    """The config of ``<spec>`` named ``"<its name>+fptquant"`` for ``"<spec>+fptquant"``."""
    from fmtlab.analysis.methods.cushion_configs import SUFFIX as CUSHION, cushion_config

    if not is_fptquant(spec):
        return cushion_config(spec)
    base = spec.strip()[: -len(SUFFIX)]
    if not base:
        raise FmtlabError(f"config {spec!r}: nothing before {SUFFIX!r}")
    if CUSHION in base:
        raise FmtlabError(f"config {spec!r}: {CUSHION!r} and {SUFFIX!r} cannot be combined")
    cfg = cushion_config(base)
    return dataclasses.replace(cfg, name=cfg.name + SUFFIX)


#: the report's config parser: plain, ``+cushion`` and ``+fptquant`` specs
method_config = fptquant_config


def any_fptquant(*name_lists: Sequence[Any]) -> bool:
    return any(is_fptquant(n) for names in name_lists for n in names)


class FPTQuantRun:
    """The report's FPTQuant state: one fit + merge (on first use) and the merged model's traces."""

    def __init__(self, model, tokenizer, step: Callable[[str], None], progress: bool = False):
        if model is None:
            raise FmtlabError(f"{SUFFIX} configs need the model (not only a recorded --trace)")
        from fmtlab.methods.fptquant import llama_shape

        try:
            llama_shape(model)
        except FmtlabError as exc:
            mtype = getattr(getattr(model, "config", None), "model_type", None)
            raise FmtlabError(f"{SUFFIX} configs need a Llama-architecture model; {type(model).__name__} "
                              f"(model_type {mtype!r}) is not one: {exc}") from None
        self.model, self.tok, self.step, self.progress = model, tokenizer, step, progress
        self._merged = None
        self.seconds: float | None = None  #: fit + merge time (s), once done
        self._traces: dict[str, Any] = {}

    @property
    def merged(self):
        """The FPTQuant-merged float copy of the model (fitted and merged on first use)."""
        if self._merged is None:
            from fmtlab.methods.fptquant import fit_fptquant, merge_fptquant

            self.step(f"FPTQuant: local fit ({FIT['steps']} AdamW steps per layer, lr {FIT['lr']:g}, "
                      f"L_{FIT['p']:g}, seed {FIT['seed']}) and merge")
            t0 = time.perf_counter()
            tr = fit_fptquant(self.model, steps=FIT["steps"], lr=FIT["lr"], p=FIT["p"], seed=FIT["seed"],
                              progress=self.progress)
            self._merged = merge_fptquant(self.model, tr).eval()
            self.seconds = time.perf_counter() - t0
            loss0 = sum(h[0] for h in tr.history if h)
            loss1 = sum(h[-1] for h in tr.history if h)
            self.step(f"FPTQuant merged: local L_p loss {loss0:.3f} -> {loss1:.3f} ({self.seconds:.0f} s)")
        return self._merged

    def trace(self, path: Path, split: str, seq_len: int, n_sequences: int, layers: str | None):
        """A residual + Linear trace of the ``split`` texts recorded from the merged model at ``path``."""
        from fmtlab.sim.data import default_texts
        from fmtlab.models.record import record

        key = str(path)
        if key in self._traces:
            return self._traces[key]
        merged = self.merged
        self.step(f"recording {n_sequences} x {seq_len} tokens of the {split} texts from the FPTQuant model into {path}")
        self._traces[key] = record(merged, self.tok, default_texts(split), out=key, seq_len=seq_len,
                                   n_sequences=n_sequences, layers=layers, residual=True, overwrite=True,
                                   progress=self.progress,
                                   text_info={"source": "wiki", "split": split, "fptquant": dict(FIT)})
        return self._traces[key]

    def replay(self, cfgs, eval_path: Path, calib_path: Path, seq_len: int, n_sequences: int,
               layers: str | None, cal_layers: str | None, **replay_kw):
        """Replay the ``+fptquant`` configs on traces recorded from the merged model."""
        from fmtlab.sim.replay import replay

        tr = self.trace(eval_path, "eval", seq_len, n_sequences, layers)
        cal = self.trace(calib_path, "calib", seq_len, n_sequences, cal_layers)
        return replay(tr, cfgs, calib=cal, **replay_kw)

    def perplexity_rows(self, names: Sequence[str], ids, calib_path: Path, seq_len: int, n_sequences: int,
                        layers: str | None, progress: bool = False) -> list[dict[str, Any]]:
        """Perplexity rows of the ``+fptquant`` configs on token windows ``ids``, on the merged
        model; static scales / fitted transforms from its calibration trace at ``calib_path``
        (``seq_len`` x ``n_sequences``, ``layers``; the replay's one when it exists)."""
        from fmtlab.models.perplexity import perplexity
        from fmtlab.sim.replay_engine import needs_calibration, resolve_config

        rows = []
        for n in names:
            cfg = fptquant_config(n)
            cal = (self.trace(calib_path, "calib", seq_len, n_sequences, layers)
                   if needs_calibration(resolve_config(cfg)) else None)
            rows.append(perplexity(self.merged, self.tok, cfg, ids=ids, calib=cal, progress=progress))
        return rows
