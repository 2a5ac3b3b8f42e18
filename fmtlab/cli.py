"""The `fmtlab` command.

Each subpackage contributes its subcommands through a module ``fmtlab.<pkg>.cli`` that defines
``register(subparsers) -> None``; every subcommand parser sets ``func(args) -> int`` as default.
Errors derived from :class:`fmtlab.errors.FmtlabError` (and ``ValueError``/``FileNotFoundError``
raised while validating user input) are printed on stderr as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from fmtlab import __version__
from fmtlab.errors import FmtlabError

_SUBCOMMAND_MODULES = (
    "fmtlab.formats.cli",
    "fmtlab.hw.cli",
    "fmtlab.sim.cli",
    "fmtlab.pytorch.cli",
    "fmtlab.analysis.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fmtlab",
        description="Bit-accurate lab for LLM number formats and the MAC hardware that computes with them.",
    )
    parser.add_argument("--version", action="version", version=f"fmtlab {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in _SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # that subpackage has no commands yet
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except (FmtlabError, ValueError, FileNotFoundError) as exc:
        print(f"fmtlab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`, which closed early: not an error
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("fmtlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
