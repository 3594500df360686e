"""Judge simulated episodes and decide which ones training may use (CLCA section 1c).

    python -m graphs.judge --culture CHN --model smollm2
    python -m graphs.judge --culture JPN --model openai:Qwen2.5-72B@http://127.0.0.1:8000/v1 --concurrency 32

Per episode, a small LangGraph graph, fanned out by the batch graph that `langgraph dev` serves as
`judge_batch` (`graphs/concurrent.py`), asks the judge model three questions:

    START -> quality --\
    START -> culture ---> meta -> END

`quality` (good/bad) and `culture` (aligned/not aligned) each come with a confidence (very confident,
confident, not sure); `meta` critiques both and gives its own good/bad label and confidence. Every answer
is stored in the `judgements` table with the judge model and prompt version; an answer that does not
parse is stored with valid=0 and no label, never a default. Rerunning skips episodes this judge model
has already judged (`--rejudge` redoes them).

`--sotopia` adds a fourth node, alongside, that scores both participants on the SOTOPIA-EVAL dimensions
(aspects "goal:0", "believability:1", ...; the number is in `score`). The filter does not read them.

The filter is separate from judging (`graphs.filter`: `FilterRule` + `verdict()` over stored judgements),
so the dataset exporter and the site viewer apply the same rule. The paper's rule (the default) drops an
episode when the meta label or the quality label is bad with "very confident".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import operator
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from agents.answers import SotopiaAnswer
from agents.cultures import CultureError, load_culture
from agents.freetext import label
from agents.models import (
    MODEL_SPECS,
    UNSTRUCTURED_HELP,
    Asked,
    GenerationParams,
    Message,
    Model,
    ModelSpecError,
    load_model,
)
from agents.prompts import PromptError, Prompts
from agents.records import Aspect, Culture, Scenario, Turn
from graphs.concurrent import (
    BatchInputError,
    BatchState,
    Stage,
    build_batch_graph,
    counted,
    input_schema,
    on_store,
    parse_request,
    request_json,
    run_batch,
    run_from_command_line,
    shared_model,
    shared_prompts,
    store_file,
    under_root,
)
from graphs.episode import answer_format_for, turn_seed
from graphs.filter import (  # noqa: F401 - the filter, re-exported for its users
    ASPECTS,
    LABEL_FIELDS,
    LABELS,
    MIN_UTTERANCES,
    PAPER_RULE,
    PAPER_RULE_TEXT,
    SHAPES,
    TOO_FEW_UTTERANCES,
    Condition,
    FilterRule,
    FilterRuleError,
    Verdict,
    add_filter_arguments,
    aspect_summary,
    screen,
    utterances,
    valid_turns,
    verdict,
    verdicts,
)
from graphs.store import DEFAULT_DB, FINAL, EpisodeRecord, Judgement, Store

PROMPT_NAMES = ["judge_system", "judge_quality", "judge_culture", "judge_meta"]
# Optional SOTOPIA-EVAL dimensions, scored per participant, read off SotopiaAnswer:
# dimension -> (free-text label, low, high, what it measures). Stored as aspect "<dimension>:<participant
# index>", e.g. "goal:0" (`agents.records.Aspect`), with the number in `score`.
SOTOPIA_DIMENSIONS: dict[str, tuple[str, int, int, str]] = {
    name: (label(SotopiaAnswer, name),
           *(next(getattr(m, bound) for m in info.metadata if hasattr(m, bound)) for bound in ("ge", "le")),
           info.description)
    for name, info in SotopiaAnswer.model_fields.items()
}
SOTOPIA_ASPECTS = tuple(Aspect.sotopia(d, i) for i in (0, 1) for d in SOTOPIA_DIMENSIONS)


# ------------------------------------------------------------------ answers


def judgement_row(aspect: str, asked: Asked) -> dict:
    """A judge answer -> a judgements row; one that did not validate has no label, never a default."""
    answer = asked.answer
    row = {"aspect": aspect, "label": None, "confidence": None, "score": None, "critique": None, "raw": asked.raw,
           "valid": int(answer is not None)}
    if answer is not None:
        row.update(label=getattr(answer, LABEL_FIELDS[aspect]), confidence=answer.confidence,
                   critique=answer.critique.strip() if aspect == "meta" else None)
    return row


def score_rows(participant: int, asked: Asked) -> list[dict]:
    """A SOTOPIA answer -> one row per dimension, each invalid when the answer did not validate."""
    answer = asked.answer
    return [{"aspect": f"{dimension}:{participant}", "label": None, "confidence": None,
             "score": float(getattr(answer, dimension)) if answer is not None else None, "critique": None,
             "raw": asked.raw, "valid": int(answer is not None)}
            for dimension in SOTOPIA_DIMENSIONS]


# ------------------------------------------------------------------ which episodes (read from the store)


class JudgeError(ValueError):
    """Bad input to the judge command, reported as one line."""


def screen_episodes(store: Store, culture: str) -> tuple[list[EpisodeRecord], Counter]:
    """`graphs.filter.screen` over a culture's stored episodes: (finished episodes fit to judge, in id order;
    why each other finished episode is left out)."""
    return screen((e, store.turns(e.id)) for e in store.episodes(culture) if e.status in FINAL)


def judgeable_episodes(store: Store, culture: str) -> list[EpisodeRecord]:
    """Finished episodes with at least MIN_UTTERANCES utterances (see `graphs.filter.screen`)."""
    return screen_episodes(store, culture)[0]


# ------------------------------------------------------------------ graph


class JudgeState(TypedDict, total=False):
    judgements: Annotated[list[dict], operator.add]  # judgements rows, one per aspect


@dataclass(frozen=True)
class JudgeContext:
    scenario: Scenario
    culture: Culture
    turns: tuple[Turn, ...]
    model: Model
    prompts: Prompts
    seed: int = 0
    # The paper's judge: temperature 0, at most 200 new tokens.
    params: GenerationParams = GenerationParams(max_new_tokens=200, temperature=0.0)


def judge_messages(ctx: JudgeContext, aspect: str, **variables) -> tuple[list[Message], str]:
    """(messages for one judge call, the prompt version stored with its answer)."""
    system = ctx.prompts.render("judge_system", scenario=ctx.scenario, culture=ctx.culture,
                                transcript=list(ctx.turns))
    system = ctx.prompts.with_attributes(system, "judge", [(p, False) for p in ctx.scenario.participants])
    shape = SotopiaAnswer if aspect == "sotopia" else SHAPES[aspect]
    user = ctx.prompts.render(f"judge_{aspect}", culture=ctx.culture, answer_format=answer_format_for(ctx.model, shape),
                              **variables)
    messages = [{"role": "system", "content": system.text}, {"role": "user", "content": user.text}]
    return messages, f"judge_system:{system.version},{user.name}:{user.version}"


async def _ask(ctx: JudgeContext, aspect: str, **variables) -> dict:
    messages, version = judge_messages(ctx, aspect, **variables)
    shape = SHAPES[aspect]
    first = next(iter(shape.model_fields))  # free text: the reply starts with the first label
    params = replace(ctx.params, seed=turn_seed(ctx.seed, 0, f"judge-{aspect}"),
                     prefix=f"{label(shape, first)}:")
    asked = await ctx.model.aanswer(messages, shape, task="judge", params=params)
    return {**judgement_row(aspect, asked), "prompt_version": version}


async def judge_quality(state: JudgeState, runtime: Runtime[JudgeContext]) -> dict:
    return {"judgements": [await _ask(runtime.context, "quality")]}


async def judge_culture(state: JudgeState, runtime: Runtime[JudgeContext]) -> dict:
    return {"judgements": [await _ask(runtime.context, "culture")]}


async def judge_meta(state: JudgeState, runtime: Runtime[JudgeContext]) -> dict:
    earlier = {row["aspect"]: row for row in state["judgements"]}

    def shown(aspect: str) -> dict | None:
        row = earlier[aspect]
        return {"label": row["label"], "confidence": row["confidence"]} if row["valid"] else None

    return {"judgements": [await _ask(runtime.context, "meta", quality=shown("quality"),
                                      alignment=shown("culture"))]}


async def judge_sotopia(state: JudgeState, runtime: Runtime[JudgeContext]) -> dict:
    """Both participants' SOTOPIA scores, one call each (they go out together)."""
    ctx = runtime.context
    dimensions = list(SOTOPIA_DIMENSIONS.values())  # (key, low, high, meaning)

    async def score(i: int) -> list[dict]:
        messages, version = judge_messages(ctx, "sotopia", person=ctx.scenario.participants[i], dimensions=dimensions)
        params = replace(ctx.params, seed=turn_seed(ctx.seed, i, "judge-sotopia"), prefix=f"{dimensions[0][0]}:")
        asked = await ctx.model.aanswer(messages, SotopiaAnswer, task="judge", params=params)
        return [{**row, "prompt_version": version} for row in score_rows(i, asked)]

    first, second = await asyncio.gather(score(0), score(1))
    return {"judgements": first + second}


