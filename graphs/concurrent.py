"""Batch graphs: the simulator, the adapter and the judge plan their work and fan it out the same way.

Each stage is one LangGraph graph, run by its command line and served by `langgraph dev` alike:

    START -> plan -> Send(<item>) x N -> summarize -> END      (plan -> summarize when nothing is left;
                                                                plan -> END on bad input, `error` set)

`plan` reads the stage's request (plain JSON: what the command's options say), resolves it, records a
run in the store and sends one item (an episode, a seed, an episode to judge) per unit of work not yet
done. Each item node runs the stage's own graph on that item as a subgraph and persists its result to
the store as it ends, at most `concurrency` items of a run at a time; it then writes one progress event
(LangGraph's custom stream: `stream_mode="custom"`) with the run's running counts. `summarize` reads
the store and closes the run. Resolved objects (a loaded model, templates, a culture) come from the run
context when a command line made them, or are loaded once per process when a server runs the graph.
"""

from __future__ import annotations

import asyncio
import copy
import difflib
import functools
import operator
import os
import sqlite3
import sys
import threading
import time
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Annotated, Any, TypedDict, get_type_hints

import aiosqlite
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.config import get_config, get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Send
from pydantic import TypeAdapter, ValidationError
from tqdm import tqdm

from agents.cultures import load_culture
from agents.models import Model, Usage, load_model
from agents.prompts import Prompts
from agents.records import Culture, first_error, short
from graphs.store import BUSY_TIMEOUT_MS, Store, enable_wal

# The folder a served run's paths must lie under; the server's working directory when unset.
SERVE_ROOT_ENV = "CLCA_SERVE_ROOT"
USAGE_KEYS = ("calls", "prompt_tokens", "completion_tokens", "invalid_answers", "retries")  # Usage.totals()


class BatchInputError(ValueError):
    """A batch request that names something missing or unusable; one line."""


class BatchState(TypedDict, total=False):
    """What every batch graph adds to its request: the run, the work sent out, what came back."""

    run_id: str  # the store's run row: its command, config and, at the end, the summary
    planned: int  # units of work the request names
    skipped: int  # of those, already done before this run
    ids: list[str]  # every unit of work the request names, done or not
    todo: list[dict]  # one Send payload per unit of work left
    started: float  # time.time() when planned
    results: Annotated[list[dict], operator.add]  # one row per finished unit: id, status, turns, usage, error
    summary: dict
    error: str | None  # one line: the request was bad and nothing ran


class BatchOutput(TypedDict, total=False):
    run_id: str
    planned: int
    skipped: int
    results: list[dict]
    summary: dict
    error: str | None


@dataclass(frozen=True)
class Stage:
    """One stage's parts of a batch graph; each function gets the resolved batch (the run context)."""

    name: str  # the item node's name and the progress events' "event"
    request: Callable[[dict], Any]  # input state -> validated request (BatchInputError)
    resolve: Callable[..., Any]  # (request, served, origin) -> batch, in a worker thread (one-line errors)
    plan: Callable[[Any], Awaitable[dict]]  # batch -> {"run_id", "planned", "skipped", "todo": [items]}
    work: Callable[..., Awaitable[dict]]  # (batch, item, run id, subgraph) -> result row {"id", "status", ...}
    summarize: Callable[[Any, dict], Awaitable[dict]]  # (batch, final state) -> summary (also stored)
    errors: tuple[type[BaseException], ...]  # what resolving a bad request raises
    subgraph: Any = None  # the per-item graph `work` runs, so Studio (xray) draws it inside the item node


