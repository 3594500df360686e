"""A model's map position through eval.wvs, the picture, the compare table, and bad input."""

import csv
import json

import numpy as np
import pytest

from eval.compare import main as compare_main
from eval.culture_map.cli import main as map_main
from eval.culture_map.draw import _arrows
from eval.culture_map.results import read_points
from eval.wvs import run
from eval.wvs.map_indicators import indicator_values, map_items
from eval.wvs.map_projection import load_projection
from eval.wvs.readers import ItemAnswers
from eval.wvs.report import write_outputs
from eval.wvs.respondents import write_synthetic_file
from eval.wvs.run import EvalConfig, evaluate
from eval.wvs.survey import BundledShares, country


def survey_reader(alpha3: str, shift: dict | None = None):
    """A logprob reader whose model answers exactly the country's survey shares (one unit per prompt),
    optionally with a planted shift {qid: (option index, amount)}."""
    shares = BundledShares()

    class Reader:
        def __init__(self, *args, **kwargs):
            pass

        def read(self, systems, items, questions):
            out = []
            for item in items:
                d = shares.distribution(alpha3, item)
                if shift and item.qid in shift:
                    k, amount = shift[item.qid]
                    d = (1 - amount) * d + amount * np.eye(len(d))[k]
                rows = np.tile(np.append(d, 0.0), (len(systems), 1))
                out.append(ItemAnswers(rows, np.full(len(systems), item.codes[int(np.argmax(d))]),
                                       np.zeros(len(systems))))
            return out

    return Reader


def run_with(monkeypatch, tmp_path, name, alpha3="CHN", shift=None, items="iw10", **cfg):
    monkeypatch.setattr(run, "LogprobReader", survey_reader(alpha3, shift))
    monkeypatch.setattr(run, "load_model", lambda spec, **kwargs: None)  # the oracle reader needs no model
    config = EvalConfig(model="survey-oracle", countries=alpha3, items=items, bootstrap=50,
                        out=str(tmp_path / f"{name}.json"), **cfg)
    results = evaluate(config)
    write_outputs(results, config.out, plots=False)
    return results, config.out


def test_model_answering_the_survey_lands_on_the_country(monkeypatch, tmp_path):
    results, path = run_with(monkeypatch, tmp_path, "oracle")
    stored = load_projection().info["countries"]["CHN"]["projected"]
    chn = results["map"]["countries"]["CHN"]
    assert chn["model"]["position"] == pytest.approx(stored, abs=1e-9)
    assert chn["target"]["position"] == pytest.approx(stored, abs=1e-9)
    assert chn["published"] == [-0.42, 0.37]
    assert results["summary"]["countries"]["CHN"]["model"]["map_distance"]["value"] == pytest.approx(0, abs=1e-9)
    # read back from the file, recomputed from the item records: the same point
    (point,) = read_points(path)
    assert point.position == pytest.approx(stored, abs=1e-9) and point.distance == pytest.approx(0, abs=1e-9)
    assert results["map"]["projection"]["fit_countries"][0] == "AUS"


def test_reference_rows_and_overall_carry_map_distance(monkeypatch, tmp_path):
    results, _ = run_with(monkeypatch, tmp_path, "oracle")
    summary = results["summary"]
    uniform = summary["countries"]["CHN"]["uniform"]["map_distance"]["value"]
    assert uniform > 0.3 and summary["overall"]["model"]["map_distance"]["value"] == pytest.approx(0, abs=1e-9)
    assert summary["countries"]["CHN"]["survey_majority"]["map_distance"]["value"] > 0


def test_planted_shift_in_the_model_moves_its_point(monkeypatch, tmp_path):
    results, _ = run_with(monkeypatch, tmp_path, "god", shift={"Q164": (9, 0.6)})  # God very important
    chn = results["map"]["countries"]["CHN"]
    dx, dy = np.subtract(chn["model"]["position"], chn["target"]["position"])
    assert dy < -0.3 and abs(dy) > 3 * abs(dx)  # toward traditional values
    assert results["summary"]["countries"]["CHN"]["model"]["map_distance"]["value"] == pytest.approx(np.hypot(dx, dy))