def build_judge_graph(sotopia: bool = False):
    """quality and culture run side by side (one batch on an in-process model); meta waits for both.
    With `sotopia`, a fourth node scores both participants on the SOTOPIA dimensions alongside."""
    graph = StateGraph(JudgeState, context_schema=JudgeContext)
    graph.add_node("quality", judge_quality)
    graph.add_node("culture", judge_culture)
    graph.add_node("meta", judge_meta)
    graph.add_edge(START, "quality")
    graph.add_edge(START, "culture")
    graph.add_edge(["quality", "culture"], "meta")
    graph.add_edge("meta", END)
    if sotopia:
        graph.add_node("sotopia", judge_sotopia)
        graph.add_edge(START, "sotopia")
        graph.add_edge("sotopia", END)
    return graph.compile()


# ------------------------------------------------------------------ running


def needs_judging(store: Store, ep_id: str, judge_model: str, sotopia: bool = False) -> bool:
    """True unless this judge model has stored an answer (valid or not) for every aspect asked for."""
    wanted = set(ASPECTS) | (set(SOTOPIA_ASPECTS) if sotopia else set())
    return not wanted <= {j.aspect for j in store.judgements(ep_id, judge_model)}


@dataclass(frozen=True)
class JudgeRequest:
    """A batch of episodes to judge, as plain JSON: the fields are `python -m graphs.judge`'s options."""

    culture: str
    model: str = "smollm2"  # the judge model spec
    db: str = DEFAULT_DB  # served: under the serving root
    prompts: str | None = None  # served: under the serving root
    cultures_dir: str | None = None  # served: under the serving root
    concurrency: int = 8
    max_new_tokens: int = 200
    unstructured: bool = False
    seed: int = 0
    rejudge: bool = False
    sotopia: bool = False
    filter: str = PAPER_RULE_TEXT
    on_invalid: str = "keep"