def build_batch_graph(stage: Stage, state_schema: type, input_schema: type, context_schema: type | None):
    """Compile a stage's batch graph. Served graphs pass no context schema: they resolve the request."""
    graph = StateGraph(state_schema, input_schema=input_schema, output_schema=BatchOutput,
                       context_schema=context_schema)

    async def plan(state: dict, runtime) -> dict:
        if unknown := unknown_keys():
            return {"error": unknown}
        try:
            request = stage.request(state)
            batch = await _batch(stage, request, runtime.context, state.get("run_id"))
            planned = await stage.plan(batch)
        except stage.errors as exc:
            return {"error": failure_text(exc, with_type=False)}
        if batch is not runtime.context:
            _live[planned["run_id"]] = batch
        get_stream_writer()({"event": "planned", "stage": stage.name, "run_id": planned["run_id"],
                             "planned": planned["planned"], "skipped": planned["skipped"], "of": len(planned["todo"])})
        as_json = request_json(request)
        todo = [{"item": item, "run_id": planned["run_id"], "request": as_json, "of": len(planned["todo"])}
                for item in planned["todo"]]
        return {**planned, "todo": todo, "started": time.time()}

    def fan_out(state: dict):
        if state.get("error"):
            return END
        return [Send(stage.name, payload) for payload in state["todo"]] or "summarize"

    async def item(payload: dict, runtime) -> dict:
        request = stage.request(payload["request"])
        run = _progress(payload["run_id"], request.concurrency, payload["of"])
        try:
            async with run.gate:
                batch = await _batch(stage, request, runtime.context, payload["run_id"])
                row = await stage.work(batch, payload["item"], payload["run_id"], stage.subgraph)
        except asyncio.CancelledError:
            _live.pop(payload["run_id"], None)
            raise
        get_stream_writer()({"event": stage.name, **run.add(row)})
        return {"results": [row]}

    async def summarize(state: dict, runtime) -> dict:
        batch = await _batch(stage, stage.request(state), runtime.context, state["run_id"])
        summary = await stage.summarize(batch, state)
        _live.pop(state["run_id"], None)
        get_stream_writer()({"event": "summary", "stage": stage.name, "run_id": state["run_id"], **summary})
        return {"summary": summary}

    item.__name__ = stage.name
    graph.add_node("plan", plan)
    graph.add_node(stage.name, item)
    graph.add_node("summarize", summarize)
    graph.add_edge(START, "plan")
    graph.add_conditional_edges("plan", fan_out, [stage.name, "summarize", END])
    graph.add_edge(stage.name, "summarize")
    graph.add_edge("summarize", END)
    return strict(graph.compile())


async def run_batch(graph, values: dict, *, context, desc: str, unit: str, progress: bool = True) -> dict:
    """Run a batch graph to its end from a command line: a progress bar fed by its progress events;
    returns the final state. Closes the checkpoint connections this event loop opened."""
    final: dict = {}
    bar = None
    try:
        async for mode, part in graph.astream(values, context=context, stream_mode=["custom", "values"]):
            if mode == "values":
                final = part
            elif part.get("event") == "planned":
                bar = tqdm(total=part["of"], desc=desc, unit=unit, disable=not progress)
            elif "finished" in part and bar is not None:
                bar.update(1)
                if part.get("error"):
                    bar.write(f"{part['id']}: {part['error']}")
    finally:
        if bar is not None:
            bar.close()
        await close_checkpointers()
    return final


class StrictCompiledStateGraph(CompiledStateGraph):
    """A compiled graph that notes the input and context keys it does not take (LangGraph drops unknown input
    keys silently and fails on unknown context keys with a TypeError): a misspelt option must not run as
    if absent. The keys are left out and named in the run's config; the graph's first node reports them
    (`unknown_keys()`)."""

    def stream(self, input, config=None, **kwargs):
        input, config, kwargs["context"] = self._note_unknown(input, config, kwargs.get("context"))
        return super().stream(input, config, **kwargs)

    def astream(self, input, config=None, **kwargs):
        input, config, kwargs["context"] = self._note_unknown(input, config, kwargs.get("context"))
        return super().astream(input, config, **kwargs)

    def _note_unknown(self, input, config, context):
        notes = []
        if isinstance(input, dict):
            known = set(get_type_hints(self.builder.input_schema))
            notes += [_unknown_key_text(k, known, "input") for k in input if k not in known]
            input = {k: v for k, v in input.items() if k in known}
        if isinstance(context, dict) and self.context_schema is not None and is_dataclass(self.context_schema):
            known = {f.name for f in fields(self.context_schema)}
            notes += [_unknown_key_text(k, known, "context") for k in context if k not in known]
            context = {k: v for k, v in context.items() if k in known}
        if notes:
            config = {**(config or {})}
            config["configurable"] = {**config.get("configurable", {}), UNKNOWN_KEYS: "; ".join(notes)}
        return input, config, context


