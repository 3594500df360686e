"""Simulate culturally grounded role-play episodes into the SQLite store.

    python -m graphs.adapt --culture CHN --n 8 --model smollm2       # first: scenarios adapted to the culture
    python -m graphs.simulate --culture CHN --episodes 8 --model smollm2
    python -m graphs.simulate --culture JPN --episodes 100 --samples 2 --model openai:Qwen2.5-7B@http://127.0.0.1:8000/v1 --concurrency 32

Episodes role-play the culture's scenarios in the store (adapted by `graphs.adapt` or imported with
`graphs.scenarios import`); `--use-seeds` role-plays the culture-neutral SOTOPIA seeds instead.
Rerunning the same command resumes: finished episodes are skipped, episodes in flight continue from
their last LangGraph checkpoint, failed ones are retried. Episode ids come from (scenario, culture,
model, seed, sample), so nothing is stored twice.

The command runs the batch graph that `langgraph dev` serves as `simulate` (`graphs/concurrent.py`):

    START -> plan -> Send(episode) x N -> summarize -> END

`plan` chooses the episodes and skips stored ones; each `episode` node runs the episode graph as a
subgraph, on the store's checkpointer under the episode's own thread (so a rerun, served or not,
resumes it), and writes it to the store as soon as it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from langgraph.constants import CONFIG_KEY_CHECKPOINTER

from agents.cultures import CultureError, load_culture
from agents.models import MODEL_SPECS, UNSTRUCTURED_HELP, GenerationParams, Model, ModelSpecError, load_model
from agents.prompts import PromptError, Prompts
from agents.records import Culture, Intent, Scenario, Turn
from agents.seeds import sotopia_seeds
from graphs.concurrent import (
    USAGE_KEYS,
    BatchInputError,
    BatchState,
    Stage,
    build_batch_graph,
    checkpointer,
    counted,
    failure_text,
    input_schema,
    on_store,
    parse_request,
    request_json,
    run_batch,
    run_from_command_line,
    shared_culture,
    shared_model,
    shared_prompts,
    store_file,
    under_root,
)
from graphs.episode import (
    ATTRIBUTE_PROMPT_NAMES,
    PROMPT_NAMES,
    EpisodeContext,
    build_episode_graph,
    prompt_names,
    recursion_limit,
    turn_seed,
)
from graphs.store import DEFAULT_DB, FINAL, EpisodeRecord, Store, claim, episode_id, git_commit

EPISODE = build_episode_graph()  # run as a subgraph of the batch graph, on the store's own checkpointer


@dataclass(frozen=True)
class PlannedEpisode:
    id: str
    scenario: Scenario
    sample: int


@dataclass(frozen=True)
class SimulateRequest:
    """A batch of episodes, as plain JSON: the fields are `python -m graphs.simulate`'s options."""

    culture: str  # ISO-3 code of a culture YAML file
    episodes: int = 8  # in all
    samples: int = 1  # per scenario
    model: str = "smollm2"  # model spec
    db: str = DEFAULT_DB  # the SQLite store (served: under the serving root)
    max_turns: int = 10  # rounds
    concurrency: int = 8  # episodes in flight
    seed: int = 0
    use_seeds: bool = False  # the SOTOPIA seeds instead of the culture's adapted scenarios
    scenario_ids: tuple[str, ...] | None = None  # only these scenarios (adapted ones, or seeds with use_seeds)
    prompts: str | None = None  # folder of template overrides (served: under the serving root)
    cultures_dir: str | None = None  # folder of extra culture files (served: under the serving root)
    temperature: float = 0.7
    top_p: float = 0.7
    max_new_tokens: int = 160
    unstructured: bool = False


SimulateInput = input_schema(SimulateRequest)


class SimulateState(SimulateInput, BatchState, total=False):
    pass


