"""Simulate culturally grounded role-play episodes into the SQLite store.

    python -m graphs.adapt --culture CHN --n 8 --model smollm2       # first: scenarios adapted to the culture
    python -m graphs.simulate --culture CHN --episodes 8 --model smollm2
    python -m graphs.simulate --culture JPN --episodes 100 --samples 2 --model openai:Qwen2.5-7B@http://127.0.0.1:8000/v1 --concurrency 32

Episodes role-play the culture's scenarios in the store (adapted by `graphs.adapt` or imported with
`graphs.scenarios import`); `--use-seeds` role-plays the culture-neutral SOTOPIA seeds instead.
Rerunning the same command resumes: finished episodes are skipped, episodes in flight continue from
their last LangGraph checkpoint, failed ones are retried, except those that failed permanently (a prompt past
the model's context, an HTTP 4xx other than 408/409/429), which wait for `--retry-failed`. The summary lists the
stored failures by reason, with a count and an example id each. Episode ids come from (scenario, culture,
model, seed, sample), so nothing is stored twice.

The command runs the batch graph that `langgraph dev` serves as `simulate` (`graphs/batch.py`):

    START -> plan -> Send(episode) x N -> summarize -> END

`plan` chooses the episodes and skips stored ones; each `episode` node runs the episode graph as a
subgraph, on the store's checkpointer under the episode's own thread (so a rerun, served or not,
resumes it), and writes it to the store as soon as it ends.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from langgraph.constants import CONFIG_KEY_CHECKPOINTER

from agents.cultures import CultureError, load_culture
from agents.models import (
    DRY_DEFAULT_TEXT,
    MODEL_SPECS,
    REPETITION_HELP,
    UNSTRUCTURED_HELP,
    GenerationParams,
    Model,
    ModelSpecError,
    Repetition,
    RepetitionError,
)
from agents.prompts import PromptError, Prompts
from agents.records import Culture, Intent, Scenario, Turn
from agents.seeding import call_seed
from agents.seeds import sotopia_seeds
from graphs.batch import (
    USAGE_KEYS,
    BatchInputError,
    Failure,
    Stage,
    command_line,
    counted,
    failure_lines,
    failure_of,
    failure_report,
    graph_of,
    option,
    provenance,
    required,
    stage_model,
    store_file,
    total_usage,
    unfit_items,
)
from graphs.episode import (
    ATTRIBUTE_PROMPT_NAMES,
    PROMPT_NAMES,
    EpisodeContext,
    build_episode_graph,
    prompt_names,
    recursion_limit,
    speaker_view,
)
from graphs.serving import shared_culture, shared_prompts, under_root
from graphs.store import DEFAULT_DB, FINAL, EpisodeRecord, Store, claim, episode_id, git_commit
from graphs.store_io import checkpointer, on_store

EPISODE = build_episode_graph()  # run as a subgraph of the batch graph, on the store's own checkpointer
FAILURES = "simulate"  # the stage's name in the store's failures


@dataclass(frozen=True)
class PlannedEpisode:
    id: str
    scenario: Scenario
    sample: int


@dataclass(frozen=True)
class SimulateRequest:
    """A batch of episodes: `python -m graphs.simulate`'s flags and the served `simulate` graph's input."""

    culture: str = required("ISO-3 code of a culture with a YAML file, e.g. CHN")
    episodes: int = option(8, "episodes in all")
    samples: int = option(1, "episodes per scenario (the paper used 2)")
    model: str = option("smollm2", f"model spec: {MODEL_SPECS}")
    db: str = option(DEFAULT_DB, "SQLite store (served: under the serving root)")
    max_turns: int = option(10, "rounds; one round is one utterance from each")
    concurrency: int = option(8, "episodes in flight (and in-process batch size)")
    seed: int = option(0, "seeds the choice of scenarios and the sampling")
    use_seeds: bool = option(False, "role-play the culture-neutral SOTOPIA seeds instead of the culture's adapted "
                                    "scenarios")
    scenario_ids: list[str] | None = option(None, "only these scenarios (adapted ones, or seeds with --use-seeds)")
    prompts: str | None = option(None, "directory whose templates override the built-in ones (served: under the "
                                       "serving root)", aliases=["--prompts_dir", "--prompts-dir"])
    cultures_dir: str | None = option(None, "directory of extra culture YAML files (served: under the serving root)")
    temperature: float = option(0.7, "speaker sampling temperature")
    top_p: float = option(0.7, "speaker nucleus sampling: keep the top tokens whose probabilities sum to this")
    max_new_tokens: int = option(160, "free text only (--unstructured); a structured answer's limit comes from its "
                                      "shape")
    unstructured: bool = option(False, UNSTRUCTURED_HELP)
    repetition: str = option(DRY_DEFAULT_TEXT, f"speakers' and observer's {REPETITION_HELP}")
    retry_failed: bool = option(False, "run again episodes that failed permanently (a prompt past the model's "
                                       "context, an HTTP 4xx other than 408/409/429); transient failures are "
                                       "always retried")


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
    git: str | None = field(default_factory=git_commit)
    observer_params: GenerationParams = EpisodeContext.observer_params


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


def resolve(request: SimulateRequest, *, served: bool = False, origin: dict | None = None,
            model: Model | None = None) -> Simulation:
    """Check a request and load what it names, cheapest first, the model last (`model` if given, else the one it
    names); one-line errors (BatchInputError, CultureError, PromptError, ModelSpecError). Served: paths must lie
    under the serving root, and the culture and templates are shared by the server's runs. A command line's
    scenarios are read here, before the model loads, without creating the store."""
    r = request
    if min(r.episodes, r.samples, r.max_turns, r.concurrency) < 1:
        raise BatchInputError("episodes, samples, max_turns and concurrency must be at least 1")
    try:
        repetition = Repetition.parse(r.repetition)
    except RepetitionError as exc:
        raise BatchInputError(str(exc)) from None
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
        scenarios_for(r, db)
    config, command = provenance(r, origin, "simulate")
    return Simulation(request=r, culture=culture, prompts=prompts, model=stage_model(r, db, served=served, model=model),
                      db=db, config=json.loads(json.dumps(config)), command=command,
                      speaker_params=replace(EpisodeContext.speaker_params, max_new_tokens=r.max_new_tokens,
                                             temperature=r.temperature, top_p=r.top_p, repetition=repetition),
                      observer_params=replace(EpisodeContext.observer_params, repetition=repetition))


def scenarios_for(request: SimulateRequest, db: Path) -> list[Scenario]:
    """The scenarios a request plays; reads the store without creating it (BatchInputError if none)."""
    if request.use_seeds:
        scenarios = list(sotopia_seeds())
    else:
        scenarios = []
        if db.exists():
            with Store(db) as store:
                scenarios = store.scenarios(culture=request.culture.upper())
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
        await on_store(sim.db, _store_failure, planned.id, failure_of(exc), ctx.model.usage.totals(), row)
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
        await on_store(sim.db, Store.clear_failure, FAILURES, planned.id, sim.model.identity)
        await saver.adelete_thread(planned.id)

    # A cancelled run still finishes storing an episode that has ended, and drops its checkpoints.
    await asyncio.shield(persist())
    return status, len(state["turns"])


# ------------------------------------------------------------------ the batch graph's stage


def _store_failure(store: Store, ep_id: str, failure, usage: dict, row: EpisodeRecord) -> None:
    """Store an episode as failed, with why (`Store.failures`: its reason, and whether it is permanent)."""
    if store.episode(ep_id) is None:
        store.begin_episode(row)  # failed before it started: found unfit at plan time
    store.finish_episode(ep_id, "failed", [], [], ended_by=None, intent_version=None, usage=usage,
                         error=failure.error)
    store.put_failure(FAILURES, ep_id, row.model, reason=failure.reason, error=failure.error,
                      permanent=failure.permanent, run_id=row.run_id)


async def _plan(sim: Simulation) -> dict:
    r = sim.request
    scenarios = await asyncio.to_thread(scenarios_for, r, sim.db)
    plan = plan_episodes(scenarios, sim.culture.code, r.model, r.seed, r.episodes, r.samples)  # ids: by identity

    def record(store: Store) -> tuple[str, list[str], set[str]]:
        if r.use_seeds:  # insert or ignore: runs started together on a new store share the seeds
            store.add_scenarios((s, {"seed_id": s.id}) for s in {p.scenario.id: p.scenario for p in plan}.values())
        final = [p.id for p in plan if getattr(store.episode(p.id), "status", None) in FINAL]
        permanent = {f["item_id"] for f in store.failures(FAILURES, [p.id for p in plan], sim.model.identity)
                     if f["permanent"]}
        return store.start_run(sim.command, sim.config), final, permanent

    run_id, final, permanent = await on_store(sim.db, record)
    done = set(final)
    held = set() if r.retry_failed else permanent - done
    unfit = await _unfit(sim, [p for p in plan if p.id not in done | held], run_id)
    todo = [{"id": p.id, "scenario": p.scenario.model_dump(mode="json"), "sample": p.sample}
            for p in plan if p.id not in done | held | unfit]
    return {"run_id": run_id, "planned": len(plan), "skipped": len(done), "not_retried": len(held | unfit),
            "ids": [p.id for p in plan], "todo": todo}


async def _unfit(sim: Simulation, plan: list[PlannedEpisode], run_id: str) -> set[str]:
    """The planned episodes whose first turns cannot fit the model's context, stored failed (`unfit_items`)."""

    async def prompts(planned: PlannedEpisode) -> list:
        ctx = _episode_context(sim, planned, sim.model)
        return [speaker_view(ctx, me, []) for me in (0, 1)]

    async def store(planned: PlannedEpisode, failure: Failure) -> None:
        await on_store(sim.db, _store_failure, planned.id, failure, {}, _episode_row(sim, planned, run_id))

    return {p.id for p in await unfit_items(sim.model, plan, prompts, store)}