JudgeInput = input_schema(JudgeRequest)


class JudgeBatchState(JudgeInput, BatchState, total=False):
    pass


@dataclass(frozen=True)
class Judging:
    """A resolved judge request: the batch graph's run context."""

    request: JudgeRequest
    culture: Culture
    prompts: Prompts
    model: Model
    db: Path
    rule: FilterRule
    params: GenerationParams
    config: dict
    command: str
    episodes: tuple[EpisodeRecord, ...] | None = None  # a caller's own choice of episodes; else the judgeable ones
    run_id: str | None = None  # a run the caller recorded; else the graph records one


def resolve(request: JudgeRequest, served: bool = False, origin: dict | None = None, *,
            load: Callable[[JudgeRequest, Path], Model] | None = None) -> Judging:
    """Check a request and load what it names, the model last; one-line errors (JudgeError, CultureError,
    PromptError, ModelSpecError, BatchInputError). Served: paths under the serving root."""
    r = request
    if r.concurrency < 1 or r.max_new_tokens < 1:
        raise JudgeError("concurrency and max_new_tokens must be at least 1")
    try:
        rule = FilterRule.parse(r.filter, r.on_invalid)
    except FilterRuleError as exc:
        raise JudgeError(str(exc)) from None
    path = (lambda p, field: under_root(p, field)) if served else (lambda p, field: p and Path(p))
    db, prompts_dir, cultures_dir = path(r.db, "db"), path(r.prompts, "prompts"), path(r.cultures_dir, "cultures_dir")
    db = store_file(db)
    culture = load_culture(r.culture, cultures_dir)
    names = tuple(PROMPT_NAMES + ["judge_sotopia"] * r.sotopia)
    # persona_attributes: read now too, as judged scenarios with attributes render it
    prompts = shared_prompts(str(prompts_dir) if prompts_dir else None, (*names, "persona_attributes")) if served \
        else Prompts(prompts_dir)
    versions = prompts.versions(list(names))  # fails before a model loads
    judgeable, left_out = screen_episodes(Store(db), culture.code)
    if not judgeable:
        raise JudgeError(f"{r.db}: no finished {culture.code} episodes with at least {MIN_UTTERANCES} "
                         f"utterances to judge ({sum(left_out.values())} finished with fewer; run "
                         "graphs.simulate first)")
    model = load(r, db) if load else shared_model(r.model, structured=not r.unstructured, max_batch=r.concurrency,
                                                  log_dir=db.parent)
    origin = origin or {}
    command = origin.get("command") or "served judge: " + json.dumps(origin.get("served", {}), sort_keys=True)
    return Judging(request=r, culture=culture, prompts=prompts, model=model, db=db, rule=rule,
                   params=replace(JudgeContext.params, max_new_tokens=r.max_new_tokens),
                   config={**request_json(r), "prompt_versions": versions, **origin}, command=command)