@dataclass(frozen=True)
class Simulation:
    """A resolved request: the batch graph's run context (a command line builds it; a server resolves it)."""

    request: SimulateRequest
    culture: Culture
    prompts: Prompts
    model: Model
    db: Path
    speaker_params: GenerationParams
    config: dict  # stored with each episode: the request, and where it came from
    command: str  # the store's run row
    plan: tuple[PlannedEpisode, ...] | None = None  # a caller's own plan; else planned from the request
    run_id: str | None = None  # a run the caller recorded; else the graph records one
    git: str | None = field(default_factory=git_commit)


def plan_episodes(scenarios: list[Scenario], culture: str, model: str, seed: int, episodes: int,
                  samples: int) -> list[PlannedEpisode]:
    """A seeded choice of scenarios, `samples` episodes each, `episodes` in all."""
    order = list(scenarios)
    random.Random(seed).shuffle(order)
    plan = [
        PlannedEpisode(episode_id(s.id, culture, model, seed, k), s, k)
        for s in order
        for k in range(samples)
    ]
    return plan[:episodes]


def resolve(request: SimulateRequest, served: bool = False, origin: dict | None = None, *,
            check_scenarios: bool = False, load: Callable[[SimulateRequest, Path], Model] | None = None) -> Simulation:
    """Check a request and load what it names, cheapest first, the model last (by `load`, else the
    process's shared model); one-line errors (BatchInputError, CultureError, PromptError,
    ModelSpecError). Served: paths must lie under the serving root, and the culture and templates are
    shared by the server's runs."""
    r = request
    if min(r.episodes, r.samples, r.max_turns, r.concurrency) < 1:
        raise BatchInputError("episodes, samples, max_turns and concurrency must be at least 1")
    db = store_file(under_root(r.db, "db") if served else Path(r.db))
    prompts_dir = under_root(r.prompts, "prompts") if served else r.prompts
    cultures_dir = under_root(r.cultures_dir, "cultures_dir") if served else r.cultures_dir
    if served:
        culture = shared_culture(r.culture, str(cultures_dir) if cultures_dir else None)
        prompts = shared_prompts(str(prompts_dir) if prompts_dir else None,
                                 tuple(PROMPT_NAMES + ATTRIBUTE_PROMPT_NAMES))
    else:
        culture = load_culture(r.culture, cultures_dir)
        prompts = Prompts(prompts_dir)
        prompts.versions(PROMPT_NAMES + ATTRIBUTE_PROMPT_NAMES)  # fail on a missing template before loading a model
    if check_scenarios:
        scenarios_for(r, db)
    if load is None:
        model = shared_model(r.model, structured=not r.unstructured, max_batch=r.concurrency, log_dir=db.parent)
    else:
        model = load(r, db)
    origin = origin or {}
    config = {**json.loads(json.dumps(request_json(r))), **origin}
    command = origin.get("command") or "served simulate: " + json.dumps(origin.get("served", {}), sort_keys=True)
    return Simulation(request=r, culture=culture, prompts=prompts, model=model, db=db, config=config, command=command,
                      speaker_params=replace(EpisodeContext.speaker_params, max_new_tokens=r.max_new_tokens,
                                             temperature=r.temperature, top_p=r.top_p))


def scenarios_for(request: SimulateRequest, db: Path) -> list[Scenario]:
    """The scenarios a request plays; reads the store without creating it (BatchInputError if none)."""
    if request.use_seeds:
        scenarios = list(sotopia_seeds())
    else:
        scenarios = Store(db).scenarios(culture=request.culture.upper()) if db.exists() else []
        if not scenarios:
            unknown = f"scenario_ids: {request.scenario_ids[0]!r} is not there: " if request.scenario_ids else ""
            raise BatchInputError(
                f"{unknown}no adapted scenarios for {request.culture.upper()} in {request.db}: run python -m "
                f"graphs.adapt "
                f"--culture {request.culture.upper()} --db {request.db} first, or pass --use-seeds")
    if request.scenario_ids is not None:
        known = {s.id: s for s in scenarios}
        missing = [i for i in request.scenario_ids if i not in known]
        if missing:
            where = "the SOTOPIA seeds" if request.use_seeds else f"the adapted scenarios in {request.db}"
            raise BatchInputError(f"scenario_ids: {missing[0]!r} is not in {where}")
        scenarios = [known[i] for i in dict.fromkeys(request.scenario_ids)]
    return scenarios


