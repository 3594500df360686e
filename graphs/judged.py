"""Judged episodes as the later stages select from them: read from the store, decided by `graphs.filter`.

`graphs.contrast` asks for the lines of the episodes this returns as kept, and `training.dataset` turns the same
episodes into rows, so both apply one rule to one reading of the store.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from agents.records import Intent, Scenario, Turn
from graphs.filter import FilterRule, FilterRuleError, Verdict, screen, valid_turns, verdicts
from graphs.store import FINAL, EpisodeRecord, Judgement, Store


class JudgedError(ValueError):
    """The store does not hold what a selection needs (a scenario, a judge); one line."""


@dataclass(frozen=True)
class Episode:
    """One judgeable episode: its valid turns, its intents by turn index, its verdict and the judgements (of one
    judge model) it rests on."""

    id: str
    row: EpisodeRecord
    scenario: Scenario
    turns: tuple[Turn, ...]
    intents: dict[int, Intent]
    verdict: Verdict
    judgements: tuple[Judgement, ...] = ()


def judged_episodes(store: Store, culture: str, judge_model: str | None, rule: FilterRule
                    ) -> tuple[list[Episode], Counter]:
    """(the culture's judgeable episodes in id order, with their verdicts under `rule` from `judge_model`'s
    judgements (none when None); why each other finished episode is left out, by reason). JudgedError when an
    episode names a scenario the store lacks."""
    finished = [(e, store.turns(e.id)) for e in store.episodes(culture) if e.status in FINAL]
    turns = {e.id: t for e, t in finished}
    judgeable, left_out = screen(finished, rule.quality_gate)
    judged = [(e, tuple(store.judgements(e.id, judge_model)) if judge_model else ()) for e in judgeable]
    episodes = []
    for (row, v), (_, judgements) in zip(verdicts(judged, rule), judged):
        scenario = store.scenario(row.scenario_id)
        if scenario is None:
            raise JudgedError(f"{store.path}: episode {row.id} names scenario {row.scenario_id!r}, which is "
                              "not in the store")
        intents = {i.turn_index: i for i in store.intents(row.id)}
        episodes.append(Episode(row.id, row, scenario, tuple(valid_turns(turns[row.id])), intents, v, judgements))
    return episodes, left_out


def sole_judge(store: Store, culture: str) -> str:
    """The one judge model that judged this culture's episodes; FilterRuleError (one line, saying what to pass)
    when there is none or there are several."""
    models = store.judge_models(culture)
    if len(models) == 1:
        return models[0]
    if not models:
        raise FilterRuleError(f"{store.path}: no {culture} episode has been judged: run `python -m graphs.judge "
                              f"--culture {culture} --model SPEC` first, or pass --filter none")
    raise FilterRuleError(f"{store.path}: {culture} episodes were judged by several models ({', '.join(models)}): "
                          "pick one with --judge-model")
