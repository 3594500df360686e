"""Cultures as data: one YAML file per culture, named by its ISO-3 code, validated into a `Culture`.

A user adds or overrides a culture by putting `<code>.yaml` in a directory of their own and passing it as
`extra_dir`; a file there wins over the built-in file of the same code. Every problem with a file is a
`CultureError` whose one-line message names the file and the line or field.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml
from pydantic import ValidationError

from agents.cultures.words import hofstede_words, inglehart_welzel_words
from agents.records import Culture, first_error

BUILTIN_DIR = Path(__file__).parent
# The paper's five cultures: their words are the paper's own, verbatim, not the output of the words rule.
PAPER_CULTURES = ("CHN", "DEU", "GBR", "JPN", "MEX")

_CODE_FILE = re.compile(r"^[A-Za-z]{3}\.yaml$")

__all__ = [
    "BUILTIN_DIR",
    "PAPER_CULTURES",
    "CultureError",
    "available_cultures",
    "culture_files",
    "hofstede_words",
    "inglehart_welzel_words",
    "load_culture",
    "load_culture_file",
]


class CultureError(ValueError):
    """A culture that cannot be found or a culture file that cannot be read; the message is one line."""


def culture_files(extra_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Code -> file, built-ins first, then `extra_dir` overriding them."""
    files: dict[str, Path] = {}
    for directory in (BUILTIN_DIR, None if extra_dir is None else Path(extra_dir)):
        if directory is None:
            continue
        if not directory.is_dir():
            raise CultureError(f"{_shown(directory)}: not a directory of culture files")
        for path in sorted(directory.glob("*.y*ml")):
            if not _CODE_FILE.match(path.name):
                raise CultureError(
                    f"{_shown(path)}: a culture file is named by its ISO-3 code and ends in .yaml, e.g. fra.yaml"
                )
            files[path.stem.upper()] = path
    return files


def available_cultures(extra_dir: str | os.PathLike | None = None) -> list[str]:
    """Sorted ISO-3 codes of every culture that `load_culture` can load."""
    return sorted(culture_files(extra_dir))


def load_culture(code: str, extra_dir: str | os.PathLike | None = None) -> Culture:
    """The culture for an ISO-3 code (any case), from `extra_dir` if it has one, else built in."""
    files = culture_files(extra_dir)
    path = files.get(code.strip().upper())
    if path is None:
        raise CultureError(f"unknown culture {code!r} (available: {', '.join(sorted(files))})")
    return load_culture_file(path)


def load_culture_file(path: str | os.PathLike) -> Culture:
    """Parse and validate one culture file; its `code` must match its file name."""
    path = Path(path)
    shown = _shown(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise CultureError(f"{shown}: {where}invalid YAML: {error.problem or error.context}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise CultureError(f"{shown}: cannot read: {error}".replace("\n", " ")) from None
    except ValueError as error:  # a tagged scalar that does not convert: !!timestamp 2020-13-45, !!int '0x'
        raise CultureError(f"{shown}: invalid YAML: {error}".replace("\n", " ")) from None
    except RecursionError:
        raise CultureError(f"{shown}: invalid YAML: nested too deeply") from None
    if not isinstance(data, dict):
        raise CultureError(f"{shown}: expected a mapping of culture fields, got {type(data).__name__}")
    try:
        culture = Culture.model_validate(data)
    except ValidationError as error:
        raise CultureError(f"{shown}: {first_error(error)}") from None
    if culture.code != path.stem.upper():
        raise CultureError(
            f"{shown}: field code: {culture.code!r} does not match the file name (expected {path.stem.upper()!r})"
        )
    return culture


def _shown(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when it lies below it."""
    relative = os.path.relpath(path)
    return str(path) if relative.startswith("..") else relative
