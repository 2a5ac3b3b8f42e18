"""One name grammar: a name is a stem plus ``_``-separated options, resolved by a :class:`Grammar`.

A Grammar holds exact names (each with a factory), aliases, and *kinds*: a kind is a pattern
(a regular expression over the whole lowercase name, or any ``parse(name) -> value | None``)
with a one-line help string. ``resolve(name)`` tries, in order: the alias table, exact names,
then each kind in registration order; the first kind that recognises the name builds the value.
An unknown name raises the grammar's error type naming the name, the known exact names and the
kinds' help (so every error message lists what is known).

Every vocabulary exposes its ``GRAMMAR``: ``fmtlab.formats.registry`` (formats),
``fmtlab.formats.presets`` (every quantizer name: identity, presets, MX/NVFP4 blocks, PEG,
fitted-base log, ``<format>_<granularity>[_<rule>]``, parsed into a ``QuantSpec``),
``fmtlab.sim.transforms``, ``fmtlab.sim.replay`` (replay configs) and ``fmtlab.hw.accumulators``. ``split_options`` is the
tokenizer: ``"int4_g128_asym" -> ("int4", ["g128", "asym"])`` once told which tokens are
options. ``parse_call`` is the one call syntax (``"name(key=value, ...)"``) and ``split_plus``
the one composition splitter (``"a+b(x=1)"``), shared by quantizer specs, transforms and the
torch/analysis spec parsers.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Generic, Iterable, TypeVar

from fmtlab.errors import FmtlabError

__all__ = ["Grammar", "parse_call", "parse_value", "split_options", "split_plus"]

T = TypeVar("T")


def split_options(name: str, is_option: Callable[[str], bool]) -> tuple[str, list[str]]:
    """Split ``name`` at '_' into (stem, options), peeling option tokens from the right while
    ``is_option(token)`` holds (the stem keeps any '_' of its own, e.g. "fp8_e4m3")."""
    parts = name.split("_")
    opts: list[str] = []
    while len(parts) > 1 and is_option(parts[-1]):
        opts.insert(0, parts.pop())
    return "_".join(parts), opts


def parse_value(text: str) -> Any:
    """A call argument's value: true/false -> bool, none -> None, then int, float, else the text
    (surrounding quotes removed)."""
    t = text.strip()
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        return t.strip("'\"")


_CALL_RE = re.compile(r"\s*([\w.\-]+)\s*(?:\((.*)\))?\s*")


def parse_call(text: str) -> tuple[str, dict[str, Any]]:
    """``"name(a=1, b=x)"`` -> ("name", {"a": 1, "b": "x"}); plain ``"name"`` -> ("name", {}).

    FmtlabError for text that is not a name or whose arguments are not all key=value."""
    m = _CALL_RE.fullmatch(text)
    if not m:
        raise FmtlabError(f"cannot parse {text!r}; expected name or name(key=value, ...)")
    kwargs: dict[str, Any] = {}
    args = (m.group(2) or "").strip()
    if args:
        for part in args.split(","):
            if "=" not in part:
                raise FmtlabError(f"in {text!r}: argument {part.strip()!r} must be key=value")
            k, v = part.split("=", 1)
            kwargs[k.strip()] = parse_value(v)
    return m.group(1), kwargs


def split_plus(text: str) -> list[str]:
    """Split a composition ``"a+b(x=1)+c"`` at top-level '+' (not inside parentheses); parts are
    returned as written (empty parts kept, the caller drops them)."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "+" and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


class Grammar(Generic[T]):
    """Exact names, aliases and pattern kinds for one vocabulary (see the module docstring).

    what: the noun errors use ("format", "quantizer"); error: the exception type raised for an
    unknown name (a FmtlabError subclass); fold_case: names are matched lowercase (False: as
    written, only stripped; for vocabularies whose names embed case-sensitive text).
    """

    def __init__(self, what: str, error: type[FmtlabError] = FmtlabError,
                 fold_case: bool = True) -> None:
        self.what = what
        self.error = error
        self.fold_case = fold_case
        self._exact: dict[str, Callable[[], T]] = {}
        self._aliases: dict[str, str] = {}
        self._kinds: list[tuple[str, Callable[[str], Any], str]] = []

    # ---- building the grammar ------------------------------------------------------------
    def exact(self, name: str, factory: Callable[[], T]) -> None:
        """Register an exact name (lowercase) built by ``factory()``."""
        self._exact[name] = factory

    def alias(self, name: str, target: str) -> None:
        self._aliases[name] = target

    def kind(self, label: str, parse: "str | re.Pattern | Callable[[str], Any]",
             help: "str | Callable[[], str]",
             build: Callable[..., T] | None = None) -> None:
        """Register a kind. With a regex ``parse`` (str or compiled), ``build(match, name)``
        makes the value from a full match; with a callable ``parse(name) -> value | None``,
        None means "not this kind". ``help`` (a str, or a callable for a help that changes, e.g.
        with registered rules) is shown in unknown-name errors."""
        if isinstance(parse, (str, re.Pattern)):
            rx = re.compile(parse) if isinstance(parse, str) else parse
            if build is None:
                raise TypeError("a pattern kind needs build(match, name)")

            def parse_fn(key: str, _rx=rx, _build=build):
                m = _rx.fullmatch(key)
                return None if m is None else _build(m, key)
        else:
            parse_fn = parse
        self._kinds.append((label, parse_fn, help))

    # ---- using it ----------------------------------------------------------------------------
    def names(self) -> list[str]:
        """The exact names, in registration order."""
        return list(self._exact)

    def canonical(self, name: str) -> str:
        key = name.strip().lower() if self.fold_case else name.strip()
        return self._aliases.get(key, key)

    def find(self, name: str) -> T | None:
        """The value ``name`` resolves to, or None if no exact name or kind knows it (a kind may
        still raise for a name it recognises but cannot build)."""
        key = self.canonical(name)
        if key in self._exact:
            return self._exact[key]()
        for _, parse, _ in self._kinds:
            v = parse(key)
            if v is not None:
                return v
        return None

    def resolve(self, name: str, known: Iterable[str] | None = None) -> T:
        """Like ``find``, but an unknown name raises ``error`` listing what is known (``known``
        overrides the listed exact names)."""
        v = self.find(name)
        if v is None:
            raise self.error(self.unknown_message(name, known))
        return v

    def kinds_help(self) -> str:
        """The kinds' help strings, comma-separated ("" when the grammar has no kinds)."""
        return ", ".join(h() if callable(h) else h for _, _, h in self._kinds)

    def unknown_message(self, name: str, known: Iterable[str] | None = None) -> str:
        listed = ", ".join(self.names() if known is None else known)
        helps = self.kinds_help()
        return f"unknown {self.what} {name!r}; known: {listed}" + (f" (and {helps})" if helps else "")
