"""`sampleiqa` console entry point: a registry of thin commands. Each stage exposes its
commands (help, flags, run) in its own `commands` module; this file only dispatches. Those
modules import lightly, so `sampleiqa score` never imports torch."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__

# Where each stage's commands live, in the order `--help` lists them (the data flow).
STAGES = (
    "sampleiqa.clients.commands",
    "sampleiqa.serve_command",
    "sampleiqa.training.commands",
    "sampleiqa.build.commands",
    "sampleiqa.perf.harness",
)


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in --help, without printing "(default: None)"."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sampleiqa", description="Portrait image quality scoring")
    parser.add_argument("--version", action="version", version=f"sampleiqa {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for stage in STAGES:
        for name, command in importlib.import_module(stage).COMMANDS.items():
            p = sub.add_parser(name, help=command.help, description=command.help, formatter_class=_Help)
            command.add_arguments(p)
            p.set_defaults(func=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if getattr(args, "triton_args", None) and args.triton_args[0] == "--":
        args.triton_args = args.triton_args[1:]
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
