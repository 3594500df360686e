"""Domain records: pure, frozen, validated, and round-trippable through JSON.

Nothing here touches storage or models; `graphs.store` persists these and the graphs consume them.
"""

from __future__ import annotations

import math
import re
import unicodedata
from enum import Enum, StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

Message = dict[str, str]  # a chat message: {"role": "system" | "user" | "assistant", "content": str}


class Record(BaseModel):
    """Base for every record: immutable and strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes):
        return cls.model_validate_json(text)


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("blank (only whitespace): write the text")
    return value


# A required text field: at least one character that is not whitespace (a blank setting, name or goal would
# import and simulate as if it were there).
Text = Annotated[str, Field(min_length=1), AfterValidator(_not_blank)]


class HofstedeScores(Record):
    """Hofstede's six dimensions on their published 0-120 scale; None where no score is published."""

    power_distance: int | None = Field(None, ge=0, le=120)
    individualism: int | None = Field(None, ge=0, le=120)
    motivation: int | None = Field(None, ge=0, le=120, description="achievement (formerly masculinity)")
    uncertainty_avoidance: int | None = Field(None, ge=0, le=120)
    long_term_orientation: int | None = Field(None, ge=0, le=120)
    indulgence: int | None = Field(None, ge=0, le=120)


class HofstedeWords(Record):
    """The same six dimensions as the words the role-play prompt uses (CLCA Tables 17/18).

    None where the dimension has no published score: the prompt then leaves it out rather than guess.
    """

    power_distance: str | None
    individualism: str | None
    motivation: str | None
    uncertainty_avoidance: str | None
    long_term_orientation: str | None
    indulgence: str | None


class InglehartWelzel(Record):
    """Position on the Inglehart-Welzel cultural map, in words."""

    survival_self_expression: str
    traditional_secular: str
    # The culture's coordinates on the map, where known (the paper's five keep the paper's own words):
    # positive = self-expression / secular-rational, negative = survival / traditional.
    self_expression_score: float | None = None
    secular_score: float | None = None


class NamePool(Record):
    """Common given and family names of a culture, from published name statistics (cited in `sources`).

    Scenario adaptation offers them as the only allowed values of the name fields when decoding is
    constrained (small models otherwise keep the seed's names); names are written in the culture's order.
    """

    order: Literal["given family", "family given"]
    family: tuple[str, ...] = Field(min_length=4, description="family names (for cultures without them: "
                                                               "the name that takes their place, e.g. a father's name)")
    given_female: tuple[str, ...] = Field(min_length=4)
    given_male: tuple[str, ...] = Field(min_length=4)
    sources: tuple[str, ...] = Field(min_length=1)

    def full_names(self, gender: str, part: int, parts: int = 2) -> list[str]:
        """Full names for one participant position: every `parts`-th family and given name from `part` on, so
        two positions never share a name. Given names follow the persona's gender (both lists if unclear)."""
        word = gender.strip().lower()
        female = word.startswith(("woman", "female", "girl", "f"))
        male = not female and word.startswith(("man", "male", "boy", "m"))
        given = self.given_female if female else self.given_male if male else self.given_female + self.given_male
        families, givens = self.family[part::parts], given[part::parts]
        if self.order == "family given":
            return [f"{f} {g}" for f in families for g in givens]
        return [f"{g} {f}" for g in givens for f in families]


class Culture(Record):
    """A culture the pipeline can adapt to, keyed by its ISO 3166-1 alpha-3 code."""

    code: str = Field(pattern=r"^[A-Z]{3}$")
    name: Text
    demonym: Text
    language: Text
    hofstede_scores: HofstedeScores
    hofstede_words: HofstedeWords
    inglehart_welzel: InglehartWelzel
    names: NamePool | None = None
    sources: tuple[str, ...] = ()

    def descriptors(self) -> str:
        """One sentence of cultural dimensions in words, as the paper's role-play prompt phrases them."""
        h, iw = self.hofstede_words, self.inglehart_welzel
        hofstede = [
            word
            for word in (h.power_distance, h.individualism, h.motivation, h.uncertainty_avoidance,
                         h.long_term_orientation, h.indulgence)
            if word is not None
        ]
        inglehart = f"{iw.survival_self_expression}, {iw.traditional_secular} (Inglehart-Welzel)"
        return f"{', '.join(hofstede)} (Hofstede); {inglehart}" if hofstede else inglehart


