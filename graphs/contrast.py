"""Contrastive replies: what each kept line's persona says when its system prompt leaves the culture out.

    python -m graphs.contrast --culture CHN --model smollm2
    python -m training.dataset --culture CHN --out runs/CHN-data --contrastive-model smollm2

For every spoken line of an episode the filter keeps (`graphs.judged` over one judge model's judgements, with the
same `--judge-model`, `--filter`, `--on-invalid` and `--no-quality-gate` as `training.dataset`), the model is asked
for that line again exactly as the episode asked for it (`graphs.episode.speaker_view`, the episode's history and
its stored decoding settings) except that the system prompt is `roleplay_system_ungrounded`: the culture is the only
difference. `training.dataset --contrastive-model M` turns the stored replies into DPO pairs (prompt: the
conversation before the line; chosen: the grounded line; rejected: this reply). Use the model that played the
episodes. A line that follows its persona's own last line (the partner said nothing since) is not asked: there is
nothing to answer.

Each reply is stored in the `contrasts` table as it ends, keyed by a hash of what determines it (episode, line,
model, seed, structured or free text, template versions), with its outcome: a pair, or why not (it did not parse,
said nothing, or said exactly the grounded line). A rerun skips stored replies and retries failed ones, except
those that failed permanently (a prompt past the model's context, an HTTP 4xx other than 408/409/429), which wait
for `--retry-failed`. The command runs the batch graph that `langgraph dev` serves as `contrast_batch`
(`graphs/batch.py`), one spoken line per item:

    START -> plan -> Send(contrast_line) x N -> summarize -> END      (contrast_line: START -> ungrounded -> END)
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from agents.answers import TurnAnswer
from agents.cultures import CultureError, load_culture
from agents.models import (
    MODEL_SPECS,
    UNSTRUCTURED_HELP,
    GenerationParams,
    Model,
    ModelSpecError,
    Repetition,
    RepetitionError,
)
from agents.prompts import PromptError, Prompts
from agents.provenance import git_commit
from agents.records import Action, Culture, Turn
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
from graphs.episode import EpisodeContext, make_turn, speaker_view
from graphs.filter import PAPER_RULE_TEXT, FilterRule, FilterRuleError, valid_turns
from graphs.judged import Episode, JudgedError, judged_episodes, sole_judge
from graphs.quality import RULE_TEXT as QUALITY_RULE_TEXT
from graphs.serving import shared_prompts, under_root
from graphs.store import DEFAULT_DB, ContrastOutcome, ContrastRecord, Store, contrast_id
from graphs.store_io import on_store

PROMPT_NAMES = ["roleplay_system_ungrounded", "roleplay_turn"]
FAILURES = "contrast"  # the stage's name in the store's failures
# Decoding settings an episode stores with its request; its lines are asked for again with the same ones.
EPISODE_DECODING = ("temperature", "top_p", "max_new_tokens")


class ContrastError(ValueError):
    """Bad input to the contrastive stage (nothing kept to contrast, an unknown judge, a bad rule); one line."""


@dataclass(frozen=True)
class ContrastRequest:
    """Kept lines to ask again without the culture: `python -m graphs.contrast`'s flags and the served
    `contrast_batch` graph's input."""

    culture: str = required("ISO-3 code of the culture whose kept episodes to contrast, e.g. CHN")
    model: str = option("smollm2", f"model spec that writes the ungrounded replies (use the one that played the "
                                   f"episodes): {MODEL_SPECS}")
    db: str = option(DEFAULT_DB, "SQLite store with simulated and judged episodes (served: under the serving root)")
    judge_model: str | None = option(None, "whose judgements filter the episodes (default: the only judge model in "
                                           "the store)")
    filter: str = option(PAPER_RULE_TEXT, "which judged episodes are kept: 'none' (every judgeable one) or "
                                          "aspect=label[@conf/conf],... (default: the paper's rule)")
    on_invalid: Literal["keep", "drop"] = option(
        "keep", "what an invalid judgement of an aspect the rule names does (default: keep, the paper's)")
    quality_gate: bool = option(True, f"leave out episodes that fail the rule-based quality gate ({QUALITY_RULE_TEXT}); "
                                      "--no-quality-gate keeps them")
    prompts: str | None = option(None, "directory whose templates override the built-in ones (served: under the "
                                       "serving root)", aliases=["--prompts_dir", "--prompts-dir"])
    cultures_dir: str | None = option(None, "directory of extra culture YAML files (served: under the serving root)")
    concurrency: int = option(8, "lines asked at once (and in-process batch size)")
    unstructured: bool = option(False, UNSTRUCTURED_HELP)
    seed: int = option(0, "seeds the sampling of the replies")
    retry_failed: bool = option(False, "ask again lines that failed permanently (a prompt past the model's "
                                       "context, an HTTP 4xx other than 408/409/429); other failures are always "
                                       "retried")


