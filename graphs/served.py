"""The graphs as `langgraph dev` serves them (see `langgraph.json`).

Batch graphs (`simulate`, `adapt_batch`, `judge_batch`, `contrast_batch`): the same graphs as `python -m
graphs.simulate`, `graphs.adapt`, `graphs.judge` and `graphs.contrast`, taking the command's options as plain-JSON
input. They write every finished episode, scenario, judgement or contrastive reply to the store as it ends, stream progress events
(`stream_mode="custom"`), and record in the store that a served run made them. Every path a client
names (`db`, `prompts`, `cultures_dir`, `seeds`) must lie under the serving root: $CLCA_SERVE_ROOT,
else the server's working directory. Models are loaded once per server process and shared by its runs.

    langgraph dev --no-browser --port 2024            # from the repository root
    # then, from Python (a fuller script: README, "Serving"):
    from langgraph_sdk import get_sync_client
    client = get_sync_client(url="http://127.0.0.1:2024")
    thread = client.threads.create()
    run = client.runs.create(thread["thread_id"], "simulate", input={"culture": "JPN", "episodes": 6,
                             "use_seeds": True, "model": "puppet", "db": "runs/served.db", "concurrency": 3})
    for part in client.runs.join_stream(thread["thread_id"], run["run_id"], stream_mode="custom"): print(part.data)

Single-item graphs (`episode`, `adapt`, `judge`) return their state and store nothing. Their run
contexts hold Python objects (a loaded model, a `Culture`, `Prompts`) that a server
cannot receive over HTTP. Here each served graph takes a JSON-able run configuration instead (what
LangGraph Studio shows as the assistant's context, what `langgraph_sdk` sends as `context=`), builds
the real context from it, and runs the unchanged graph as a subgraph, so Studio still draws and steps
through the real nodes.

    state = client.runs.wait(client.threads.create()["thread_id"], "episode", input={},
                             context={"culture": "JPN", "model": "smollm2", "max_turns": 3})
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import field, fields, make_dataclass
from pathlib import Path
from typing import Any, get_type_hints

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from typing_extensions import TypedDict

from agents.cultures import load_culture
from agents.models import Model
from agents.records import Scenario, Turn
from agents.seeds import sotopia_seeds
from graphs import adapt as adapt_graph
from graphs import contrast as contrast_stage
from graphs import episode as episode_graph
from graphs import judge as judge_graph
from graphs import simulate as simulate_stage
from graphs.batch import BatchInputError, build_batch_graph
from graphs.serving import shared_model, shared_prompts, strict, under_root, unknown_keys
from graphs.store import Store


class ServedConfigError(BatchInputError):
    """A run configuration that names something that does not exist."""


def item_config(name: str, request: type, doc: str, shared: dict[str, Any], own: list[tuple[str, Any, Any, str]],
                aliases: dict[str, str]) -> type:
    """A single-item graph's run configuration, declared by its stage's request dataclass: the fields it shares with
    `request` (name -> this graph's default; type and help are the request's), the fields of its own (name, type,
    default, help), and old names kept working (old -> new, read by `_given`). Every field is plain JSON."""
    by_name, hints = {f.name: f for f in fields(request)}, get_type_hints(request)
    spec = []
    for key, default in shared.items():
        kind = hints[key] if default is not None else hints[key] | None
        spec.append((key, kind, field(default=default, metadata=by_name[key].metadata)))
    spec += [(key, kind, field(default=default, metadata={"help": text})) for key, kind, default, text in own]
    spec += [(old, hints[new] | None, field(default=None, metadata={"help": f"old name of {new}"}))
             for old, new in aliases.items()]
    config = make_dataclass(name, spec, frozen=True)
    config.__module__ = __name__
    config.__doc__ = doc
    config.aliases = aliases
    return config


EpisodeRunConfig = item_config(
    "EpisodeRunConfig", simulate_stage.SimulateRequest, "What a client sends to run one episode.",
    {"culture": "CHN", "model": "puppet", "db": None, "max_turns": 3, "seed": 0, "prompts": None,
     "cultures_dir": None},
    [("scenario_id", str | None, None, "a SOTOPIA seed id or a scenario in `db`; None: the first seed"),
     ("scenario", dict | None, None, "a whole Scenario as JSON; wins over scenario_id")],
    {"prompts_dir": "prompts"})
AdaptRunConfig = item_config(
    "AdaptRunConfig", adapt_graph.AdaptRequest, "What a client sends to adapt one seed scenario to a culture.",
    {"culture": "CHN", "model": "puppet", "max_attempts": 3, "seed": 0, "prompts": None, "cultures_dir": None},
    [("seed_id", str | None, None, "a SOTOPIA seed id; None: the first seed"),
     ("seed_scenario", dict | None, None, "a whole seed Scenario as JSON; wins over seed_id")],
    {"sample_seed": "seed", "prompts_dir": "prompts"})
JudgeRunConfig = item_config(
    "JudgeRunConfig", judge_graph.JudgeRequest,
    "What a client sends to judge one episode: a stored one (db + episode_id) or one given whole.",
    {"model": "puppet", "db": None, "culture": None, "seed": 0, "prompts": None, "cultures_dir": None},
    [("episode_id", str | None, None, "an episode in `db`: its scenario, culture and turns are judged"),
     ("scenario", dict | None, None, "with culture and turns: the scenario judged"),
     ("turns", list[dict] | None, None, "Turn records as JSON")],
    {"prompts_dir": "prompts"})


def _given(config, key: str):
    """A run configuration's value of `key`, given under its own name or an old one."""
    for old, new in config.aliases.items():
        if new == key and getattr(config, old) is not None:
            return getattr(config, old)
    return getattr(config, key)


