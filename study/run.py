"""`python -m study run CONFIG.yaml --out DIR`: every stage of a study, each through its typed request, resumably.

The study runs as a LangGraph graph (`build_study_graph`: plan -> stage -> plan ... -> report, one stage at a
time, each stage's start and end on the custom stream), from the command line and served (langgraph.json's
`study`, input {"config", "out"} under the serving root). Each node of the plan (`study.pipeline`) is run by its
stage's public entry point: `graphs.batch` for adapt, simulate, judge and contrast (`AdaptRequest`,
`SimulateRequest`, `JudgeRequest`, `ContrastRequest`), `training.dataset.main` and `training.survey_rows.main` for
the exports, `training.sft.main` and `training.dpo.main` for the adapters and `eval.wvs.run.evaluate(EvalConfig)`
for the evaluations. A node's output
lives in DIR/stages/<node id>/ and `done.json` is written there last, so a node already finished for the same
request is skipped and a rerun after a kill resumes (the stages themselves resume inside: episodes from their
checkpoints, SFT from its last checkpoint). The role-play pipelines share one SQLite store per culture and pipeline
in DIR/stores/. DIR/study.json holds the config and which evaluation each report row reads.

Errors: `StudyRunError` (one line) when a stage fails (`python -m study run` prints it and exits 1; rerunning
retries what failed).
"""

from __future__ import annotations

import asyncio
import json
import operator
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, TypedDict

from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from study.config import Study, load_study, preset_path
from study.pipeline import UNGROUNDED, Builder, Node, build


class StudyRunError(RuntimeError):
    """A stage of a study that failed; one line (rerunning the study retries it)."""


EvalModel = Callable[[Node, str | None], object]  # (evaluate node, adapter folder or None) -> Model or None


@dataclass
class StudyContext:
    """What one run of the study graph holds besides its state: how it reports, and the models it has loaded
    (each role-play model once per run, shared by the stages that use it)."""

    progress: bool = False  # progress bars inside the stages
    log: Callable[[str], None] = print  # one line as each stage starts
    eval_model: EvalModel | None = None  # tests: the model an evaluation reads instead of its spec's
    models: dict = field(default_factory=dict)
    opened: dict = field(default_factory=dict)  # (config, out) -> (study, out, built): read once per run
    shared: bool = False  # models from the serving process's shared cache (a served run brings no context)


def _context(runtime: Runtime[StudyContext]) -> StudyContext:
    return runtime.context or StudyContext(shared=True)


class StudyState(TypedDict, total=False):
    config: str  # the study YAML (input)
    out: str  # the study's folder (input)
    next: str | None  # the stage to run next, None when every stage is done
    ran: Annotated[list[str], operator.add]  # stages run by this invocation
    skipped: list[str]  # stages found done when it began
    report: str  # report.md
    error: str  # served: why the request was refused, one line


def _opened(state: StudyState, ctx: StudyContext) -> tuple[Study, Path, Builder]:
    key = (state["config"], state["out"])
    if key not in ctx.opened:
        study = load_study(state["config"])
        ctx.opened[key] = study, Path(state["out"]), build(study)
    return ctx.opened[key]


def _plan(state: StudyState, runtime: Runtime[StudyContext]) -> dict:
    """Write study.json; the next stage without done.json, in build order (every stage after its inputs)."""
    study, out, built = _opened(state, _context(runtime))
    done = [i for i in built.nodes if (out / "stages" / i / "done.json").is_file()]
    update: dict = {"next": next((i for i in built.nodes if i not in done), None)}
    if "skipped" not in state:  # the first pass: what an earlier run finished
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "study.json", {"config": asdict(study), "scored": [asdict(s) for s in built.scored],
                                         "nodes": {i: asdict(n) for i, n in built.nodes.items()}})
        update["skipped"] = done
    return update


def _stage(state: StudyState, runtime: Runtime[StudyContext]) -> dict:
    """Run one stage through its typed request; done.json last, so a kill before it reruns the stage."""
    ctx = _context(runtime)
    study, out, built = _opened(state, ctx)
    node_id = state["next"]
    node, folder = built.nodes[node_id], out / "stages" / node_id
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "request.json", asdict(node))
    ctx.log(f"study: {node_id} ...")
    write = get_stream_writer()
    write({"event": "stage", "stage": node_id, "kind": node.kind, "culture": node.culture})
    started = time.time()
    result = _Runner(study, out, built, ctx).run(node, folder)
    seconds = round(time.time() - started, 2)
    _write_json(folder / "done.json", {"seconds": seconds, **(result or {})})
    write({"event": "stage_done", "stage": node_id, "seconds": seconds})
    return {"ran": [node_id]}


def _report(state: StudyState) -> dict:
    from study.report import write_report

    return {"report": str(write_report(state["out"])["md"])}


