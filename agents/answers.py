"""Answer shapes: one pydantic model per kind of model answer.

Each shape is the single source of three things:
- the format the prompt describes (`answer_format`: a one-line JSON skeleton, dots where text goes,
  options separated by `|`; small models copy concrete examples, so none is shown),
- the constraint the decoder enforces (`json_schema`: sent as `response_format` to vLLM and llama.cpp's
  server, compiled to a grammar by xgrammar in process),
- the validation of the answer (`parse_answer`: an answer that does not validate is invalid, never
  defaulted).

Strings carry a `max_length`, and `token_budget` turns the shape into a `max_new_tokens` that the
longest allowed answer fits in, so a constrained answer always closes before the token limit.
With `--unstructured`, `freetext.parse_labelled` reads the same shapes out of `KEY: value` lines.
"""

from __future__ import annotations

import json
import math
import sys
from functools import lru_cache
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from agents.records import ATTRIBUTE_MAX_CHARS, Action, attribute_value_problem, first_error

Confidence = Literal["very confident", "confident", "not sure"]
CONFIDENCES: tuple[str, ...] = Confidence.__args__


class Answer(BaseModel):
    """Base of every shape: frozen, every field required, nothing else allowed."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    # The label each field has in the free-text (--unstructured) format, where it is not the field
    # name in capitals; see agents.freetext.
    labels: ClassVar[dict[str, str]] = {}


class TurnAnswer(Answer):
    """A persona's turn (Sotopia's action space): what it does and the words or gesture."""

    action: Action
    # For the decoder only (a schema keyword, not a validation rule): the text starts with a letter, digit,
    # quote mark or bracket, or is empty, because small models otherwise copy the format's placeholder
    # dots; and it has no double quote or backslash, as llama.cpp applies a pattern to the raw JSON string.
    # Servers (llama.cpp, vLLM) get it; in process it is left out (see agents.models.hf._bounded_strings).
    text: str = Field(max_length=300, description="the words said, or the gesture; may be empty for none and leave",
                      json_schema_extra={"pattern": r"^([A-Za-z0-9'(*][^\"\\\n]{0,299})?$"})
    labels: ClassVar[dict[str, str]] = {"text": "OUTPUT"}

    @model_validator(mode="after")
    def _speak_says_something(self) -> TurnAnswer:
        if self.action is Action.SPEAK and not any(c.isalnum() for c in self.text):
            raise ValueError("a speak action needs words in text")
        return self


class IntentAnswer(Answer):
    """The observer's label of one turn (CLCA section 1d)."""

    intent: str = Field(min_length=1, max_length=120)
    reason: str = Field(max_length=160)
    cultural: bool = Field(description="whether the reason appeals to a cultural expectation")

    @model_validator(mode="after")
    def _intent_has_words(self) -> IntentAnswer:
        if not any(c.isalnum() for c in self.intent):
            raise ValueError("intent needs words")
        return self


class QualityAnswer(Answer):
    """Judge 1 (CLCA section 1c): dialogue quality."""

    quality: Literal["good", "bad"]
    confidence: Confidence


class AlignmentAnswer(Answer):
    """Judge 2 (CLCA section 1c): alignment with the culture."""

    alignment: Literal["aligned", "not aligned"]
    confidence: Confidence


class MetaAnswer(Answer):
    """Meta-judgement (CLCA section 1c): a critique of both judgements, then an own label."""

    critique: str = Field(max_length=400)
    label: Literal["good", "bad"]
    confidence: Confidence


class SotopiaAnswer(Answer):
    """SOTOPIA-EVAL's seven dimensions for one participant (Zhou et al. 2024, ICLR, Table 1 ranges).

    The field descriptions are the questions the prompt asks; the bounds are the paper's ranges.
    """

    believability: int = Field(ge=0, le=10, description="acts naturally and consistently with their profile")
    relationship: int = Field(ge=-5, le=5, description="how much the interaction harmed (negative) or helped "
                                                       "(positive) their relationship with the other person")
    knowledge: int = Field(ge=0, le=10, description="how much new, important information they gained")
    secret: int = Field(ge=-10, le=0, description="how much of their secret they gave away (0: kept it)")
    social_rules: int = Field(ge=-10, le=0, description="how far they broke social norms or laws (0: not at all)")
    financial_and_material_benefits: int = Field(ge=-5, le=5, description="material or financial losses "
                                                                         "(negative) or gains")
    goal: int = Field(ge=0, le=10, description="how far they achieved their social goal")
    labels: ClassVar[dict[str, str]] = {"financial_and_material_benefits": "FINANCIAL"}


