"""Batch stages: one typed request, three plain functions, one way to fan out, report and exit.

A stage (`graphs.adapt`, `graphs.simulate`, `graphs.judge`, `graphs.contrast`) is
- a frozen request dataclass, the only declaration of its options: each field's type, default and
  `metadata={"help": ..., "aliases": [...]}` make the command's flags (transformers' `HfArgumentParser`,
  `make_parser`), the served graph's input schema (`input_schema`) and the provenance stored with every result
  (`request_json`);
- `resolve(request, served=, origin=, model=)`: check the request and load what it names, the model last, into the
  stage's run context (the "batch"); one-line errors;
- `plan(batch)` -> {"run_id", "planned", "skipped", "ids", "todo": [item, ...], "not_retried"}: what is left to do
  (`not_retried`: items that failed permanently before, or cannot fit the model's context, left out);
  `work(batch, item, run_id, graph)` -> result row {"id", "status", "usage", ...}: one item, stored as it ends;
  `summarize(batch, state)` -> summary (stored with the run); `report(batch, summary)` -> (text, exit status).

Every stage runs as one LangGraph graph, from its command line (`command_line`), from Python (`run`) and served by
`langgraph dev` alike:

    START -> plan -> <item> -> summarize -> END      (plan -> summarize when nothing is left;
                                                     plan -> END on bad input, `error` set)

The <item> node fans the planned items out with `Send`, at most `concurrency` at a time (LangGraph's own
`max_concurrency`, set on the fan-out it runs), and writes one progress event per finished item with the run's
running counts (LangGraph's custom stream: `stream_mode="custom"`). The run context a command line builds
holds the loaded model; a served run resolves its request in each node from the process's shared caches
(`graphs.serving`), so nothing about a run lives outside its graph state and run context.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import importlib
import json
import operator
import os
import re
import sqlite3
import sys
import time
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, TypedDict, get_type_hints

from langgraph.config import get_config, get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send
from pydantic import TypeAdapter, ValidationError
from tqdm import tqdm

from agents.cli import DataclassParser
from agents.models import Model, Usage, load_model
from agents.models.base import PermanentModelError
from agents.records import first_error
from graphs.serving import ServedInputError, shared_model, strict, unknown_keys
from graphs.store import ENV_ALLOW_NETWORK, Store, network_filesystem, sqlite_problem
from graphs.store_io import close_checkpointers, close_store, on_store

USAGE_KEYS = ("calls", "prompt_tokens", "completion_tokens", "invalid_answers", "retries")  # Usage.totals()


class BatchInputError(ValueError):
    """A batch request that names something missing or unusable; one line."""


class BatchState(TypedDict, total=False):
    """What every batch graph adds to its request: the run, the work sent out, what came back."""

    run_id: str  # the store's run row: its command, config and, at the end, the summary
    planned: int  # units of work the request names
    skipped: int  # of those, already done before this run
    not_retried: int  # of those, failed permanently before (or found unfit at plan time): left out of this run
    ids: list[str]  # every unit of work the request names, done or not
    todo: list[dict]  # one item per unit of work left
    started: float  # time.time() when planned
    endpoints_at_start: dict | None  # Model.endpoint_counts() when planned (several endpoints only)
    results: Annotated[list[dict], operator.add]  # one row per finished unit: id, status, turns, usage, error
    summary: dict
    error: str | None  # one line: the request was bad and nothing ran


class BatchOutput(TypedDict, total=False):
    run_id: str
    planned: int
    skipped: int
    not_retried: int
    results: list[dict]
    summary: dict
    error: str | None


@dataclass(frozen=True)
class Stage:
    """One stage: its request, its run context and its plain functions (see the module docstring)."""

    name: str  # the item node's name and the progress events' "event"
    module: str  # `python -m <module>`: the command's name, help text and the run's stored command
    request: type  # the request dataclass
    context: type  # what `resolve` returns: the run context every function gets
    resolve: Callable[..., Any]  # (request, served=, origin=, model=) -> context, in a worker thread
    plan: Callable[[Any], Awaitable[dict]]
    work: Callable[..., Awaitable[dict]]
    summarize: Callable[[Any, dict], Awaitable[dict]]
    report: Callable[[Any, dict], tuple[str, int]]  # (context, summary) -> (printed text, exit status)
    errors: tuple[type[BaseException], ...]  # what resolving a bad request raises (one line each)
    subgraph: Any = None  # the per-item graph `work` runs, so Studio (xray) draws it inside the item node
    unit: str = "item"  # the progress bar's unit


# ------------------------------------------------------------------ the request


def option(default, help: str, **more):
    """A request field: its default and the help its flag shows; `aliases=["--old-name"]` keeps a renamed
    flag working (`metadata` as HfArgumentParser reads it)."""
    return field(default=default, metadata={"help": help, **more})


def required(help: str):
    """A request field without a default: a required flag."""
    return field(metadata={"help": help})


def input_schema(request: type) -> type:
    """A served batch graph's input schema: the request dataclass's fields, each optional (a TypedDict)."""
    hints = get_type_hints(request)
    name = request.__name__.removesuffix("Request") + "Input"
    return TypedDict(name, {f.name: hints[f.name] for f in fields(request)}, total=False)


def parse_request(cls: type, values: dict):
    """A stage's request dataclass from input state (other keys ignored), or one-line BatchInputError."""
    names = {f.name for f in fields(cls)}
    try:
        return _adapter(cls).validate_python({k: v for k, v in values.items() if k in names and v is not None})
    except ValidationError as exc:
        raise BatchInputError(first_error(exc, more=False)) from None


