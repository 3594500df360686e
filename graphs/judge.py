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

The filter is separate from judging: `FilterRule` + `verdict()` decide from stored judgements, so the
dataset exporter and the site viewer apply the same rule. The paper's rule (the default) drops an
episode when the meta label or the quality label is bad with "very confident".
"""

from __future__ import annotations

import argparse
import asyncio
import operator
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Literal, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from agents.answers import CONFIDENCES, AlignmentAnswer, Answer, MetaAnswer, QualityAnswer, SotopiaAnswer
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
)
from agents.prompts import PromptError, Prompts
from agents.records import Action, Culture, Scenario, Turn
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
    store_file,
    unfit_items,
)
from graphs.episode import answer_format_for
from graphs.serving import shared_prompts, under_root
from graphs.store import DEFAULT_DB, FINAL, Store
from graphs.store_io import on_store

# aspect -> its answer shape (agents.answers); the shape's first field is the label, checked by the filter.
SHAPES: dict[str, type[Answer]] = {"quality": QualityAnswer, "culture": AlignmentAnswer, "meta": MetaAnswer}
LABEL_FIELDS = {"quality": "quality", "culture": "alignment", "meta": "label"}
# aspect -> (answer field, label vocabulary), read off the shapes; the confidence vocabulary is shared.
LABELS: dict[str, tuple[str, tuple[str, ...]]] = {
    aspect: (field, SHAPES[aspect].model_fields[field].annotation.__args__) for aspect, field in LABEL_FIELDS.items()
}
ASPECTS = tuple(LABELS)
PROMPT_NAMES = ["judge_system", "judge_quality", "judge_culture", "judge_meta"]
# Optional SOTOPIA-EVAL dimensions, scored per participant, read off SotopiaAnswer:
# dimension -> (free-text label, low, high, what it measures). Stored as aspect "<dimension>:<participant
# index>", e.g. "goal:0", with the number in `score`.
SOTOPIA_DIMENSIONS: dict[str, tuple[str, int, int, str]] = {
    name: (label(SotopiaAnswer, name),
           *(next(getattr(m, bound) for m in info.metadata if hasattr(m, bound)) for bound in ("ge", "le")),
           info.description)
    for name, info in SotopiaAnswer.model_fields.items()
}
SOTOPIA_ASPECTS = tuple(f"{d}:{i}" for i in (0, 1) for d in SOTOPIA_DIMENSIONS)
# Episodes with fewer utterances than this (`utterances`) give nothing to judge or to train on.
MIN_UTTERANCES = 2
TOO_FEW_UTTERANCES = f"fewer than {MIN_UTTERANCES} utterances (silent or one-sided)"


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


# ------------------------------------------------------------------ filter


@dataclass(frozen=True)
class Condition:
    """Drop when `aspect` has `label` with one of `confidences` (any confidence when empty)."""

    aspect: str
    label: str
    confidences: tuple[str, ...] = ()

    def matches(self, row: dict) -> bool:
        return row["label"] == self.label and (not self.confidences or row["confidence"] in self.confidences)

    def __str__(self) -> str:
        return f"{self.aspect}={self.label}" + (f"@{'/'.join(self.confidences)}" if self.confidences else "")


class JudgeError(ValueError):
    """Bad input to the judge command, reported as one line."""


class FilterRuleError(JudgeError):
    """A filter rule that names an unknown aspect, label or confidence."""


@dataclass(frozen=True)
class FilterRule:
    """Which judged episodes to drop. `on_invalid` says what an invalid or missing judgement of an aspect
    the rule names does: "keep" (no evidence against the episode, the paper's literal rule) or "drop".
    `keep_all` keeps every episode, judged or not (the paper's no-filtering ablation)."""

    drop_if: tuple[Condition, ...] = ()
    on_invalid: str = "keep"
    keep_all: bool = False

    @classmethod
    def parse(cls, text: str, on_invalid: str = "keep") -> FilterRule:
        """'none', or comma-separated conditions 'aspect=label[@confidence[/confidence...]]'."""
        if on_invalid not in ("keep", "drop"):
            raise FilterRuleError(f"on-invalid {on_invalid!r}: expected keep or drop")
        if text.strip().lower() == "none":
            return cls(keep_all=True, on_invalid=on_invalid)
        conditions = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            aspect, sep, rest = part.partition("=")
            label, _, confs = rest.partition("@")
            aspect, label = aspect.strip(), label.strip()
            confidences = tuple(c.strip() for c in confs.split("/") if c.strip())
            if not sep or aspect not in LABELS:
                raise FilterRuleError(f"filter rule {part!r}: expected aspect=label[@confidence] with aspect one of "
                                      f"{', '.join(ASPECTS)}")
            if label not in LABELS[aspect][1]:
                raise FilterRuleError(f"filter rule {part!r}: label must be one of {', '.join(LABELS[aspect][1])}")
            if any(c not in CONFIDENCES for c in confidences):
                raise FilterRuleError(f"filter rule {part!r}: confidence must be one of {', '.join(CONFIDENCES)}")
            conditions.append(Condition(aspect, label, confidences))
        if not conditions:
            raise FilterRuleError("filter rule: empty (use 'none' to keep every episode)")
        return cls(drop_if=tuple(conditions), on_invalid=on_invalid)

    def __str__(self) -> str:
        body = "none" if self.keep_all else ",".join(map(str, self.drop_if))
        return f"{body} (on invalid: {self.on_invalid})"


PAPER_RULE_TEXT = "meta=bad@very confident,quality=bad@very confident"
PAPER_RULE = FilterRule.parse(PAPER_RULE_TEXT)


@dataclass(frozen=True)
class Verdict:
    kept: bool
    judged: bool
    reasons: tuple[str, ...] = ()  # the conditions that dropped it, or why it was not judged
    invalid: tuple[str, ...] = ()  # aspects the rule names whose judgement is invalid or missing


def verdict(judgements: list[dict], rule: FilterRule = PAPER_RULE) -> Verdict:
    """Keep or drop one episode from one judge model's stored judgements (`Store.judgements(ep, model)`)."""
    by_aspect = {row["aspect"]: row for row in judgements}
    if rule.keep_all:
        return Verdict(kept=True, judged=bool(by_aspect))
    if not by_aspect:
        return Verdict(kept=False, judged=False, reasons=("not judged",))
    reasons, invalid = [], []
    for condition in rule.drop_if:
        row = by_aspect.get(condition.aspect)
        if row is None or not row["valid"]:
            invalid.append(condition.aspect)
        elif condition.matches(row):
            reasons.append(str(condition))
    invalid = list(dict.fromkeys(invalid))
    if invalid and rule.on_invalid == "drop":
        reasons.extend(f"{aspect} invalid" for aspect in invalid)
    return Verdict(kept=not reasons, judged=True, reasons=tuple(reasons), invalid=tuple(invalid))


def episode_verdicts(store: Store, culture: str, judge_model: str | None, rule: FilterRule = PAPER_RULE
                     ) -> list[tuple[dict, Verdict]]:
    """(episode row, verdict) for every judgeable episode of a culture, in id order."""
    return [
        (row, verdict(store.judgements(row["id"], judge_model) if judge_model else [], rule))
        for row in judgeable_episodes(store, culture)
    ]


def judgeable_episodes(store: Store, culture: str) -> list[dict]:
    """Finished episodes with at least MIN_UTTERANCES utterances (see `screen_episodes`)."""
    return screen_episodes(store, culture)[0]


def screen_episodes(store: Store, culture: str) -> tuple[list[dict], Counter]:
    """(finished episodes fit to judge, in id order; why each other finished episode is left out).

    An episode needs MIN_UTTERANCES utterances among its valid turns: two personas who only choose the
    action `none` have turns but no conversation. An episode that ended on an unparseable turn counts
    with the turns before it, as the paper kept truncated dialogues."""
    judgeable, left_out = [], Counter()
    for row in store.episodes(culture):
        if row["status"] not in FINAL:
            continue
        if utterances(valid_turns(store.turns(row["id"]))) >= MIN_UTTERANCES:
            judgeable.append(row)
        else:
            left_out[TOO_FEW_UTTERANCES] += 1
    return judgeable, left_out


def utterances(turns: list[Turn]) -> int:
    """Turns that say something: speak, or a non-verbal act, with text (not `none`, not a bare leave)."""
    return sum(t.valid and t.action in (Action.SPEAK, Action.NON_VERBAL) and bool(t.text.strip()) for t in turns)


def valid_turns(turns: list[Turn]) -> list[Turn]:
    """The turns before the first invalid one (an episode ends at its first unparseable turn)."""
    out = []
    for t in turns:
        if not t.valid:
            break
        out.append(t)
    return out


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
    return not wanted <= {r["aspect"] for r in store.judgements(ep_id, judge_model)}


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
    rule = FilterRule.parse(r.filter, r.on_invalid)
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
    config, command = provenance(r, origin, "judge")
    return Judging(request=r, culture=culture, prompts=prompts, model=stage_model(r, db, served=served, model=model),
                   db=db, rule=rule, params=replace(JudgeContext.params, max_new_tokens=r.max_new_tokens),
                   config={**config, "prompt_versions": versions}, command=command)


FAILURES = "judge"  # the stage's name in the store's failures


async def _plan(j: Judging) -> dict:
    r = j.request

    def record(store: Store) -> tuple[str, list[dict], list[str], set[str]]:
        episodes = judgeable_episodes(store, j.culture.code)
        todo = [e for e in episodes if r.rejudge or needs_judging(store, e["id"], j.model.spec, r.sotopia)]
        ids = [e["id"] for e in episodes]
        permanent = {f["item_id"] for f in store.failures(FAILURES, ids, j.model.spec) if f["permanent"]}
        return store.start_run(j.command, j.config), todo, ids, permanent

    run_id, waiting, ids, permanent = await on_store(j.db, record)
    held = set() if r.retry_failed else {e["id"] for e in waiting if e["id"] in permanent}
    todo = [{"id": e["id"], "scenario_id": e["scenario_id"]} for e in waiting if e["id"] not in held]
    unfit = await _unfit(j, todo, run_id)
    return {"run_id": run_id, "planned": len(ids), "skipped": len(ids) - len(waiting),
            "not_retried": len(held) + len(unfit), "ids": ids, "todo": [e for e in todo if e["id"] not in unfit]}


async def _unfit(j: Judging, todo: list[dict], run_id: str) -> set[str]:
    """The episodes whose judge prompt cannot fit the model's context, stored failed (`unfit_items`)."""

    async def prompts(item: dict) -> list:
        ctx = await _context(j, item, j.model)
        return [judge_messages(ctx, "meta", quality=None, alignment=None)[0]]  # the longest of the three

    async def store(item: dict, failure: Failure) -> None:
        await on_store(j.db, _store_failure, item["id"], j.model.spec, failure, run_id)

    return {item["id"] for item in await unfit_items(j.model, todo, prompts, store)}


def _store_failure(store: Store, ep_id: str, judge_model: str, failure: Failure, run_id: str) -> None:
    store.put_failure(FAILURES, ep_id, judge_model, reason=failure.reason, error=failure.error,
                      permanent=failure.permanent, run_id=run_id)


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
            await on_store(j.db, _store_failure, item["id"], j.model.spec, failure, run_id)
            return {"id": item["id"], "status": "failed", "usage": model.usage.totals(), "error": failure.error}
    await on_store(j.db, Store.put_judgements, item["id"], j.model.spec,
                   [{**row, "run_id": run_id} for row in state["judgements"]])
    await on_store(j.db, Store.clear_failure, FAILURES, item["id"], j.model.spec)
    return {"id": item["id"], "status": "judged", "usage": model.usage.totals()}


async def _summarize(j: Judging, state: dict) -> dict:
    results = state.get("results", [])
    usage = Counter()
    for r in results:
        usage.update(r["usage"])
    counts = {"skipped": state["skipped"], "judged": sum(r["status"] == "judged" for r in results),
              "failed": sum(r["status"] == "failed" for r in results)}
    summary = await on_store(j.db, judgement_summary, j.culture.code, j.model.spec, j.rule)
    summary.update(this_run=counts, usage=dict(usage), wall_s=round(time.time() - state["started"], 1),
                   not_retried=state.get("not_retried", 0),
                   failures=failure_lines(await on_store(j.db, Store.failures, FAILURES, state["ids"], j.model.spec)))
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
        + "".join(f" ({n} more left out: {reason})" for reason, n in summary["not_judgeable"].items())
        + f": {counts['judged']} judged now, {counts['skipped']} "
        f"already judged by {j.model.spec}, {counts['failed']} failed"
        + (f", {summary['not_retried']} failed permanently before and not retried (--retry-failed sends them again)"
           if summary.get("not_retried") else "")
        + f"; valid answers: {valid or 'none'}; "
        f"rule {j.rule}: {summary['kept']} kept, {summary['dropped']} dropped "
        f"({summary['kept_despite_invalid']} kept with an invalid judgement)"
        + "".join(f"; dropped for {reason}: {n}" for reason, n in summary["drop_reasons"].items())
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
    aspects: dict[str, Counter] = {a: Counter() for a in ASPECTS}
    verdicts = []
    judgeable, left_out = screen_episodes(store, culture)
    for row in judgeable:
        judgements = store.judgements(row["id"], judge_model)  # read once, for the verdict and the counts
        verdicts.append((row, verdict(judgements, rule)))
        for j in judgements:
            c = aspects.setdefault(j["aspect"], Counter())
            c["answers"] += 1
            c["valid"] += j["valid"]
            if j["valid"] and j["label"] is not None:
                c[f"{j['label']}@{j['confidence']}"] += 1
    reasons = Counter(r for _, v in verdicts for r in v.reasons)
    return {
        "episodes": len(verdicts),
        "not_judgeable": dict(left_out),  # finished episodes left out of everything, by reason
        "judged": sum(v.judged for _, v in verdicts),
        "kept": sum(v.kept for _, v in verdicts),
        "dropped": sum(v.judged and not v.kept for _, v in verdicts),
        "kept_despite_invalid": sum(v.kept and bool(v.invalid) for _, v in verdicts),
        "drop_reasons": dict(reasons),
        "aspects": {
            a: {**dict(c), "valid_share": round(c["valid"] / c["answers"], 4) if c["answers"] else None}
            for a, c in aspects.items()
        },
        "rule": str(rule),
    }


def add_filter_arguments(p: argparse.ArgumentParser, purpose: str) -> None:
    """--filter and --on-invalid, read by `FilterRule.parse` the same way in every command."""
    p.add_argument("--filter", default=PAPER_RULE_TEXT,
                   help=f"{purpose}: 'none' (keep everything, the paper's ablation) or "
                        "aspect=label[@conf/conf],... (default: the paper's rule)")
    p.add_argument("--on-invalid", default="keep", choices=["keep", "drop"],
                   help="what an invalid judgement of an aspect the rule names does (default: keep, the paper's)")


def main(argv: list[str] | None = None) -> None:
    """`python -m graphs.judge` (the module docstring has examples; `--help` lists the flags)."""
    command_line(STAGE, argv)


if __name__ == "__main__":
    main()