async def run_episode(sim: Simulation, planned: PlannedEpisode, ctx: EpisodeContext, row: EpisodeRecord,
                      graph=None) -> tuple[str, int]:
    """Run (or resume) one episode with the episode graph (`graph`, default EPISODE) to its end and store it;
    returns (final status, turns), the status "elsewhere" when another process runs or has just finished it."""
    with claim(sim.db, planned.id) as mine:
        if not mine:
            return "elsewhere", 0
        if getattr(await on_store(sim.db, Store.episode, planned.id), "status", None) in FINAL:
            return "elsewhere", 0  # the other process finished it after this run planned
        return await _run_claimed(sim, planned, ctx, row, graph or EPISODE)


async def _run_claimed(sim: Simulation, planned: PlannedEpisode, ctx: EpisodeContext, row: EpisodeRecord,
                       graph) -> tuple[str, int]:
    saver = await checkpointer(sim.db)
    # The store's checkpointer, lent to the subgraph under the episode's own thread: an episode resumes
    # from its last checkpoint whichever run (command line or server) picks it up again.
    config = {"configurable": {"thread_id": planned.id, "checkpoint_ns": "", "checkpoint_id": None,
                               CONFIG_KEY_CHECKPOINTER: saver},
              "recursion_limit": recursion_limit(ctx.max_turns)}
    await on_store(sim.db, Store.begin_episode, row)
    try:
        snapshot = await graph.aget_state(config)
        if not snapshot.values:
            state = await graph.ainvoke({"turns": [], "intents": [], "ended_by": None}, config, context=ctx)
        elif snapshot.next:
            state = await graph.ainvoke(None, config, context=ctx)  # resume from the last checkpoint
        else:
            state = snapshot.values  # the graph had finished, the store write had not
    except Exception as exc:  # noqa: BLE001 - recorded as the episode's failure, then retried on rerun
        await on_store(sim.db, Store.finish_episode, planned.id, "failed", [], [], ended_by=None,
                       intent_version=None, usage=ctx.model.usage.totals(), error=failure_text(exc))
        return "failed", 0
    status = "invalid" if state.get("ended_by") == "invalid" else "done"

    async def persist() -> None:
        await on_store(
            sim.db, Store.finish_episode, planned.id, status,
            [Turn.model_validate(t) for t in state["turns"]],
            [Intent.model_validate(i) for i in state.get("intents", [])],
            ended_by=state.get("ended_by"), intent_version=ctx.prompts.version("observer_turn"),
            usage=ctx.model.usage.totals(),
        )
        await saver.adelete_thread(planned.id)

    # A cancelled run still finishes storing an episode that has ended, and drops its checkpoints.
    await asyncio.shield(persist())
    return status, len(state["turns"])


# ------------------------------------------------------------------ the batch graph's stage


async def _plan(sim: Simulation) -> dict:
    r = sim.request
    if sim.plan is None:
        scenarios = await asyncio.to_thread(scenarios_for, r, sim.db)
        plan = plan_episodes(scenarios, sim.culture.code, r.model, r.seed, r.episodes, r.samples)
    else:
        plan = list(sim.plan)

    def record(store: Store) -> tuple[str, list[str]]:
        if r.use_seeds:  # insert or ignore: runs started together on a new store share the seeds
            store.add_scenarios((s, {"seed_id": s.id}) for s in {p.scenario.id: p.scenario for p in plan}.values())
        final = [p.id for p in plan if getattr(store.episode(p.id), "status", None) in FINAL]
        return sim.run_id or store.start_run(sim.command, sim.config), final

    run_id, final = await on_store(sim.db, record)
    done = set(final)
    todo = [{"id": p.id, "scenario": p.scenario.model_dump(mode="json"), "sample": p.sample}
            for p in plan if p.id not in done]
    return {"run_id": run_id, "planned": len(plan), "skipped": len(done), "ids": [p.id for p in plan], "todo": todo}


