"""Judge simulated episodes and decide which ones training may use (CLCA section 1c).

    python -m graphs.judge --culture CHN --model smollm2
    python -m graphs.judge --culture JPN --model openai:Qwen2.5-72B@http://127.0.0.1:8000/v1 --concurrency 32

Per episode, a small LangGraph graph, fanned out by the batch graph that `langgraph dev` serves as
`judge_batch` (`graphs/batch.py`), asks the judge model three questions:

    START -> quality --\
    START -> culture ---> meta -> END

`quality` (good/bad) and `culture` (aligned/not aligned) each come with a confidence (very confident,
confident, not sure); `meta` critiques both and gives its own good/bad label and confidence. Every answer
is stored in the `judgements` table with the judge model and prompt version; an answer that does not
parse is stored with valid=0 and no label, never a default. Rerunning skips episodes this judge model
has already judged (`--rejudge` redoes them) and retries episodes whose judging failed, except those that failed
permanently (a prompt past the model's context, an HTTP 4xx other than 408/409/429), which wait for
`--retry-failed`. Failures are stored with their reason; the summary lists them by reason, with a count and an
example id.

`--sotopia` adds a fourth node, alongside, that scores both participants on the SOTOPIA-EVAL dimensions
(aspects "goal:0", "believability:1", ...; the number is in `score`). The filter does not read them.

The filter is separate from judging (`graphs.filter`: `FilterRule` + `verdict()` over stored judgements),
so the dataset exporter and the site viewer apply the same rule. Before any of that, `screen_episodes` leaves out
episodes that fail the rule-based quality gate (`graphs.quality`: looping turns, repeated lines, repeated turns,
too few distinct words), counted by reason; they are neither judged nor trained on (`--no-quality-gate` keeps
them). The paper's rule (the default) drops an
episode when the meta label or the quality label is bad with "very confident".
"""

from __future__ import annotations

import asyncio
import operator
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Literal, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from agents.answers import SotopiaAnswer
from agents.cultures import CultureError, load_culture
from agents.freetext import label
from agents.models import (
    DRY_DEFAULT_TEXT,
    MODEL_SPECS,
    REPETITION_HELP,
    UNSTRUCTURED_HELP,
    Asked,
    GenerationParams,
    Message,
    Model,
    ModelSpecError,
    Repetition,
    RepetitionError,
)
from agents.prompts import PromptError, Prompts
from agents.records import Aspect, Culture, Scenario, Turn
from agents.seeding import call_seed
from graphs.batch import (
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
    store_failure,
    store_file,
    total_usage,
    unfit_items,
)
from graphs.episode import answer_format_for
from graphs.filter import (  # noqa: F401 - the filter, re-exported for its users
    ASPECTS,
    LABEL_FIELDS,
    LABELS,
    MIN_UTTERANCES,
    PAPER_RULE,
    PAPER_RULE_TEXT,
    QUALITY_GATE,
    QUALITY_GATE_ANY,
    SHAPES,
    TOO_FEW_UTTERANCES,
    Condition,
    FilterRule,
    FilterRuleError,
    Verdict,
    add_filter_arguments,
    aspect_summary,
    left_out_text,
    screen,
    utterances,
    valid_turns,
    verdict,
    verdicts,
)
from graphs.quality import RULE_TEXT as QUALITY_RULE_TEXT
from graphs.serving import shared_prompts, under_root
from graphs.store import DEFAULT_DB, FINAL, EpisodeRecord, Judgement, Store
from graphs.store_io import on_store

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


def screen_episodes(store: Store, culture: str, quality_gate: bool = True) -> tuple[list[EpisodeRecord], Counter]:
    """`graphs.filter.screen` over a culture's stored episodes: (finished episodes fit to judge, in id order;
    why each other finished episode is left out), the quality gate applied unless `quality_gate` is off."""
    return screen(((e, store.turns(e.id)) for e in store.episodes(culture) if e.status in FINAL), quality_gate)


