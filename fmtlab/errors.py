"""Exceptions shared by every fmtlab subpackage."""


class FmtlabError(Exception):
    """Base class of fmtlab's own errors; the CLI prints these on stderr and exits 2."""


class FormatError(FmtlabError, ValueError):
    """Impossible format parameters, unknown format names, or values a format cannot take."""


class TraceError(FmtlabError, ValueError):
    """A trace file that is truncated, corrupt, foreign or inconsistent with its manifest."""


class SpaceError(FmtlabError, ValueError):
    """A design space (``fmtlab explore``) that cannot be used: unknown key, empty range, impossible
    format, malformed constraint."""