async def _episode(sim: Simulation, item: dict, run_id: str, graph) -> dict:
    r = sim.request
    planned = PlannedEpisode(item["id"], Scenario.model_validate(item["scenario"]), item["sample"])
    with counted(sim.model) as model:
        ctx = EpisodeContext(scenario=planned.scenario, culture=sim.culture, model=model, prompts=sim.prompts,
                             max_turns=r.max_turns, speaker_params=sim.speaker_params,
                             seed=turn_seed(r.seed, planned.sample, planned.id))
        row = EpisodeRecord(id=planned.id, scenario_id=planned.scenario.id, culture=sim.culture.code,
                            model=sim.model.spec, seed=r.seed, sample=planned.sample, max_turns=r.max_turns,
                            run_id=run_id, git=sim.git, config=sim.config,
                            prompt_versions=sim.prompts.versions(prompt_names(planned.scenario)))
        status, turns = await run_episode(sim, planned, ctx, row, graph)
    return {"id": planned.id, "status": status, "turns": turns, "usage": model.usage.totals()}


async def _summarize(sim: Simulation, state: dict) -> dict:
    results = state.get("results", [])
    counts = {"skipped": state["skipped"], "done": 0, "invalid": 0, "failed": 0, "elsewhere": 0,
              **Counter(r["status"] for r in results)}
    usage = Counter()
    for r in results:
        usage.update(r["usage"])
    wall_s = time.time() - state["started"]
    summary = await on_store(sim.db, summarize, state["ids"], counts, dict(usage), wall_s)
    if sim.run_id is None:  # a caller that recorded the run closes it
        await on_store(sim.db, Store.finish_run, state["run_id"], summary)
    return summary


STAGE = Stage(name="episode", request=lambda values: parse_request(SimulateRequest, values), resolve=resolve,
              plan=_plan, work=_episode, summarize=_summarize,
              errors=(BatchInputError, CultureError, PromptError, ModelSpecError), subgraph=EPISODE)


def build_simulate_graph(served: bool = False):
    """The batch graph: plan -> one episode subgraph per planned episode (Send) -> summarize.
    Served, it takes only its JSON input; otherwise a `Simulation` run context."""
    return build_batch_graph(STAGE, SimulateState, SimulateInput, None if served else Simulation)


GRAPH = build_simulate_graph()


async def simulate(store: Store, plan: list[PlannedEpisode], *, culture: Culture, model: Model, prompts: Prompts,
                   max_turns: int, concurrency: int, seed: int, run_id: str, config: dict,
                   speaker_params: GenerationParams = EpisodeContext.speaker_params,
                   progress: bool = True) -> dict:
    """Run every planned episode that is not final yet, `concurrency` at a time, through the batch graph;
    returns this run's counts (skipped, done, invalid, failed, elsewhere)."""
    request = SimulateRequest(culture=culture.code, episodes=max(len(plan), 1), model=model.spec, db=str(store.path),
                              max_turns=max_turns, concurrency=concurrency, seed=seed)
    sim = Simulation(request=request, culture=culture, prompts=prompts, model=model, db=store.path,
                     speaker_params=speaker_params, config=config, command="graphs.simulate.simulate",
                     plan=tuple(plan), run_id=run_id)
    final = await run_batch(GRAPH, request_json(request), context=sim, desc=f"episodes {culture.code}", unit="ep",
                            progress=progress)
    this_run = final["summary"]["this_run"]
    return {k: this_run[k] for k in ("skipped", "done", "invalid", "failed", "elsewhere")}


def summarize(store: Store, ids: list[str], counts: dict, usage: dict, wall_s: float) -> dict:
    stored = store.counts(ids)
    return {"requested": len(ids), "statuses": stored.statuses, "this_run": counts, "turns": stored.turns,
            "valid_turns": stored.valid_turns, "intents": stored.intents, "valid_intents": stored.valid_intents,
            "usage": {k: usage.get(k, 0) for k in USAGE_KEYS},
            "wall_s": round(wall_s, 1)}