class Visibility(str, Enum):
    """Who may read a persona attribute: `public` (the persona, its partner, the observer and the judge),
    `private` (only the persona itself)."""

    PUBLIC = "public"
    PRIVATE = "private"


ATTRIBUTE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
ATTRIBUTE_MAX_CHARS = 200
MAX_ATTRIBUTES = 20


class Attribute(Record):
    """A study-defined fact about a persona (a religion, a home region, years in a job): short text or a number.

    `fixed` marks a value that adaptation to another culture copies unchanged; the others are rewritten.
    """

    value: str | int | float
    visibility: Visibility
    fixed: bool = Field(False, strict=True)  # true or false only: "yes" is a typo, not a choice

    @field_validator("value", mode="before")
    @classmethod
    def _short_text_or_number(cls, value: object) -> object:
        if problem := attribute_value_problem(value):
            raise ValueError(problem)
        return value


def attribute_value_problem(value: object) -> str | None:
    """What is wrong with an attribute value (not short text, not a finite number), or None: one rule for the
    scenario file and the adaptation's answer."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return f"expected a short text or a number, got {type(value).__name__}"
    if isinstance(value, float) and not math.isfinite(value):
        return "expected a finite number"
    if isinstance(value, str) and any(unicodedata.category(c) == "Cc" for c in value):
        return "contains a line break or other control character (one line of text only)"
    if isinstance(value, str) and not value.strip():
        return "empty text (leave the attribute out instead)"
    if isinstance(value, str) and len(value) > ATTRIBUTE_MAX_CHARS:
        return f"too long: {len(value)} characters, at most {ATTRIBUTE_MAX_CHARS}"
    return None


class Persona(Record):
    """One participant of a scenario. Goal, secret and private attributes are private to the agent that plays them.

    `attributes` maps a study's attribute names (lower case, digits and `_`, e.g. `home_region`) to their
    `Attribute`; prompts show each reader only the ones it may see (`visible_attributes`).
    """

    name: Text
    age: int | None = Field(None, ge=0, le=120)
    gender: str = ""
    occupation: str = ""
    background: str = ""
    goal: Text
    secret: str = ""
    # Left out of the JSON when empty, so scenarios without attributes serialise as before.
    attributes: dict[str, Attribute] = Field(default_factory=dict, exclude_if=lambda v: not v)

    @field_validator("attributes", mode="before")
    @classmethod
    def _attribute_names(cls, value: object) -> object:
        if isinstance(value, dict):
            for name in value:
                if name in cls.model_fields:
                    raise ValueError(f"attribute name {short(name)}: a persona field's name (prompts would show it as "
                                     "that field); pick another")
                if not isinstance(name, str) or not ATTRIBUTE_NAME.match(name):
                    raise ValueError(f"attribute name {short(name)}: use lower-case letters, digits and _, starting "
                                     "with a "
                                     "letter, at most 40 characters (e.g. home_region)")
            if len(value) > MAX_ATTRIBUTES:
                raise ValueError(f"{len(value)} attributes, at most {MAX_ATTRIBUTES}")
        return value

    def visible_attributes(self, own: bool) -> dict[str, Attribute]:
        """The attributes a reader may see: all of them for the persona itself (`own`), the public ones otherwise."""
        return {k: a for k, a in self.attributes.items() if own or a.visibility is Visibility.PUBLIC}


class Scenario(Record):
    """A social situation for two participants; `participants[0]` (the inquirer) speaks first."""

    id: Text
    culture: str | None = Field(None, pattern=r"^[A-Z]{3}$", description="None for culture-neutral seeds")
    setting: Text
    participants: tuple[Persona, Persona]
    relationship: str = ""
    source: str = Field("", description="where it came from, e.g. 'sotopia:<combo_id>' or 'adapted:<seed id>'")
    environment_info: str = Field("", exclude_if=lambda v: not v,
                                  description="text the source shows to no participant (SOTOPIA's "
                                              "viewer=\"environment\"): kept for provenance, never in a prompt")

    @field_validator("participants")
    @classmethod
    def _distinct_names(cls, value: tuple[Persona, Persona]) -> tuple[Persona, Persona]:
        if value[0].name.strip().lower() == value[1].name.strip().lower():
            raise ValueError("the two participants must have different names")
        return value


class Action(str, Enum):
    """The four actions a persona can take on its turn (Sotopia's action space).

    Speak comes first: prompts list the options in this order, and small models pick the first."""

    SPEAK = "speak"
    NON_VERBAL = "non-verbal"
    NONE = "none"
    LEAVE = "leave"


class Turn(Record):
    """One persona's turn, parsed. An unparseable output keeps its raw text and `valid=False`."""

    index: int = Field(ge=0)
    speaker: int = Field(ge=0, le=1)
    name: str
    action: Action | None
    text: str
    raw: str = ""
    valid: bool = True


class Aspect(StrEnum):
    """What one judgement is about: the judge's three questions (quality, culture, meta), or one SOTOPIA-EVAL
    dimension of one participant, written "<dimension>:<participant index>" (Zhou et al. 2024, Table 1).

    The SOTOPIA members are `agents.answers.SotopiaAnswer`'s fields, for participants 0 and 1.
    """

    QUALITY = "quality"
    CULTURE = "culture"
    META = "meta"
    BELIEVABILITY_0 = "believability:0"
    RELATIONSHIP_0 = "relationship:0"
    KNOWLEDGE_0 = "knowledge:0"
    SECRET_0 = "secret:0"
    SOCIAL_RULES_0 = "social_rules:0"
    FINANCIAL_AND_MATERIAL_BENEFITS_0 = "financial_and_material_benefits:0"
    GOAL_0 = "goal:0"
    BELIEVABILITY_1 = "believability:1"
    RELATIONSHIP_1 = "relationship:1"
    KNOWLEDGE_1 = "knowledge:1"
    SECRET_1 = "secret:1"
    SOCIAL_RULES_1 = "social_rules:1"
    FINANCIAL_AND_MATERIAL_BENEFITS_1 = "financial_and_material_benefits:1"
    GOAL_1 = "goal:1"

    @classmethod
    def sotopia(cls, dimension: str, participant: int) -> Aspect:
        """The aspect of one SOTOPIA dimension for participant 0 or 1; ValueError for an unknown one."""
        return cls(f"{dimension}:{participant}")

    @property
    def dimension(self) -> str | None:
        """The SOTOPIA dimension ("goal"), or None for quality, culture and meta."""
        return self.value.partition(":")[0] if ":" in self.value else None

    @property
    def participant(self) -> int | None:
        """The participant a SOTOPIA aspect scores (0 or 1), or None for quality, culture and meta."""
        return int(self.value.partition(":")[2]) if ":" in self.value else None


class Intent(Record):
    """The observer's reading of one turn: what the speaker meant and whether it cites culture."""

    turn_index: int = Field(ge=0)
    intent: str
    reason: str = ""
    cultural: bool = False
    raw: str = ""
    valid: bool = True


def short(value: object, limit: int = 40) -> str:
    """A value as an error message echoes it: repr, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def first_error(error: ValidationError, more: bool = True) -> str:
    """'field a.b: what is wrong' for the first problem: error messages stay one line."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "(top level)"
    rest = f" (and {error.error_count() - 1} more)" if more and error.error_count() > 1 else ""
    return f"field {field}: {first['msg']}{rest}"
