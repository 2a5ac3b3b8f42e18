"""The `fmtlab` command.

Each subpackage contributes its subcommands through a module ``fmtlab.<pkg>.cli`` that defines
``register(subparsers) -> None``; every subcommand parser sets ``func(args) -> int`` as default.
Errors derived from :class:`fmtlab.errors.FmtlabError`, ``ValueError``, ``re.error`` and ``OSError``
(a missing file, a read-only folder, a full disk), and argparse's usage errors, are printed on
stderr as one line and exit with status 2. SIGTERM/SIGHUP/SIGINT unwind the command (so partial
outputs are removed) and exit with 128 + the signal number.
"""

from __future__ import annotations

import argparse
import importlib
import re
import signal
import sys
from typing import Sequence

from fmtlab import __version__
from fmtlab.errors import FmtlabError
from fmtlab.safe_io import Interrupted, install_signal_handlers

_SUBCOMMAND_MODULES = (
    "fmtlab.formats.cli",
    "fmtlab.formats.vectors_cli",
    "fmtlab.hw.cli",
    "fmtlab.models.cli",
    "fmtlab.analysis.cli",
    "fmtlab.explore.cli",
)


class _OneLineParser(argparse.ArgumentParser):
    """argparse parser whose usage errors are one line on stderr (exit status 2)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="fmtlab",
        description="Bit-accurate lab for LLM number formats and the MAC hardware that computes with them.",
    )
    parser.add_argument("--version", action="version", version=f"fmtlab {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in _SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    install_signal_handlers()
    try:
        return int(args.func(args) or 0)
    except (FmtlabError, ValueError, re.error) as exc:
        print(f"fmtlab {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`, which closed early: not an error
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as exc:  # full disk, read-only folder, missing file: the environment, not a bug
        print(f"fmtlab {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"fmtlab {args.command}: {exc}; partial outputs removed", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("fmtlab: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, re.error):
        text = f"invalid regular expression: {text}"
    return text


if __name__ == "__main__":
    raise SystemExit(main())