def episode_context(config: EpisodeRunConfig) -> episode_graph.EpisodeContext:
    """Resolve a run configuration into the episode graph's context (loads files and the model)."""
    if config.max_turns < 1:
        raise ServedConfigError(f"max_turns: must be at least 1, got {config.max_turns}")
    return episode_graph.EpisodeContext(
        scenario=_scenario(config.scenario, config.scenario_id, _path(config.db, "db"), "scenario_id"),
        culture=load_culture(config.culture, _path(config.cultures_dir, "cultures_dir")), model=_model(config.model),
        prompts=_prompts(_given(config, "prompts"), tuple(episode_graph.PROMPT_NAMES)), max_turns=config.max_turns,
        seed=config.seed,
    )


def adapt_context(config: AdaptRunConfig) -> adapt_graph.AdaptContext:
    if config.max_attempts < 1:
        raise ServedConfigError(f"max_attempts: must be at least 1, got {config.max_attempts}")
    return adapt_graph.AdaptContext(
        seed=_scenario(config.seed_scenario, config.seed_id, None, "seed_id"),
        culture=load_culture(config.culture, _path(config.cultures_dir, "cultures_dir")), model=_model(config.model),
        prompts=_prompts(_given(config, "prompts"), tuple(adapt_graph.PROMPT_NAMES)), max_attempts=config.max_attempts,
        sample_seed=_given(config, "seed"),
    )


def judge_context(config: JudgeRunConfig) -> judge_graph.JudgeContext:
    if config.episode_id:
        db = _path(config.db, "db")
        if not db or not Path(db).is_file():
            raise ServedConfigError(f"db: episode_id needs an existing store, got {config.db!r}")
        with Store(db) as store:
            row = store.episode(config.episode_id)
            if row is None:
                raise ServedConfigError(f"episode_id: {config.episode_id!r} is not in {config.db}")
            scenario, turns = store.scenario(row.scenario_id), store.turns(config.episode_id)
        culture = config.culture or row.culture
    elif config.scenario is not None and config.turns is not None and config.culture:
        scenario, culture = Scenario.model_validate(config.scenario), config.culture
        turns = [Turn.model_validate(t) for t in config.turns]
    else:
        raise ServedConfigError("give db + episode_id, or culture + scenario + turns")
    return judge_graph.JudgeContext(
        scenario=scenario, culture=load_culture(culture, _path(config.cultures_dir, "cultures_dir")),
        turns=tuple(judge_graph.valid_turns(turns)), model=_model(config.model),
        prompts=_prompts(_given(config, "prompts"), tuple(judge_graph.PROMPT_NAMES)), seed=config.seed,
    )