def test_persona_units_give_a_bootstrap_region(monkeypatch, tmp_path):
    """Persona prompts (a synthetic respondent file): each persona's answers differ, the point is their
    mean, and the bootstrap over personas gives the position a covariance and the distance a real CI."""
    wvs_file = write_synthetic_file(tmp_path / "wvs.csv", [country("CHN")], n_per_country=40, seed=3,
                                    missing_rate=0.0)
    oracle = survey_reader("CHN")

    class Varied(oracle):
        def read(self, systems, items, questions):
            rng = np.random.default_rng(0)
            out = []
            for ans in super().read(systems, items, questions):
                k = ans.rows.shape[1] - 1
                picks = np.eye(k + 1)[rng.integers(0, k, size=len(systems))]
                out.append(ItemAnswers(0.5 * ans.rows + 0.5 * picks, ans.codes, ans.off_option_mass))
            return out

    monkeypatch.setattr(run, "LogprobReader", Varied)
    monkeypatch.setattr(run, "load_model", lambda spec, **kwargs: None)  # the oracle reader needs no model
    cfg = EvalConfig(model="varied", countries="CHN", items="iw10", wvs_file=str(wvs_file), personas=40,
                     bootstrap=200)
    results = evaluate(cfg)
    assert results["provenance"]["prompt"] == "persona" and results["provenance"]["counts"]["CHN"]["units"] == 40
    chn = results["map"]["countries"]["CHN"]
    cov = np.array(chn["model"]["cov"])
    assert cov.shape == (2, 2) and np.trace(cov) > 0 and chn["model"]["replicates"] == 200
    cell = results["summary"]["countries"]["CHN"]["model"]["map_distance"]
    assert cell["ci"][0] < cell["value"] < cell["ci"][1]
    # the target is the respondent file's (weighted) shares, not the bundled ones
    assert chn["target"]["position"] != pytest.approx(load_projection().info["countries"]["CHN"]["projected"])


def test_cli_draws_png_svg_csv_with_arrow_pair(monkeypatch, tmp_path):
    _, base = run_with(monkeypatch, tmp_path, "base", shift={"Q182": (0, 0.5)})
    _, adapted = run_with(monkeypatch, tmp_path, "adapted", adapter="runs/some-adapter")
    out = tmp_path / "figs" / "map.png"
    map_main([base, adapted, "--out", str(out)])
    assert out.stat().st_size > 10_000 and out.with_suffix(".svg").read_text().startswith("<?xml")
    with out.with_suffix(".csv").open() as fh:
        rows = list(csv.DictReader(fh))
    kinds = [r["kind"] for r in rows]
    assert kinds.count("country") == 19 and kinds.count("model") == 2 and kinds.count("target") == 1
    assert "country_published" in kinds  # Japan, from its culture file
    adapted_row = next(r for r in rows if r["kind"] == "model" and "some-adapter" in r["label"])
    assert float(adapted_row["distance_to_target"]) == pytest.approx(0, abs=1e-4)
    (pair,) = _arrows(read_points(base) + read_points(adapted))  # base -> adapted, same model and prompt
    assert pair[0].adapter is None and pair[1].adapter == "runs/some-adapter"
    zones = {r["country"]: r["zone"] for r in rows if r["kind"] == "country"}
    assert zones["CHN"] == "Confucian" and zones["DEU"] == "Protestant Europe" and zones["THA"] == "West & South Asia"


def test_compare_reports_map_distance_and_positions(monkeypatch, tmp_path, capsys):
    _, base = run_with(monkeypatch, tmp_path, "base", shift={"Q182": (0, 0.5)})
    _, adapted = run_with(monkeypatch, tmp_path, "adapted", adapter="runs/some-adapter")
    compare_main([base, adapted])
    out = capsys.readouterr().out
    assert "map_distance (lower is better)" in out and "culture map position" in out and "CHN: base (" in out


@pytest.mark.parametrize("items,named", [
    ("Q1,Q2", ", ".join(map_items())),
    (",".join(q for q in map_items() if q != "Q209"), "Q209"),
])
def test_result_without_the_map_items_is_a_one_line_error(monkeypatch, tmp_path, items, named):
    results, path = run_with(monkeypatch, tmp_path, "partial", items=items)
    assert results["map"] is None
    assert results["summary"]["countries"]["CHN"]["model"]["map_distance"]["value"] is None
    with pytest.raises(SystemExit) as exc:
        map_main([path, "--out", str(tmp_path / "m.png")])
    message = str(exc.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert f"CHN lacks the culture map's items {named} (" in message and "--items iw10" in message


def test_country_without_survey_data_for_map_items_is_noted(monkeypatch, tmp_path):
    results, path = run_with(monkeypatch, tmp_path, "jpn", alpha3="JPN")
    assert results["map"] is None
    assert any("no position for JPN" in n and "Q209, Q254" in n for n in results["provenance"]["notes"])
    with pytest.raises(SystemExit, match=r"JPN lacks the culture map's items Q209, Q254 \(the survey has no data"):
        map_main([path, "--out", str(tmp_path / "m.png")])


def test_not_a_results_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hello": 1}))
    with pytest.raises(SystemExit, match="not a results file"):
        map_main([str(bad)])


def test_read_points_matches_indicator_path():
    """The CLI's recomputation and the evaluator's use the same functions: check one by hand."""
    shares = BundledShares()
    from eval.wvs.items import all_items

    dists = {q: shares.distribution("NLD", all_items()[q]) for q in map_items()}
    stored = load_projection().info["countries"]["NLD"]["projected"]
    assert load_projection().project(indicator_values(dists)) == pytest.approx(stored, abs=1e-12)
