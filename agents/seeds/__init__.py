"""Seed scenarios: the SOTOPIA benchmark profiles, turned into culture-neutral `Scenario` records.

Each of the 450 scenario x agent-pair combinations becomes one seed (`sotopia-<combo_id>`).
The data is CC-BY-SA 4.0 (see `sotopia/SOURCE.md`); adaptations of it inherit that licence.

SOTOPIA marks some text for one viewer (`<p viewer="environment">...</p>`, `viewer="agent_0"`, ...):
environment text goes to `Scenario.environment_info`, kept for provenance and shown to no one; text for
one agent goes to that persona's private attribute `private_info` (in its own goal it stays there).
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

from agents.records import Attribute, Persona, Scenario, Visibility

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


# SOTOPIA's renderer (sotopia/renderers/xml_renderer.py): a paragraph shown to one viewer only.
VIEWER_TEXT = re.compile(r'<p\s+viewer\s*=\s*"([^"]*)"\s*>(.*?)</p>', re.DOTALL)
PRIVATE_INFO = "private_info"


class SeedError(ValueError):
    """Seed data this loader cannot read safely (e.g. a viewer it does not know); names the row and field."""


def split_viewers(text: str, where: str) -> tuple[str, dict[str, list[str]]]:
    """(the text every participant sees, viewer -> the paragraphs marked for that viewer alone).

    Viewers are `environment` and `agent_<i>` (0-based, the combo's agent order). Raises SeedError for any
    other viewer or markup left over, rather than let hidden text through."""
    hidden: dict[str, list[str]] = {}
    for viewer, inner in VIEWER_TEXT.findall(text):
        if viewer != "environment" and not re.fullmatch(r"agent_[01]", viewer):
            raise SeedError(f"{where}: unknown viewer {viewer!r} in <p viewer=...> (expected environment, agent_0 "
                            "or agent_1)")
        hidden.setdefault(viewer, []).append(" ".join(inner.split()))
    if not hidden:
        return text, {}
    shared = VIEWER_TEXT.sub(" ", text)
    if re.search(r"</?p[\s>]", shared):
        raise SeedError(f"{where}: <p> markup that is not a <p viewer=\"...\">...</p> paragraph")
    return re.sub(r"[ \t]{2,}", " ", shared).strip(), hidden


def _rows(name: str) -> list[dict]:
    with open(SOTOPIA_DIR / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _clean_goal(goal: str) -> str:
    """Keep the hint text but drop SOTOPIA's inline markup tags."""
    return re.sub(r"\s+", " ", re.sub(r"</?(extra_info|strategy_hint|clarification_hint)>", "", goal)).strip()


def _persona(agent: dict, goal: str, private: list[str]) -> Persona:
    background = " ".join(s for s in (agent["public_info"], agent["personality_and_values"]) if s)
    attributes = {PRIVATE_INFO: Attribute(value=" ".join(private), visibility=Visibility.PRIVATE)} if private else {}
    return Persona(
        name=f"{agent['first_name']} {agent['last_name']}".strip(),
        age=agent["age"],
        gender=agent["gender"],
        occupation=agent["occupation"],
        background=background,
        goal=_clean_goal(goal),
        secret=agent["secret"],
        attributes=attributes,
    )


def _env_texts(env: dict) -> tuple[str, list[str], list[str], list[list[str]]]:
    """(setting, the two goals, environment-only paragraphs, each agent's paragraphs from elsewhere) of one
    environment profile, with the per-viewer markup taken out."""
    where = f"{SOTOPIA_DIR / 'environment_profiles.jsonl'}: env {env['env_id']}"
    setting, hidden = split_viewers(env["scenario"], f"{where}: field scenario")
    environment, agents = hidden.get("environment", []), [hidden.get(f"agent_{i}", []) for i in (0, 1)]
    goals = []
    for i, goal in enumerate(env["agent_goals"]):
        goal, hidden = split_viewers(goal, f"{where}: field agent_goals.{i}")
        goals.append(" ".join([goal, *hidden.get(f"agent_{i}", [])]))  # already private to agent i
        environment += hidden.get("environment", [])
        agents[1 - i] += hidden.get(f"agent_{1 - i}", [])
    return setting, goals, environment, agents


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
        setting, goals, environment, private = _env_texts(env)
        relationship = RELATIONSHIPS.get(env["relationship"], env["relationship"])
        story = stories.get(frozenset(combo["agent_ids"]))
        seeds.append(
            Scenario(
                id=f"sotopia-{combo['combo_id']}",
                culture=None,
                setting=setting,
                participants=(_persona(a, goals[0], private[0]), _persona(b, goals[1], private[1])),
                relationship=f"{relationship}. {story}" if story else relationship,
                source=f"sotopia:{env['codename']}:{combo['combo_id']}",
                environment_info=" ".join(environment),
            )
        )
    return tuple(seeds)
