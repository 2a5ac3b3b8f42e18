"""The format capability protocol: which subsystem can do what for which format family.

A format publishes its facts as data (``values()``, ``nan_codes``, ``inf_codes``,
``negative_zero_code``, ``signed``): that is enough for the exact table path, which makes every
format correct everywhere (encode, every Quantizer granularity, replay, the torch fake-quant).
Subsystems that want more (a fast kernel, a torch bit-trick core, an oracle tie rule, a hypothesis
strategy, a CLI layout line, a hardware operand view, RTL) look up a *handler* registered for the
format's ``family`` here. A family module registers its handlers at import; a subsystem that
needs a handler and finds none raises :class:`NotSupportedError` naming the family and what to
add, never a silent ``else``. Optional accelerations use :func:`find_handler`, which returns
None, and then take the exact table path.

Handlers that live outside ``fmtlab.formats`` (torch, hw) may be registered as a lazy
``"module:attribute"`` string, so that a family module never imports torch: the string is
imported on first lookup.

Model: the transform registry of ``fmtlab.sim.transforms``; torchao's
``register_quantize_module_handler``; ``functools.singledispatch``.
"""

from __future__ import annotations

import enum
import importlib
from typing import Any, Callable

from fmtlab.errors import FormatError

__all__ = ["Subsystem", "NotSupportedError", "register_handler", "get_handler", "find_handler",
           "handled_families"]


class Subsystem(enum.Enum):
    """The subsystems that dispatch on a format's family (value: how errors name it)."""

    KERNEL = "fast kernel plan"          # fmtlab.formats.kernels (optional: table path otherwise)
    ORACLE = "oracle tie rule"           # fmtlab.formats.oracle
    STRATEGY = "hypothesis strategy"     # fmtlab.formats.strategies
    CLI = "CLI layout"                   # fmtlab.formats.cli (`fmtlab formats`)
    TORCH = "torch rounding core"        # fmtlab.pytorch (optional: torch table path otherwise)
    HW_OPERAND = "hardware operand view"  # fmtlab.hw.operands (mac_cost)
    RTL = "RTL generator"                # fmtlab.hw.rtl


class NotSupportedError(FormatError):
    """A subsystem has no handler for a format family (the message says what to register)."""


_HANDLERS: dict[tuple[Subsystem, str], Any] = {}


def register_handler(subsystem: Subsystem, family: str, handler: "Callable | str | None" = None,
                     *, replace: bool = False):
    """Register ``handler`` for (subsystem, family); usable as a decorator when handler is None.

    ``handler`` may be a callable or a lazy ``"package.module:attribute"`` string. Registering a
    second handler for the same pair raises FormatError unless ``replace=True``.
    """
    if not isinstance(subsystem, Subsystem):
        raise TypeError(f"subsystem must be a Subsystem, got {subsystem!r}")
    if not isinstance(family, str) or not family:
        raise FormatError(f"family must be a non-empty string, got family={family!r}")

    def add(h):
        if not (callable(h) or (isinstance(h, str) and ":" in h)):
            raise TypeError(f"handler must be callable or 'module:attribute', got {h!r}")
        key = (subsystem, family)
        if key in _HANDLERS and not replace and _HANDLERS[key] is not h:
            raise FormatError(f"a {subsystem.value} handler for family {family!r} is already "
                              "registered (pass replace=True to override it)")
        _HANDLERS[key] = h
        return h

    return add if handler is None else add(handler)


def _family_of(fmt_or_family) -> str:
    return fmt_or_family if isinstance(fmt_or_family, str) else type(fmt_or_family).family


def find_handler(subsystem: Subsystem, fmt_or_family) -> Any | None:
    """The handler registered for the format's family, or None (lazy strings are imported)."""
    key = (subsystem, _family_of(fmt_or_family))
    h = _HANDLERS.get(key)
    if isinstance(h, str):
        mod, _, attr = h.partition(":")
        h = getattr(importlib.import_module(mod), attr)
        _HANDLERS[key] = h
    return h


def get_handler(subsystem: Subsystem, fmt_or_family, what_to_add: str = "") -> Any:
    """The handler for the format's family; NotSupportedError naming the family if there is none."""
    h = find_handler(subsystem, fmt_or_family)
    if h is None:
        fam = _family_of(fmt_or_family)
        hint = what_to_add or (f"register one with fmtlab.formats.capabilities.register_handler("
                               f"Subsystem.{subsystem.name}, {fam!r}, ...)")
        raise NotSupportedError(f"{subsystem.value} not supported for family {fam!r}: {hint}")
    return h


def handled_families(subsystem: Subsystem) -> list[str]:
    """Families with a handler for ``subsystem`` (sorted)."""
    return sorted(f for (s, f) in _HANDLERS if s is subsystem)
