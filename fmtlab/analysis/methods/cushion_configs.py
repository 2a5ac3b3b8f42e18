"""``<config>+cushion`` in `fmtlab report --configs / --ppl-configs`: a replay or perplexity config
run behind a CushionCache prefix.

``w8a8_int_tensor_static+cushion`` is the replay preset ``w8a8_int_tensor_static`` (any config
spec works before the suffix) renamed; what changes is the data. The report searches one prefix
(:func:`fmtlab.methods.cushion.search_prefix` on the "calib" texts, the paper's threshold 0.5, 4 x 32
tokens, 64 candidates) and records, per sequence length, an evaluation and a calibration trace
*behind* the prefix (``record(kv_prefix=...)``, into ``<out>/traces/*_cushion``, re-recorded on
every run because the prefix may differ); ``+cushion`` configs replay on those traces (static
scales and fitted transforms calibrated behind the prefix too), and their perplexity runs behind
the prefix on the same evaluation windows as the other configs. The prefix tokens are never
scored, recorded or quantized (their keys/values come from the float model).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

from fmtlab.errors import FmtlabError

__all__ = ["SUFFIX", "SEARCH", "is_cushion", "cushion_config", "any_cushion", "CushionRun"]

SUFFIX = "+cushion"
#: the report's search_prefix settings (search_prefix's defaults; tests shrink them)
SEARCH: dict[str, Any] = {"threshold": 0.5, "seq_len": 32, "n_sequences": 4, "n_candidates": 64}


def is_cushion(name: Any) -> bool:
    return isinstance(name, str) and name.strip().endswith(SUFFIX)


def cushion_config(spec: Any):
    """``make_config(spec)``, where ``"<spec>+cushion"`` gives the config of ``<spec>`` named
    ``"<its name>+cushion"``."""
    from fmtlab.sim.replay import make_config

    if not is_cushion(spec):
        return make_config(spec)
    base = spec.strip()[: -len(SUFFIX)]
    if not base:
        raise FmtlabError(f"config {spec!r}: nothing before {SUFFIX!r}")
    cfg = make_config(base)
    return dataclasses.replace(cfg, name=cfg.name + SUFFIX)


def any_cushion(*name_lists: Sequence[Any]) -> bool:
    return any(is_cushion(n) for names in name_lists for n in names)


class CushionRun:
    """The report's CushionCache state: one prefix (searched on first use) and its traces."""

    def __init__(self, model, tokenizer, step: Callable[[str], None], progress: bool = False):
        if model is None:
            raise FmtlabError(f"{SUFFIX} configs need the model (not only a recorded --trace)")
        self.model, self.tok, self.step, self.progress = model, tokenizer, step, progress
        self._found = None
        self._traces: dict[str, Any] = {}

    @property
    def prefix(self):
        if self._found is None:
            from fmtlab.methods.cushion import search_prefix
            from fmtlab.sim.data import default_texts

            self.step("CushionCache: greedy prefix search on the calibration texts")
            self._found = search_prefix(self.model, self.tok, default_texts("calib"), **SEARCH)
            self.step(f"CushionCache prefix {list(self._found.tokens)}: max |x| {self._found.baseline:.1f} -> "
                      f"{self._found.curve[-1]:.1f} ({self._found.seconds:.0f} s)")
        return self._found.kv_prefix

    def trace(self, path: Path, split: str, seq_len: int, n_sequences: int, layers: str | None):
        """A residual + Linear trace of the ``split`` texts recorded behind the prefix at ``path``."""
        from fmtlab.sim.data import default_texts
        from fmtlab.models.record import record

        key = str(path)
        if key in self._traces:
            return self._traces[key]
        self.step(f"recording {n_sequences} x {seq_len} tokens of the {split} texts behind the prefix into {path}")
        self._traces[key] = record(self.model, self.tok, default_texts(split), out=key, seq_len=seq_len,
                                   n_sequences=n_sequences, layers=layers, residual=True, overwrite=True,
                                   progress=self.progress, kv_prefix=self.prefix,
                                   text_info={"source": "wiki", "split": split, "cushion": True})
        return self._traces[key]

    def replay(self, cfgs, eval_path: Path, calib_path: Path, seq_len: int, n_sequences: int,
               layers: str | None, cal_layers: str | None, **replay_kw):
        """Replay the ``+cushion`` configs on traces recorded behind the prefix."""
        from fmtlab.sim.replay import replay

        tr = self.trace(eval_path, "eval", seq_len, n_sequences, layers)
        cal = self.trace(calib_path, "calib", seq_len, n_sequences, cal_layers)
        return replay(tr, cfgs, calib=cal, **replay_kw)

    def perplexity_rows(self, names: Sequence[str], ids, calib_path: Path, seq_len: int, n_sequences: int,
                        layers: str | None, progress: bool = False) -> list[dict[str, Any]]:
        """Perplexity rows of the ``+cushion`` configs on token windows ``ids``, behind the prefix;
        static scales / fitted transforms from the calibration trace at ``calib_path`` recorded
        behind it (``seq_len`` x ``n_sequences``, ``layers``; the replay's one when it exists)."""
        from fmtlab.models.perplexity import perplexity
        from fmtlab.sim.replay_engine import needs_calibration, resolve_config

        rows = []
        for n in names:
            cfg = cushion_config(n)
            cal = (self.trace(calib_path, "calib", seq_len, n_sequences, layers)
                   if needs_calibration(resolve_config(cfg)) else None)
            rows.append(perplexity(self.model, self.tok, cfg, ids=ids, calib=cal, progress=progress,
                                   kv_prefix=self.prefix))
        return rows