def _carries(floor: int) -> Any:
    """A string field that carries a seed's text rewritten: `floor` is its bound in the shape's own schema, and
    `adapted_scenario_schema` raises it per seed (`content_bound`). The bound is a schema keyword for the decoder,
    not a validation rule of the shape: `graphs.adapt` checks an answer against its own seed's bounds."""
    return {"maxLength": floor}


class AdaptedPersona(Answer):
    """One participant of an adapted scenario: the fields of `records.Persona`, bounded."""

    name: str = Field(min_length=1, max_length=40)
    age: int = Field(ge=0, le=120)
    gender: str = Field(max_length=20)
    occupation: str = Field(json_schema_extra=_carries(60))
    background: str = Field(json_schema_extra=_carries(300))
    goal: str = Field(min_length=1, json_schema_extra=_carries(300))
    secret: str = Field(json_schema_extra=_carries(120))
    # The new values of the persona's attributes that are not `fixed` (name -> value); visibility and the fixed
    # ones come from the seed. A seed's own schema (`adapted_scenario_schema`) names them; without any it has no
    # such field, so the request for a scenario without attributes is what it always was.
    attributes: dict[str, str | int | float] = Field(default_factory=dict)

    @field_validator("attributes", mode="before")
    @classmethod
    def _attribute_values(cls, value: object) -> object:
        for name, v in value.items() if isinstance(value, dict) else ():
            if problem := attribute_value_problem(v):
                raise ValueError(f"{name}: {problem}")
        return value


class AdaptedScenario(Answer):
    """A scenario adapted to a culture: the seed's structure (CLCA section 1a, Table 19)."""

    setting: str = Field(min_length=1, json_schema_extra=_carries(400))
    relationship: str = Field(json_schema_extra=_carries(200))
    participants: tuple[AdaptedPersona, AdaptedPersona]


# The text fields an adaptation rewrites from its seed, as schema paths: (field,) or ("participants", i, field).
CARRIED_FIELDS: tuple[tuple[str | int, ...], ...] = (
    ("setting",), ("relationship",),
    *(("participants", i, f) for i in (0, 1) for f in ("occupation", "background", "goal", "secret")),
)
# How much longer than the seed's text an adapted field may be. Adaptation renames people and places and swaps
# customs, foods and institutions; it does not summarise, and new names and places can be longer than the old ones.
# 1.5x plus 60 characters leaves room for that; the 450 bundled SOTOPIA seeds' longest field is a 1,584-character
# goal carrying a list of friends, which the old fixed bounds (300) cut.
BOUND_HEADROOM = 1.5
BOUND_SLACK = 60


def content_bound(text: str, floor: int) -> int:
    """The `maxLength` (characters) of a field that must carry `text` rewritten: the shape's own bound `floor`, or
    the text's length with headroom (`BOUND_HEADROOM`, `BOUND_SLACK`), whichever is larger."""
    return max(floor, math.ceil(len(text) * BOUND_HEADROOM) + BOUND_SLACK)


def schema_node(schema: dict[str, Any], path: tuple[str | int, ...]) -> dict[str, Any]:
    """The node of `schema` at `path` (property names and prefixItems indices), itself: edits change `schema`."""
    node = schema
    for key in path:
        node = node["prefixItems"][key] if isinstance(key, int) else node["properties"][key]
    return node


