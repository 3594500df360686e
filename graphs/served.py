"""The graphs as `langgraph dev` serves them (see `langgraph.json`).

The episode graph's run context holds Python objects (a loaded model, a `Culture`, `Prompts`) that a
server cannot receive over HTTP. Here each served graph takes a JSON-able run configuration instead
(what LangGraph Studio shows as the assistant's context, what `langgraph_sdk` sends as `context=`),
builds the real context from it, and runs the unchanged graph as a subgraph, so Studio still draws
and steps through the real nodes.

    langgraph dev --no-browser --port 2024            # from the repository root
    # then, from Python:
    from langgraph_sdk import get_sync_client
    client = get_sync_client(url="http://127.0.0.1:2024")
    thread = client.threads.create()
    state = client.runs.wait(thread["thread_id"], "episode", input={},
                             context={"culture": "JPN", "model": "smollm2", "max_turns": 3})
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import get_type_hints

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from typing_extensions import TypedDict

from agents.cultures import load_culture
from agents.models import Model, load_model
from agents.prompts import Prompts
from agents.records import Scenario
from agents.seeds import sotopia_seeds
from graphs.episode import PROMPT_NAMES, EpisodeContext, EpisodeState, build_episode_graph, recursion_limit
from graphs.store import Store


class ServedConfigError(ValueError):
    """A run configuration that names something that does not exist."""


@dataclass(frozen=True)
class EpisodeRunConfig:
    """What a client sends to run one episode; every field is plain JSON."""

    culture: str = "CHN"  # ISO-3 code of a culture YAML file
    model: str = "puppet"  # any model spec: puppet, smollm2, a local dir, openai:<model>@<url>, vllm:<model>
    scenario_id: str | None = None  # a SOTOPIA seed id or a scenario in `db`; None: the first seed
    scenario: dict | None = None  # a whole Scenario as JSON; wins over scenario_id
    db: str | None = None  # a store to look scenario_id up in (adapted scenarios live there)
    max_turns: int = 3
    seed: int = 0
    prompts_dir: str | None = None
    cultures_dir: str | None = None


EPISODE_GRAPH = build_episode_graph()

# The same state, declared with typing_extensions.TypedDict: on Python < 3.12 pydantic (hence the
# server's input/output schemas that Studio's forms use) refuses typing.TypedDict.
ServedEpisodeState = TypedDict("ServedEpisodeState", get_type_hints(EpisodeState, include_extras=True), total=False)


def episode_context(config: EpisodeRunConfig) -> EpisodeContext:
    """Resolve a run configuration into the episode graph's context (loads files and the model)."""
    if config.max_turns < 1:
        raise ServedConfigError(f"max_turns: must be at least 1, got {config.max_turns}")
    prompts = _prompts(config.prompts_dir)
    return EpisodeContext(
        scenario=_scenario(config), culture=load_culture(config.culture, config.cultures_dir),
        model=_model(config.model), prompts=prompts, max_turns=config.max_turns, seed=config.seed,
    )


async def run_episode(state: ServedEpisodeState, runtime: Runtime[EpisodeRunConfig]) -> dict:
    """Build the context off the event loop (file and model loading block), then run the episode."""
    ctx = await asyncio.to_thread(episode_context, runtime.context or EpisodeRunConfig())
    before = {"turns": len(state.get("turns", [])), "intents": len(state.get("intents", []))}
    final = await EPISODE_GRAPH.ainvoke(
        {"turns": [], "intents": [], "ended_by": None, **state},
        {"recursion_limit": recursion_limit(ctx.max_turns)}, context=ctx,
    )
    # The outer state's reducers append: hand back only what this run added.
    return {"turns": final["turns"][before["turns"]:], "intents": final["intents"][before["intents"]:],
            "ended_by": final.get("ended_by")}


def build_served_episode_graph():
    graph = StateGraph(ServedEpisodeState, context_schema=EpisodeRunConfig)
    graph.add_node("episode", run_episode)
    graph.add_edge(START, "episode")
    graph.add_edge("episode", END)
    return graph.compile()


episode = build_served_episode_graph()


# ------------------------------------------------------------------ private


@functools.cache
def _model(spec: str) -> Model:
    """One model per spec for the server's lifetime: loading SmolLM2 takes seconds, a run does not."""
    return load_model(spec)


@functools.cache
def _prompts(override_dir: str | None) -> Prompts:
    prompts = Prompts(override_dir)
    for name in PROMPT_NAMES:  # read and compile now, in the worker thread, not inside the event loop
        prompts.source(name)
        prompts.env.get_template(f"{name}.j2")
    return prompts


def _scenario(config: EpisodeRunConfig) -> Scenario:
    if config.scenario is not None:
        return Scenario.model_validate(config.scenario)
    if config.db and config.scenario_id:
        if not Path(config.db).is_file():
            raise ServedConfigError(f"db: no store at {config.db}")
        stored = Store(config.db).scenario(config.scenario_id)
        if stored is not None:
            return stored
    seeds = sotopia_seeds()
    if config.scenario_id is None:
        return seeds[0]
    for seed in seeds:
        if seed.id == config.scenario_id:
            return seed
    where = f"the store {config.db} or " if config.db else ""
    raise ServedConfigError(f"scenario_id: {config.scenario_id!r} is in neither {where}the SOTOPIA seeds")