def _share(part: int, whole: int) -> str:
    return f" ({100 * part / whole:.1f}%)" if whole else ""


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m graphs.simulate", description=__doc__.split("\n\n")[0])
    p.add_argument("--culture", required=True, help="ISO-3 code of a culture with a YAML file, e.g. CHN")
    p.add_argument("--episodes", type=int, default=8, help="episodes in all")
    p.add_argument("--samples", type=int, default=1, help="episodes per scenario (the paper used 2)")
    p.add_argument("--model", default="smollm2", help=f"model spec: {MODEL_SPECS}")
    p.add_argument("--db", default=DEFAULT_DB, help="SQLite store")
    p.add_argument("--max-turns", type=int, default=10, help="rounds; one round is one utterance from each")
    p.add_argument("--concurrency", type=int, default=8, help="episodes in flight (and in-process batch size)")
    p.add_argument("--seed", type=int, default=0, help="seeds the choice of scenarios and the sampling")
    p.add_argument("--use-seeds", action="store_true",
                   help="role-play the culture-neutral SOTOPIA seeds instead of the culture's adapted scenarios")
    p.add_argument("--prompts", default=None, help="directory whose templates override the built-in ones")
    p.add_argument("--cultures-dir", default=None, help="directory of extra culture YAML files")
    p.add_argument("--temperature", type=float, default=0.7, help="speaker sampling temperature")
    p.add_argument("--top-p", type=float, default=0.7, help="speaker nucleus sampling: keep the top tokens "
                   "whose probabilities sum to this")
    p.add_argument("--max-new-tokens", type=int, default=160,
                   help="free text only (--unstructured); a structured answer's limit comes from its shape")
    p.add_argument("--unstructured", action="store_true", help=UNSTRUCTURED_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs, scripts)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    request = SimulateRequest(**{k: v for k, v in vars(args).items() if k != "no_progress"})
    command = "graphs.simulate " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        # Scenarios are read without creating the store (a failed command leaves no file behind), and
        # before the model loads: that takes a while, so cheaper mistakes are reported first.
        sim = resolve(request, origin={"command": command}, check_scenarios=True, load=lambda r, db: load_model(
            r.model, max_batch=r.concurrency, structured=not r.unstructured, log_dir=db.parent))
    except (BatchInputError, CultureError, PromptError, ModelSpecError) as exc:
        sys.exit(f"error: {exc}")
    final = run_from_command_line(run_batch(GRAPH, request_json(request), context=sim, desc=f"episodes {sim.culture.code}",
                                  unit="ep", progress=not args.no_progress))
    if final.get("error"):
        sys.exit(f"error: {final['error']}")
    summary = final["summary"]
    s, u, counts = summary["statuses"], summary["usage"], summary["this_run"]
    print(
        f"\n{summary['requested']} episodes requested for {sim.culture.name}: {s.get('done', 0)} done, "
        f"{s.get('invalid', 0)} invalid (unparseable turn), {s.get('failed', 0)} failed; "
        f"{counts['skipped']} already stored, {counts['elsewhere']} run by another process; valid turns {summary['valid_turns']}/{summary['turns']}"
        f"{_share(summary['valid_turns'], summary['turns'])}, valid observer labels "
        f"{summary['valid_intents']}/{summary['intents']}{_share(summary['valid_intents'], summary['intents'])}; "
        f"{u['calls']} model calls, {u['prompt_tokens']} prompt + {u['completion_tokens']} completion tokens; "
        f"{summary['wall_s']} s"
    )
    print(f"Look at them:  sqlite-utils {args.db} \"select e.id, e.status, t.idx, t.name, t.action, t.text, "
          f"i.intent from episodes e join turns t on t.episode_id = e.id left join intents i on "
          f"i.episode_id = e.id and i.turn_index = t.idx where e.culture = '{sim.culture.code}' order by e.id, t.idx\" "
          f"--table")
    if s.get("failed"):
        sys.exit(1)


if __name__ == "__main__":
    main()