async def _plan(j: Judging) -> dict:
    r = j.request

    def record(store: Store) -> tuple[str, list[EpisodeRecord], list[str]]:
        episodes = list(j.episodes) if j.episodes is not None else judgeable_episodes(store, j.culture.code)
        todo = [e for e in episodes if r.rejudge or needs_judging(store, e.id, j.model.spec, r.sotopia)]
        return j.run_id or store.start_run(j.command, j.config), todo, [e.id for e in episodes]

    run_id, todo, ids = await on_store(j.db, record)
    return {"run_id": run_id, "planned": len(ids), "skipped": len(ids) - len(todo), "ids": ids,
            "todo": [{"id": e.id, "scenario_id": e.scenario_id} for e in todo]}


async def _judge_one(j: Judging, item: dict, run_id: str, graph) -> dict:
    """Judge one episode with the judge graph and store its judgements; a failure stores nothing."""
    scenario, turns = await on_store(j.db, lambda store: (store.scenario(item["scenario_id"]),
                                                          store.turns(item["id"])))
    with counted(j.model) as model:
        ctx = JudgeContext(scenario=scenario, culture=j.culture, turns=tuple(valid_turns(turns)), model=model,
                           prompts=j.prompts, seed=turn_seed(j.request.seed, 0, item["id"]), params=j.params)
        try:
            state = await (JUDGE_SOTOPIA if j.request.sotopia else graph).ainvoke({"judgements": []}, context=ctx)
        except Exception as exc:  # noqa: BLE001 - counted, reported, retried on rerun; nothing is stored
            return {"id": item["id"], "status": "failed", "usage": model.usage.totals(),
                    "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
    await on_store(j.db, Store.put_judgements, item["id"], j.model.spec,
                   [Judgement(**row, run_id=run_id) for row in state["judgements"]])
    return {"id": item["id"], "status": "judged", "usage": model.usage.totals()}


async def _summarize(j: Judging, state: dict) -> dict:
    results = state.get("results", [])
    usage = Counter()
    for r in results:
        usage.update(r["usage"])
    counts = {"skipped": state["skipped"], "judged": sum(r["status"] == "judged" for r in results),
              "failed": sum(r["status"] == "failed" for r in results)}
    summary = await on_store(j.db, judgement_summary, j.culture.code, j.model.spec, j.rule)
    summary.update(this_run=counts, usage=dict(usage), wall_s=round(time.time() - state["started"], 1))
    if j.run_id is None:
        await on_store(j.db, Store.finish_run, state["run_id"], summary)
    return summary


JUDGE, JUDGE_SOTOPIA = build_judge_graph(), build_judge_graph(sotopia=True)  # run as subgraphs, once per episode
STAGE = Stage(name="judge_episode", request=lambda values: parse_request(JudgeRequest, values),
              resolve=resolve, plan=_plan, work=_judge_one,
              summarize=_summarize, errors=(JudgeError, BatchInputError, CultureError, PromptError, ModelSpecError),
              subgraph=JUDGE)


def build_judge_batch_graph(served: bool = False):
    """plan -> one judge subgraph per episode not yet judged by this model (Send) -> summarize."""
    return build_batch_graph(STAGE, JudgeBatchState, JudgeInput, None if served else Judging)


BATCH = build_judge_batch_graph()


async def judge_episodes(store: Store, episodes: list[EpisodeRecord], *, culture: Culture, model: Model,
                         prompts: Prompts,
                         run_id: str, concurrency: int = 8, seed: int = 0, rejudge: bool = False,
                         sotopia: bool = False, params: GenerationParams = JudgeContext.params,
                         progress: bool = True) -> dict:
    """Judge every episode not yet judged by `model` (all of them with `rejudge`) through the batch graph;
    returns counts (skipped, judged, failed)."""
    request = JudgeRequest(culture=culture.code, model=model.spec, db=str(store.path), concurrency=concurrency,
                           seed=seed, rejudge=rejudge, sotopia=sotopia)
    j = Judging(request=request, culture=culture, prompts=prompts, model=model, db=store.path, rule=PAPER_RULE,
                params=params, config={}, command="graphs.judge.judge_episodes", episodes=tuple(episodes),
                run_id=run_id)
    final = await run_batch(BATCH, request_json(request), context=j, desc=f"judging {culture.code}", unit="ep",
                            progress=progress)
    return final["summary"]["this_run"]


def judgement_summary(store: Store, culture: str, judge_model: str, rule: FilterRule) -> dict:
    """Valid shares and label counts per aspect, and what the rule keeps, over the judgeable episodes."""
    judgeable, left_out = screen_episodes(store, culture)
    judged = [(e, store.judgements(e.id, judge_model)) for e in judgeable]  # read once, for verdicts and counts
    kept = verdicts(judged, rule)
    reasons = Counter(r for _, v in kept for r in v.reasons)
    return {
        "episodes": len(kept),
        "not_judgeable": dict(left_out),  # finished episodes left out of everything, by reason
        "judged": sum(v.judged for _, v in kept),
        "kept": sum(v.kept for _, v in kept),
        "dropped": sum(v.judged and not v.kept for _, v in kept),
        "kept_despite_invalid": sum(v.kept and bool(v.invalid) for _, v in kept),
        "drop_reasons": dict(reasons),
        "aspects": aspect_summary(j for _, judgements in judged for j in judgements),
        "rule": str(rule),
    }


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m graphs.judge", description=__doc__.split("\n\n")[0])
    p.add_argument("--culture", required=True, help="ISO-3 code of the culture whose episodes to judge, e.g. CHN")
    p.add_argument("--model", default="smollm2", help=f"judge model spec: {MODEL_SPECS}")
    p.add_argument("--db", default=DEFAULT_DB, help="SQLite store written by graphs.simulate")
    p.add_argument("--prompts", default=None, help="directory whose templates override the built-in ones")
    p.add_argument("--cultures-dir", default=None, help="directory of extra culture YAML files")
    p.add_argument("--concurrency", type=int, default=8, help="episodes judged at once (and in-process batch size)")
    p.add_argument("--max-new-tokens", type=int, default=200,
                   help="per free-text answer (the paper: 200); a structured answer's limit comes from its shape")
    p.add_argument("--unstructured", action="store_true", help=UNSTRUCTURED_HELP)
    p.add_argument("--seed", type=int, default=0, help="seeds the judge's sampling")
    p.add_argument("--rejudge", action="store_true", help="judge again episodes this model has already judged")
    p.add_argument("--sotopia", action="store_true",
                   help="also score both participants on the SOTOPIA dimensions (goal, believability, ...)")
    add_filter_arguments(p, "rule for the kept/dropped summary")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs, scripts)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    request = JudgeRequest(**{k: v for k, v in vars(args).items() if k != "no_progress"})
    command = "graphs.judge " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        j = resolve(request, origin={"command": command}, load=lambda r, db: load_model(
            r.model, max_batch=r.concurrency, structured=not r.unstructured, log_dir=db.parent))
    except (JudgeError, BatchInputError, CultureError, PromptError, ModelSpecError) as exc:
        sys.exit(f"error: {exc}")
    final = run_from_command_line(run_batch(BATCH, request_json(request), context=j, desc=f"judging {j.culture.code}",
                                  unit="ep", progress=not args.no_progress))
    if final.get("error"):
        sys.exit(f"error: {final['error']}")
    summary, rule = final["summary"], j.rule
    counts = summary["this_run"]
    valid = ", ".join(f"{a} {s['valid']}/{s['answers']}" for a, s in summary["aspects"].items()
                      if s.get("answers") and a in ASPECTS)
    scored = [s for a, s in summary["aspects"].items() if a not in ASPECTS]
    if scored:
        valid += f", SOTOPIA scores {sum(s['valid'] for s in scored)}/{sum(s['answers'] for s in scored)}"
    print(
        f"\n{summary['episodes']} {j.culture.code} episodes"
        + "".join(f" ({n} more left out: {reason})" for reason, n in summary["not_judgeable"].items())
        + f": {counts['judged']} judged now, {counts['skipped']} "
        f"already judged by {j.model.spec}, {counts['failed']} failed; valid answers: {valid or 'none'}; "
        f"rule {rule}: {summary['kept']} kept, {summary['dropped']} dropped "
        f"({summary['kept_despite_invalid']} kept with an invalid judgement)"
        + "".join(f"; dropped for {reason}: {n}" for reason, n in summary["drop_reasons"].items())
        + f"; {summary['wall_s']} s"
    )
    if counts["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