def _served_inputs(state: StudyState) -> dict:
    """Served: refuse unknown keys, and paths outside the serving root; a bad config is one line too."""
    from graphs.serving import ServedInputError, under_root, unknown_keys
    from study.config import StudyConfigError

    if note := unknown_keys():
        return {"error": note}
    if not state.get("config"):
        return {"error": "config: required (a study YAML under the serving root)"}
    try:
        config = under_root(state["config"], "config")
        study = load_study(config)
        out = under_root(state.get("out") or f"runs/study-{study.name}", "out")
    except (ServedInputError, StudyConfigError) as exc:
        return {"error": str(exc)}
    return {"config": str(config), "out": str(out)}


def build_study_graph(served: bool = False):
    """plan -> stage -> plan ... -> report: one stage at a time (they share the engine and the CPU), each stage
    a node run, progress on the custom stream ({"event": "stage" | "stage_done", ...}). `served` (langgraph.json's
    `study`): input paths are taken under the serving root, and a refused request ends with {"error": line}."""
    from graphs.serving import strict

    graph = StateGraph(StudyState, context_schema=StudyContext)
    graph.add_node("plan", _plan)
    graph.add_node("stage", _stage)
    graph.add_node("report", _report)
    graph.add_conditional_edges("plan", lambda state: "stage" if state.get("next") else "report", ["stage", "report"])
    graph.add_edge("stage", "plan")
    graph.add_edge("report", END)
    if not served:
        graph.add_edge(START, "plan")
        return graph.compile().with_config(recursion_limit=RECURSION_LIMIT)
    graph.add_node("inputs", _served_inputs)
    graph.add_edge(START, "inputs")
    graph.add_conditional_edges("inputs", lambda state: END if state.get("error") else "plan", ["plan", END])
    return strict(graph.compile()).with_config(recursion_limit=RECURSION_LIMIT)


RECURSION_LIMIT = 100_000  # two steps per stage; a paper-sized study has a few hundred stages


def run_study(study: Study, out: str | Path, *, progress: bool = False, eval_model: EvalModel | None = None,
              log: Callable[[str], None] = print) -> dict:
    """Run every stage not done yet (the study graph), then write the report. Returns {"ran": [ids],
    "skipped": [ids], "report": Path}.

    `eval_model` (tests): the model an evaluation reads instead of the one its spec names (None: the spec's)."""
    if not study.source:
        raise StudyRunError("the study has no source file (load it with study.config.load_study)")
    final = build_study_graph().invoke({"config": study.source, "out": str(out)},
                                       context=StudyContext(progress=progress, log=log, eval_model=eval_model))
    return {"ran": final.get("ran", []), "skipped": final["skipped"], "report": Path(final["report"])}


