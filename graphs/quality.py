"""A rule-based quality gate for simulated episodes, independent of the LLM judge: degenerate text is
caught by counting, not by asking the same small model that wrote it.

Per turn with text (any valid turn: a `leave` turn's words are trained on too), on its words (`words`:
lower-cased, apostrophes kept):

- `dup_3gram`: the fraction of its word 3-grams that repeat an earlier 3-gram of the same turn above
  MAX_DUP_3GRAM_FRACTION. The Gopher rules (Rae et al. 2021, "Scaling Language Models: Methods, Analysis &
  Insights from Training Gopher", appendix A, table A1) remove web documents whose duplicated n-grams
  (n = 5..10) cover 15-10% of their characters, or whose most common 2-4-gram covers 20-16%. Those thresholds
  are set for documents of 50 words and more; a turn has about 20, where one repeated phrase already crosses
  them, so the gate keeps the rule's form (duplicate n-grams) on word 3-grams counted by number, at 0.5: the
  measure issue 22 used ("I'm going to leave the room now, I'm going to leave the room now, ..." is 0.69 and
  up; ordinary sentences are 0).
- `dup_lines`: the fraction of its non-blank lines that repeat an earlier line above MAX_DUP_LINE_FRACTION
  (Gopher's duplicate line fraction, 0.30).
- `few_distinct`: a turn of at least MIN_WORDS_FOR_DISTINCT words whose distinct words are fewer than
  MIN_DISTINCT_SHARE of them ("no no no no no no no no").
- `repeated_turn`: the same words as an earlier turn of the episode (either speaker's), a copy of a line
  already said.

Per episode: every gated turn's reasons, each once. An episode passes when no turn is gated: a loop in one turn
is a loop in the training rows made from it. (Episodes too short to carry a conversation are left out earlier,
by `graphs.judge.MIN_UTTERANCES`; an episode-wide distinct-word floor would also drop short, ordinary exchanges
such as "Good morning, neighbour." / "Morning!".)

datatrove's `GopherRepetitionFilter` implements table A1 for documents (character fractions, its own word
splitter and pipeline `Document`s, with huggingface-hub, loguru, multiprocess and more as dependencies); these
few rules over short turns did not need it.

Pure functions over `agents.records.Turn`; nothing here reads a store or calls a model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from agents.records import Action, Turn

MAX_DUP_3GRAM_FRACTION = 0.5
MAX_DUP_LINE_FRACTION = 0.3
MIN_DISTINCT_SHARE = 0.3
MIN_WORDS_FOR_DISTINCT = 8

REASONS = {
    "dup_3gram": f"repeated word 3-grams > {MAX_DUP_3GRAM_FRACTION}",
    "dup_lines": f"repeated lines > {MAX_DUP_LINE_FRACTION}",
    "few_distinct": f"distinct words < {MIN_DISTINCT_SHARE} of a turn's (>= {MIN_WORDS_FOR_DISTINCT} words)",
    "repeated_turn": "repeats an earlier turn",
}
RULE_TEXT = "quality gate: " + "; ".join(REASONS.values())

_WORD = re.compile(r"\w+(?:['\u2019]\w+)*")


def words(text: str) -> list[str]:
    """The words of a text, lower-cased: runs of letters and digits, with inner apostrophes ("i'm")."""
    return _WORD.findall(text.lower())


def dup_ngram_fraction(tokens: Sequence[str], n: int = 3) -> float:
    """The fraction of the n-grams of `tokens` that repeat an earlier one (0.0 when there are none)."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return (len(grams) - len(set(grams))) / len(grams) if grams else 0.0


def dup_line_fraction(text: str) -> float:
    """The fraction of the non-blank lines of `text` that repeat an earlier line (stripped), 0.0 with none."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (len(lines) - len(set(lines))) / len(lines) if lines else 0.0


@dataclass(frozen=True)
class TurnQuality:
    """One turn's measures and the gate's reasons (keys of REASONS; empty: it passes)."""

    index: int
    dup_3gram: float
    dup_lines: float
    distinct_share: float
    reasons: tuple[str, ...] = ()

    @property
    def gated(self) -> bool:
        return bool(self.reasons)


@dataclass(frozen=True)
class EpisodeQuality:
    """An episode's gate result: per spoken turn, and the episode's reasons, each counted once."""

    turns: tuple[TurnQuality, ...]
    reasons: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.reasons

    @property
    def gated_turns(self) -> dict[int, tuple[str, ...]]:
        """{turn index: its reasons} for the turns the gate caught."""
        return {t.index: t.reasons for t in self.turns if t.gated}

    def describe(self) -> tuple[str, ...]:
        """The reasons as filter-rule text (REASONS' values), for summaries."""
        return tuple(REASONS[r] for r in self.reasons)


def spoken(turn: Turn) -> bool:
    """A valid turn with text (speak, non-verbal, or a leave that says something; `none` says nothing)."""
    return turn.valid and turn.action is not Action.NONE and bool(turn.text.strip())


def turn_quality(turn: Turn, earlier: Sequence[Sequence[str]] = ()) -> TurnQuality:
    """The gate on one turn; `earlier` holds the word lists of the episode's earlier turns with text."""
    tokens = words(turn.text)
    dup3, lines = dup_ngram_fraction(tokens, 3), dup_line_fraction(turn.text)
    distinct = len(set(tokens)) / len(tokens) if tokens else 1.0
    reasons = []
    if dup3 > MAX_DUP_3GRAM_FRACTION:
        reasons.append("dup_3gram")
    if lines > MAX_DUP_LINE_FRACTION:
        reasons.append("dup_lines")
    if len(tokens) >= MIN_WORDS_FOR_DISTINCT and distinct < MIN_DISTINCT_SHARE:
        reasons.append("few_distinct")
    if tokens and any(tokens == list(e) for e in earlier):
        reasons.append("repeated_turn")
    return TurnQuality(turn.index, round(dup3, 4), round(lines, 4), round(distinct, 4), tuple(reasons))


def episode_quality(turns: Sequence[Turn]) -> EpisodeQuality:
    """The gate on an episode's turns (give it the turns training would use: the valid ones, in order)."""
    results, seen = [], []
    for turn in turns:
        if not spoken(turn):
            continue
        results.append(turn_quality(turn, seen))
        seen.append(words(turn.text))
    return EpisodeQuality(tuple(results), tuple(dict.fromkeys(r for t in results for r in t.reasons)))