def served(name: str, graph, state_schema: type, config_schema: type, make_context: Callable,
           recursion_limit: Callable[[object], int]):
    """Wrap a compiled graph whose context holds objects into one whose context is `config_schema`."""
    # Re-declared with typing_extensions.TypedDict: on Python < 3.12 pydantic (hence the server's
    # input/output schemas, which Studio's forms use) refuses typing.TypedDict.
    fields = get_type_hints(state_schema, include_extras=True)
    state = TypedDict(f"Served{state_schema.__name__}", fields, total=False)

    async def run(values: dict, runtime: Runtime) -> dict:
        if unknown := unknown_keys():
            raise ServedConfigError(unknown)
        # Building the context reads files and may load a model: keep that off the event loop.
        ctx = await asyncio.to_thread(make_context, runtime.context or config_schema())
        final = await graph.ainvoke(values, {"recursion_limit": recursion_limit(ctx)}, context=ctx)
        # Lists in these states only grow (operator.add): hand back only what this run added.
        return {k: v[len(values.get(k) or []):] if isinstance(v, list) else v for k, v in final.items()}

    run.__name__ = name
    outer = StateGraph(state, context_schema=config_schema)
    outer.add_node(name, run)
    outer.add_edge(START, name)
    outer.add_edge(name, END)
    return strict(outer.compile())


episode = served("episode", episode_graph.build_episode_graph(), episode_graph.EpisodeState, EpisodeRunConfig,
                 episode_context, lambda ctx: episode_graph.recursion_limit(ctx.max_turns))
judge = served("judge", judge_graph.build_judge_graph(), judge_graph.JudgeState, JudgeRunConfig, judge_context,
               lambda ctx: 10)
adapt = served("adapt", adapt_graph.build_adapt_graph(), adapt_graph.AdaptState, AdaptRunConfig, adapt_context,
               lambda ctx: adapt_graph.recursion_limit(ctx.max_attempts))

# The batch graphs, built for serving: JSON input only, paths under the serving root, shared models.
simulate = build_batch_graph(simulate_stage.STAGE, served=True)
adapt_batch = build_batch_graph(adapt_graph.STAGE, served=True)
judge_batch = build_batch_graph(judge_graph.STAGE, served=True)
contrast_batch = build_batch_graph(contrast_stage.STAGE, served=True)


# ------------------------------------------------------------------ private


def _model(spec: str) -> Model:
    """One model per spec for the server's lifetime: loading SmolLM2 takes seconds, a run does not."""
    return shared_model(spec)


def _prompts(override_dir: str | None, names: tuple[str, ...]):
    path = _path(override_dir, "prompts")
    return shared_prompts(str(path) if path else None, names)


def _path(path: str | None, field: str) -> str | None:
    """A client's path, which must lie under the serving root."""
    resolved = under_root(path, field)
    return str(resolved) if resolved else None


def _scenario(whole: dict | None, scenario_id: str | None, db: str | None, field: str) -> Scenario:
    if whole is not None:
        return Scenario.model_validate(whole)
    if db and scenario_id:
        if not Path(db).is_file():
            raise ServedConfigError(f"db: no store at {db}")
        with Store(db) as store:
            stored = store.scenario(scenario_id)
        if stored is not None:
            return stored
    seeds = sotopia_seeds()
    if scenario_id is None:
        return seeds[0]
    for seed in seeds:
        if seed.id == scenario_id:
            return seed
    where = f"the store {db} or " if db else ""
    raise ServedConfigError(f"{field}: {scenario_id!r} is in neither {where}the SOTOPIA seeds")