class _Runner:
    def __init__(self, study: Study, out: Path, built: Builder, ctx: StudyContext):
        self.study, self.out, self.built = study, out, built
        self.progress, self.eval_model, self.models, self.shared = ctx.progress, ctx.eval_model, ctx.models, ctx.shared

    def folder(self, node_id: str) -> Path:
        return self.out / "stages" / node_id

    def run(self, node: Node, folder: Path) -> dict | None:
        return getattr(self, node.kind)(node, folder)

    # ------------------------------------------------------------ role-play stages (graphs.batch)

    def _model(self, spec: str, unstructured: bool, concurrency: int):
        from agents.models import load_model
        from graphs.serving import shared_model

        key = (spec, unstructured, concurrency)
        if key not in self.models:
            load = shared_model if self.shared else load_model  # served: one model per spec in the process
            self.models[key] = load(spec, structured=not unstructured, max_batch=concurrency,
                                    log_dir=self.out / "stores")
        return self.models[key]

    def _batch(self, module: str, request, model, *, tolerate_failures: bool = False) -> dict:
        import importlib

        from graphs.batch import BatchInputError, run_batch

        stage = importlib.import_module(module).STAGE
        try:
            batch = stage.resolve(request, origin={"command": f"study {self.study.name}: {module}"}, model=model)
            final = asyncio.run(run_batch(stage, batch, progress=self.progress))
        except (*stage.errors, BatchInputError) as exc:
            raise StudyRunError(f"{module}: {exc}") from None
        if final.get("error"):
            raise StudyRunError(f"{module}: {final['error']}")
        text, status = stage.report(batch, final["summary"])
        if status and not tolerate_failures:
            raise StudyRunError(f"{module} {request.culture}: {text.strip().splitlines()[0]} (rerun to retry)")
        return {"summary": final["summary"], "status": status}

    def adapt(self, node: Node, folder: Path) -> dict:
        from graphs.adapt import AdaptRequest

        m, p = self.study.roleplay, node.params
        request = AdaptRequest(culture=node.culture, n=p["n"], model=p["model"], db=str(self.out / p["db"]),
                               concurrency=m.concurrency, seed=p["seed"], unstructured=p["unstructured"],
                               max_goal_chars=p.get("max_goal_chars"))
        # seeds that never validate are stored as failed; the pipeline goes on with the adapted ones
        return self._batch("graphs.adapt", request, self._model(m.model, m.unstructured, m.concurrency),
                           tolerate_failures=True)

    def simulate(self, node: Node, folder: Path) -> dict:
        from graphs.simulate import SimulateRequest

        m, p = self.study.roleplay, node.params
        prompts = self._ungrounded_prompts() if p["ungrounded"] else None
        request = SimulateRequest(culture=node.culture, episodes=p["episodes"], samples=p["samples"],
                                  max_turns=p["max_turns"], model=p["model"], db=str(self.out / p["db"]),
                                  concurrency=m.concurrency, seed=p["seed"], use_seeds=p["use_seeds"],
                                  scenario_ids=self._adapted_seeds(node.culture, p["seeds_of"]) if p.get("seeds_of")
                                  else None, prompts=prompts, unstructured=p["unstructured"])
        return self._batch("graphs.simulate", request, self._model(m.model, m.unstructured, m.concurrency))

    def _adapted_seeds(self, culture: str, db: str) -> list[str]:
        """The ids of the seeds adapted for `culture` in the study's store `db`, in the store's order."""
        from graphs.store import Store

        with Store(self.out / db) as store:
            ids = [s.source.removeprefix("adapted:") for s in store.scenarios(culture=culture)]
        if not ids:
            raise StudyRunError(f"simulate {culture}: no adapted scenarios in {db} to play unadapted")
        return ids

    def _ungrounded_prompts(self) -> str:
        """The control's prompts folder: each template of `UNGROUNDED` as its `_ungrounded` version (the personas',
        the observer's and the training rows' system turns: the culture never named)."""
        import agents.prompts

        folder = self.out / "prompts" / "ungrounded"
        folder.mkdir(parents=True, exist_ok=True)
        for name in UNGROUNDED:
            shutil.copyfile(Path(agents.prompts.__file__).with_name(f"{name}_ungrounded.j2"), folder / f"{name}.j2")
        return str(folder)

    def judge(self, node: Node, folder: Path) -> dict:
        from graphs.judge import JudgeRequest

        m, p = self.study.judge_model, node.params
        request = JudgeRequest(culture=node.culture, model=p["model"], db=str(self.out / p["db"]),
                               concurrency=m.concurrency, seed=p["seed"], unstructured=p["unstructured"])
        return self._batch("graphs.judge", request, self._model(m.model, m.unstructured, m.concurrency))

    def contrast(self, node: Node, folder: Path) -> dict:
        from graphs.contrast import ContrastRequest

        m, p = self.study.roleplay, node.params
        request = ContrastRequest(culture=node.culture, model=p["model"], db=str(self.out / p["db"]),
                                  judge_model=p["judge_model"], concurrency=m.concurrency, seed=p["seed"],
                                  unstructured=p["unstructured"])
        return self._batch("graphs.contrast", request, self._model(m.model, m.unstructured, m.concurrency))

    # ------------------------------------------------------------ training

    def dataset(self, node: Node, folder: Path) -> dict:
        from training import dataset

        p = node.params
        argv = ["--culture", node.culture, "--db", str(self.out / p["db"]), "--out", str(folder / "data"),
                "--views", p["views"], "--seed", str(p["seed"])]
        argv += ["--filter", "none"] if p["filter"] == "none" else ["--judge-model", p["judge_model"]]
        if p.get("contrastive_model"):
            argv += ["--contrastive-model", p["contrastive_model"]]
        if p.get("ungrounded"):
            argv += ["--prompts", self._ungrounded_prompts()]
        stats = _entry_point(dataset.main, argv, "training.dataset")
        return {"rows": {k: v["total"] for k, v in stats["rows"].items()}}

    def match_rows(self, node: Node, folder: Path) -> dict:
        """The first input's export with its SFT training rows drawn (seeded) to the second's count: a sample
        without replacement when there are enough, else every row and a seeded draw of the rest."""
        source, like = (self.folder(i) / "data" for i in node.inputs)
        rows = (source / "sft_train.jsonl").read_text().splitlines()
        target = len((like / "sft_train.jsonl").read_text().splitlines())
        rng = random.Random(node.params["seed"])
        if not rows:
            raise StudyRunError(f"match_rows {node.culture}: {source} has no SFT training rows")
        drawn = rng.sample(rows, target) if len(rows) >= target else rows + rng.choices(rows, k=target - len(rows))
        data = folder / "data"
        if data.exists():
            shutil.rmtree(data)
        shutil.copytree(source, data)
        (data / "sft_train.jsonl").write_text("".join(line + "\n" for line in drawn))
        stats = json.loads((data / "stats.json").read_text())
        views: dict = {}
        for line in drawn:
            view = json.loads(line).get("view")
            views[view] = views.get(view, 0) + 1
        stats["rows"]["sft_train.jsonl"] = {**views, "total": target}
        stats["matched_rows"] = {"from": str(source), "available": len(rows), "matched_to": str(like),
                                 "rows": target, "with_replacement": len(rows) < target, "seed": node.params["seed"]}
        _write_json(data / "stats.json", stats)
        return {"rows": {"sft_train.jsonl": target}, "available": len(rows)}

    def survey_rows(self, node: Node, folder: Path) -> dict:
        from training import survey_rows

        p = node.params
        argv = ["--culture", node.culture, "--items", p["items"], "--formats", ",".join(p["formats"]),
                "--rows-per-item", str(p["rows_per_item"]), "--seed", str(p["seed"]), "--out", str(folder / "data")]
        stats = _entry_point(survey_rows.main, argv, "training.survey_rows")
        return {"rows": {k: v["total"] for k, v in stats["rows"].items()}}

    def sft(self, node: Node, folder: Path) -> dict:
        from training import sft

        p = node.params
        argv = ["--config", str(preset_path(self.study)), "--model_name_or_path", p["model"],
                "--dataset_name", str(self.folder(node.inputs[0]) / "data"), "--output_dir", str(folder / "adapter"),
                "--seed", str(p["seed"]), "--data_seed", str(p["seed"]), "--report_to", "none"]
        metrics = _entry_point(sft.main, argv + _flags(p["overrides"]), "training.sft")
        return {"metrics": metrics if isinstance(metrics, dict) else None}

    def dpo(self, node: Node, folder: Path) -> dict:
        from training import dpo

        p = node.params
        start, pairs = node.inputs
        argv = ["--config", str(preset_path(self.study, p["preset"])), "--model_name_or_path", p["model"],
                "--adapter", str(self.folder(start) / "adapter"), "--dataset_name", str(self.folder(pairs) / "data"),
                "--output_dir", str(folder / "adapter"), "--seed", str(p["seed"]), "--data_seed", str(p["seed"]),
                "--report_to", "none"]
        metrics = _entry_point(dpo.main, argv + _flags(p["overrides"]), "training.dpo")
        return {"metrics": metrics if isinstance(metrics, dict) else None}

    # ------------------------------------------------------------ evaluation

    def evaluate(self, node: Node, folder: Path) -> dict:
        from agents.models import ModelSpecError
        from agents.prompts import PromptError
        from eval.wvs.items import WVSError
        from eval.wvs.report import write_outputs
        from eval.wvs.run import EvalConfig, evaluate

        p, e = node.params, self.study.evaluation
        adapter = str(self.folder(node.inputs[0]) / "adapter") if node.inputs else None
        cfg = EvalConfig(model=p["model"], adapter=adapter, countries=node.culture, items=p["items"],
                         method=p["method"], formats=",".join(p["formats"]), prompt=p["prompt"],
                         wvs_file=p["wvs_file"], personas=p["personas"], samples=p["samples"], seed=p["seed"],
                         bootstrap=p["bootstrap"], batch_size=e.batch_size, out=str(folder / "results.json"),
                         plots=False)
        try:
            model = self.eval_model(node, adapter) if self.eval_model else None
            results = evaluate(cfg, model=model)
            write_outputs(results, cfg.out, plots=False)
        except (WVSError, ModelSpecError, PromptError) as exc:
            raise StudyRunError(f"eval.wvs {node.culture}: {exc}") from None
        return {"results": "results.json"}


def _flags(overrides: dict) -> list[str]:
    """A training preset's overrides as flags: {max_steps: 2, lora_target_modules: [q, v]} -> --max_steps 2 ..."""
    argv = []
    for key, value in overrides.items():
        values = value if isinstance(value, list) else [value]
        argv += [f"--{key}", *(str(v).lower() if isinstance(v, bool) else str(v) for v in values)]
    return argv


def _entry_point(main: Callable, argv: list[str], name: str):
    """A command's `main(argv)`, its `sys.exit("error: ...")` turned into StudyRunError."""
    try:
        return main(argv)
    except SystemExit as exc:
        if exc.code in (None, 0):
            return None
        raise StudyRunError(f"{name}: {str(exc.code).removeprefix('error: ')}") from None


def _write_json(path: Path, data) -> None:
    """Write JSON atomically: a kill leaves the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


served_study = build_study_graph(served=True)  # langgraph.json's `study`
