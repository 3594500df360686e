"""Issue 23 with scripted models: the stated distribution, the format sweep, paired significance in eval.compare,
the anchored score, map_distance's interval, and the held-out item splits."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from agents.models import Model, ScriptedBackend
from eval.compare import main as compare_main
from eval.wvs.items import all_items, draw_split, item_sets, named_set, select_items
from eval.wvs.paired import compare, load_answers
from eval.wvs.report import write_outputs
from eval.wvs.respondents import write_synthetic_file
from eval.wvs.run import EvalConfig, evaluate, main
from eval.wvs.survey import BundledShares, country

ITEMS = "Q1,Q7,Q27,Q33,Q43"


def item_of(messages):
    text = messages[-1]["content"]
    return next(it for it in all_items().values() if f"QUESTION: {it.text}\n" in text)


def listed_labels(messages):
    """The option labels in the order the question lists them (the `N. label` or `A. label` lines)."""
    return re.findall(r"^(\w+)\. ", messages[-1]["content"], re.MULTILINE)


def stating(shares_of):
    """A model that states `shares_of(item)` (a vector in code order) under the shares schema, whatever the format."""

    def reply(messages, task):
        item = item_of(messages)
        labels = listed_labels(messages) or [str(c) for c in item.codes]  # 1-10 scales list no options
        shown = {str(c): 100 * float(x) for c, x in zip(item.codes, shares_of(item))}
        if labels[0].isalpha():
            shown = {chr(65 + i): 100 * float(x) for i, x in enumerate(shares_of(item))}
        return json.dumps({"shares": {label: shown[label] for label in labels}})

    return Model(ScriptedBackend(reply), "scripted")


def survey_shares(alpha3):
    shares = BundledShares()
    return lambda item: shares.distribution(alpha3, item)


def uniform_shares(item):
    return np.full(len(item.codes), 1 / len(item.codes))


def run(tmp_path, name, model, **kw):
    cfg = EvalConfig(**{"model": "scripted", "countries": "CHN", "items": ITEMS, "bootstrap": 200,
                        "out": str(tmp_path / f"{name}.json"), **kw})
    results = evaluate(cfg, model=model)
    write_outputs(results, cfg.out, plots=False)
    return results, cfg.out


def test_distribution_stating_the_survey_scores_zero_and_uniform_scores_the_uniform_row(tmp_path):
    exact, _ = run(tmp_path, "exact", stating(survey_shares("CHN")), method="distribution")
    chn = exact["summary"]["countries"]["CHN"]
    assert chn["model"]["js"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert chn["model"]["anchored_score"]["value"] == pytest.approx(100.0, abs=1e-3)
    assert chn["model"]["invalid_rate"]["value"] == 0.0
    flat, _ = run(tmp_path, "flat", stating(uniform_shares), method="distribution", formats="all")
    for summary in [flat["summary"]] + [f["summary"] for f in flat["by_format"].values()]:
        c = summary["countries"]["CHN"]
        assert c["model"]["js"]["value"] == pytest.approx(c["uniform"]["js"]["value"], abs=1e-9)
        assert c["model"]["anchored_score"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert set(flat["by_format"]) == {"default", "reversed", "letters", "paraphrase1", "paraphrase2"}
    assert {"wvs_distribution", "wvs_distribution_paraphrase1", "wvs_distribution_paraphrase2"} <= set(
        flat["provenance"]["prompt_versions"])


def test_an_all_zero_or_off_schema_distribution_is_invalid(tmp_path):
    def reply(messages, task):
        item = item_of(messages)
        if item.qid == "Q1":
            return json.dumps({"shares": {str(c): 0 for c in item.codes}})
        if item.qid == "Q7":
            return "not json"
        return json.dumps({"shares": {str(c): 1 for c in item.codes}})

    results, _ = run(tmp_path, "zero", Model(ScriptedBackend(reply), "scripted"), method="distribution")
    rows = {r["qid"]: r for r in results["items"]}
    assert rows["Q1"]["model"][-1] == 1.0 and rows["Q7"]["model"][-1] == 1.0
    assert rows["Q27"]["model"][:-1] == pytest.approx([0.25] * 4) and rows["Q27"]["model"][-1] == 0.0
    assert results["summary"]["countries"]["CHN"]["model"]["invalid_rate"]["value"] == pytest.approx(2 / 5)


@pytest.mark.parametrize("structured", [True, False])
def test_a_model_that_picks_the_first_listed_option_has_a_spread_across_formats(tmp_path, structured):
    def reply(messages, task):
        first = listed_labels(messages)[0]
        if not structured:
            return first
        return json.dumps({"answer": first if first.isalpha() else int(first)})

    model = Model(ScriptedBackend(reply), "scripted", structured=structured)
    results, _ = run(tmp_path, f"first-{structured}", model, method="generate", formats="default,reversed,letters")
    js = results["summary"]["countries"]["CHN"]["model"]["js"]
    per_format = {f: v["summary"]["countries"]["CHN"]["model"]["js"]["value"] for f, v in results["by_format"].items()}
    assert js["sd"] > 0.01 and js["min"] < js["max"]
    assert js["value"] == pytest.approx(np.mean(list(per_format.values())))
    assert per_format["default"] == pytest.approx(per_format["letters"])  # letters answer back to the same codes
    by = {(r["format"], r["qid"]): r["model"] for r in results["items"]}
    assert by[("default", "Q1")][0] == 1.0 and by[("reversed", "Q1")][3] == 1.0 and by[("letters", "Q1")][0] == 1.0
    assert results["summary"]["overall"]["model"]["js"]["sd"] == pytest.approx(js["sd"])


def test_logprob_reads_every_format_on_the_tiny_model(tiny_model_dir, tmp_path):
    cfg = EvalConfig(model=tiny_model_dir, countries="MEX", items="Q1,Q48", formats="all", bootstrap=20,
                     out=str(tmp_path / "lp.json"))
    results = evaluate(cfg)
    assert set(results["by_format"]) == set(cfg_formats := results["provenance"]["formats"]) and len(cfg_formats) == 5
    for r in results["items"]:
        assert sum(r["model"]) == pytest.approx(1.0) and r["model"][-1] == 0.0
    letters = next(a for a in results["answers"] if a["format"] == "letters" and a["qid"] == "Q1")
    reversed_ = next(a for a in results["answers"] if a["format"] == "reversed" and a["qid"] == "Q1")
    default = next(a for a in results["answers"] if a["format"] == "default" and a["qid"] == "Q1")
    assert letters["probs"] != default["probs"] and reversed_["probs"] != default["probs"]  # different prompts


@pytest.fixture(scope="module")
def wvs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("wvs") / "synthetic.csv"
    return write_synthetic_file(path, [country("MEX")], n_per_country=40, seed=2, missing_rate=0.0)


def test_identical_models_give_no_detectable_change_over_personas_and_items(tmp_path, wvs_file, capsys):
    def reply(messages, task):  # answers depend on the persona, so units differ
        item = item_of(messages)
        return json.dumps({"answer": item.codes[len(messages[0]["content"]) % len(item.codes)]})

    kw = {"method": "generate", "countries": "MEX", "wvs_file": str(wvs_file), "personas": 30,
          "formats": "default,reversed"}
    _, base = run(tmp_path, "base", Model(ScriptedBackend(reply), "scripted"), **kw)
    _, adapted = run(tmp_path, "adapted", Model(ScriptedBackend(reply), "scripted"), **kw)
    capsys.readouterr()
    compare_main([base, adapted, "--bootstrap", "300"])
    out = capsys.readouterr().out
    assert "bootstrap over personas and items" in out and "formats: default, reversed" in out
    rows = [line for line in out.splitlines()[out.splitlines().index(
        next(line for line in out.splitlines() if line.startswith("metric"))) + 1:]]
    assert rows and all(line.endswith("no detectable change") for line in rows)
    assert any(line.startswith("accuracy") for line in rows)
    for line in rows:
        lo, hi = (float(x) for x in re.search(r"\[([-+.\d]+), ([-+.\d]+)\]", line).groups())
        assert lo <= 0 <= hi


def test_a_model_planted_closer_on_every_item_is_closer(tmp_path):
    survey = survey_shares("CHN")
    _, base = run(tmp_path, "base", stating(uniform_shares), method="distribution")
    _, adapted = run(tmp_path, "adapted", stating(lambda it: 0.5 * survey(it) + 0.5 * uniform_shares(it)),
                     method="distribution")
    b, a = (json.loads(Path(p).read_text()) for p in (base, adapted))
    paired = compare(b, a, load_answers(b, base), load_answers(a, adapted), n_boot=2000)
    assert paired.resampled == {"CHN": "items"}
    js = next(r for r in paired.rows if r.metric == "js")
    assert js.verdict == "closer" and js.p_holm < 0.05 and js.ci[1] < 0 and js.delta < 0
    anchored = next(r for r in paired.rows if r.metric == "anchored_score")
    assert anchored.verdict == "closer" and anchored.delta > 0
    assert next(r for r in paired.rows if r.metric == "invalid_rate").verdict == "no detectable change"


def test_map_distance_has_a_real_interval_with_a_single_unit(tmp_path):
    survey = survey_shares("CHN")
    results, base = run(tmp_path, "map-base", stating(uniform_shares), method="distribution", items="iw10")
    cell = results["summary"]["countries"]["CHN"]["model"]["map_distance"]
    assert results["provenance"]["counts"]["CHN"]["units"] == 1
    assert cell["ci"][0] < cell["value"] < cell["ci"][1]  # one unit: the width is the indicators'
    # the target itself: zero on every resample (the interval is a point only when nothing differs)
    exact, adapted = run(tmp_path, "map-exact", stating(survey), method="distribution", items="iw10")
    assert exact["summary"]["countries"]["CHN"]["model"]["map_distance"]["ci"] == pytest.approx([0, 0], abs=1e-9)
    b, a = (json.loads(Path(p).read_text()) for p in (base, adapted))
    row = next(r for r in compare(b, a, load_answers(b, base), load_answers(a, adapted), n_boot=500).rows
               if r.metric == "map_distance")
    assert row.ci[0] < row.ci[1] < 0 and row.verdict == "closer"


def test_held_out_splits_are_fixed_balanced_and_recorded(tmp_path):
    data = item_sets()
    split = data["splits"]["clca44"]
    blocks = data["sets"]["clca44"]["blocks"]
    assert draw_split(blocks, split["seed"], split["test_fraction"]) == (split["train"], split["test"])
    train, test = named_set("clca44:train"), named_set("clca44:test")
    assert not set(train) & set(test) and sorted(train + test, key=lambda q: int(q[1:])) == list(named_set("clca44"))
    for qids in blocks.values():  # every topic block is in both, in proportion
        held = [q for q in qids if q in test]
        assert len(held) == max(1, round(split["test_fraction"] * len(qids))) and len(held) < len(qids)
    assert [it.qid for it in select_items("clca44:test")] == list(test)
    results, _ = run(tmp_path, "test-split", stating(uniform_shares), method="distribution", items="clca44:test")
    assert results["provenance"]["item_split"] == {"name": "clca44:test", **split}
    assert results["provenance"]["items"] == list(test)


@pytest.mark.parametrize("argv,message", [
    (["--formats", "default,sideways"], "unknown format 'sideways'"),
    (["--formats", "letters,letters"], "letters given twice"),
    (["--items", "clca44:dev"], "unknown split 'clca44:dev'"),
    (["--method", "distribution", "--unstructured"], "needs structured answers"),
])
def test_cli_errors_are_one_line(argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["--model", "puppet", "--method", "generate", "--countries", "CHN", "--items", "Q1", *argv])
    text = str(exc.value.code)
    assert text.startswith("error: ") and message in text and "\n" not in text


def test_puppet_states_a_distribution_on_every_format(tmp_path, capsys):
    out = tmp_path / "p.json"
    main(["--model", "puppet", "--method", "distribution", "--countries", "CHN", "--items", "Q1,Q48",
          "--formats", "all", "--bootstrap", "20", "--no-plots", "--out", str(out)])
    assert "mean over 5 formats" in capsys.readouterr().out
    results = json.loads(out.read_text())
    assert results["summary"]["countries"]["CHN"]["model"]["invalid_rate"]["value"] == 0.0
