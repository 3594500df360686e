"""`python -m study run` and `report` on the puppet role-player and the tiny local student: every implemented arm
runs, shared stages run once, a rerun skips what is finished, a planted effect is reported as closer."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from study.config import load_study
from study.report import write_report
from study.run import run_study

ROOT = Path(__file__).resolve().parents[1]
STUDY = """\
name: tiny
cultures: [CHN]
roleplay: {model: puppet, concurrency: 4}
students: [{name: tiny, model: %(model)s}]
arms: [%(arms)s]
seeds: [1]
training:
  preset: %(preset)s
  overrides: {max_steps: 1, per_device_train_batch_size: 2, lora_r: 4, lora_alpha: 8,
              lora_target_modules: [q_proj, v_proj], save_strategy: "no", disable_tqdm: true, max_length: 2048}
  dpo_preset: %(dpo_preset)s
  dpo_overrides: {max_steps: 1, per_device_train_batch_size: 2, save_strategy: "no", disable_tqdm: true}
sizes: {seeds: 3, episodes: 4, samples: 2, rounds: 2, survey_rows: 2}
evaluation: {items: [clca44:test], readings: [logprob], formats: [default, reversed], bootstrap: 50}
"""


def study_file(tmp_path, model: str, arms: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(STUDY % {"model": model, "arms": arms, "preset": ROOT / "configs" / "sft_demo.yaml",
                             "dpo_preset": ROOT / "configs" / "dpo_demo.yaml"})
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("study")
    arms = "base, cultural_prompt, clca, dialogue_only, intent_only, no_filter, culture_free, dpo, survey_sft"
    study = load_study(study_file(tmp, tiny_model_dir, arms))
    out = tmp / "out"
    first = run_study(study, out, log=lambda line: None)
    return study, out, first


def test_every_arm_runs_and_shared_stages_run_once(finished):
    _, out, first = finished
    kinds = [i.split("-")[0] for i in first["ran"]]
    assert len(first["ran"]) == len(set(first["ran"])) and not first["skipped"]
    # one adaptation; the adapted and the ungrounded pipeline each simulated and judged once for all six arms
    assert kinds.count("adapt") == 1 and kinds.count("simulate") == 2 and kinds.count("judge") == 2
    # clca's export, its three ablations', the control's, and the export with contrastive pairs for dpo
    assert kinds.count("dataset") == 6 and kinds.count("match_rows") == 1 and kinds.count("contrast") == 1
    # dpo starts from clca's own SFT run: six SFT runs (clca, three ablations, culture_free, survey_sft), one DPO
    assert kinds.count("sft") == 6 and kinds.count("dpo") == 1 and kinds.count("survey_rows") == 1
    assert kinds.count("evaluate") == 9
    # the stores hold one run per pipeline stage: nothing was simulated twice
    import sqlite3

    db = sqlite3.connect(out / "stores" / "chn-cultural.db")
    assert db.execute("select count(*) from episodes").fetchone()[0] == 4
    free = sqlite3.connect(out / "stores" / "chn-culture_free.db")
    scenarios = {r[0] for r in free.execute("select scenario_id from episodes")}
    adapted = {r[0] for r in db.execute("select scenario_id from episodes")}
    assert scenarios and not scenarios & adapted  # the control plays the unadapted seeds ...
    sources = {r[0] for r in db.execute("select seed_id from scenarios")}
    assert scenarios <= sources  # ... of the scenarios the cultural pipeline adapted
    prompts = {json.loads(r[0])["roleplay_system"] for r in free.execute("select prompt_versions from episodes")}
    grounded = {json.loads(r[0])["roleplay_system"] for r in db.execute("select prompt_versions from episodes")}
    assert prompts.isdisjoint(grounded)  # ... with the ungrounded persona prompt
    for name in ("observer_system", "observer_turn"):  # ... and the ungrounded observer
        free_v = {json.loads(r[0])[name] for r in free.execute("select prompt_versions from episodes")}
        assert free_v.isdisjoint({json.loads(r[0])[name] for r in db.execute("select prompt_versions from episodes")})
    # the control trains on as many rows as clca
    stages = out / "stages"
    clca_rows = {json.loads((d / "done.json").read_text())["rows"]["sft_train.jsonl"]
                 for d in stages.glob("match_rows-*")}
    matched = next(stages.glob("match_rows-*"))
    like = json.loads((matched / "request.json").read_text())["inputs"][1]
    assert clca_rows == {len((stages / like / "data" / "sft_train.jsonl").read_text().splitlines())}

    def systems(export: Path) -> list[str]:
        return [m["content"] for line in (export / "sft_train.jsonl").open()
                for m in json.loads(line)["messages"] if m["role"] == "system"]

    # the control's training rows never name the culture; clca's do (the grounded templates)
    assert not any("Chinese" in text for text in systems(matched / "data"))
    assert any("Chinese culture" in text for text in systems(stages / like / "data"))
    for adapter in stages.glob("sft-*/adapter"):
        assert (adapter / "adapter_model.safetensors").is_file()
    # dpo continues clca's own SFT adapter, on the export that holds the contrastive pairs
    dpo = next(stages.glob("dpo-*"))
    start, pairs = json.loads((dpo / "request.json").read_text())["inputs"]
    record = json.loads((dpo / "adapter" / "provenance.json").read_text())
    assert record["start_adapter"]["path"] == str(stages / start / "adapter")
    assert json.loads((stages / pairs / "request.json").read_text())["params"]["contrastive_model"] == "puppet"
    assert "contrastive" in {json.loads(r)["kind"] for r in (stages / pairs / "data" / "dpo_train.jsonl").open()}
    # survey_sft trains on the train items' survey answers; every arm is scored on the test items
    from eval.wvs.items import select_items

    survey = json.loads((next(stages.glob("survey_rows-*")) / "data" / "stats.json").read_text())
    train, test = ({it.qid for it in select_items(f"clca44:{part}")} for part in ("train", "test"))
    assert survey["asked"] and set(survey["asked"]) <= train and not train & test
    for evaluation in stages.glob("evaluate-*"):
        assert json.loads((evaluation / "request.json").read_text())["params"]["items"] == "clca44:test"


def test_rerun_skips_every_finished_stage_and_gives_the_same_results(finished):
    study, out, first = finished
    before = (out / "results.csv").read_text()
    again = run_study(study, out, log=lambda line: None)
    assert again["ran"] == [] and sorted(again["skipped"]) == sorted(first["ran"])
    assert (out / "results.csv").read_text() == before


def test_report_has_a_row_per_arm_with_intervals_and_verdicts(finished):
    study, out, _ = finished
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["arm"] for r in rows] == list(study.arms)
    for r in rows:
        assert float(r["js_CHN_lo"]) <= float(r["js_CHN"]) <= float(r["js_CHN_hi"])
        assert r["js_average"] == r["js_CHN"]
    by_arm = {r["arm"]: r for r in rows}
    assert by_arm["base"]["verdict_base"] == "" and by_arm["clca"]["verdict_base"]
    assert by_arm["clca"]["verdict_culture_free"] and by_arm["culture_free"]["verdict_culture_free"] == ""
    # every arm but the references is tested against both; the untrained arms against base
    assert by_arm["cultural_prompt"]["verdict_base"] and by_arm["cultural_prompt"]["js_CHN"] != by_arm["base"]["js_CHN"]
    text = (out / "report.md").read_text()
    assert "## Verdicts" in text and "| clca / tiny |" in text and "## Provenance" in text
    # provenance: every stage's request, and the hash of every adapter that produced a number
    record = json.loads((out / "provenance.json").read_text())
    adapters = {i for i, s in record["stages"].items() if s["kind"] in ("sft", "dpo")}
    assert adapters and all(len(record["stages"][i]["adapter_sha256"]) == 64 for i in adapters)
    assert record["prompt_versions"]["wvs_country"] and record["git_commits"] and record["report_git_commit"]
    versions = record["prompt_versions"]  # what each pipeline played, observed and trained with, from its store
    for name in ("roleplay_system", "observer_turn", "sft_dialogue_system"):
        assert versions[f"{name} (chn-cultural)"] != versions[f"{name} (chn-culture_free)"]
    assert versions["judge_system (chn-cultural)"] == versions["judge_system (chn-culture_free)"]  # one judge
    assert all(r["evaluations"] for r in rows)
    # what each arm is and how many rows trained it: clca's export and the control's matched draw alike
    arms = {line.split(" | ")[0].strip("| "): line.split(" | ")[-1].strip(" |")
            for line in text.split("## Arms")[1].split("##")[0].splitlines() if line.startswith("| ")}
    assert arms["base"] == "-" and arms["clca"] == arms["culture_free"] != "-" and set(arms) >= set(study.arms)
    # report.html stands alone: the figures are inline, nothing is fetched
    page = (out / "report.html").read_text()
    assert page.count("<svg") == 1 and "No map: the evaluation did not ask the map's ten items" in page
    assert not re.search(r"""(src|href)=["'](?!#)""", page)
    assert all(f"<td>{arm} / tiny</td>" in page for arm in study.arms)