@dataclass(frozen=True)
class Contrasting:
    """A resolved contrast request: the batch graph's run context."""

    request: ContrastRequest
    culture: Culture
    prompts: Prompts
    model: Model
    db: Path
    rule: FilterRule
    judge_model: str | None
    prompt_versions: dict
    config: dict
    command: str
    git: str | None = field(default_factory=git_commit)


def resolve(request: ContrastRequest, *, served: bool = False, origin: dict | None = None,
            model: Model | None = None) -> Contrasting:
    """Check a request and load what it names, the model last (`model` if given); one-line errors (ContrastError,
    BatchInputError, CultureError, PromptError, ModelSpecError). Served: paths under the serving root."""
    r = request
    if r.concurrency < 1:
        raise ContrastError("concurrency must be at least 1")
    try:
        rule = FilterRule.parse(r.filter, r.on_invalid, r.quality_gate)
    except FilterRuleError as exc:
        raise ContrastError(str(exc)) from None
    path = (lambda p, field: under_root(p, field)) if served else (lambda p, field: p and Path(p))
    db, prompts_dir, cultures_dir = path(r.db, "db"), path(r.prompts, "prompts"), path(r.cultures_dir, "cultures_dir")
    if not db.is_file():
        raise ContrastError(f"db: {r.db}: no such store (run graphs.simulate and graphs.judge first)")
    db = store_file(db)
    culture = load_culture(r.culture, cultures_dir)
    # persona_attributes: kept lines of scenarios with attributes render it
    prompts = shared_prompts(str(prompts_dir) if prompts_dir else None, (*PROMPT_NAMES, "persona_attributes")) \
        if served else Prompts(prompts_dir)
    versions = prompts.versions(PROMPT_NAMES)  # fails before a model loads
    with Store(db) as store:
        try:
            judge = r.judge_model or (None if rule.keep_all else sole_judge(store, culture.code))
            kept = [e for e in judged_episodes(store, culture.code, judge, rule)[0] if e.verdict.kept]
        except (FilterRuleError, JudgedError) as exc:
            raise ContrastError(str(exc)) from None
    if not kept:
        raise ContrastError(f"{r.db}: no {culture.code} episode passes the filter ({rule}, judge {judge}): nothing "
                            "to contrast")
    config, command = provenance(r, origin, "contrast")
    return Contrasting(request=r, culture=culture, prompts=prompts,
                       model=stage_model(r, db, served=served, model=model), db=db, rule=rule, judge_model=judge,
                       prompt_versions=versions, config={**config, "prompt_versions": versions}, command=command)


# ------------------------------------------------------------------ which lines


def after_own_line(turns: tuple[Turn, ...], i: int) -> bool:
    """True when turn i's persona spoke the last words before it: the partner said nothing since, so there is no
    partner line to answer (such a line gives no pair)."""
    spoken = [t for t in turns[:i] if t.text]
    return bool(spoken) and spoken[-1].speaker == turns[i].speaker


def contrast_lines(episode: Episode) -> tuple[list[int], int]:
    """(the indexes, in `episode.turns`, of the spoken lines to contrast; how many spoken lines follow their
    persona's own line and are not asked)."""
    spoken = [i for i, t in enumerate(episode.turns) if t.action is Action.SPEAK and t.text]
    asked = [i for i in spoken if not after_own_line(episode.turns, i)]
    return asked, len(spoken) - len(asked)


def line_id(c: Contrasting, episode_id: str, turn_index: int) -> str:
    """The stored reply's id for one line under this request."""
    return contrast_id(episode_id, turn_index, c.model.identity, c.request.seed, c.model.structured, c.prompt_versions)


def outcome_of(reply: Turn, grounded: Turn) -> ContrastOutcome:
    if not reply.valid:
        return ContrastOutcome.INVALID
    if not reply.text:
        return ContrastOutcome.SILENT
    return ContrastOutcome.IDENTICAL if reply.text == grounded.text else ContrastOutcome.PAIR


