"""The `attngan` command.

Each subcommand lives beside the code it drives and exposes `register(subparsers)`, which adds its
parser and sets `func` (called with the parsed args, returning an exit code or None). Those modules
keep heavy imports (torch) inside the handlers so `attngan --help` stays fast.

Errors: an `AttnGANError` (or a missing file) prints one line and exits 1; argparse usage errors exit 2;
anything unexpected prints one line and the hint to set ATTNGAN_DEBUG=1 for the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from attngan import __version__
from attngan.errors import AttnGANError

# (module, what it adds), in the order `attngan --help` lists them.
COMMAND_MODULES: list[str] = [
    "trainer.data.cli",  # data synth | data check
    "trainer.cli",  # train damsm | train gan, export
    "attngan.commands",  # generate, import-original
    "trainer.evaluate.cli",  # evaluate
    "service.cli",  # serve
    "infra.cloud",  # cloud ...
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not the whole usage block
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="attngan",
        description="AttnGAN text-to-image: make data, train, evaluate, generate, serve and deploy.",
    )
    parser.add_argument("--version", action="version", version=f"attngan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a part not installed in this image (e.g. infra in the service image)
            if exc.name and name.startswith(exc.name):
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = args.func(args)
        return int(code or 0)
    except AttnGANError as exc:
        print(f"attngan: error: {exc}", file=sys.stderr)
        return 1
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"attngan: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("attngan: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("ATTNGAN_DEBUG"):
            raise
        print(f"attngan: internal error: {type(exc).__name__}: {exc} (set ATTNGAN_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