def test_a_planted_effect_is_closer_and_a_null_effect_is_not(tmp_path):
    """A scripted student that answers in the survey's shares once trained by clca, and always its first option
    otherwise (base, and after culture_free training)."""
    from agents.models import Model
    from agents.models.fake import ScriptedBackend
    from eval.wvs.items import select_items
    from eval.wvs.survey import BundledShares
    from study import run as study_run

    path = study_file(tmp_path, "scripted", "base, clca, culture_free")
    path.write_text(path.read_text().replace("readings: [logprob], formats: [default, reversed]",
                                             "readings: [generate], formats: [default], samples: 20")
                    .replace("bootstrap: 50", "bootstrap: 400"))  # Holm over 3 tests: p >= 3 x 2/401
    study = load_study(path)
    items = select_items("clca44:test")
    shares = BundledShares()
    trained = {}

    def student(node, adapter):
        planted = trained.get(adapter) == "clca"
        draws = {}  # item -> answers in proportion to the survey shares (largest remainders), one per call
        for it in items:
            dist = shares.distribution(node.culture, it)
            if dist is not None:
                counts = np.floor(dist * 20).astype(int)
                counts[np.argsort(-(dist * 20 - counts))[: 20 - counts.sum()]] += 1
                draws[it.qid] = [c for c, n in zip(it.codes, counts) for _ in range(n)]

        def reply(messages, task):
            item = next(it for it in items if it.text in messages[-1]["content"])
            return str(draws[item.qid].pop() if planted else item.codes[0])

        return Model(ScriptedBackend(reply), "scripted", structured=False)

    def fake_sft(self, node, folder):  # which arm's adapter, by its dataset; the student is scripted
        (folder / "adapter").mkdir(parents=True, exist_ok=True)
        kind = self.built.nodes[node.inputs[0]].kind
        for name in ("adapter_config.json", "adapter_model.safetensors"):  # what provenance hashes
            (folder / "adapter" / name).write_text(kind)
        trained[str(folder / "adapter")] = "culture_free" if kind == "match_rows" else "clca"
        return {}

    real_sft, study_run._Runner.sft = study_run._Runner.sft, fake_sft
    try:
        run_study(study, tmp_path / "out", eval_model=student, log=lambda line: None)
    finally:
        study_run._Runner.sft = real_sft
    rows = {r["arm"]: r for r in csv.DictReader((tmp_path / "out" / "results.csv").open())}
    assert rows["clca"]["verdict_base"].startswith("closer than base by"), rows["clca"]["verdict_base"]
    assert float(rows["clca"]["p_holm_max_base"]) < 0.05
    assert rows["clca"]["verdict_culture_free"].startswith("closer than culture_free")
    assert rows["culture_free"]["verdict_base"].startswith("not distinguishable from base")
    assert rows["base"]["verdict_culture_free"] == ""  # that is culture_free against base: tested once, not twice
    paired = (tmp_path / "out" / "report.md").read_text().split("## Paired tests")[1]
    assert paired.count("| clca44:test |") == 3  # clca vs base, clca vs culture_free, culture_free vs base
    assert float(rows["clca"]["js_CHN"]) < float(rows["base"]["js_CHN"])
    before = (tmp_path / "out" / "results.csv").read_text()
    write_report(tmp_path / "out")  # rebuilt from the stored results alone
    assert (tmp_path / "out" / "results.csv").read_text() == before


