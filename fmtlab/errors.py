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
