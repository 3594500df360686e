"""Which episodes training may use: episodes + judgements + a rule -> kept or dropped, with reasons.

Pure: the caller reads the records from the store (`graphs.store.Store`) and passes them in, so the judge's
summary, the dataset exporter and the site viewer decide the same way from the same records. Two steps:

1. `screen`: a finished episode needs MIN_UTTERANCES utterances among its valid turns to be judged or
   trained on (two personas who only choose `none` have turns but no conversation), and with the rule's
   `quality_gate` those turns must pass the rule-based quality gate (`graphs.quality`: looping turns, repeated
   lines, repeated turns, too few distinct words), independent of any LLM judge;
2. `verdict`: a `FilterRule` over one judge model's judgements of an episode. The paper's rule (CLCA
   section 1c, `PAPER_RULE`) drops an episode when the meta label or the quality label is bad with
   "very confident"; `FilterRule.parse("none")` keeps everything (the paper's no-filtering ablation).
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agents.answers import CONFIDENCES, AlignmentAnswer, Answer, MetaAnswer, QualityAnswer
from agents.records import Action, Aspect, Turn
from graphs.quality import RULE_TEXT as QUALITY_RULE_TEXT
from graphs.quality import episode_quality
from graphs.store import FINAL, EpisodeRecord, Judgement

# aspect -> its answer shape (agents.answers); the shape's label field is what a rule checks.
SHAPES: dict[Aspect, type[Answer]] = {Aspect.QUALITY: QualityAnswer, Aspect.CULTURE: AlignmentAnswer,
                                      Aspect.META: MetaAnswer}
LABEL_FIELDS = {Aspect.QUALITY: "quality", Aspect.CULTURE: "alignment", Aspect.META: "label"}
# aspect -> (answer field, label vocabulary), read off the shapes; the confidence vocabulary is shared.
LABELS: dict[Aspect, tuple[str, tuple[str, ...]]] = {
    aspect: (name, SHAPES[aspect].model_fields[name].annotation.__args__) for aspect, name in LABEL_FIELDS.items()
}
ASPECTS = tuple(LABELS)  # the aspects a rule may name: quality, culture, meta
MIN_UTTERANCES = 2
TOO_FEW_UTTERANCES = f"fewer than {MIN_UTTERANCES} utterances (silent or one-sided)"
QUALITY_GATE = "quality gate: "  # the prefix of a gate reason in the counts of episodes left out
QUALITY_GATE_ANY = "quality gate (episodes, any reason)"  # each gated episode once


class FilterRuleError(ValueError):
    """A filter rule that names an unknown aspect, label or confidence; one line."""


@dataclass(frozen=True)
class Condition:
    """Drop when `aspect` has `label` with one of `confidences` (any confidence when empty)."""

    aspect: Aspect
    label: str
    confidences: tuple[str, ...] = ()

    def matches(self, judgement: Judgement) -> bool:
        return judgement.label == self.label and (not self.confidences or judgement.confidence in self.confidences)

    def __str__(self) -> str:
        return f"{self.aspect}={self.label}" + (f"@{'/'.join(self.confidences)}" if self.confidences else "")


@dataclass(frozen=True)
class FilterRule:
    """Which judged episodes to drop. `on_invalid` says what an invalid or missing judgement of an aspect
    the rule names does: "keep" (no evidence against the episode, the paper's literal rule) or "drop".
    `keep_all` keeps every episode, judged or not (the paper's no-filtering ablation). `quality_gate` leaves
    out, before judging, the episodes that fail `graphs.quality`'s rules (`screen`)."""

    drop_if: tuple[Condition, ...] = ()
    on_invalid: str = "keep"
    keep_all: bool = False
    quality_gate: bool = True

    @classmethod
    def parse(cls, text: str, on_invalid: str = "keep", quality_gate: bool = True) -> FilterRule:
        """'none', or comma-separated conditions 'aspect=label[@confidence[/confidence...]]'; FilterRuleError
        names the part that is wrong."""
        if on_invalid not in ("keep", "drop"):
            raise FilterRuleError(f"on-invalid {on_invalid!r}: expected keep or drop")
        if text.strip().lower() == "none":
            return cls(keep_all=True, on_invalid=on_invalid, quality_gate=quality_gate)
        conditions = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            aspect, sep, rest = part.partition("=")
            label, _, confs = rest.partition("@")
            aspect, label = aspect.strip(), label.strip()
            confidences = tuple(c.strip() for c in confs.split("/") if c.strip())
            if not sep or aspect not in LABELS:
                raise FilterRuleError(f"filter rule {part!r}: expected aspect=label[@confidence] with aspect one of "
                                      f"{', '.join(ASPECTS)}")
            if label not in LABELS[aspect][1]:
                raise FilterRuleError(f"filter rule {part!r}: label must be one of {', '.join(LABELS[aspect][1])}")
            if any(c not in CONFIDENCES for c in confidences):
                raise FilterRuleError(f"filter rule {part!r}: confidence must be one of {', '.join(CONFIDENCES)}")
            conditions.append(Condition(Aspect(aspect), label, confidences))
        if not conditions:
            raise FilterRuleError("filter rule: empty (use 'none' to keep every episode)")
        return cls(drop_if=tuple(conditions), on_invalid=on_invalid, quality_gate=quality_gate)

    def __str__(self) -> str:
        body = "none" if self.keep_all else ",".join(map(str, self.drop_if))
        gate = f"; {QUALITY_RULE_TEXT}" if self.quality_gate else "; no quality gate"
        return f"{body} (on invalid: {self.on_invalid}){gate}"


PAPER_RULE_TEXT = "meta=bad@very confident,quality=bad@very confident"
PAPER_RULE = FilterRule.parse(PAPER_RULE_TEXT)


@dataclass(frozen=True)
class Verdict:
    kept: bool
    judged: bool
    reasons: tuple[str, ...] = ()  # the conditions that dropped it, or why it was not judged
    invalid: tuple[Aspect, ...] = ()  # aspects the rule names whose judgement is invalid or missing


def verdict(judgements: Sequence[Judgement], rule: FilterRule = PAPER_RULE) -> Verdict:
    """Keep or drop one episode from one judge model's judgements of it (`Store.judgements(ep, model)`)."""
    by_aspect = {j.aspect: j for j in judgements}
    if rule.keep_all:
        return Verdict(kept=True, judged=bool(by_aspect))
    if not by_aspect:
        return Verdict(kept=False, judged=False, reasons=("not judged",))
    reasons, invalid = [], []
    for condition in rule.drop_if:
        j = by_aspect.get(condition.aspect)
        if j is None or not j.valid:
            invalid.append(condition.aspect)
        elif condition.matches(j):
            reasons.append(str(condition))
    invalid = list(dict.fromkeys(invalid))
    if invalid and rule.on_invalid == "drop":
        reasons.extend(f"{aspect} invalid" for aspect in invalid)
    return Verdict(kept=not reasons, judged=True, reasons=tuple(reasons), invalid=tuple(invalid))


def verdicts(episodes: Iterable[tuple[EpisodeRecord, Sequence[Judgement]]], rule: FilterRule = PAPER_RULE
             ) -> list[tuple[EpisodeRecord, Verdict]]:
    """(episode, verdict) for each (episode, its judgements by one judge model), in the order given."""
    return [(episode, verdict(judgements, rule)) for episode, judgements in episodes]


def screen(episodes: Iterable[tuple[EpisodeRecord, Sequence[Turn]]], quality_gate: bool = True
           ) -> tuple[list[EpisodeRecord], Counter]:
    """(the finished episodes fit to judge, in the order given; why each other finished episode is left out).

    Takes (episode, its stored turns) pairs. An episode needs MIN_UTTERANCES utterances among its valid
    turns; one that ended on an unparseable turn counts with the turns before it, as the paper kept
    truncated dialogues. With `quality_gate`, those turns must pass `graphs.quality.episode_quality`; a gated
    episode counts once under each of its reasons ("quality gate: ...") and once under QUALITY_GATE_ANY.
    Episodes not finished (running, failed) are neither kept nor counted."""
    judgeable, left_out = [], Counter()
    for episode, turns in episodes:
        if episode.status not in FINAL:
            continue
        turns = valid_turns(turns)
        if utterances(turns) < MIN_UTTERANCES:
            left_out[TOO_FEW_UTTERANCES] += 1
            continue
        quality = episode_quality(turns) if quality_gate else None
        if quality is not None and not quality.passed:
            left_out[QUALITY_GATE_ANY] += 1
            left_out.update(QUALITY_GATE + reason for reason in quality.describe())
            continue
        judgeable.append(episode)
    return judgeable, left_out


def left_out_text(left_out: dict[str, int], sep: str = " (") -> str:
    """The counts of episodes left out before judging, for a summary line: each reason with its count, the
    quality gate's as one group (an episode once, then each of its reasons):
    " (1 more left out: fewer than 2 utterances ...) (6 more left out by the quality gate: 6 repeats an earlier
    turn, 1 repeated word 3-grams > 0.5)". `sep` ", " gives the comma form, without parentheses."""
    close = ")" if sep == " (" else ""
    parts = [f"{sep}{n} more left out: {reason}{close}" for reason, n in left_out.items()
             if reason != QUALITY_GATE_ANY and not reason.startswith(QUALITY_GATE)]
    if left_out.get(QUALITY_GATE_ANY):
        reasons = ", ".join(f"{n} {reason.removeprefix(QUALITY_GATE)}" for reason, n in left_out.items()
                            if reason.startswith(QUALITY_GATE))
        parts.append(f"{sep}{left_out[QUALITY_GATE_ANY]} more left out by the quality gate: {reasons}{close}")
    return "".join(parts)


def utterances(turns: Sequence[Turn]) -> int:
    """Turns that say something: speak, or a non-verbal act, with text (not `none`, not a bare leave)."""
    return sum(t.valid and t.action in (Action.SPEAK, Action.NON_VERBAL) and bool(t.text.strip()) for t in turns)


def valid_turns(turns: Sequence[Turn]) -> list[Turn]:
    """The turns before the first invalid one (an episode ends at its first unparseable turn)."""
    out = []
    for t in turns:
        if not t.valid:
            break
        out.append(t)
    return out


def aspect_summary(judgements: Iterable[Judgement]) -> dict[str, dict]:
    """Per aspect (quality, culture and meta always, others as they occur): answers, valid answers, their
    `label@confidence` counts and the valid share (None without answers)."""
    aspects: dict[str, Counter] = {a.value: Counter() for a in ASPECTS}
    for j in judgements:
        c = aspects.setdefault(j.aspect.value, Counter())
        c["answers"] += 1
        c["valid"] += int(j.valid)
        if j.valid and j.label is not None:
            c[f"{j.label}@{j.confidence}"] += 1
    return {a: {**dict(c), "valid_share": round(c["valid"] / c["answers"], 4) if c["answers"] else None}
            for a, c in aspects.items()}


def add_filter_arguments(p: argparse.ArgumentParser, purpose: str) -> None:
    """--filter and --on-invalid, read by `FilterRule.parse` the same way in every command."""
    p.add_argument("--filter", default=PAPER_RULE_TEXT,
                   help=f"{purpose}: 'none' (keep everything, the paper's ablation) or "
                        "aspect=label[@conf/conf],... (default: the paper's rule)")
    p.add_argument("--on-invalid", default="keep", choices=["keep", "drop"],
                   help="what an invalid judgement of an aspect the rule names does (default: keep, the paper's)")
    p.add_argument("--no-quality-gate", dest="quality_gate", action="store_false",
                   help=f"keep episodes that fail the rule-based quality gate ({QUALITY_RULE_TEXT})")
