"""The papers' claims, each a registered experiment that measures it on a model (issue 12).

Each method module in this package registers one or more claims with :func:`register_claim`:
the paper, the paper's statement, and a function ``run(ctx) -> ClaimResult`` that measures it
with the report's measurement protocol (calibration and evaluation splits, seeded 95% bootstrap
intervals over sequences, paired intervals for differences). The report's "Methods from the
papers" section runs the claims it is asked for and tabulates statement, measurement, verdict.

A claim that does not reproduce on a small model is a finding, not a failure: its verdict says so
and its ``reason`` says why.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
from typing import Any, Callable, Sequence

__all__ = ["Verdict", "MethodsContext", "ClaimResult", "Claim", "register_claim", "get_claim",
           "list_claims", "METHOD_MODULES"]


class Verdict(enum.Enum):
    REPRODUCED = "reproduced"
    NOT_REPRODUCED = "not reproduced"
    NOT_APPLICABLE = "not applicable to this model"


@dataclasses.dataclass(frozen=True)
class MethodsContext:
    """What every claim's experiment gets: a causal LM (eval mode, float32, CPU), its tokenizer,
    disjoint calibration and evaluation texts, the window length and counts, a seed, and
    ``quick`` (True in tests: the smallest run that still exercises every step)."""

    model: Any
    tokenizer: Any
    calib_texts: Sequence[str]
    eval_texts: Sequence[str]
    seq_len: int = 128
    n_calib: int = 4
    n_eval: int = 8
    seed: int = 0
    quick: bool = False


@dataclasses.dataclass(frozen=True)
class ClaimResult:
    """One measured claim. ``measured`` is a short human-readable line with the numbers and their
    95% intervals; ``numbers`` the same numbers as data (JSON-safe); ``seconds`` the run time."""

    key: str
    measured: str
    verdict: Verdict
    reason: str
    numbers: dict[str, Any]
    seconds: float


@dataclasses.dataclass(frozen=True)
class Claim:
    key: str
    method: str  # e.g. "CushionCache"
    paper: str  # citation, e.g. "Son et al. 2024, Prefixing Attention Sinks can Mitigate ..."
    statement: str  # the paper's claim, in our words
    run: Callable[[MethodsContext], ClaimResult]


#: modules whose import registers claims (the report imports them lazily, in this order)
METHOD_MODULES: tuple[str, ...] = ("fmtlab.analysis.methods.cushion", "fmtlab.analysis.methods.massive",
                                  "fmtlab.analysis.methods.fptquant", "fmtlab.analysis.methods.peg",
                                  "fmtlab.analysis.methods.slac", "fmtlab.analysis.methods.logb",
                                  "fmtlab.analysis.methods.dint_optq",
                                  "fmtlab.analysis.methods.llmint8", "fmtlab.analysis.methods.peg_encoder")

_CLAIMS: dict[str, Claim] = {}


def register_claim(key: str, method: str, paper: str, statement: str):
    """Decorator: register ``run(ctx) -> ClaimResult`` as the experiment of claim ``key``."""
    def add(fn: Callable[[MethodsContext], ClaimResult]):
        if key in _CLAIMS and _CLAIMS[key].run is not fn:
            raise ValueError(f"claim {key!r} is already registered")
        _CLAIMS[key] = Claim(key, method, paper, statement, fn)
        return fn
    return add


def _load() -> None:
    for mod in METHOD_MODULES:
        importlib.import_module(mod)


def list_claims() -> list[str]:
    _load()
    return list(_CLAIMS)


def get_claim(key: str) -> Claim:
    _load()
    if key not in _CLAIMS:
        raise KeyError(f"unknown claim {key!r}; known: {', '.join(_CLAIMS) or '(none)'}")
    return _CLAIMS[key]