def request_json(request) -> dict:
    """A request dataclass as the JSON a client would send (and as stored with every result)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(request).items()}


def make_parser(stage: Stage) -> DataclassParser:
    """The stage's command line, read off its request dataclass (flags, help, defaults, choices, aliases),
    plus --no-progress; errors are one line."""
    doc = importlib.import_module(stage.module).__doc__ or ""
    parser = DataclassParser(stage.request, prog=f"python -m {stage.module}", description=doc.split("\n\n")[0])
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs, scripts)")
    return parser


def store_file(db: Path, field: str = "db") -> Path:
    """`db` if a store can live there: BatchInputError (one line) for a folder, a file that is not SQLite, or a
    place this process cannot create a file in. Checked before a model loads and before anything is written."""
    if db.is_dir():
        raise BatchInputError(f"{field}: {db} is a folder, not a SQLite file")
    existing = next(p for p in (db.absolute(), *db.absolute().parents) if p.exists())
    if kind := network_filesystem(existing):
        raise BatchInputError(f"{field}: {db} is on a network filesystem ({kind}), where SQLite's locks and WAL do "
                              f"not hold: put the store on this host's local disk ({ENV_ALLOW_NETWORK}=1 to insist)")
    if db.exists():
        problem = sqlite_problem(db)  # through SQLite: a plain open() would drop this process's locks on it
        if problem:
            raise BatchInputError(f"{field}: {db} is not a SQLite database ({problem})")
        if not os.access(db, os.W_OK):
            raise BatchInputError(f"{field}: {db} is not writable")
        return db
    parent = db.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise BatchInputError(f"{field}: cannot create {db}: {parent} is not a writable folder")
    return db


def stage_model(request, db: Path, *, served: bool, model: Model | None) -> Model:
    """The model a request names: `model` when the caller brought one, the server's shared one when served,
    else loaded for this command (batching up to `concurrency`, logs next to the store)."""
    if model is not None:
        return model
    load = shared_model if served else load_model
    return load(request.model, structured=not request.unstructured, max_batch=request.concurrency,
                log_dir=db.parent)


def provenance(request, origin: dict | None, stage: str) -> tuple[dict, str]:
    """(the config stored with every result: the request and where it came from, the run row's command)."""
    origin = origin or {}
    command = origin.get("command") or f"served {stage}: " + json.dumps(origin.get("served", {}), sort_keys=True)
    return {**request_json(request), **origin}, command


def failure_text(exc: BaseException, with_type: bool = True) -> str:
    """An exception as the one line stored with what it made fail."""
    text = f"{type(exc).__name__}: {exc}" if with_type else str(exc)
    return (text.splitlines() or [""])[0][:500]


@contextmanager
def counted(model: Model) -> Iterator[Model]:
    """`model` with a usage count of its own (same backend, so batching and caches are shared); its
    counts are added to the model's when the block ends."""
    view = copy.copy(model)
    view.usage = Usage()
    try:
        yield view
    finally:
        for name in ("calls", "prompt_tokens", "completion_tokens", "prompt_evaluated", "invalid"):
            getattr(model.usage, name).update(getattr(view.usage, name))
        model.usage.retries += view.usage.retries


# ------------------------------------------------------------------ failures


CONTEXT_EXCEEDED = "context exceeded: the prompt and its answer do not fit in the model's context"
# How servers word a prompt past the context: llama-server ("exceeds the available context size",
# exceed_context_size_error), vLLM ("maximum context length"), OpenAI (context_length_exceeded).
_CONTEXT_WORDS = re.compile(r"context.?(size|length|window)|exceed_context|maximum context", re.IGNORECASE)
# HTTP refusals that a later request may get past: timeout, conflict, too many requests.
RETRYABLE_4XX = (408, 409, 429)


@dataclass(frozen=True)
class Failure:
    """Why one item failed: `reason` groups failures in the summaries, `error` is the item's own line, and a
    `permanent` one is not sent again by a rerun unless asked (`retry_failed`)."""

    reason: str
    error: str
    permanent: bool


def failure_of(exc: BaseException) -> Failure:
    """Classify an item's failure. Permanent: a prompt past the model's context, `PermanentModelError`, an HTTP 4xx
    other than 408/409/429 (the openai client's `status_code`); anything else is transient (retried by a rerun)."""
    error = failure_text(exc)
    status = getattr(exc, "status_code", None)
    status = status if isinstance(status, int) else None
    if status is not None and 400 <= status < 500 and _CONTEXT_WORDS.search(str(exc)):
        return Failure(CONTEXT_EXCEEDED, error, True)
    if isinstance(exc, PermanentModelError):
        return Failure(failure_text(exc, with_type=False)[:200], error, True)
    if status is not None:
        permanent = 400 <= status < 500 and status not in RETRYABLE_4XX
        return Failure(f"HTTP {status} ({type(exc).__name__})", error, permanent)
    return Failure(error[:200], error, False)


def total_usage(results: list[dict]) -> dict:
    """The model usage of a run's finished items (each result row's "usage"), added up."""
    usage = Counter()
    for r in results:
        usage.update(r["usage"])
    return dict(usage)


async def store_failure(db: Path, stage: str, item_id: str, model: str, failure: Failure, run_id: str) -> None:
    """Store why `item_id` failed in `stage` under `model` (`Store.put_failure`), on the store's thread."""
    await on_store(db, lambda store: store.put_failure(stage, item_id, model, reason=failure.reason,
                                                       error=failure.error, permanent=failure.permanent,
                                                       run_id=run_id))


def failure_lines(rows: list[dict]) -> list[dict]:
    """Stored failures (`Store.failures`) grouped by reason, most frequent first: {"reason", "count", "permanent",
    "example" (an item id), "error" (that item's line)}."""
    groups: dict[tuple[str, bool], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["reason"], row["permanent"]), []).append(row)
    lines = [{"reason": reason, "count": len(group), "permanent": permanent, "example": group[0]["item_id"],
              "error": group[0]["error"]} for (reason, permanent), group in groups.items()]
    return sorted(lines, key=lambda line: (-line["count"], line["reason"]))


