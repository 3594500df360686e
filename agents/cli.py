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
import sys

from transformers import HfArgumentParser


class OneLineErrors:
    """Mixin for an `argparse.ArgumentParser` subclass (HfArgumentParser, TrlParser included): errors are one
    line and exit 2; flags nobody declared are an error with a suggestion, never left over or raised."""

    def parse_known_args(self, args=None, namespace=None):
        self._given = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {self.one_line(message)}\n")

    def one_line(self, message: str) -> str:
        """argparse's error message as the line to print: a flag nobody declared comes first, with a suggestion."""
        # argparse checks required flags before unknown ones: `--modle x` would be reported as "--model is
        # required", hiding the typo
        unknown = unknown_flags(self, getattr(self, "_given", []))
        if unknown and message.startswith("the following arguments are required"):
            message = f"unrecognized arguments: {' '.join(unknown)}"
        return with_suggestion(self, message)

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


def unknown_flags(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """The `--flags` in `argv` that `parser` does not declare, even as an abbreviation; none for a parser with
    subcommands (their flags belong to the subcommand's parser)."""
    if parser._subparsers is not None:
        return []
    known = [o for o in parser._option_string_actions if o.startswith("--")]
    names = [w.split("=", 1)[0] for w in argv if w.startswith("--") and w != "--"]
    return [n for n in names if n not in known and not (parser.allow_abbrev and any(k.startswith(n) for k in known))]
