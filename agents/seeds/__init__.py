"""Seed scenarios: the SOTOPIA benchmark profiles, turned into culture-neutral `Scenario` records.

Each of the 450 scenario x agent-pair combinations becomes one seed (`sotopia-<combo_id>`).
The data is CC-BY-SA 4.0 (see `sotopia/SOURCE.md`); adaptations of it inherit that licence.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

from agents.records import Persona, Scenario

SOTOPIA_DIR = Path(__file__).parent / "sotopia"

# sotopia/database/persistent_profile.py: RelationshipType
RELATIONSHIPS = {
    "0": "strangers",
    "1": "know each other by name",
    "2": "acquaintances",
    "3": "friends",
    "4": "in a romantic relationship",
    "5": "family members",
}


def _rows(name: str) -> list[dict]:
    with open(SOTOPIA_DIR / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _clean_goal(goal: str) -> str:
    """Keep the hint text but drop SOTOPIA's inline markup tags."""
    return re.sub(r"\s+", " ", re.sub(r"</?(extra_info|strategy_hint|clarification_hint)>", "", goal)).strip()


def _persona(agent: dict, goal: str) -> Persona:
    background = " ".join(s for s in (agent["public_info"], agent["personality_and_values"]) if s)
    return Persona(
        name=f"{agent['first_name']} {agent['last_name']}".strip(),
        age=agent["age"],
        gender=agent["gender"],
        occupation=agent["occupation"],
        background=background,
        goal=_clean_goal(goal),
        secret=agent["secret"],
    )


@functools.cache
def sotopia_seeds() -> tuple[Scenario, ...]:
    """All 450 SOTOPIA combos as seed scenarios, in file order."""
    envs = {e["env_id"]: e for e in _rows("environment_profiles.jsonl")}
    agents = {a["agent_id"]: a for a in _rows("agent_profiles.jsonl")}
    stories = {
        frozenset((r["agent1_id"], r["agent2_id"])): r["background_story"] for r in _rows("relationship_profiles.jsonl")
    }
    seeds = []
    for combo in _rows("env_agent_combo_storages.jsonl"):
        env = envs[combo["env_id"]]
        a, b = (agents[i] for i in combo["agent_ids"])
        relationship = RELATIONSHIPS.get(env["relationship"], env["relationship"])
        story = stories.get(frozenset(combo["agent_ids"]))
        seeds.append(
            Scenario(
                id=f"sotopia-{combo['combo_id']}",
                culture=None,
                setting=env["scenario"],
                participants=(_persona(a, env["agent_goals"][0]), _persona(b, env["agent_goals"][1])),
                relationship=f"{relationship}. {story}" if story else relationship,
                source=f"sotopia:{env['codename']}:{combo['combo_id']}",
            )
        )
    return tuple(seeds)
