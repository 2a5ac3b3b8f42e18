"""Model variants: one protocol for everything that changes a model before it is measured.

A *variant* is a frozen config type (a subclass of :class:`ModelVariant`, e.g.
:class:`fmtlab.methods.cushion_variant.CushionVariant`); what it does lives in its *handler*
(a :class:`VariantHandler`), registered on the config TYPE with :func:`register_variant_handler`
(as torchao keys ``register_quantize_module_handler`` on config types). A handler

1. **fits** on the calibration split (:class:`CalibData`: the "calib" texts, optionally a
   calibration trace) and returns its fitted state (:meth:`VariantHandler.fit`);
2. **applies** the fitted state to the model (:meth:`VariantHandler.apply`): an :class:`Applied`
   holding the model to measure (a copy when weights change; the caller's model is never mutated)
   and the keyword arguments that ``record`` / ``perplexity`` take to run behind the variant
   (e.g. a KV prefix);
3. **describes** itself for the report (:meth:`VariantHandler.describe`: what it fitted).

:class:`VariantSession` runs the protocol for a report: it fits each variant once per
(model, calibration data) (:class:`FitCache`), records traces behind the applied variant, and
replays / scores configs there.

Spelling: ``"<config>+<name>"`` or ``"<config>+<name>(key=value, ...)"`` names a config measured
behind the variant ``<name>`` (keys: the variant's dataclass fields; values parsed by the field's
type). :func:`parse_variant_config` is the one place that parses these suffixes; ``str(variant)``
spells it back (``"+cushion"`` for the defaults). Adding a variant: one module holding the config
type and its handler (see :mod:`fmtlab.methods.cushion_variant`), imported by
``fmtlab/methods/__init__.py``, plus its tests (README: "Adding a model variant").
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import re
import time
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

from fmtlab.errors import FmtlabError
from fmtlab.sim.data import default_texts
from fmtlab.sim.replay import ReplayConfig, make_config, replay
from fmtlab.sim.replay_engine import needs_calibration, resolve_config

__all__ = ["ModelVariant", "VariantHandler", "Applied", "Fitted", "CalibData", "register_variant_handler",
           "handler_for", "known_variants", "variant_type", "parse_variant", "parse_variant_config",
           "split_variant", "FitCache", "VariantSession"]


class ModelVariant:
    """Base of the variant config types: subclasses are ``@dataclass(frozen=True)`` (hashable: they
    key the fit cache) and set ``name`` (the suffix spelling ``+<name>``, lower-case identifier)."""

    name: ClassVar[str] = ""

    def options(self) -> dict[str, Any]:
        """The fields that differ from their defaults (what ``str(self)`` spells in parentheses)."""
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
            if v != default:
                out[f.name] = v
        return out

    def __str__(self) -> str:
        opts = self.options()
        inner = ",".join(f"{k}={v}" for k, v in opts.items())
        return f"+{self.name}" + (f"({inner})" if opts else "")

    @property
    def slug(self) -> str:
        """A file-name-safe key: ``name`` for the defaults, else ``name-<8 hex of str(self)>``."""
        if not self.options():
            return self.name
        return f"{self.name}-{hashlib.sha256(str(self).encode()).hexdigest()[:8]}"


@dataclasses.dataclass(frozen=True)
class CalibData:
    """The calibration split a variant fits on: ``texts`` (the "calib" texts) and optionally a
    calibration ``trace``; ``key`` names the data for the fit cache (same key = same data)."""

    key: str
    texts: Sequence[str] = ()
    trace: Any = None

    @classmethod
    def default(cls) -> "CalibData":
        """The "calib" split of the default texts (disjoint from the "eval" split)."""
        return cls("wiki:calib", tuple(default_texts("calib")))


@dataclasses.dataclass(frozen=True)
class Fitted:
    """A variant's fitted state: ``state`` (handler-specific), ``seconds`` (fit cost, wall clock)
    and ``summary`` (one line: what was fitted, for the report and the progress log)."""

    variant: ModelVariant
    state: Any
    seconds: float
    summary: str


@dataclasses.dataclass(frozen=True)
class Applied:
    """A fitted variant applied: ``model`` to record / score (a copy where weights changed; the
    caller's model itself where nothing in it changes, e.g. a KV prefix), keyword arguments for
    :func:`fmtlab.models.record.record` (``record_kw``) and
    :func:`fmtlab.models.perplexity.perplexity` (``perplexity_kw``), and ``text_info``, stamped into
    the manifest of traces recorded behind it."""

    model: Any
    record_kw: dict[str, Any] = dataclasses.field(default_factory=dict)
    perplexity_kw: dict[str, Any] = dataclasses.field(default_factory=dict)
    text_info: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: why configs behind this variant cannot be replayed on recorded traces (None: they can); the
    #: variant then works through ``perplexity_kw`` only
    replay_refusal: str | None = None


class VariantHandler(abc.ABC):
    """What a variant does. Handlers hold no state: the fitted state is :attr:`Fitted.state`."""

    def check(self, variant: ModelVariant, model: Any) -> None:
        """Refuse a model the variant cannot handle (FmtlabError naming why) before any work."""

    def replay_config(self, variant: ModelVariant, state: Any, model: Any, cfg: ReplayConfig) -> ReplayConfig | None:
        """A config that replays on the traces of the plain model and measures what ``cfg`` behind
        the variant does (e.g. fitted weights as its weight quantizer), or None (the default): the
        configs then replay on traces recorded behind the variant."""
        return None

    @abc.abstractmethod
    def fit(self, variant: ModelVariant, model: Any, tokenizer: Any, calib: CalibData,
            log: Callable[[str], None], progress: bool = False) -> tuple[Any, str]:
        """Fit on ``calib``; returns (state, one-line summary of what was fitted). ``model`` must
        not be changed."""

    @abc.abstractmethod
    def apply(self, variant: ModelVariant, state: Any, model: Any) -> Applied:
        """``model`` behind the fitted ``state``; never mutates ``model``."""

    def bind(self, variant: ModelVariant, cfg: ReplayConfig) -> tuple[ReplayConfig, ModelVariant]:
        """The (config, variant) pair measured for ``<cfg>+<variant>`` (called by
        :func:`parse_variant_config`; the default changes nothing). A variant that takes over part
        of the config binds it here: ``+gptq`` fits the config's weight quantizer and leaves the
        config's weights alone (they are quantized already)."""
        return cfg, variant

    def describe(self, fitted: Fitted) -> dict[str, Any]:
        """The report's row: variant spelling, what it fitted, its cost (fit seconds)."""
        return {"variant": str(fitted.variant), "fitted": fitted.summary, "fit_seconds": round(fitted.seconds, 1)}


_HANDLERS: dict[type, VariantHandler] = {}
_BY_NAME: dict[str, type] = {}


def register_variant_handler(config_type: type) -> Callable[[type], type]:
    """Class decorator: register a :class:`VariantHandler` subclass for ``config_type`` (a frozen
    dataclass subclass of :class:`ModelVariant` with a unique ``name``)."""
    if not (isinstance(config_type, type) and issubclass(config_type, ModelVariant)
            and dataclasses.is_dataclass(config_type)):
        raise FmtlabError(f"{config_type!r} is not a ModelVariant dataclass")
    if not config_type.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise FmtlabError(f"variant config {config_type.__name__} must be a frozen dataclass")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", config_type.name or ""):
        raise FmtlabError(f"variant config {config_type.__name__} needs a lower-case identifier name, "
                          f"got {config_type.name!r}")

    def deco(handler_cls: type) -> type:
        other = _BY_NAME.get(config_type.name)
        if other is not None and other is not config_type:
            raise FmtlabError(f"variant name {config_type.name!r} is taken by {other.__name__}")
        _HANDLERS[config_type] = handler_cls()
        _BY_NAME[config_type.name] = config_type
        return handler_cls

    return deco


def handler_for(variant: ModelVariant) -> VariantHandler:
    """The handler registered for ``type(variant)``."""
    h = _HANDLERS.get(type(variant))
    if h is None:
        raise FmtlabError(f"no handler registered for variant type {type(variant).__name__}")
    return h


def known_variants() -> tuple[str, ...]:
    """The registered suffix spellings (``"+cushion"``, ...), in registration order."""
    return tuple(f"+{n}" for n in _BY_NAME)


def variant_type(name: str) -> type:
    """The config type registered under ``name`` (without the ``+``)."""
    t = _BY_NAME.get(name)
    if t is None:
        raise FmtlabError(f"unknown model variant '+{name}'; known: {', '.join(known_variants()) or 'none'}")
    return t


def _coerce(raw: str, typ: Any, where: str) -> Any:
    raw = raw.strip()
    t = typ if isinstance(typ, type) else {"int": int, "float": float, "str": str, "bool": bool}.get(str(typ).split(" ")[0])
    try:
        if t is bool:
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1")
        if t in (int, float):
            return t(raw)
    except ValueError:
        raise FmtlabError(f"{where}: {raw!r} is not a valid {t.__name__}") from None
    return raw


def parse_variant(name: str, args: str | None = None) -> ModelVariant:
    """The variant ``+name(args)``: ``args`` is ``"key=value,..."`` over the config's fields."""
    typ = variant_type(name)
    fields = {f.name: f for f in dataclasses.fields(typ)}
    kw: dict[str, Any] = {}
    for part in (args or "").split(","):
        if not part.strip():
            continue
        key, eq, val = part.partition("=")
        key = key.strip()
        if not eq or key not in fields:
            raise FmtlabError(f"variant '+{name}': bad option {part.strip()!r}; options: {', '.join(fields) or 'none'}")
        kw[key] = _coerce(val, fields[key].type, f"variant '+{name}' option {key}")
    try:
        return typ(**kw)
    except (TypeError, ValueError) as exc:
        raise FmtlabError(f"variant '+{name}': {exc}") from None


_SUFFIX = re.compile(r"\+([a-z][a-z0-9_]*)(?:\(([^()]*)\))?\s*$")


def split_variant(spec: str) -> tuple[str, ModelVariant | None]:
    """``"<config>+<name>(...)"`` -> (``"<config>"``, the variant); a spec without a registered
    suffix -> (spec, None). A trailing ``+word`` that is not a registered variant stays part of
    the config (a transform spec composes with ``+``, e.g. ``t=exclude_sink+smoothquant``); if
    the config then fails to parse, :func:`parse_variant_config` names the known variants."""
    s = spec.strip()
    m = _SUFFIX.search(s)
    if m is None or m.group(1) not in _BY_NAME:
        return s, None
    base = s[: m.start()].strip()
    if not base:
        raise FmtlabError(f"config {spec!r}: nothing before '+{m.group(1)}'")
    inner, more = split_variant(base)
    if more is not None:
        raise FmtlabError(f"config {spec!r}: '{more}' and '+{m.group(1)}' cannot be combined "
                          f"(one model variant per config)")
    return base, parse_variant(m.group(1), m.group(2))


def parse_variant_config(spec: Any) -> tuple[ReplayConfig, ModelVariant | None]:
    """A replay config and the variant it runs behind: ``"<config>+<name>(...)"`` gives
    ``make_config("<config>")`` renamed ``"<its name>+<name>(...)"`` and the variant; anything
    else ``(make_config(spec), None)``. Raises FmtlabError (listing the known variants where a
    ``+suffix`` may be misspelled)."""
    if not isinstance(spec, str):
        return make_config(spec), None
    base, variant = split_variant(spec)
    try:
        cfg = make_config(base)
    except FmtlabError as exc:
        tail = _SUFFIX.search(base)
        if tail is not None and variant is None:
            raise FmtlabError(f"config {spec!r}: {exc} ('+{tail.group(1)}' is not a known model variant; "
                              f"known: {', '.join(known_variants())})") from None
        raise
    if variant is None:
        return cfg, None
    name = cfg.name + str(variant)
    cfg, variant = handler_for(variant).bind(variant, cfg)
    return dataclasses.replace(cfg, name=name), variant


class FitCache:
    """Fitted variants keyed on (variant, model, calibration data): a report with several configs
    behind one variant fits it once. The model is keyed by identity (held, so the id stays valid)."""

    def __init__(self) -> None:
        self._fits: dict[tuple[ModelVariant, int, str], Fitted] = {}
        self._models: dict[int, Any] = {}

    def get(self, variant: ModelVariant, model: Any, tokenizer: Any, calib: CalibData,
            log: Callable[[str], None] = lambda s: None, progress: bool = False) -> Fitted:
        key = (variant, id(model), calib.key)
        hit = self._fits.get(key)
        if hit is None:
            h = handler_for(variant)
            h.check(variant, model)
            t0 = time.perf_counter()
            state, summary = h.fit(variant, model, tokenizer, calib, log, progress)
            hit = Fitted(variant, state, time.perf_counter() - t0, summary)
            log(f"{variant}: {summary} ({hit.seconds:.0f} s)")
            self._fits[key] = hit
            self._models[id(model)] = model
        return hit

    def fits(self) -> list[Fitted]:
        """The fitted variants, in fit order."""
        return list(self._fits.values())

    def __len__(self) -> int:
        return len(self._fits)


class VariantSession:
    """The report's variants: fitted once per (variant, model, calibration data), applied once,
    with the traces recorded behind each (re-recorded on every run: the fit may differ)."""

    def __init__(self, model: Any, tokenizer: Any, log: Callable[[str], None] = lambda s: None,
                 progress: bool = False, calib: CalibData | None = None, cache: FitCache | None = None):
        self.model, self.tok, self.log, self.progress = model, tokenizer, log, progress
        self.calib = calib
        self.cache = cache if cache is not None else FitCache()
        self._applied: dict[ModelVariant, Applied] = {}
        self._traces: dict[str, Any] = {}

    def check(self, variant: ModelVariant) -> None:
        if self.model is None:
            raise FmtlabError(f"{variant} configs need the model (not only a recorded --trace)")
        handler_for(variant).check(variant, self.model)

    def fitted(self, variant: ModelVariant) -> Fitted:
        self.check(variant)
        if self.calib is None:
            self.calib = CalibData.default()
        return self.cache.get(variant, self.model, self.tok, self.calib, self.log, self.progress)

    def applied(self, variant: ModelVariant) -> Applied:
        if variant not in self._applied:
            self._applied[variant] = handler_for(variant).apply(variant, self.fitted(variant).state, self.model)
        return self._applied[variant]

    def descriptions(self) -> list[dict[str, Any]]:
        """One row per variant fitted so far (see :meth:`VariantHandler.describe`)."""
        return [handler_for(f.variant).describe(f) for f in self.cache.fits()]

    def trace(self, variant: ModelVariant, path: Path, split: str, seq_len: int, n_sequences: int,
              layers: str | None):
        """A residual + Linear trace of the ``split`` texts recorded behind ``variant`` at ``path``."""
        from fmtlab.models.record import record  # lazy: imports torch

        key = str(path)
        if key not in self._traces:
            ap = self.applied(variant)
            self.log(f"recording {n_sequences} x {seq_len} tokens of the {split} texts behind {variant} into {path}")
            self._traces[key] = record(ap.model, self.tok, default_texts(split), out=key, seq_len=seq_len,
                                       n_sequences=n_sequences, layers=layers, residual=True, overwrite=True,
                                       progress=self.progress, **ap.record_kw,
                                       text_info={"source": "wiki", "split": split, **ap.text_info})
        return self._traces[key]

    def replay(self, variant: ModelVariant, cfgs: Sequence[ReplayConfig], eval_path: Path, calib_path: Path,
               seq_len: int, n_sequences: int, layers: str | None, cal_layers: str | None, *,
               base_trace: Any = None, base_calib: Any = None, **replay_kw):
        """Replay ``cfgs`` on evaluation / calibration traces recorded behind ``variant``; or, when
        ``base_trace`` (the plain model's traces) is given and the variant's handler has a
        :meth:`VariantHandler.replay_config` for every config, on those (no new recording)."""
        refusal = self.applied(variant).replay_refusal
        if refusal:
            raise FmtlabError(f"{', '.join(c.name for c in cfgs)}: {refusal}")
        if base_trace is not None:
            h = handler_for(variant)
            fitted = self.fitted(variant).state
            alt = [h.replay_config(variant, fitted, self.model, c) for c in cfgs]
            if all(a is not None for a in alt):
                return replay(base_trace, alt, calib=base_calib, **replay_kw)
        tr = self.trace(variant, eval_path, "eval", seq_len, n_sequences, layers)
        cal = self.trace(variant, calib_path, "calib", seq_len, n_sequences, cal_layers)
        return replay(tr, list(cfgs), calib=cal, **replay_kw)

    def perplexity_rows(self, variant: ModelVariant, cfgs: Sequence[ReplayConfig], ids, calib_path: Path,
                        seq_len: int, n_sequences: int, layers: str | None) -> list[dict[str, Any]]:
        """Perplexity rows of ``cfgs`` behind ``variant`` on token windows ``ids``; static scales /
        fitted transforms from the calibration trace at ``calib_path`` recorded behind it
        (``seq_len`` x ``n_sequences``, ``layers``; the replay's one when it exists)."""
        from fmtlab.models.perplexity import perplexity  # lazy: imports torch

        ap = self.applied(variant)
        rows = []
        for cfg in cfgs:
            cal = (self.trace(variant, calib_path, "calib", seq_len, n_sequences, layers)
                   if needs_calibration(resolve_config(cfg)) else None)
            rows.append(perplexity(ap.model, self.tok, cfg, ids=ids, calib=cal, progress=self.progress,
                                   **ap.perplexity_kw))
        return rows
