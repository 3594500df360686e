"""Free-text answers, for endpoints that cannot constrain decoding (`--unstructured`).

The prompt then asks for `KEY: value` lines instead of JSON, and `parse_labelled` reads them into the
same answer shapes (`agents.answers`), so both paths validate alike. The label of a field is its name
in capitals unless the shape's `labels` says otherwise (`text` is `OUTPUT` in a turn).

Tolerated, because models write them: markdown emphasis and list marks around labels and values
(`**ACTION:** speak`, `**Yes**`), labels in any case and spacing (`Action :`), full-width letters and
digits, a Unicode minus sign. Anything that still does not read as one of a field's values makes the
answer invalid: nothing is defaulted.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from agents.answers import Answer, json_schema, validate_data

# Other words small models use for the four actions (the prompt names them none/non-verbal/speak/leave).
ACTION_SYNONYMS = {
    "do nothing": "none", "nothing": "none", "non verbal": "non-verbal", "nonverbal": "non-verbal",
    "non verbal communication": "non-verbal", "action": "non-verbal", "speaking": "speak", "say": "speak",
}
_MINUS = "\u2212\u2012\u2013\u2014\ufe63\uff0d"  # minus sign, figure/en/em dash, small and full-width hyphen-minus
_EMPHASIS = re.compile(r"\*\*|__|`")


def normalise(text: str) -> str:
    """NFKC (full-width forms to ASCII), every minus-like dash before a digit to '-', no emphasis marks."""
    text = unicodedata.normalize("NFKC", text)
    text = re.sub(f"[{_MINUS}](?=\\s*\\d)", "-", text)
    return _EMPHASIS.sub("", text)


def labelled_values(raw: str, labels: list[str]) -> dict[str, str]:
    """Label -> the text after `LABEL:` up to the next label line (first occurrence of each label)."""
    text = normalise(raw)
    alternatives = "|".join(r"[\s_]*".join(map(re.escape, label.replace("_", " ").split())) for label in labels)
    starts = list(re.finditer(rf"^[\s>*#\-_]*({alternatives})[\s_*]*:", text, re.IGNORECASE | re.MULTILINE))
    values: dict[str, str] = {}
    for match, following in zip(starts, [*starts[1:], None]):
        label = _which(match.group(1), labels)
        end = following.start() if following else len(text)
        values.setdefault(label, text[match.end():end].strip())
    return values


def _which(found: str, labels: list[str]) -> str:
    key = re.sub(r"[\s_]+", "", found).lower()
    return next(label for label in labels if re.sub(r"[\s_]+", "", label).lower() == key)


def label(shape: type[Answer], field: str) -> str:
    """The free-text label of a shape's field: its `labels` entry, else the field name in capitals."""
    return shape.labels.get(field, field.upper())


def parse_labelled(raw: str, shape: type[Answer]) -> tuple[Answer | None, str]:
    """(answer, "") or (None, one-line reason) for a free-text answer in the shape's labelled format."""
    properties = json_schema(shape)["properties"]
    labels = {name: label(shape, name) for name in properties}
    found = labelled_values(raw, list(labels.values()))
    data: dict[str, Any] = {}
    for name, schema in properties.items():
        value = found.get(labels[name])
        if value is None:
            return None, f"no {labels[name]}: line"
        read = _read(value, schema, name)
        if read is None:
            return None, f"{labels[name]}: {value[:60]!r} is not one of the allowed values"
        data[name] = read
    return validate_data(data, shape)


def _read(value: str, schema: dict[str, Any], name: str) -> Any:
    kind = schema.get("type")
    if "enum" in schema and kind != "integer":
        return choice(value, [str(v) for v in schema["enum"]], ACTION_SYNONYMS if name == "action" else {})
    if kind == "boolean":
        word = re.match(r"\W*(\w+)", value.lower())
        return {"yes": True, "true": True, "no": False, "false": False}.get(word.group(1)) if word else None
    if kind == "integer":
        # "7", "-3", "7/10"; at most 18 digits, as Python refuses to convert very long numbers
        number = re.fullmatch(r"[\s*_\"'(\[]*([+-]?\d{1,18})\s*(?:/\s*\d+)?[\s.)\]*_\"']*", value)
        return int(number.group(1)) if number else None
    text = value.strip().strip("\"'").strip()
    return "" if text.upper() in ("NONE", "N/A", "...") else text


def choice(value: str, options: list[str], synonyms: dict[str, str] | None = None) -> str | None:
    """The option `value` starts with, if it names no other option; otherwise None.

    "Bad - it repeats" -> bad; "good | bad" (the options copied) -> None; "not good" -> None.
    """
    text = re.sub(r"[\[\]()*_`\"'.,;!]", " ", value.lower().split("\n")[0]).replace("-", " ")
    text = re.sub(r"\s+", " ", text).strip()
    table = {o.lower().replace("-", " "): o for o in options}
    table.update({k: v for k, v in (synonyms or {}).items() if k not in table})
    by_length = sorted(table, key=len, reverse=True)  # "not aligned" before "aligned"
    found = re.findall(r"\b(" + "|".join(map(re.escape, by_length)) + r")\b", text)
    if not found or len({table[f] for f in found}) > 1 or not text.startswith(found[0]):
        return None
    return table[found[0]]
