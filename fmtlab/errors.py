"""Exceptions shared by every fmtlab subpackage."""


class FmtlabError(Exception):
    """Base class of fmtlab's own errors; the CLI prints these on stderr and exits 2."""


class FormatError(FmtlabError, ValueError):
    """Impossible format parameters, unknown format names, or values a format cannot take."""


class TraceError(FmtlabError, ValueError):
    """A trace file that is truncated, corrupt, foreign or inconsistent with its manifest."""


def compile_pattern(pattern: str, option: str = "pattern"):
    """``re.compile(pattern)``; FmtlabError naming ``option`` for an invalid regular expression,
    including those the compiler cannot hold (a repetition count too large, nesting too deep)."""
    import re  # lazy: keeps this module free of imports

    try:
        return re.compile(pattern)
    except (re.error, OverflowError, RecursionError, MemoryError) as exc:
        raise FmtlabError(f"{option} {pattern!r:.80} is not a valid regular expression: {exc}") from None


class SpaceError(FmtlabError, ValueError):
    """A design space (``fmtlab explore``) that cannot be used: unknown key, empty range, impossible
    format, malformed constraint."""


class ChoiceError(FmtlabError, ValueError):
    """A value that is not one of an enum's choices (rounding mode, overflow policy, adder style,
    accumulator overflow, ...). A ValueError too, so callers catching either see it."""


def parse_choice(cls, value, what: str):
    """The member of the enum ``cls`` given itself or its value string (``str(value)``: surrounding
    blanks ignored, case-insensitive, '-' read as '_'); anything else raises :class:`ChoiceError` naming ``what``,
    the value and the choices: ``unknown rounding 'up'; choose one of: nearest_even, ...``."""
    if isinstance(value, cls):
        return value
    try:  # str(): config parsers hand over inf / nan as floats
        return cls(str(value).strip().lower().replace("-", "_"))
    except ValueError:
        pass
    choices = ", ".join(str(m.value) for m in cls)
    raise ChoiceError(f"unknown {what} {value!r}; choose one of: {choices}")