def _episode_context(sim: Simulation, planned: PlannedEpisode, model: Model) -> EpisodeContext:
    return EpisodeContext(scenario=planned.scenario, culture=sim.culture, model=model, prompts=sim.prompts,
                          max_turns=sim.request.max_turns, speaker_params=sim.speaker_params,
                          observer_params=sim.observer_params,
                          seed=call_seed(sim.request.seed, planned.sample, planned.id))


def _episode_row(sim: Simulation, planned: PlannedEpisode, run_id: str) -> EpisodeRecord:
    """The episode's stored record as it begins."""
    r = sim.request
    return EpisodeRecord(id=planned.id, scenario_id=planned.scenario.id, culture=sim.culture.code,
                         model=sim.model.identity, seed=r.seed, sample=planned.sample, max_turns=r.max_turns,
                         run_id=run_id, git=sim.git, config=sim.config,
                         prompt_versions=sim.prompts.versions(prompt_names(planned.scenario)))


async def _episode(sim: Simulation, item: dict, run_id: str, graph) -> dict:
    planned = PlannedEpisode(item["id"], Scenario.model_validate(item["scenario"]), item["sample"])
    with counted(sim.model) as model:
        ctx = _episode_context(sim, planned, model)
        status, turns = await run_episode(sim, planned, ctx, _episode_row(sim, planned, run_id), graph)
    return {"id": planned.id, "status": status, "turns": turns, "usage": model.usage.totals()}