def endpoint_report(counts: dict | None) -> str:
    """A run's requests per endpoint (several endpoints only), as a closing line; "" otherwise."""
    if not counts:
        return ""
    return "\nrequests per endpoint: " + ", ".join(
        f"{url} {c['requests']}" + (f" ({c['failed']} failed, retried on the others)" if c["failed"] else "")
        for url, c in counts.items())


def failure_report(lines: list[dict]) -> str:
    """The summary's failure lines, one per distinct reason (empty when nothing failed)."""
    out = []
    for line in lines:
        kind = "permanent, not retried without --retry-failed" if line["permanent"] else "retried by a rerun"
        error = "" if line["error"] == line["reason"] else f": {line['error'][:240]}"
        out.append(f"\n  failed {line['count']} x {line['reason']} ({kind}); e.g. {line['example']}{error}")
    return "".join(out)


async def context_overflow(model: Model, messages: list) -> str | None:
    """One line when `messages` alone fill the model's context per request, which the server refuses (llama-server
    answers HTTP 400, exceed_context_size_error, when the prompt is not shorter than a slot's context); None when it
    fits or the model does not know its context (only a managed llama-server does: then nothing is said, and a
    server's own refusal is classified by `failure_of`). An answer budget past what is left is not refused: the
    engine stops at the context's end and the answer is stored as invalid."""
    if model.context_tokens is None:
        return None
    prompt = await model.acount_prompt_tokens(messages)
    if prompt is None or prompt < model.context_tokens:
        return None
    return (f"{CONTEXT_EXCEEDED}: a prompt of {prompt} tokens, not under the {model.context_tokens} tokens a request "
            "may hold (found before sending)")


async def unfit_items(model: Model, items: list, prompts_of: Callable, store: Callable) -> list:
    """Of `items`, those a prompt of which (`await prompts_of(item)` -> [messages, ...]) cannot fit the model's
    context (`context_overflow`; known only for a managed llama-server): each is stored failed permanently
    (`await store(item, failure)`), and no request is sent for it."""
    unfit = []
    if model.context_tokens is None:
        return unfit
    for item in items:
        for messages in await prompts_of(item):
            if error := await context_overflow(model, messages):
                await store(item, Failure(CONTEXT_EXCEEDED, error, True))
                unfit.append(item)
                break
    return unfit