def judgeable_episodes(store: Store, culture: str, quality_gate: bool = True) -> list[EpisodeRecord]:
    """Finished episodes with at least MIN_UTTERANCES utterances that pass the quality gate (see
    `graphs.filter.screen`)."""
    return screen_episodes(store, culture, quality_gate)[0]


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
    params = replace(ctx.params, seed=call_seed(ctx.seed, 0, f"judge-{aspect}"),
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
        params = replace(ctx.params, seed=call_seed(ctx.seed, i, "judge-sotopia"), prefix=f"{dimensions[0][0]}:")
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
    """A batch of episodes to judge: `python -m graphs.judge`'s flags and the served `judge_batch` graph's input."""

    culture: str = required("ISO-3 code of the culture whose episodes to judge, e.g. CHN")
    model: str = option("smollm2", f"judge model spec: {MODEL_SPECS}")
    db: str = option(DEFAULT_DB, "SQLite store written by graphs.simulate (served: under the serving root)")
    prompts: str | None = option(None, "directory whose templates override the built-in ones (served: under the "
                                       "serving root)", aliases=["--prompts_dir", "--prompts-dir"])
    cultures_dir: str | None = option(None, "directory of extra culture YAML files (served: under the serving root)")
    concurrency: int = option(8, "episodes judged at once (and in-process batch size)")
    max_new_tokens: int = option(200, "per free-text answer (the paper: 200); a structured answer's limit comes from "
                                      "its shape")
    unstructured: bool = option(False, UNSTRUCTURED_HELP)
    seed: int = option(0, "seeds the judge's sampling")
    rejudge: bool = option(False, "judge again episodes this model has already judged")
    sotopia: bool = option(False, "also score both participants on the SOTOPIA dimensions (goal, believability, ...)")
    filter: str = option(PAPER_RULE_TEXT, "rule for the kept/dropped summary: 'none' (keep everything, the paper's "
                                          "ablation) or aspect=label[@conf/conf],... (default: the paper's rule)")
    on_invalid: Literal["keep", "drop"] = option(
        "keep", "what an invalid judgement of an aspect the rule names does (default: keep, the paper's)")
    repetition: str = option(DRY_DEFAULT_TEXT, f"the judge's {REPETITION_HELP}")
    quality_gate: bool = option(True, "leave out, before judging, episodes that fail the rule-based quality gate "
                                      f"({QUALITY_RULE_TEXT}); --no-quality-gate keeps them")
    retry_failed: bool = option(False, "judge again episodes whose judging failed permanently (a prompt past the "
                                       "model's context, an HTTP 4xx other than 408/409/429); other failures are "
                                       "always retried")


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


def resolve(request: JudgeRequest, *, served: bool = False, origin: dict | None = None,
            model: Model | None = None) -> Judging:
    """Check a request and load what it names, the model last (`model` if given); one-line errors (JudgeError,
    CultureError, PromptError, ModelSpecError, BatchInputError). Served: paths under the serving root."""
    r = request
    if r.concurrency < 1 or r.max_new_tokens < 1:
        raise JudgeError("concurrency and max_new_tokens must be at least 1")
    try:
        rule = FilterRule.parse(r.filter, r.on_invalid, r.quality_gate)
        repetition = Repetition.parse(r.repetition)
    except (FilterRuleError, RepetitionError) as exc:
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
    with Store(db) as store:
        judgeable, left_out = screen_episodes(store, culture.code, rule.quality_gate)
    if not judgeable:
        gated = f", {left_out[QUALITY_GATE_ANY]} failed the quality gate" if left_out[QUALITY_GATE_ANY] else ""
        raise JudgeError(f"{r.db}: no finished {culture.code} episodes with at least {MIN_UTTERANCES} "
                         f"utterances to judge ({left_out[TOO_FEW_UTTERANCES]} finished with fewer{gated}; run "
                         "graphs.simulate first)")
    config, command = provenance(r, origin, "judge")
    return Judging(request=r, culture=culture, prompts=prompts, model=stage_model(r, db, served=served, model=model),
                   db=db, rule=rule, params=replace(JudgeContext.params, max_new_tokens=r.max_new_tokens,
                                                                  repetition=repetition),
                   config={**config, "prompt_versions": versions}, command=command)


FAILURES = "judge"  # the stage's name in the store's failures


async def _plan(j: Judging) -> dict:
    r = j.request

    def record(store: Store) -> tuple[str, list[EpisodeRecord], list[str], set[str]]:
        episodes = judgeable_episodes(store, j.culture.code, j.rule.quality_gate)
        todo = [e for e in episodes if r.rejudge or needs_judging(store, e.id, j.model.identity, r.sotopia)]
        ids = [e.id for e in episodes]
        permanent = {f["item_id"] for f in store.failures(FAILURES, ids, j.model.identity) if f["permanent"]}
        return store.start_run(j.command, j.config), todo, ids, permanent

    run_id, waiting, ids, permanent = await on_store(j.db, record)
    held = set() if r.retry_failed else {e.id for e in waiting if e.id in permanent}
    todo = [{"id": e.id, "scenario_id": e.scenario_id} for e in waiting if e.id not in held]
    unfit = await _unfit(j, todo, run_id)
    return {"run_id": run_id, "planned": len(ids), "skipped": len(ids) - len(waiting),
            "not_retried": len(held) + len(unfit), "ids": ids, "todo": [e for e in todo if e["id"] not in unfit]}


async def _unfit(j: Judging, todo: list[dict], run_id: str) -> set[str]:
    """The episodes whose judge prompt cannot fit the model's context, stored failed (`unfit_items`)."""

    async def prompts(item: dict) -> list:
        ctx = await _context(j, item, j.model)
        return [judge_messages(ctx, "meta", quality=None, alignment=None)[0]]  # the longest of the three

    async def store(item: dict, failure: Failure) -> None:
        await store_failure(j.db, FAILURES, item["id"], j.model.identity, failure, run_id)

    return {item["id"] for item in await unfit_items(j.model, todo, prompts, store)}



async def _context(j: Judging, item: dict, model: Model) -> JudgeContext:
    scenario, turns = await on_store(j.db, lambda store: (store.scenario(item["scenario_id"]),
                                                          store.turns(item["id"])))
    return JudgeContext(scenario=scenario, culture=j.culture, turns=tuple(valid_turns(turns)), model=model,
                        prompts=j.prompts, seed=call_seed(j.request.seed, 0, item["id"]), params=j.params)


async def _judge_one(j: Judging, item: dict, run_id: str, graph) -> dict:
    """Judge one episode with the judge graph and store its judgements; a failure stores no judgement, only why
    (`Store.failures`)."""
    with counted(j.model) as model:
        ctx = await _context(j, item, model)
        try:
            state = await (JUDGE_SOTOPIA if j.request.sotopia else graph).ainvoke({"judgements": []}, context=ctx)
        except Exception as exc:  # noqa: BLE001 - counted, reported, retried on rerun unless permanent
            failure = failure_of(exc)
            await store_failure(j.db, FAILURES, item["id"], j.model.identity, failure, run_id)
            return {"id": item["id"], "status": "failed", "usage": model.usage.totals(), "error": failure.error}
    await on_store(j.db, Store.put_judgements, item["id"], j.model.identity,
                   [Judgement(**row, run_id=run_id) for row in state["judgements"]])
    await on_store(j.db, Store.clear_failure, FAILURES, item["id"], j.model.identity)
    return {"id": item["id"], "status": "judged", "usage": model.usage.totals()}


async def _summarize(j: Judging, state: dict) -> dict:
    results = state.get("results", [])
    counts = {"skipped": state["skipped"], "judged": sum(r["status"] == "judged" for r in results),
              "failed": sum(r["status"] == "failed" for r in results)}
    summary = await on_store(j.db, judgement_summary, j.culture.code, j.model.identity, j.rule)
    summary.update(this_run=counts, usage=total_usage(results), wall_s=round(time.time() - state["started"], 1),
                   repetition={"requested": str(j.params.repetition),
                               "applied": j.model.repetition_controls(j.params.repetition)},
                   not_retried=state.get("not_retried", 0),
                   failures=failure_lines(await on_store(j.db, Store.failures, FAILURES, state["ids"], j.model.identity)))
    await on_store(j.db, Store.finish_run, state["run_id"], summary)
    return summary


JUDGE, JUDGE_SOTOPIA = build_judge_graph(), build_judge_graph(sotopia=True)  # run as subgraphs, once per episode


def report(j: Judging, summary: dict) -> tuple[str, int]:
    """The command's closing lines (the stored failures by reason among them); exit status 1 when an episode failed
    to be judged (a rerun retries it) or is left out after failing permanently."""
    counts = summary["this_run"]
    valid = ", ".join(f"{a} {s['valid']}/{s['answers']}" for a, s in summary["aspects"].items()
                      if s.get("answers") and a in ASPECTS)
    scored = [s for a, s in summary["aspects"].items() if a not in ASPECTS]
    if scored:
        valid += f", SOTOPIA scores {sum(s['valid'] for s in scored)}/{sum(s['answers'] for s in scored)}"
    text = (
        f"\n{summary['episodes']} {j.culture.code} episodes"
        + left_out_text(summary["not_judgeable"])
        + f": {counts['judged']} judged now, {counts['skipped']} "
        f"already judged by {j.model.identity}, {counts['failed']} failed"
        + (f", {summary['not_retried']} failed permanently before and not retried (--retry-failed sends them again)"
           if summary.get("not_retried") else "")
        + f"; valid answers: {valid or 'none'}; "
        f"rule {j.rule}: {summary['kept']} kept, {summary['dropped']} dropped "
        f"({summary['kept_despite_invalid']} kept with an invalid judgement)"
        + "".join(f"; dropped for {reason}: {n}" for reason, n in summary["drop_reasons"].items())
        + f"; repetition controls: {summary['repetition']['requested']}"
        + (f" ({', '.join(f'{k}={v}' for k, v in summary['repetition']['applied'].items())})"
           if summary['repetition']['applied'] else "")
        + f"; {summary['wall_s']} s"
        + failure_report(summary.get("failures", []))
    )
    return text, 1 if counts["failed"] or summary.get("not_retried") else 0


STAGE = Stage(name="judge_episode", module="graphs.judge", request=JudgeRequest, context=Judging, resolve=resolve,
              plan=_plan, work=_judge_one, summarize=_summarize, report=report,
              errors=(JudgeError, BatchInputError, CultureError, PromptError, ModelSpecError), subgraph=JUDGE,
              unit="ep")
BATCH = graph_of(STAGE)


def judgement_summary(store: Store, culture: str, judge_model: str, rule: FilterRule) -> dict:
    """Valid shares and label counts per aspect, and what the rule keeps, over the judgeable episodes."""
    judgeable, left_out = screen_episodes(store, culture, rule.quality_gate)
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


def main(argv: list[str] | None = None) -> None:
    """`python -m graphs.judge` (the module docstring has examples; `--help` lists the flags)."""
    command_line(STAGE, argv)


if __name__ == "__main__":
    main()