async def _summarize(sim: Simulation, state: dict) -> dict:
    results = state.get("results", [])
    counts = {"skipped": state["skipped"], "done": 0, "invalid": 0, "failed": 0, "elsewhere": 0,
              **Counter(r["status"] for r in results)}
    usage = total_usage(results)
    wall_s = time.time() - state["started"]
    summary = await on_store(sim.db, summarize, state["ids"], counts, dict(usage), wall_s)
    summary["repetition"] = repetition_summary(sim.model, sim.speaker_params.repetition)
    summary["not_retried"] = state.get("not_retried", 0)  # failed permanently before: left out of this run
    summary["failures"] = failure_lines(await on_store(sim.db, Store.failures, FAILURES, state["ids"],
                                                       sim.model.identity))
    await on_store(sim.db, Store.finish_run, state["run_id"], summary)
    return summary


def report(sim: Simulation, summary: dict) -> tuple[str, int]:
    """The command's closing lines (the stored failures by reason among them), and exit status 1 when an episode
    failed (a rerun retries it, or with --retry-failed, one that failed permanently)."""
    s, u, counts = summary["statuses"], summary["usage"], summary["this_run"]
    text = (
        f"\n{summary['requested']} episodes requested for {sim.culture.name}: {s.get('done', 0)} done, "
        f"{s.get('invalid', 0)} invalid (unparseable turn), {s.get('failed', 0)} failed; "
        f"{counts['skipped']} already stored, {_not_retried(summary)}{counts['elsewhere']} run by another process; "
        f"valid turns "
        f"{summary['valid_turns']}/{summary['turns']}{_share(summary['valid_turns'], summary['turns'])}, valid "
        f"observer labels {summary['valid_intents']}/{summary['intents']}"
        f"{_share(summary['valid_intents'], summary['intents'])}; "
        f"{u['calls']} model calls, {u['prompt_tokens']} prompt + {u['completion_tokens']} completion tokens; "
        f"repetition controls: {repetition_line(summary['repetition'])}; {summary['wall_s']} s"
        f"{failure_report(summary.get('failures', []))}\n"
        f"Look at them:  sqlite-utils {sim.request.db} \"select e.id, e.status, t.idx, t.name, t.action, t.text, "
        f"i.intent from episodes e join turns t on t.episode_id = e.id left join intents i on "
        f"i.episode_id = e.id and i.turn_index = t.idx where e.culture = '{sim.culture.code}' order by e.id, t.idx\" "
        f"--table"
    )
    return text, 1 if s.get("failed") else 0


