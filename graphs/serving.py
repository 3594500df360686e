"""What serving a graph with `langgraph dev` adds: paths under the serving root, unknown keys refused, and the
loaded models, cultures and templates a server process shares between its runs.

A client names paths (`db`, `prompts`, `cultures_dir`, `seeds`) relative to the serving root
($CLCA_SERVE_ROOT, else the server's working directory); one that leads outside is refused. LangGraph drops
input keys a graph does not declare, and fails on unknown context keys with a TypeError: a misspelt option
must not run as if absent, so a served graph notes them and its first node reports them in one line.
"""

from __future__ import annotations

import difflib
import functools
import os
import threading
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import get_type_hints

from langgraph.config import get_config
from langgraph.graph.state import CompiledStateGraph

from agents.cultures import load_culture
from agents.models import Model, load_model
from agents.prompts import Prompts
from agents.records import Culture, short

# The folder a served run's paths must lie under; the server's working directory when unset.
SERVE_ROOT_ENV = "CLCA_SERVE_ROOT"
UNKNOWN_KEYS = "clca_unknown_keys"  # the run config's note of the keys a strict graph left out


class ServedInputError(ValueError):
    """A served request that names a path outside the serving root, or keys the graph does not take; one line."""


def serve_root() -> Path:
    """The folder served runs may read and write under: $CLCA_SERVE_ROOT, else the working directory."""
    return Path(os.environ.get(SERVE_ROOT_ENV) or os.getcwd()).resolve()


def under_root(path: str | None, field: str) -> Path | None:
    """A client's path resolved under the serving root (relative paths are taken from it); a path that
    leads outside raises ServedInputError."""
    if path is None:
        return None
    if path.startswith("~"):
        raise ServedInputError(f"{field}: {short(path)} starts with ~, which is not expanded here: give a path "
                               "relative to the serving root")
    root = serve_root()
    resolved = (root / path).resolve()
    if not resolved.is_relative_to(root):
        raise ServedInputError(f"{field}: {path} is outside the serving root {root} (set {SERVE_ROOT_ENV} to "
                               "serve another folder)")
    return resolved


# ------------------------------------------------------------------ unknown keys


class StrictCompiledStateGraph(CompiledStateGraph):
    """A compiled graph that notes the input and context keys it does not take, leaves them out and names them
    in the run's config (`UNKNOWN_KEYS`); the graph's first node reports them (`unknown_keys()`)."""

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
            notes += [unknown_key_text(k, known, "input") for k in input if k not in known]
            input = {k: v for k, v in input.items() if k in known}
        if isinstance(context, dict) and self.context_schema is not None and is_dataclass(self.context_schema):
            known = {f.name for f in fields(self.context_schema)}
            notes += [unknown_key_text(k, known, "context") for k in context if k not in known]
            context = {k: v for k, v in context.items() if k in known}
        if notes:
            config = {**(config or {})}
            config["configurable"] = {**config.get("configurable", {}), UNKNOWN_KEYS: "; ".join(notes)}
        return input, config, context


def strict(graph: CompiledStateGraph) -> StrictCompiledStateGraph:
    """The same compiled graph, noting unknown input and context keys (LangGraph compiles to its own class, and
    copies keep the class)."""
    graph.__class__ = StrictCompiledStateGraph
    return graph


def unknown_keys() -> str | None:
    """Inside a node of a strict graph: one line naming the request's unknown keys, or None."""
    return get_config().get("configurable", {}).get(UNKNOWN_KEYS)


def unknown_key_text(key: object, known: set[str], where: str) -> str:
    """`'episdoes': unknown input key (did you mean 'episodes'?)`."""
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(known))}"
    return f"{short(key)}: unknown {where} key ({hint})"


# ------------------------------------------------------------------ what a server's runs share

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