# ------------------------------------------------------------------ the graph


class _FanOut(TypedDict, total=False):
    todo: list[dict]  # {"item", "run_id"} per Send
    results: Annotated[list[dict], operator.add]


def build_batch_graph(stage: Stage, served: bool = False):
    """Compile a stage's batch graph. Served graphs take no run context: they resolve the request."""
    request_input = input_schema(stage.request)
    state = TypedDict(request_input.__name__.removesuffix("Input") + "State",
                      {**get_type_hints(request_input), **get_type_hints(BatchState, include_extras=True)},
                      total=False)
    graph = StateGraph(state, input_schema=request_input, output_schema=BatchOutput,
                       context_schema=None if served else stage.context)
    fan_out = _fan_out_graph(stage)

    async def plan(values: dict, runtime) -> dict:
        if unknown := unknown_keys():
            return {"error": unknown}
        try:
            batch = await _context(stage, values, runtime.context)
            planned = await stage.plan(batch)
        except (*stage.errors, BatchInputError, ServedInputError) as exc:
            return {"error": failure_text(exc, with_type=False)}
        get_stream_writer()({"event": "planned", "stage": stage.name, "run_id": planned["run_id"],
                             "planned": planned["planned"], "skipped": planned["skipped"],
                             "not_retried": planned.get("not_retried", 0), "of": len(planned["todo"])})
        return {"not_retried": 0, **planned, "started": time.time(), "endpoints_at_start": batch.model.endpoint_counts()}

    def route(values: dict):
        if values.get("error"):
            return END
        return stage.name if values["todo"] else "summarize"

    async def items(values: dict, runtime) -> dict:
        batch = await _context(stage, values, runtime.context)
        progress, write, results = _Progress(len(values["todo"])), get_stream_writer(), []
        todo = [{"item": item, "run_id": values["run_id"]} for item in values["todo"]]
        config = {"max_concurrency": batch.request.concurrency}
        # Only the custom stream: asking for "updates" would make every node of every item's graph report one.
        async for row in fan_out.astream({"todo": todo}, config, context=batch, stream_mode="custom"):
            results.append(row)
            write({"event": stage.name, **progress.add(row)})
        return {"results": results}

    async def summarize(values: dict, runtime) -> dict:
        batch = await _context(stage, values, runtime.context)
        summary = await stage.summarize(batch, values)
        if (before := values.get("endpoints_at_start")) is not None:
            summary["endpoints"] = {url: {k: n - before.get(url, {}).get(k, 0) for k, n in counts.items()}
                                    for url, counts in batch.model.endpoint_counts().items()}
            await on_store(batch.db, Store.finish_run, values["run_id"], summary)
        get_stream_writer()({"event": "summary", "stage": stage.name, "run_id": values["run_id"], **summary})
        return {"summary": summary}

    items.__name__ = stage.name
    graph.add_node("plan", plan)
    graph.add_node(stage.name, items)
    graph.add_node("summarize", summarize)
    graph.add_edge(START, "plan")
    graph.add_conditional_edges("plan", route, [stage.name, "summarize", END])
    graph.add_edge(stage.name, "summarize")
    graph.add_edge("summarize", END)
    return strict(graph.compile())


def _fan_out_graph(stage: Stage):
    """START -> Send(<item>) x N -> END: each item's `work`, in a run of its own so that LangGraph's
    `max_concurrency` bounds the items in flight."""
    graph = StateGraph(_FanOut)

    async def item(payload: dict, runtime) -> dict:
        row = await stage.work(runtime.context, payload["item"], payload["run_id"], stage.subgraph)
        get_stream_writer()(row)  # to the item node of the batch graph, as each item ends
        return {"results": [row]}

    item.__name__ = stage.name
    graph.add_node(stage.name, item)
    graph.add_conditional_edges(START, lambda values: [Send(stage.name, p) for p in values["todo"]], [stage.name])
    graph.add_edge(stage.name, END)
    return graph.compile()


async def _context(stage: Stage, values: dict, context):
    """The run context a caller gave, or (served) the request resolved from the input, in a worker thread:
    it reads files and may load a model, once per process."""
    if context is not None and not isinstance(context, dict):
        return context
    request = parse_request(stage.request, values)
    metadata = get_config().get("metadata", {})
    origin = {"served": {k: metadata.get(k) for k in ("graph_id", "assistant_id", "thread_id", "run_id")}}
    return await asyncio.to_thread(stage.resolve, request, served=True, origin=origin)


