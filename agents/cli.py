"""Command-line parsing with one-line errors, for every command of every layer.

    from agents.cli import ArgumentParser, DataclassParser
    parser = DataclassParser(EvalConfig, prog="python -m eval.wvs")  # transformers' HfArgumentParser
    (config,) = parser.parse_args_into_dataclasses(argv)

argparse prints its usage before an error, and HfArgumentParser (TRL's `TrlParser` too) raises a ValueError
for a flag it does not know, which ends a command in a traceback. Parsers built with `OneLineErrors` print
`<prog>: error: <what is wrong>` on one line and exit with status 2; an unknown or misspelled flag names the
closest known one (`--episdoes 2` -> `did you mean --episodes?`).
"""

from __future__ import annotations

import argparse
import difflib

from transformers import HfArgumentParser


class OneLineErrors:
    """Mixin for an `argparse.ArgumentParser` subclass (HfArgumentParser, TrlParser included): errors are one
    line and exit 2; flags nobody declared are an error with a suggestion, never left over or raised."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {with_suggestion(self, message)}\n")

    def parse_args_into_dataclasses(self, args=None, return_remaining_strings=False, **kwargs):
        *parsed, rest = super().parse_args_into_dataclasses(args, return_remaining_strings=True, **kwargs)
        if return_remaining_strings:
            return (*parsed, rest)
        if rest:
            self.error(f"unrecognized arguments: {' '.join(rest)}")
        return tuple(parsed)


class ArgumentParser(OneLineErrors, argparse.ArgumentParser):
    """`argparse.ArgumentParser` with one-line errors; subcommand parsers inherit it."""


class DataclassParser(OneLineErrors, HfArgumentParser):
    """transformers' `HfArgumentParser` (flags, help, defaults and choices from dataclass fields) with one-line
    errors."""


def with_suggestion(parser: argparse.ArgumentParser, message: str) -> str:
    """argparse's "unrecognized arguments: --episdoes 2" -> "unrecognized argument --episdoes (did you mean
    --episodes?)"; any other message unchanged."""
    prefix = "unrecognized arguments: "
    if not message.startswith(prefix):
        return message
    words = message[len(prefix):].split()
    flag = next((w for w in words if w.startswith("-")), words[0] if words else "")
    name = flag.split("=", 1)[0]
    # argparse keeps no public table of its flags; compare names without their dashes ("--bogus" is not "--out")
    known = {o.lstrip("-"): o for o in parser._option_string_actions if o.startswith("--")}
    close = difflib.get_close_matches(name.lstrip("-"), known, n=1, cutoff=0.6)
    hint = f"did you mean {known[close[0]]}?" if close else f"see {parser.prog} --help"
    return f"unrecognized argument {name} ({hint})"

