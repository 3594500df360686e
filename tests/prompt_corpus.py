"""Every prompt the pipeline renders for one scenario, through the code paths that send them.

Used by tests/test_attributes.py: to check that scenarios without attributes render exactly what they
rendered before attributes existed (against `tests/snapshots/prompt_hashes.json`, written by running this
module on the code before the change), and to check what each reader may see.

    python -m tests.prompt_corpus > tests/snapshots/prompt_hashes.json
"""

from __future__ import annotations

import hashlib
import json

from agents.models import load_model
from agents.prompts import Prompts
from agents.records import Action, Culture, Intent, Scenario, Turn
from graphs.adapt import AdaptContext, adapt_messages
from graphs.episode import EpisodeContext, observer_view, speaker_view
from graphs.judge import SOTOPIA_DIMENSIONS, JudgeContext, judge_messages
from graphs.judge import verdict as judge_verdict
from graphs.store import EpisodeRecord
from training.dataset import Episode, dialogue_system, intent_messages

# view -> who reads it: 0 or 1 (that persona), "observer", "judge", "export-0"/"export-1" (a persona's
# training row), "export-intent" (the intent row, read like the observer), "adapt" (the adaptation model).
READERS = {
    "roleplay_0": 0, "roleplay_1": 1, "roleplay_0_later": 0, "roleplay_1_later": 1,
    "ungrounded_0": 0, "ungrounded_1": 1, "observer": "observer",
    "judge_quality": "judge", "judge_culture": "judge", "judge_meta": "judge", "judge_sotopia_0": "judge",
    "judge_sotopia_1": "judge", "export_dialogue_0": 0, "export_dialogue_1": 1, "export_intent": "observer",
    "adapt": "adapt",
}


def transcript(scenario: Scenario) -> list[Turn]:
    a, b = (p.name for p in scenario.participants)
    return [Turn(index=0, speaker=0, name=a, action=Action.SPEAK, text="Good evening.",
                 raw='{"action": "speak", "text": "Good evening."}'),
            Turn(index=1, speaker=1, name=b, action=Action.NON_VERBAL, text="nods",
                 raw='{"action": "non-verbal", "text": "nods"}')]


def views(scenario: Scenario, culture: Culture, prompts: Prompts | None = None,
          structured: bool = True) -> dict[str, list[dict]]:
    """view name -> the messages sent (the system turn first)."""
    prompts = prompts or Prompts()
    model = load_model("puppet", structured=structured)
    turns = transcript(scenario)
    ctx = EpisodeContext(scenario=scenario, culture=culture, model=model, prompts=prompts)
    ungrounded = EpisodeContext(scenario=scenario, culture=culture, model=model, prompts=prompts,
                                system_template="roleplay_system_ungrounded")
    judge = JudgeContext(scenario=scenario, culture=culture, turns=tuple(turns), model=model, prompts=prompts)
    shown = {"label": "good", "confidence": "confident"}
    dims = list(SOTOPIA_DIMENSIONS.values())
    ep = Episode("ep", EpisodeRecord(id="ep", scenario_id=scenario.id, culture=culture.code, model="m", seed=0,
                                     sample=0), scenario, tuple(turns),
                 {t.index: Intent(turn_index=t.index, intent="Greets.", reason="Politeness.") for t in turns},
                 judge_verdict([]))
    out = {
        "roleplay_0": speaker_view(ctx, 0, []), "roleplay_1": speaker_view(ctx, 1, turns[:1]),
        "roleplay_0_later": speaker_view(ctx, 0, turns), "roleplay_1_later": speaker_view(ctx, 1, turns),
        "ungrounded_0": speaker_view(ungrounded, 0, turns), "ungrounded_1": speaker_view(ungrounded, 1, turns[:1]),
        "observer": observer_view(ctx, turns),
        "judge_quality": judge_messages(judge, "quality")[0], "judge_culture": judge_messages(judge, "culture")[0],
        "judge_meta": judge_messages(judge, "meta", quality=shown, alignment=None)[0],
        "judge_sotopia_0": judge_messages(judge, "sotopia", person=scenario.participants[0], dimensions=dims)[0],
        "judge_sotopia_1": judge_messages(judge, "sotopia", person=scenario.participants[1], dimensions=dims)[0],
        "export_dialogue_0": [{"role": "system", "content": dialogue_system(prompts, ep, culture, 0).text}],
        "export_dialogue_1": [{"role": "system", "content": dialogue_system(prompts, ep, culture, 1).text}],
        "export_intent": intent_messages(prompts, ep, culture)[0],
        "adapt": adapt_messages(AdaptContext(seed=scenario, culture=culture, model=model, prompts=prompts),
                                [{"raw": "{}", "error": "an example error"}]),
    }
    assert set(out) == set(READERS)
    return out


def corpus_hashes(scenarios: list[Scenario], culture: Culture) -> dict[str, str]:
    """view -> sha256 over that view's messages for every scenario in order, structured and free text."""
    digests: dict[str, hashlib._Hash] = {}
    prompts = Prompts()
    for scenario in scenarios:
        for structured in (True, False):
            for name, messages in views(scenario, culture, prompts, structured=structured).items():
                digests.setdefault(name, hashlib.sha256()).update(json.dumps(messages, ensure_ascii=False).encode())
    return {name: d.hexdigest() for name, d in digests.items()}


def unmarked_seeds() -> list[Scenario]:
    """The SOTOPIA seeds whose source text has no per-viewer markup (their prompts must not change)."""
    from agents.seeds import sotopia_seeds

    marked = {f"sotopia-{c}" for c in _marked_combos()}
    return [s for s in sotopia_seeds() if s.id not in marked]


def _marked_combos() -> set[str]:
    from agents.seeds import SOTOPIA_DIR

    def rows(name):
        return [json.loads(line) for line in (SOTOPIA_DIR / name).read_text(encoding="utf-8").splitlines() if line]

    marked = {e["env_id"] for e in rows("environment_profiles.jsonl") if "viewer=" in json.dumps(e)}
    return {c["combo_id"] for c in rows("env_agent_combo_storages.jsonl") if c["env_id"] in marked}


def example_scenarios() -> list[Scenario]:
    from pathlib import Path

    from graphs.scenarios import read_scenarios

    return read_scenarios(Path(__file__).resolve().parent / "fixtures" / "no_attributes.jsonl")


if __name__ == "__main__":
    from agents.cultures import load_culture

    print(json.dumps(corpus_hashes(unmarked_seeds() + example_scenarios(), load_culture("JPN")), indent=1,
                     sort_keys=True))
