"""Simulate culturally grounded role-play episodes into the SQLite store.

    python -m graphs.adapt --culture CHN --n 8 --model smollm2       # first: scenarios adapted to the culture
    python -m graphs.simulate --culture CHN --episodes 8 --model smollm2
    python -m graphs.simulate --culture JPN --episodes 100 --samples 2 --model openai:Qwen2.5-7B@http://127.0.0.1:8000/v1 --concurrency 32

Episodes role-play the culture's scenarios in the store (adapted by `graphs.adapt` or imported with
`graphs.scenarios import`); `--use-seeds` role-plays the culture-neutral SOTOPIA seeds instead.
Rerunning the same command resumes: finished episodes are skipped, episodes in flight continue from
their last LangGraph checkpoint, failed ones are retried. Episode ids come from (scenario, culture,
model, seed, sample), so nothing is stored twice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import aiosqlite
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from agents.cultures import CultureError, load_culture
from agents.models import UNSTRUCTURED_HELP, GenerationParams, Model, ModelSpecError, load_model
from agents.prompts import PromptError, Prompts
from agents.records import Culture, Intent, Scenario, Turn
from agents.seeds import sotopia_seeds
from graphs.concurrent import failure_text, run_all
from graphs.episode import (
    ATTRIBUTE_PROMPT_NAMES,
    PROMPT_NAMES,
    EpisodeContext,
    build_episode_graph,
    prompt_names,
    recursion_limit,
    turn_seed,
)
from graphs.store import DEFAULT_DB, FINAL, Store, episode_id, git_commit


@dataclass(frozen=True)
class PlannedEpisode:
    id: str
    scenario: Scenario
    sample: int


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


async def run_episode(graph, store: Store, ctx: EpisodeContext, planned: PlannedEpisode, row: dict,
                      saver: AsyncSqliteSaver) -> str:
    """Run (or resume) one episode to its end and store it; returns the final status, or "elsewhere" when
    another process is running it."""
    with store.claim(planned.id) as mine:
        if not mine:
            return "elsewhere"
        if (store.episode(planned.id) or {}).get("status") in FINAL:  # the other process finished it meanwhile
            return "elsewhere"
        return await _run_claimed(graph, store, ctx, planned, row, saver)


async def _run_claimed(graph, store: Store, ctx: EpisodeContext, planned: PlannedEpisode, row: dict,
                       saver: AsyncSqliteSaver) -> str:
    config = {"configurable": {"thread_id": planned.id}, "recursion_limit": recursion_limit(ctx.max_turns)}
    store.begin_episode(row)
    try:
        snapshot = await graph.aget_state(config)
        if not snapshot.values:
            state = await graph.ainvoke({"turns": [], "intents": [], "ended_by": None}, config, context=ctx)
        elif snapshot.next:
            state = await graph.ainvoke(None, config, context=ctx)  # resume from the last checkpoint
        else:
            state = snapshot.values  # the graph had finished, the store write had not
    except Exception as exc:  # noqa: BLE001 - recorded as the episode's failure, then retried on rerun
        store.finish_episode(planned.id, "failed", [], [], ended_by=None, intent_version=None,
                             error=failure_text(exc))
        return "failed"
    status = "invalid" if state.get("ended_by") == "invalid" else "done"
    store.finish_episode(
        planned.id, status,
        [Turn.model_validate(t) for t in state["turns"]],
        [Intent.model_validate(i) for i in state.get("intents", [])],
        ended_by=state.get("ended_by"), intent_version=ctx.prompts.version("observer_turn"),
    )
    await saver.adelete_thread(planned.id)
    return status


async def simulate(store: Store, plan: list[PlannedEpisode], *, culture: Culture, model: Model, prompts: Prompts,
                   max_turns: int, concurrency: int, seed: int, run_id: str, config: dict,
                   speaker_params: GenerationParams = EpisodeContext.speaker_params,
                   progress: bool = True) -> dict:
    """Run every planned episode that is not final yet, `concurrency` at a time."""
    todo = []
    for p in plan:
        row = store.episode(p.id)
        if row is None or row["status"] not in FINAL:
            todo.append(p)
    counts = {"skipped": len(plan) - len(todo), "done": 0, "invalid": 0, "failed": 0, "elsewhere": 0}
    base_ctx = EpisodeContext(scenario=plan[0].scenario if plan else None, culture=culture, model=model,
                              prompts=prompts, max_turns=max_turns, speaker_params=speaker_params)
    async with aiosqlite.connect(store.checkpoint_path) as conn:
        await conn.execute("PRAGMA busy_timeout = 30000")
        # WAL with synchronous=NORMAL survives a killed process (not a power cut) and saves an fsync
        # per checkpoint, which otherwise bounds the orchestration rate.
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA synchronous = NORMAL")
        saver = AsyncSqliteSaver(conn)
        graph = build_episode_graph(checkpointer=saver)
        commit = git_commit()

        async def one(p: PlannedEpisode) -> None:
            ctx = replace(base_ctx, scenario=p.scenario, seed=turn_seed(seed, p.sample, p.id))
            row = {"id": p.id, "scenario_id": p.scenario.id, "culture": culture.code, "model": model.spec,
                   "seed": seed, "sample": p.sample, "max_turns": max_turns, "run_id": run_id,
                   "prompt_versions": json.dumps(prompts.versions(prompt_names(p.scenario)), sort_keys=True),
                   "git": commit,
                   "config": json.dumps(config, sort_keys=True)}
            counts[await run_episode(graph, store, ctx, p, row, saver)] += 1

        await run_all(todo, one, concurrency=concurrency, desc=f"episodes {culture.code}", unit="ep",
                      progress=progress)
    return counts


def summarize(store: Store, plan: list[PlannedEpisode], counts: dict, model: Model, wall_s: float) -> dict:
    ids = [p.id for p in plan]
    marks = ",".join("?" * len(ids)) or "''"
    turns = store.db.execute(f"select count(*) from turns where episode_id in ({marks})", ids).fetchone()[0]
    valid_turns = store.db.execute(f"select count(*) from turns where valid and episode_id in ({marks})",
                                   ids).fetchone()[0]
    intents, valid_intents = store.db.execute(
        f"select count(*), coalesce(sum(valid), 0) from intents where episode_id in ({marks})", ids).fetchone()
    statuses = dict(store.db.execute(
        f"select status, count(*) from episodes where id in ({marks}) group by status", ids).fetchall())
    return {"requested": len(plan), "statuses": statuses, "this_run": counts, "turns": turns,
            "valid_turns": valid_turns, "intents": intents, "valid_intents": valid_intents,
            "usage": model.usage.totals(), "wall_s": round(wall_s, 1)}


def _share(part: int, whole: int) -> str:
    return f" ({100 * part / whole:.1f}%)" if whole else ""


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m graphs.simulate", description=__doc__.split("\n\n")[0])
    p.add_argument("--culture", required=True, help="ISO-3 code of a culture with a YAML file, e.g. CHN")
    p.add_argument("--episodes", type=int, default=8, help="episodes in all")
    p.add_argument("--samples", type=int, default=1, help="episodes per scenario (the paper used 2)")
    p.add_argument("--model", default="smollm2", help="model spec (smollm2, hub id, dir, openai:M@URL, vllm:M)")
    p.add_argument("--db", default=DEFAULT_DB, help="SQLite store")
    p.add_argument("--max-turns", type=int, default=10, help="rounds; one round is one utterance from each")
    p.add_argument("--concurrency", type=int, default=8, help="episodes in flight (and in-process batch size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--use-seeds", action="store_true",
                   help="role-play the culture-neutral SOTOPIA seeds instead of the culture's adapted scenarios")
    p.add_argument("--prompts", default=None, help="directory whose templates override the built-in ones")
    p.add_argument("--cultures-dir", default=None, help="directory of extra culture YAML files")
    p.add_argument("--temperature", type=float, default=0.7, help="speaker sampling temperature")
    p.add_argument("--top-p", type=float, default=0.7)
    p.add_argument("--max-new-tokens", type=int, default=160,
                   help="free text only (--unstructured); a structured answer's limit comes from its shape")
    p.add_argument("--unstructured", action="store_true", help=UNSTRUCTURED_HELP)
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    if args.episodes < 1 or args.samples < 1 or args.max_turns < 1 or args.concurrency < 1:
        sys.exit("error: --episodes, --samples, --max-turns and --concurrency must be at least 1")
    try:
        culture = load_culture(args.culture, args.cultures_dir)
        prompts = Prompts(args.prompts)
        prompts.versions(PROMPT_NAMES + ATTRIBUTE_PROMPT_NAMES)  # fail on a missing template before loading a model
    except (CultureError, PromptError) as exc:
        sys.exit(f"error: {exc}")
    if args.use_seeds:
        scenarios = list(sotopia_seeds())
    else:  # read without creating the store: a failed command leaves no file behind
        scenarios = Store(args.db).scenarios(culture=culture.code) if Path(args.db).exists() else []
        if not scenarios:
            sys.exit(f"error: no adapted scenarios for {culture.code} in {args.db}: run python -m graphs.adapt "
                     f"--culture {culture.code} --db {args.db} first, or pass --use-seeds")
    try:  # only now: loading a real model takes a while, so cheaper mistakes are reported first
        model = load_model(args.model, max_batch=args.concurrency, structured=not args.unstructured,
                           log_dir=Path(args.db).parent)
    except ModelSpecError as exc:
        sys.exit(f"error: {exc}")
    store = Store(args.db)
    if args.use_seeds:
        store.add_scenarios((s, {"seed_id": s.id}) for s in scenarios)
    plan = plan_episodes(scenarios, culture.code, args.model, args.seed, args.episodes, args.samples)
    config = {k: v for k, v in vars(args).items() if k not in ("no_progress",)}
    run_id = store.start_run("graphs.simulate " + " ".join(argv if argv is not None else sys.argv[1:]), config)
    started = time.perf_counter()
    counts = asyncio.run(simulate(
        store, plan, culture=culture, model=model, prompts=prompts, max_turns=args.max_turns,
        concurrency=args.concurrency, seed=args.seed, run_id=run_id, config=config, progress=not args.no_progress,
        speaker_params=replace(EpisodeContext.speaker_params, max_new_tokens=args.max_new_tokens,
                               temperature=args.temperature, top_p=args.top_p),
    ))
    summary = summarize(store, plan, counts, model, time.perf_counter() - started)
    store.finish_run(run_id, summary)
    s, u = summary["statuses"], summary["usage"]
    print(
        f"\n{summary['requested']} episodes requested for {culture.name}: {s.get('done', 0)} done, "
        f"{s.get('invalid', 0)} invalid (unparseable turn), {s.get('failed', 0)} failed; "
        f"{counts['skipped']} already stored, {counts['elsewhere']} run by another process; "
        f"valid turns {summary['valid_turns']}/{summary['turns']}"
        f"{_share(summary['valid_turns'], summary['turns'])}, valid observer labels "
        f"{summary['valid_intents']}/{summary['intents']}{_share(summary['valid_intents'], summary['intents'])}; "
        f"{u['calls']} model calls, {u['prompt_tokens']} prompt + {u['completion_tokens']} completion tokens; "
        f"{summary['wall_s']} s"
    )
    print(f"Look at them:  sqlite-utils {args.db} \"select e.id, e.status, t.idx, t.name, t.action, t.text, "
          f"i.intent from episodes e join turns t on t.episode_id = e.id left join intents i on "
          f"i.episode_id = e.id and i.turn_index = t.idx where e.culture = '{culture.code}' order by e.id, t.idx\" "
          f"--table")
    if s.get("failed"):
        sys.exit(1)


if __name__ == "__main__":
    main()
