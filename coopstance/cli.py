"""The `coopstance` command: one entry point, one subcommand per task.

    coopstance predict --model outputs/demo/model seeds/trade_ministers_us_japan_korea.de.txt
    coopstance export-onnx --model outputs/demo/model --int8
    coopstance COMMAND --help

Each subcommand lives in its own module, which defines `add_arguments(parser)` and `run(args) -> int` (the exit
code) and is imported only when its command runs, so `coopstance --help` stays fast. To add one, add a line to
COMMANDS.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "predict": ("coopstance.predict", "tag articles (text files, folders, JSONL/Parquet, stdin) sentence by sentence"),
    "export-onnx": ("coopstance.onnx_export", "write model.onnx (and model.int8.onnx) beside a checkpoint for fast CPU inference"),
    "serve": ("coopstance.serve", "the tagging service: HTTP API (POST /v1/tag) and a web page for analysts, on uvicorn"),
    "tag-corpus": ("coopstance.bulk", "tag a whole archive (JSONL/Parquet) into resumable Parquet shards, locally or on Ray"),
    "summarize": ("coopstance.summarize", "counts and shares of topics and stances in a tag-corpus output, by any columns"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with the arguments of `command` only (the other subcommands are listed, not imported)."""
    parser = argparse.ArgumentParser(prog="coopstance", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, summary) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=summary)
        if name == command:
            imported = importlib.import_module(module)
            sub.description = imported.__doc__
            sub.formatter_class = argparse.RawDescriptionHelpFormatter
            imported.add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser(command).parse_args(argv)
    return int(importlib.import_module(COMMANDS[args.command][0]).run(args))


if __name__ == "__main__":
    sys.exit(main())