# ------------------------------------------------------------------ graph


class ContrastState(TypedDict, total=False):
    reply: dict  # the ungrounded reply, a Turn record as a dict


@dataclass(frozen=True)
class LineContext:
    """One line to ask again: the episode's role-play context with the ungrounded system prompt, the persona and
    the history before the line."""

    episode: EpisodeContext
    speaker: int
    history: tuple[Turn, ...]
    index: int  # the line's turn index, kept on the reply
    params: GenerationParams  # the episode's speaker settings, seeded for this line


async def ungrounded(state: ContrastState, runtime: Runtime[LineContext]) -> dict:
    ctx = runtime.context
    asked = await ctx.episode.model.aanswer(speaker_view(ctx.episode, ctx.speaker, list(ctx.history)), TurnAnswer,
                                            task="contrastive", params=ctx.params)
    name = ctx.episode.scenario.participants[ctx.speaker].name
    return {"reply": make_turn(asked, ctx.index, ctx.speaker, name).model_dump(mode="json")}


def build_contrast_graph():
    graph = StateGraph(ContrastState, context_schema=LineContext)
    graph.add_node("ungrounded", ungrounded)
    graph.add_edge(START, "ungrounded")
    graph.add_edge("ungrounded", END)
    return graph.compile()


CONTRAST = build_contrast_graph()  # run as a subgraph, once per line


# ------------------------------------------------------------------ running


async def _line_context(c: Contrasting, item: dict, model: Model) -> tuple[LineContext, Turn]:
    def read(store: Store):
        row = store.episode(item["episode_id"])
        return row, store.scenario(row.scenario_id), store.turns(row.id)

    row, scenario, turns = await on_store(c.db, read)
    turns = tuple(valid_turns(turns))  # as `judged_episodes` gave them to the plan, which indexed them
    i = item["position"]
    config = row.config or {}
    try:
        repetition = Repetition.parse(config["repetition"]) if config.get("repetition") else \
            EpisodeContext.speaker_params.repetition
    except RepetitionError:
        repetition = EpisodeContext.speaker_params.repetition
    params = replace(EpisodeContext.speaker_params, seed=call_seed(c.request.seed, i, f"contrastive:{row.id}"),
                     repetition=repetition,
                     **{k: config[k] for k in EPISODE_DECODING if config.get(k) is not None})
    episode = EpisodeContext(scenario=scenario, culture=c.culture, model=model, prompts=c.prompts,
                             system_template="roleplay_system_ungrounded")
    return LineContext(episode=episode, speaker=turns[i].speaker, history=turns[:i], index=turns[i].index,
                       params=params), turns[i]


async def _plan(c: Contrasting) -> dict:
    r = c.request

    def record(store: Store):
        kept = [e for e in judged_episodes(store, c.culture.code, c.judge_model, c.rule)[0] if e.verdict.kept]
        items, not_asked = [], 0
        for e in kept:
            asked, after_own = contrast_lines(e)
            not_asked += after_own
            items += [{"id": line_id(c, e.id, e.turns[i].index), "episode_id": e.id, "position": i} for i in asked]
        ids = [item["id"] for item in items]
        done = store.contrast_ids(ids)
        permanent = {f["item_id"] for f in store.failures(FAILURES, ids, c.model.identity) if f["permanent"]}
        return store.start_run(c.command, c.config), items, done, permanent, len(kept), not_asked

    run_id, items, done, permanent, kept, not_asked = await on_store(c.db, record)
    waiting = [item for item in items if item["id"] not in done]
    held = set() if r.retry_failed else {item["id"] for item in waiting if item["id"] in permanent}
    todo = [item for item in waiting if item["id"] not in held]
    unfit = await _unfit(c, todo, run_id)
    return {"run_id": run_id, "planned": len(items), "skipped": len(done), "not_retried": len(held) + len(unfit),
            "ids": [item["id"] for item in items], "todo": [item for item in todo if item["id"] not in unfit],
            "summary": {"kept_episodes": kept, "after_own_line": not_asked}}


async def _unfit(c: Contrasting, todo: list[dict], run_id: str) -> set[str]:
    """The lines whose prompt cannot fit the model's context, stored failed (`unfit_items`)."""

    async def prompts(item: dict) -> list:
        ctx, _ = await _line_context(c, item, c.model)
        return [speaker_view(ctx.episode, ctx.speaker, list(ctx.history))]

    async def store(item: dict, failure: Failure) -> None:
        await store_failure(c.db, FAILURES, item["id"], c.model.identity, failure, run_id)

    return {item["id"] for item in await unfit_items(c.model, todo, prompts, store)}



