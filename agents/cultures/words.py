"""The one rule that turns published scores into the words a role-play prompt uses.

The paper (CLCA, Tables 17/18) wrote its five cultures' words by hand; every other shipped culture gets
its words from this rule, so that a reader can check them against the scores. The rule mirrors the
paper's vocabulary but does not reproduce all of its choices (see README.md, "The words rule").
"""

from __future__ import annotations

from agents.records import HofstedeScores, HofstedeWords

# Each Hofstede dimension in four bands of its published score: <=25, 26-49, 50-74, >=75.
HOFSTEDE_BANDS: dict[str, tuple[str, str, str, str]] = {
    "power_distance": ("highly equal", "moderately equal", "moderately hierarchical", "highly hierarchical"),
    "individualism": (
        "highly collective", "moderately collective", "moderately individualistic", "highly individualistic",
    ),
    "motivation": (
        "little motivation for achievement and success",
        "low motivation for achievement and success",
        "moderate motivation for achievement and success",
        "high motivation for achievement and success",
    ),
    "uncertainty_avoidance": (
        "highly risk-taking", "moderately risk-taking", "moderate uncertainty avoidance", "high uncertainty avoidance",
    ),
    "long_term_orientation": ("highly normative", "moderately normative", "moderately pragmatic", "highly pragmatic"),
    "indulgence": ("highly restrained", "moderately restrained", "moderately indulgent", "highly indulgent"),
}

# Each Inglehart-Welzel axis in three bands of distance from the map's origin: <0.75, <1.5, beyond.
SELF_EXPRESSION_WORDS = (
    ("exhibits little survival values", "exhibits moderate survival values", "exhibits uttermost survival values"),
    (
        "exhibits little self-expression values",
        "exhibits moderate self-expression values",
        "exhibits uttermost self-expression values",
    ),
)
SECULAR_WORDS = (
    ("slightly traditional", "moderately traditional", "uttermost traditional"),
    ("slightly secular", "moderately secular", "uttermost secular"),
)


def hofstede_band(score: int) -> int:
    """0..3: which quarter of Hofstede's (nominally) 0-100 scale a score falls in."""
    if score <= 25:
        return 0
    if score < 50:
        return 1
    if score < 75:
        return 2
    return 3


def hofstede_words(scores: HofstedeScores) -> HofstedeWords:
    """Words for each dimension with a score; None where the score is None."""
    words = {
        dimension: None if (score := getattr(scores, dimension)) is None else bands[hofstede_band(score)]
        for dimension, bands in HOFSTEDE_BANDS.items()
    }
    return HofstedeWords(**words)


def _axis_word(value: float, words: tuple[tuple[str, str, str], tuple[str, str, str]]) -> str:
    """Pick the side by sign and the strength by distance from the origin."""
    side = words[1] if value >= 0 else words[0]
    distance = abs(value)
    return side[0] if distance < 0.75 else side[1] if distance < 1.5 else side[2]


def inglehart_welzel_words(self_expression: float, secular: float) -> tuple[str, str]:
    """(survival/self-expression words, traditional/secular words) for a position on the cultural map."""
    return _axis_word(self_expression, SELF_EXPRESSION_WORDS), _axis_word(secular, SECULAR_WORDS)