def adapted_scenario_schema(attributes: tuple[dict[str, Any], dict[str, Any]] = ({}, {}),
                            carried: dict[tuple[str | int, ...], str] | None = None) -> dict[str, Any]:
    """`AdaptedScenario`'s JSON schema for one seed: participant i's `attributes` object has exactly the names
    in `attributes[i]` (name -> the seed's value, whose type, text or number, the new value keeps), all
    required; a participant with none has no `attributes` field. `carried` maps paths of `CARRIED_FIELDS` to the
    seed's text there, and raises each field's `maxLength` to `content_bound` of that text, so a decoder that
    enforces bounds never has to cut the seed's content short."""
    schema = json_schema(AdaptedScenario)
    for path, text in (carried or {}).items():
        node = schema_node(schema, path)
        node["maxLength"] = content_bound(text, node["maxLength"])
    for person, names in zip(schema["properties"]["participants"]["prefixItems"], attributes):
        del person["properties"]["attributes"]
        if names:
            person["properties"]["attributes"] = {
                "type": "object", "properties": {k: _value_schema(v) for k, v in names.items()},
                "required": list(names), "additionalProperties": False,
            }
            person["required"] = [*person["required"], "attributes"]
    return schema


def _value_schema(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        return {"type": "string", "minLength": 1, "maxLength": ATTRIBUTE_MAX_CHARS}
    return {"type": "integer" if isinstance(value, int) else "number"}


class WVSAnswer(Answer):
    """A WVS answer in generate mode: one of the item's option codes (the schema narrows it per item)."""

    answer: int


class WVSLabelAnswer(Answer):
    """A WVS answer in generate mode when the options are shown with letters: one of the labels ("A", "B", ...)."""

    answer: str = Field(min_length=1, max_length=4)


SHARE_MAX = 100  # stated shares are percentages


class WVSShares(Answer):
    """A stated answer distribution (`eval.wvs --method distribution`): the percentage of people choosing each
    option, keyed by the option's label; `wvs_shares_schema` names the item's labels. Totals need not be 100."""

    shares: dict[str, float]

    @field_validator("shares")
    @classmethod
    def _percentages(cls, value: dict[str, float]) -> dict[str, float]:
        if any(not 0 <= v <= SHARE_MAX for v in value.values()):
            raise ValueError(f"a share lies outside 0..{SHARE_MAX}")
        return value


# ------------------------------------------------------------------ schema, format, budget


def json_schema(shape: type[Answer]) -> dict[str, Any]:
    """The shape's JSON schema with every `$ref` inlined and no titles: the plain form that vLLM,
    llama.cpp's server and xgrammar all read the same way. A fresh copy: callers may edit it."""
    return json.loads(_schema_text(shape))


@lru_cache(maxsize=None)
def _schema_text(shape: type[Answer]) -> str:
    raw = shape.model_json_schema()
    return json.dumps(_inline(raw, raw.get("$defs", {})))


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        if "properties" in node:  # property names are data, not schema keywords
            node = {**node, "properties": {k: _inline(v, defs) for k, v in node["properties"].items()}}
        return {k: v if k == "properties" else _inline(v, defs) for k, v in node.items()
                if k not in ("title", "$defs", "description")}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def answer_format(schema: dict[str, Any]) -> str:
    """A one-line skeleton of the answer for the prompt: `{"action": "none" | "speak", "text": "..."}`."""
    if "enum" in schema:
        return " | ".join(json.dumps(v, ensure_ascii=False) for v in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"], ensure_ascii=False)
    kind = schema.get("type")
    if kind == "object":
        inner = ", ".join(f"{json.dumps(k)}: {answer_format(v)}" for k, v in schema.get("properties", {}).items())
        return "{" + inner + "}"
    if kind == "array":
        items = schema.get("prefixItems") or [schema["items"]]
        return "[" + ", ".join(answer_format(v) for v in items) + "]"
    if kind == "integer":
        low, high = schema.get("minimum"), schema.get("maximum")
        return f"<a whole number from {low} to {high}>" if low is not None and high is not None else "<a number>"
    if kind == "number":
        return "<a number>"
    if kind == "boolean":
        return "true | false"
    return '"..."'


def token_budget(schema: dict[str, Any]) -> int:
    """`max_new_tokens` that the longest answer the schema allows always fits in.

    Counted in characters of the JSON text (a token is at least one character), with two characters
    per string character for escapes such as `\\"` and `\\n`, plus the engines' bounded whitespace.
    A string of `\\uXXXX` escapes could still outrun it; no model seen writes them.
    """
    return _chars(schema) + 16


def _chars(schema: dict[str, Any]) -> int:
    if "enum" in schema:
        return max(len(json.dumps(v, ensure_ascii=False)) for v in schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        props = schema["properties"]
        return 2 + sum(len(json.dumps(k)) + 4 + _chars(v) for k, v in props.items())
    if kind == "array":
        items = schema.get("prefixItems") or [schema["items"]] * schema.get("maxItems", 1)
        return 2 + sum(2 + _chars(v) for v in items)
    if kind == "integer":
        return 4
    if kind == "boolean":
        return 5
    if kind == "string":
        return 2 + 2 * schema.get("maxLength", 200)
    return 16


def parse_answer(raw: str, shape: type[Answer]) -> tuple[Answer | None, str]:
    """(the validated answer, "") or (None, one-line reason) for a structured answer's raw text.

    Control characters inside strings are accepted (`strict=False`): xgrammar's bounded strings allow
    a tab, which a strict JSON parser would reject although the answer has the right shape."""
    try:
        data = json.loads(raw.strip(), strict=False)
    except json.JSONDecodeError as exc:
        return None, f"not JSON ({exc.msg} at character {exc.pos})"
    except ValueError:  # Python refuses to convert an integer literal past its digit limit
        return None, f"not JSON (a number of more than {sys.get_int_max_str_digits()} digits)"
    except RecursionError:
        return None, "not JSON (nested too deeply)"
    return validate_data(data, shape)


def validate_data(data: Any, shape: type[Answer]) -> tuple[Answer | None, str]:
    """The same check on already-decoded data (a free-text answer read into a dict)."""
    try:
        return shape.model_validate(data), ""
    except ValidationError as exc:
        return None, first_error(exc)


def with_enum(schema: dict[str, Any], path: tuple[str | int, ...], values: list[Any]) -> dict[str, Any]:
    """A copy of `schema` whose node at `path` (property names and prefixItems indices) allows only
    `values`: a WVS item's codes, a name pool."""
    out = json.loads(json.dumps(schema))
    node = schema_node(out, path)
    for k in ("type", "minLength", "maxLength", "minimum", "maximum"):
        node.pop(k, None)
    node["enum"] = list(values)
    return out


def wvs_schema(codes: list[int]) -> dict[str, Any]:
    """`{"answer": <one of codes>}` for one survey item."""
    return with_enum(json_schema(WVSAnswer), ("answer",), list(codes))


def wvs_label_schema(labels: list[str]) -> dict[str, Any]:
    """`{"answer": <one of labels>}` for one survey item shown with letter labels."""
    return with_enum(json_schema(WVSLabelAnswer), ("answer",), list(labels))


def wvs_shares_schema(labels: list[str]) -> dict[str, Any]:
    """`{"shares": {"<label>": <0..100>, ...}}`: one percentage per option, every label required, no other key."""
    share = {"type": "number", "minimum": 0, "maximum": SHARE_MAX}
    out = json_schema(WVSShares)
    out["properties"]["shares"] = {"type": "object", "properties": {label: dict(share) for label in labels},
                                   "required": list(labels), "additionalProperties": False}
    return out


__all__ = [
    "BOUND_HEADROOM", "BOUND_SLACK", "CARRIED_FIELDS", "CONFIDENCES", "AdaptedPersona", "AdaptedScenario",
    "AlignmentAnswer", "Answer", "IntentAnswer", "MetaAnswer", "QualityAnswer", "SotopiaAnswer", "TurnAnswer",
    "WVSAnswer", "WVSLabelAnswer", "WVSShares", "adapted_scenario_schema", "answer_format", "content_bound",
    "json_schema", "parse_answer", "schema_node", "token_budget", "validate_data", "with_enum", "wvs_label_schema",
    "wvs_schema", "wvs_shares_schema",
]