UNKNOWN_KEYS = "clca_unknown_keys"  # the run config's note of the keys StrictCompiledStateGraph left out


def strict(graph: CompiledStateGraph) -> StrictCompiledStateGraph:
    """The same compiled graph, noting unknown input and context keys (copies keep the class)."""
    graph.__class__ = StrictCompiledStateGraph
    return graph


def unknown_keys() -> str | None:
    """Inside a node of a strict graph: one line naming the request's unknown keys, or None."""
    return get_config().get("configurable", {}).get(UNKNOWN_KEYS)


def _unknown_key_text(key: object, known: set[str], where: str) -> str:
    shown = short(key)
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(known))}"
    return f"{shown}: unknown {where} key ({hint})"


def input_schema(request: type) -> type:
    """A served batch graph's input schema: the request dataclass's fields, each optional (a TypedDict), so
    the options are declared once."""
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


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def failure_text(exc: BaseException, with_type: bool = True) -> str:
    """An exception as the one line stored with what it made fail."""
    text = f"{type(exc).__name__}: {exc}" if with_type else str(exc)
    return (text.splitlines() or [""])[0][:500]


# ------------------------------------------------------------------ served paths and models


def serve_root() -> Path:
    """The folder served runs may read and write under: $CLCA_SERVE_ROOT, else the working directory."""
    return Path(os.environ.get(SERVE_ROOT_ENV) or os.getcwd()).resolve()


def under_root(path: str | None, field: str) -> Path | None:
    """A client's path resolved under the serving root (relative paths are taken from it); a path that
    leads outside raises BatchInputError."""
    if path is None:
        return None
    if path.startswith("~"):
        raise BatchInputError(f"{field}: {short(path)} starts with ~, which is not expanded here: give a path relative "
                              "to the serving root")
    root = serve_root()
    resolved = (root / path).resolve()
    if not resolved.is_relative_to(root):
        raise BatchInputError(f"{field}: {path} is outside the serving root {root} (set {SERVE_ROOT_ENV} to "
                              "serve another folder)")
    return resolved


def store_file(db: Path, field: str = "db") -> Path:
    """`db` if a store can live there: BatchInputError (one line) for a folder, a file that is not SQLite, or a
    place this process cannot create a file in. Checked before a model loads and before anything is written."""
    if db.is_dir():
        raise BatchInputError(f"{field}: {db} is a folder, not a SQLite file")
    if db.exists():
        with open(db, "rb") as f:
            head = f.read(16)
        if head and head != b"SQLite format 3\x00":
            raise BatchInputError(f"{field}: {db} is not a SQLite database")
        if not os.access(db, os.W_OK):
            raise BatchInputError(f"{field}: {db} is not writable")
        return db
    parent = db.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise BatchInputError(f"{field}: cannot create {db}: {parent} is not a writable folder")
    return db


def run_from_command_line(batch: Awaitable[dict]) -> dict:
    """`asyncio.run(batch)` for a CLI: Ctrl-C ends it with one line (finished work is stored) and status 130."""
    try:
        return asyncio.run(batch)
    except KeyboardInterrupt:
        print("\ninterrupted: finished work is stored; rerun the same command to resume", file=sys.stderr)
        raise SystemExit(130) from None


_model_lock = threading.Lock()
_models: dict[tuple[str, bool], Model] = {}


def shared_model(spec: str, *, structured: bool = True, max_batch: int = 8, log_dir: str | Path = "runs") -> Model:
    """One model per (spec, structured) for the process: a server's runs share one loaded model or
    managed engine. The first caller's `max_batch` and `log_dir` decide."""
    with _model_lock:  # runs resolving at once must not load the model twice
        if (spec, structured) not in _models:
            _models[spec, structured] = load_model(spec, structured=structured, max_batch=max_batch, log_dir=log_dir)
        return _models[spec, structured]


@functools.cache
def shared_culture(code: str, cultures_dir: str | None) -> Culture:
    """A culture read once per process (records are frozen, so runs can share it)."""
    return load_culture(code, cultures_dir)


@functools.cache
def shared_prompts(override_dir: str | None, names: tuple[str, ...]) -> Prompts:
    """Templates read and compiled once per process, in the calling (worker) thread, not on the event loop."""
    prompts = Prompts(override_dir)
    for name in names:
        prompts.source(name)
        prompts.env.get_template(f"{name}.j2")
    return prompts


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