async def _contrast_one(c: Contrasting, item: dict, run_id: str, graph) -> dict:
    """Ask one line again without the culture and store the reply with its outcome; a failure stores no reply,
    only why (`Store.failures`)."""
    with counted(c.model) as model:
        ctx, grounded = await _line_context(c, item, model)
        try:
            state = await graph.ainvoke({}, context=ctx)
        except Exception as exc:  # noqa: BLE001 - counted, reported, retried on rerun unless permanent
            failure = failure_of(exc)
            await store_failure(c.db, FAILURES, item["id"], c.model.identity, failure, run_id)
            return {"id": item["id"], "status": "failed", "usage": model.usage.totals(), "error": failure.error}
    reply = Turn.model_validate(state["reply"])
    outcome = outcome_of(reply, grounded)
    record = ContrastRecord(
        id=item["id"], episode_id=item["episode_id"], turn_index=reply.index, speaker=reply.speaker,
        model=c.model.identity, seed=c.request.seed, structured=c.model.structured, prompt_versions=c.prompt_versions,
        action=reply.action.value if reply.action else None, text=reply.text, raw=reply.raw, valid=reply.valid,
        outcome=outcome, config=c.config, usage=model.usage.totals(), run_id=run_id, git=c.git)
    await on_store(c.db, Store.put_contrast, record)
    await on_store(c.db, Store.clear_failure, FAILURES, item["id"], c.model.identity)
    return {"id": item["id"], "status": outcome.value, "usage": model.usage.totals()}


async def _summarize(c: Contrasting, state: dict) -> dict:
    results = state.get("results", [])
    ids = state["ids"]

    def read(store: Store) -> tuple[Counter, list[dict]]:
        return store.contrast_outcomes(ids), store.failures(FAILURES, ids, c.model.identity)

    outcomes, failures = await on_store(c.db, read)
    summary = {**(state.get("summary") or {}), "lines": len(ids), "outcomes": {o.value: outcomes[o.value]
                                                                               for o in ContrastOutcome},
               "this_run": {"skipped": state["skipped"], "asked": sum(r["status"] != "failed" for r in results),
                            "failed": sum(r["status"] == "failed" for r in results)},
               "judge_model": c.judge_model, "rule": str(c.rule), "usage": total_usage(results),
               "wall_s": round(time.time() - state["started"], 1), "not_retried": state.get("not_retried", 0),
               "failures": failure_lines(failures)}
    await on_store(c.db, Store.finish_run, state["run_id"], summary)
    return summary


def report(c: Contrasting, summary: dict) -> tuple[str, int]:
    """The command's closing lines; exit status 1 when a line failed (a rerun retries it) or is left out after
    failing permanently."""
    counts, outcomes = summary["this_run"], summary["outcomes"]
    text = (
        f"\n{summary['lines']} spoken lines of {summary.get('kept_episodes', '?')} kept {c.culture.code} episodes "
        f"(judge {c.judge_model}, rule {c.rule}; {summary.get('after_own_line', 0)} more follow their persona's own "
        f"line and are not asked): {counts['asked']} asked now, {counts['skipped']} already stored, "
        f"{counts['failed']} failed"
        + (f", {summary['not_retried']} failed permanently before and not retried (--retry-failed sends them again)"
           if summary.get("not_retried") else "")
        + "; stored replies: " + ", ".join(f"{o} {n}" for o, n in outcomes.items())
        + f"; {summary['wall_s']} s"
        + failure_report(summary.get("failures", []))
    )
    return text, 1 if counts["failed"] or summary.get("not_retried") else 0


STAGE = Stage(name="contrast_line", module="graphs.contrast", request=ContrastRequest, context=Contrasting,
              resolve=resolve, plan=_plan, work=_contrast_one, summarize=_summarize, report=report,
              errors=(ContrastError, BatchInputError, CultureError, PromptError, ModelSpecError), subgraph=CONTRAST,
              unit="line")
BATCH = graph_of(STAGE)


def main(argv: list[str] | None = None) -> None:
    """`python -m graphs.contrast` (the module docstring has examples; `--help` lists the flags)."""
    command_line(STAGE, argv)


if __name__ == "__main__":
    main()