def test_the_html_report_places_every_arm_on_the_cultural_map(tmp_path, tiny_model_dir):
    path = study_file(tmp_path, tiny_model_dir, "base, cultural_prompt, clca")
    path.write_text(path.read_text().replace("items: [clca44:test]", "items: [iw10]"))
    out = tmp_path / "out"
    run_study(load_study(path), out, log=lambda line: None)
    page = (out / "report.html").read_text()
    assert page.count("<svg") == 2 and "No map" not in page
    drawn = list(csv.DictReader((out / "map.csv").open()))
    labels = {r["label"] for r in drawn if r["kind"] == "model"}
    assert len(labels) == 3 and any("+ clca" in label for label in labels)
    assert any("(cultural prompt" in label for label in labels) and any("(country prompt" in label for label in labels)
    assert rows_of(out, "map_distance_CHN")  # the map distance column is filled for every arm


def rows_of(out: Path, column: str) -> list[str]:
    values = [r[column] for r in csv.DictReader((out / "results.csv").open())]
    return values if all(values) else []


def test_sigkill_at_seeded_points_then_rerun_gives_the_same_results(tmp_path, tiny_model_dir):
    """`python -m study run` killed (SIGKILL: no handler runs) as seeded stages start, rerun each time until it
    ends: the same results.csv as a run never interrupted."""
    import os
    import random
    import signal
    import subprocess
    import sys

    path = study_file(tmp_path, tiny_model_dir, "base, clca, culture_free")
    whole = tmp_path / "whole"
    run_study(load_study(path), whole, log=lambda line: None)
    stages = len(json.loads((whole / "study.json").read_text())["nodes"])
    kill_at = sorted(random.Random(25).sample(range(1, stages + 1), 3))  # the k-th stage started in a process
    out, kills = tmp_path / "killed", 0
    argv = [sys.executable, "-m", "study", "run", str(path), "--out", str(out), "--no-progress"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for attempt in range(len(kill_at) + 1):
        started = len(list(out.glob("stages/*/done.json")))  # a rerun starts after the finished stages
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        for line in proc.stdout:  # each stage prints "study: <id> ..." as it starts
            started += line.startswith("study: ")
            if attempt < len(kill_at) and started == kill_at[attempt]:
                proc.send_signal(signal.SIGKILL)  # the stage has begun: its request written, its work under way
                kills += 1
                break
        proc.wait(timeout=600)
        proc.stdout.close()
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL
    assert kills == len(kill_at) and proc.returncode == 0
    assert (out / "results.csv").read_text() == (whole / "results.csv").read_text()


def test_served_study_streams_each_stage_and_refuses_bad_requests(tmp_path, monkeypatch, tiny_model_dir):
    """langgraph.json's `study`: the same graph as `study run`, paths under the serving root, progress on the
    custom stream, a bad request one line in `error` with nothing written."""
    from graphs.serving import SERVE_ROOT_ENV
    from study.run import served_study

    monkeypatch.setenv(SERVE_ROOT_ENV, str(tmp_path))
    study_file(tmp_path, tiny_model_dir, "base, cultural_prompt")
    for values, message in [({"config": "study.yaml", "outt": "o"}, "'outt': unknown input key (did you mean 'out'?)"),
                            ({"config": "../study.yaml"}, "config: ../study.yaml is outside the serving root"),
                            ({}, "config: required"), ({"config": "nope.yaml"}, "nope.yaml: cannot read")]:
        state = served_study.invoke(values)
        assert state["error"].startswith(message) or message in state["error"], state["error"]
        assert "report" not in state and not (tmp_path / "runs").exists()
    events = [chunk for mode, chunk in served_study.stream({"config": "study.yaml"}, stream_mode=["custom", "values"])
              if mode == "custom"]
    out = tmp_path / "runs" / "study-tiny"
    assert [e["event"] for e in events] == ["stage", "stage_done"] * 2  # the two untrained arms' evaluations
    assert {e["stage"] for e in events} == {p.name for p in (out / "stages").iterdir()}
    assert (out / "report.html").is_file()
