"""`python -m study run CONFIG.yaml --out DIR`: every stage of a study, each through its typed request, resumably.

Each node of the plan (`study.pipeline`) is run by its stage's public entry point: `graphs.batch` for adapt,
simulate and judge (`AdaptRequest`, `SimulateRequest`, `JudgeRequest`), `training.dataset.main` for the exports,
`training.sft.main` for the adapters and `eval.wvs.run.evaluate(EvalConfig)` for the evaluations. A node's output
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
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from study.config import Study, preset_path
from study.pipeline import Builder, Node, build

UNGROUNDED = "roleplay_system_ungrounded"


class StudyRunError(RuntimeError):
    """A stage of a study that failed; one line (rerunning the study retries it)."""


EvalModel = Callable[[Node, str | None], object]  # (evaluate node, adapter folder or None) -> Model or None


def run_study(study: Study, out: str | Path, *, progress: bool = False, eval_model: EvalModel | None = None,
              log: Callable[[str], None] = print) -> dict:
    """Run every node not done yet, then write the report. Returns {"ran": [ids], "skipped": [ids], "report": Path}.

    `eval_model` (tests): the model an evaluation reads instead of the one its spec names (None: the spec's)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    built = build(study)
    _write_json(out / "study.json", {"config": asdict(study), "scored": [asdict(s) for s in built.scored],
                                     "nodes": {i: asdict(n) for i, n in built.nodes.items()}})
    runner = _Runner(study, out, built, progress, eval_model)
    ran, skipped = [], []
    for node_id, node in built.nodes.items():
        folder = out / "stages" / node_id
        if (folder / "done.json").is_file():
            skipped.append(node_id)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        _write_json(folder / "request.json", asdict(node))
        log(f"study: {node_id} ...")
        started = time.time()
        result = runner.run(node, folder)
        _write_json(folder / "done.json", {"seconds": round(time.time() - started, 2), **(result or {})})
        ran.append(node_id)
    from study.report import write_report

    paths = write_report(out)
    return {"ran": ran, "skipped": skipped, "report": paths["md"]}


class _Runner:
    def __init__(self, study: Study, out: Path, built: Builder, progress: bool, eval_model: EvalModel | None):
        self.study, self.out, self.built, self.progress, self.eval_model = study, out, built, progress, eval_model
        self.models: dict = {}

    def folder(self, node_id: str) -> Path:
        return self.out / "stages" / node_id

    def run(self, node: Node, folder: Path) -> dict | None:
        return getattr(self, node.kind)(node, folder)

    # ------------------------------------------------------------ role-play stages (graphs.batch)

    def _model(self, spec: str, unstructured: bool, concurrency: int):
        from agents.models import load_model

        key = (spec, unstructured, concurrency)
        if key not in self.models:
            self.models[key] = load_model(spec, structured=not unstructured, max_batch=concurrency,
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
                               concurrency=m.concurrency, seed=p["seed"], unstructured=p["unstructured"])
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
                                  prompts=prompts, unstructured=p["unstructured"])
        return self._batch("graphs.simulate", request, self._model(m.model, m.unstructured, m.concurrency))

    def _ungrounded_prompts(self) -> str:
        """A prompts folder whose `roleplay_system` is the ungrounded persona prompt (the culture never named)."""
        import agents.prompts

        folder = self.out / "prompts" / "ungrounded"
        folder.mkdir(parents=True, exist_ok=True)
        source = Path(agents.prompts.__file__).with_name(f"{UNGROUNDED}.j2")
        shutil.copyfile(source, folder / "roleplay_system.j2")
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