# ------------------------------------------------------------------ the store off the event loop

# SQLite calls block: a server's event loop must not make them (`langgraph dev` refuses), and a
# sqlite3 connection belongs to the thread that opened it. So every batch graph reads and writes its
# store in this one thread, through one connection per store file.
_STORE_THREAD = ThreadPoolExecutor(1, thread_name_prefix="clca-store")
_stores: dict[Path, Store] = {}


async def on_store(path: str | Path, fn: Callable[..., Any], *args, **kwargs) -> Any:
    """`fn(store, *args, **kwargs)` in the store thread, on the store at `path` (created if missing)."""

    def call():
        key = Path(path).resolve()
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = Store(key)
        return fn(store, *args, **kwargs)

    return await asyncio.get_running_loop().run_in_executor(_STORE_THREAD, call)


_savers: dict[tuple[Path, asyncio.AbstractEventLoop], asyncio.Task] = {}


async def checkpointer(store_path: str | Path) -> AsyncSqliteSaver:
    """The checkpointer of episodes in flight (`<db>.checkpoints`), one connection per file and event loop."""
    loop = asyncio.get_running_loop()
    key = (Path(str(store_path) + ".checkpoints").resolve(), loop)
    if key not in _savers:
        _savers[key] = loop.create_task(_open_saver(key[0]))
    return await _savers[key]


async def _open_saver(path: Path) -> AsyncSqliteSaver:
    # WAL with synchronous=NORMAL survives a killed process (not a power cut) and saves an fsync per
    # checkpoint, which otherwise bounds the orchestration rate. The switch is the store's, retried: two
    # processes opening a new checkpoint file together get "database is locked" from it at once.
    await asyncio.to_thread(_switch_to_wal, path)
    conn = await aiosqlite.connect(path)
    await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    await conn.execute("PRAGMA synchronous = NORMAL")
    return AsyncSqliteSaver(conn)


def _switch_to_wal(path: Path) -> None:
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        enable_wal(conn)
    finally:
        conn.close()


async def close_checkpointers() -> None:
    """Close this event loop's checkpoint connections (a command line's loop ends; a server's does not)."""
    loop = asyncio.get_running_loop()
    for key in [k for k in _savers if k[1] is loop]:
        saver = await _savers.pop(key)
        try:
            await saver.conn.close()
        except sqlite3.OperationalError as exc:
            # Closing the last connection checkpoints the WAL, which another process writing the same file can
            # hold up ("database is locked"); every checkpoint is committed already, so nothing is lost.
            if "locked" not in str(exc):
                raise


# ------------------------------------------------------------------ private


class _Progress:
    """One run's concurrency gate and running counts, shared by its item nodes while any is alive."""

    def __init__(self, concurrency: int, of: int):
        self.gate = asyncio.Semaphore(concurrency)
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


# Weak: an entry lives while an item node of its run holds it, so a cancelled run leaves nothing behind.
_runs: weakref.WeakValueDictionary[str, _Progress] = weakref.WeakValueDictionary()


def _progress(run_id: str, concurrency: int, of: int) -> _Progress:
    run = _runs.get(run_id)
    if run is None:
        run = _runs[run_id] = _Progress(concurrency, of)
    return run


def _tokens(row: dict) -> int:
    usage = row.get("usage") or {}
    return usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)


# run id -> the resolved batch of a served run in progress, so its items need not resolve it again
_live: dict[str, Any] = {}


async def _batch(stage: Stage, request, context, run_id: str | None):
    """The run context a command line gave; for a served run, its batch as `plan` resolved it, or the
    request resolved afresh (in a worker thread: it reads files and may load a model)."""
    if context is not None and not isinstance(context, dict):
        return context
    if run_id in _live:
        return _live[run_id]
    config = get_config()
    origin = {"served": {k: config.get("metadata", {}).get(k) for k in ("graph_id", "assistant_id", "thread_id",
                                                                          "run_id")}}
    return await asyncio.to_thread(stage.resolve, request, True, origin)


def request_json(request) -> dict:
    """A request dataclass as the JSON a client would send."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(request).items()}
