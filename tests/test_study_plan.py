"""Study configs and `python -m study plan`: one-line errors naming the key, stages shared between arms counted once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from study.__main__ import main
from study.config import StudyConfigError, load_study
from study.plan import plan, totals

ROOT = Path(__file__).resolve().parents[1]
GOOD = """\
name: t
cultures: [CHN]
roleplay: {model: puppet}
students: [tiny]
arms: [base, cultural_prompt, clca, dialogue_only, intent_only, no_filter, culture_free]
seeds: [1, 2]
training: {preset: %s}
sizes: {seeds: 3, episodes: 4, samples: 2, rounds: 2}
evaluation: {items: [clca44:test], readings: [logprob], formats: [default, reversed]}
""" % (ROOT / "configs" / "sft_demo.yaml")


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("old", "new", "message"), [
    ("sizes: {seeds: 3,", "sizes: {sedes: 3,", ":8: sizes.sedes: unknown key (did you mean 'seeds'?)"),
    ("sizes: {seeds: 3,", "sizes: {seeds: three,", ":8: sizes.seeds: expected an integer, got 'three'"),
    ("arms: [base,", "arms: [bsae,", ":5: arms: unknown arm 'bsae' (did you mean 'base'?)"),
    ("arms: [base,", "arms: [dpo,", ":7: training.dpo_preset: the dpo arm needs a training.dpo preset"),
    ("cultures: [CHN]", "cultures: [XXX]", ":2: cultures: "),
    ("name: t", "nmae: t", ":1: nmae: unknown key (did you mean 'name'?)"),
    ("seeds: [1, 2]", "seeds: [1, 1]", ":6: seeds: 1 given twice"),
    ("readings: [logprob]", "readings: [vibes]", "evaluation.readings: unknown reading 'vibes'"),
    ("formats: [default, reversed]", "formats: [default, upside]", "evaluation.formats: --formats: unknown format"),
    ("items: [clca44:test]", "items: [Q99999]", "evaluation.items: unknown item 'Q99999'"),
    ("roleplay: {model: puppet}\n", "", "roleplay: required key missing"),
])
def test_bad_config_is_one_line_naming_the_key(tmp_path, capsys, old, new, message):
    path = write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(StudyConfigError) as err:
        load_study(path)
    assert message in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SystemExit) as exit_:
        main(["plan", str(path)])
    assert exit_.value.code == f"error: {err.value}"


def test_survey_sft_needs_held_out_items(tmp_path):
    text = GOOD.replace("arms: [base,", "arms: [survey_sft, base,").replace("items: [clca44:test]", "items: [clca44]")
    with pytest.raises(StudyConfigError, match=r":9: evaluation.items: clca44: the survey_sft arm trains on the "
                                               r"train split"):
        load_study(write(tmp_path, text))


def test_missing_preset_is_named(tmp_path):
    with pytest.raises(StudyConfigError, match="training.preset: nope.yaml: no such file"):
        load_study(write(tmp_path, GOOD.replace(str(ROOT / "configs" / "sft_demo.yaml"), "nope.yaml")))


def test_shared_stages_are_planned_once_with_their_counts(tmp_path):
    study = load_study(write(tmp_path, GOOD))
    _, planned = plan(study)
    kinds = totals(planned)
    # one adaptation, two role-play pipelines (adapted + ungrounded seeds), each judged once
    assert kinds["adapt"]["stages"] == 1 and kinds["simulate"]["stages"] == 2 and kinds["judge"]["stages"] == 2
    # exports: clca, dialogue_only, intent_only, no_filter, culture_free; one matched to clca's rows
    assert kinds["dataset"]["stages"] == 5 and kinds["match_rows"]["stages"] == 1
    # five trained arms x two seeds; seven arms' evaluations (untrained: one each)
    assert kinds["sft"]["stages"] == 10 and kinds["evaluate"]["stages"] == 2 + 10
    simulate = next(p for p in planned if p.node.kind == "simulate" and not p.node.params["use_seeds"])
    assert simulate.counts == {"episodes": 4, "turns": 4 * 2 * 2, "model calls": 32}
    assert set(simulate.used_by) == {"clca", "dialogue_only", "intent_only", "no_filter", "culture_free"}
    rows = {p.node.params["views"] + "/" + p.node.params["filter"]: p.counts["training rows"]
            for p in planned if p.node.kind == "dataset"}
    assert rows["dialogue/paper"] == 8 and rows["intent/paper"] == 4 and rows["dialogue,intent/none"] == 12
    evaluation = next(p for p in planned if p.node.kind == "evaluate")
    assert evaluation.counts["evaluation prompts"] == 12 * 2  # 12 clca44 test items with CHN shares x 2 formats
    # every node after its inputs
    seen = set()
    for p in planned:
        assert set(p.node.inputs) <= seen
        seen.add(p.node.id)


def test_dpo_shares_clca_training_and_survey_sft_trains_on_the_train_split(tmp_path):
    text = (GOOD.replace("arms: [base, cultural_prompt, clca, dialogue_only, intent_only, no_filter, culture_free]",
                         "arms: [clca, dpo, survey_sft]")
            .replace("training: {preset: %s}" % (ROOT / "configs" / "sft_demo.yaml"),
                     "training: {preset: %s, dpo_preset: %s, dpo_overrides: {max_steps: 3}}"
                     % (ROOT / "configs" / "sft_demo.yaml", ROOT / "configs" / "dpo_demo.yaml"))
            .replace("rounds: 2}", "rounds: 2, survey_rows: 5}"))
    _, planned = plan(load_study(write(tmp_path, text)))
    kinds = totals(planned)
    # per seed: clca's SFT run (dpo starts from it) and survey_sft's; one DPO run; one contrastive stage
    assert kinds["sft"]["stages"] == 2 * 2 and kinds["dpo"]["stages"] == 2 and kinds["contrast"]["stages"] == 1
    assert kinds["dpo"]["steps"] == 2 * 3
    dpo = next(p for p in planned if p.node.kind == "dpo")
    sft = {p.node.id: p.node for p in planned if p.node.kind == "sft"}
    assert dpo.node.inputs[0] in sft and set(next(p for p in planned if p.node.id == dpo.node.inputs[0]).used_by) == {
        "clca", "dpo"}
    survey = next(p for p in planned if p.node.kind == "survey_rows")
    assert survey.node.params["items"] == "clca44:train"
    from eval.wvs.items import select_items
    from eval.wvs.survey import BundledShares

    asked = sum(BundledShares().distribution("CHN", it) is not None for it in select_items("clca44:train"))
    assert survey.counts == {"training rows": asked * 2 * 5}  # items with CHN shares x 2 formats x 5 draws


def test_plan_on_the_shipped_configs_loads_no_model():
    for name, stages in (("demo", 18), ("clca_paper", None)):
        code = (f"import sys; from study.__main__ import main; main(['plan', 'configs/studies/{name}.yaml']); "
                "assert not any(m in sys.modules for m in ('torch', 'vllm'))")
        out = subprocess.run([sys.executable, "-c", code],
            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
        assert out.returncode == 0, out.stderr
        assert "model calls in all: at most" in out.stdout
        if stages:
            assert f"; {stages} stages" in out.stdout.splitlines()[0]