class _Progress:
    """One run's running counts, kept by its item node while the items finish."""

    def __init__(self, of: int):
        self.of = of
        self.statuses: Counter = Counter()
        self.turns = 0
        self.usage: Counter = Counter()

    def add(self, row: dict) -> dict:
        self.statuses[row["status"]] += 1
        self.turns += row.get("turns") or 0
        self.usage.update(row.get("usage") or {})
        return {"id": row["id"], "status": row["status"], "error": row.get("error"), "turns": row.get("turns"),
                "tokens": _tokens(row),
                "finished": sum(self.statuses.values()), "of": self.of, "statuses": dict(self.statuses),
                "total_turns": self.turns, "total_tokens": _tokens({"usage": self.usage})}


def _tokens(row: dict) -> int:
    usage = row.get("usage") or {}
    return usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)


# ------------------------------------------------------------------ running


@functools.cache
def graph_of(stage: Stage):
    """The stage's batch graph for command lines and Python callers (one per process)."""
    return build_batch_graph(stage)


async def run_batch(stage: Stage, batch, *, progress: bool = True) -> dict:
    """Run a stage's batch graph to its end on a resolved run context, with a progress bar fed by its
    progress events; returns the final state. Closes the store and the checkpoint connections this event loop
    opened, whatever the end (no `-wal` or `-shm` is left once no other process has the store open)."""
    final: dict = {}
    bar = None
    try:
        async for mode, part in graph_of(stage).astream(request_json(batch.request), context=batch,
                                                        stream_mode=["custom", "values"]):
            if mode == "values":
                final = part
            elif part.get("event") == "planned":
                bar = tqdm(total=part["of"], desc=f"{stage.name} {batch.culture.code}", unit=stage.unit,
                           disable=not progress)
            elif "finished" in part and bar is not None:
                bar.update(1)
                if part.get("error"):
                    bar.write(f"{part['id']}: {part['error']}")
    finally:
        if bar is not None:
            bar.close()
        try:
            await close_checkpointers()
        finally:
            await close_store(batch.db)
    return final


def run(stage: Stage, request, *, model: Model | None = None, progress: bool = False,
        command: str | None = None) -> dict:
    """Run a stage from Python, as its command line does: resolve `request` (with `model` if given, else the
    model it names), run the batch graph, return its final state ({"run_id", "summary", "results", ...}).
    A bad request raises the stage's one-line errors; one found while planning raises BatchInputError."""
    batch = stage.resolve(request, origin={"command": command or f"{stage.module} (Python)"}, model=model)
    final = asyncio.run(run_batch(stage, batch, progress=progress))
    if final.get("error"):
        raise BatchInputError(final["error"])
    return final


def command_line(stage: Stage, argv: list[str] | None = None) -> None:
    """A stage's command line: parse its flags, resolve and run it, print its report and exit with its status
    (one-line `error:` and status 1 on a bad request or a store that cannot be written, e.g. a full disk; Ctrl-C:
    one line and status 130, finished work stored)."""
    request, extra = make_parser(stage).parse_args_into_dataclasses(argv)
    command = f"{stage.module} " + " ".join(argv if argv is not None else sys.argv[1:])
    # Items still waiting for LangGraph's max_concurrency gate when Ctrl-C cancels the run never start; their
    # coroutines would each print a RuntimeWarning under the one line below.
    warnings.filterwarnings("ignore", "coroutine 'arun_with_retry' was never awaited", RuntimeWarning)
    try:
        # Cheap mistakes first: resolving reads files and checks templates before the model loads.
        batch = stage.resolve(request, origin={"command": command})
        final = asyncio.run(run_batch(stage, batch, progress=not extra.no_progress))
    except KeyboardInterrupt:
        print("\ninterrupted: finished work is stored; rerun the same command to resume", file=sys.stderr)
        raise SystemExit(130) from None
    except (*stage.errors, BatchInputError, ServedInputError) as exc:
        sys.exit(f"error: {exc}")  # e.g. a user template that fails only on some item's data
    except sqlite3.Error as exc:  # each write is one transaction: the failed one is rolled back, the rest is kept
        sys.exit(f"error: store {request.db}: {failure_text(exc, with_type=False)} (what was stored before is kept; "
                 "free disk space or make the store writable, then rerun the same command to resume)")
    if final.get("error"):
        sys.exit(f"error: {final['error']}")
    text, status = stage.report(batch, final["summary"])
    print(text + endpoint_report(final["summary"].get("endpoints")))
    if status:
        sys.exit(status)


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)