STAGE = Stage(name="episode", module="graphs.simulate", request=SimulateRequest, context=Simulation, resolve=resolve,
              plan=_plan, work=_episode, summarize=_summarize, report=report,
              errors=(BatchInputError, CultureError, PromptError, ModelSpecError), subgraph=EPISODE, unit="ep")
GRAPH = graph_of(STAGE)


def summarize(store: Store, ids: list[str], counts: dict, usage: dict, wall_s: float) -> dict:
    stored = store.counts(ids)
    return {"requested": len(ids), "statuses": stored.statuses, "this_run": counts, "turns": stored.turns,
            "valid_turns": stored.valid_turns, "intents": stored.intents, "valid_intents": stored.valid_intents,
            "usage": {k: usage.get(k, 0) for k in USAGE_KEYS},
            "wall_s": round(wall_s, 1)}


def repetition_summary(model: Model, repetition: Repetition) -> dict:
    """What a run asked for (`Repetition` as text) and what its engine applied (the engine's own fields)."""
    return {"requested": str(repetition), "applied": model.repetition_controls(repetition)}


def repetition_line(summary: dict) -> str:
    """A run's repetition summary in a few words: requested, and the fields the engine was sent."""
    applied = summary["applied"]
    sent = ", ".join(f"{k}={v}" for k, v in applied.items()) or "none applied by this engine"
    return "none" if summary["requested"] == "none" else f"{summary['requested']} ({sent})"


def _not_retried(summary: dict) -> str:
    n = summary.get("not_retried", 0)
    return f"{n} failed permanently before and not retried (--retry-failed sends them again), " if n else ""


def _share(part: int, whole: int) -> str:
    return f" ({100 * part / whole:.1f}%)" if whole else ""


def main(argv: list[str] | None = None) -> None:
    """`python -m graphs.simulate` (the module docstring has examples; `--help` lists the flags)."""
    command_line(STAGE, argv)


if __name__ == "__main__":
    main()
