"""The stored projection: reproducible from the bundled data, validated leave-one-out, sensible directions."""

import json

import numpy as np
import pytest

from eval.culture_map.fit import _close, build, fit_table
from eval.culture_map.fit import main as fit_main
from eval.wvs.items import all_items
from eval.wvs.map_indicators import indicator_values, keys, map_items
from eval.wvs.map_projection import PROJECTION_FILE, Projection, agreement, fit, leave_one_out, load_projection
from eval.wvs.survey import BundledShares


@pytest.fixture(scope="module")
def table():
    return fit_table()


def country_dists(alpha3: str) -> dict:
    shares, items = BundledShares(), all_items()
    return {q: shares.distribution(alpha3, items[q]) for q in map_items()}


def test_fit_countries_and_reasons_for_leaving_out(table):
    countries, values, published, left_out = table
    assert countries == ["AUS", "BOL", "BRA", "CAN", "CHN", "DEU", "ETH", "GBR", "IND", "KEN", "MEX", "NGA",
                         "NLD", "NZL", "RUS", "THA", "UKR", "USA", "ZWE"]
    assert values.shape == (19, 10) and published.shape == (19, 2)
    assert left_out["JPN"] == "bundled shares lack Q209, Q254"


def test_stored_projection_is_a_refit_of_the_bundled_data(capsys):
    stored = json.loads(PROJECTION_FILE.read_text())
    fresh = build()
    assert _close({k: v for k, v in stored.items() if k != "provenance"},
                  {k: v for k, v in fresh.items() if k != "provenance"})
    fit_main(["--check"])
    assert "matches a refit" in capsys.readouterr().out
    assert stored["provenance"]["git_commit"] and set(stored["provenance"]["data_sha256"]) == {
        "proportions_culturespa.json", "proportions_cao2025.json", "iw_items.yaml"}


def test_projection_round_trips_and_is_linear():
    proj = load_projection()
    again = Projection.from_json(json.loads(json.dumps(proj.to_json())))
    values = indicator_values(country_dists("DEU"))
    assert np.array_equal(again.project(values), proj.project(values))
    assert proj.project(values) == pytest.approx(values @ proj.matrix + proj.offset, abs=1e-12)
    assert np.linalg.det(proj.rotation) == pytest.approx(1.0) and proj.scale > 0


def test_leave_one_out_refits_without_the_held_out_country(table):
    countries, values, published, _ = table
    loo = leave_one_out(values, published)
    i = countries.index("CHN")
    alone = fit(np.delete(values, i, 0), np.delete(published, i, 0))
    assert loo[i] == pytest.approx(alone.project(values[i]), abs=1e-12)
    # the held-out country's published position plays no part in placing it
    moved = published.copy()
    moved[i] += 5.0
    assert leave_one_out(values, moved)[i] == pytest.approx(loo[i], abs=1e-12)
    assert not np.allclose(loo, fit(values, published).project(values))


def test_validation_figures_are_stored_and_recomputable(table):
    _, values, published, _ = table
    stored = load_projection().info["validation"]["leave_one_out"]
    figures = agreement(leave_one_out(values, published), published)
    assert figures == pytest.approx(stored)
    # what the docs report; the target was r >= 0.8 on both axes
    assert figures["r_self_expression"] > 0.8 and figures["r_secular"] > 0.8


def shifted(dists: dict, qid: str, toward_code_index: int, amount: float = 0.5) -> dict:
    out = dict(dists)
    one_hot = np.eye(len(dists[qid]))[toward_code_index]
    out[qid] = (1 - amount) * dists[qid] + amount * one_hot
    return out


@pytest.mark.parametrize("qid,option,axis,sign", [
    ("Q164", 9, 1, -1),  # God very important: toward traditional (down)
    ("Q45", 0, 1, -1),  # more respect for authority a good thing: traditional
    ("Q184", 9, 1, +1),  # abortion always justifiable: secular (up)
    ("Q182", 9, 0, +1),  # homosexuality always justifiable: self-expression (right)
    ("Q209", 2, 0, -1),  # would never sign a petition: survival (left)
    ("Q57", 0, 0, +1),  # most people can be trusted: self-expression
])
def test_planted_shift_moves_the_point_the_expected_way(qid, option, axis, sign):
    proj = load_projection()
    base = proj.project(indicator_values(country_dists("CHN")))
    moved = proj.project(indicator_values(shifted(country_dists("CHN"), qid, option)))
    delta = moved - base
    assert np.sign(delta[axis]) == sign
    assert abs(delta[axis]) > 3 * abs(delta[1 - axis])  # an item moves the point along its own dimension


def test_keys_match_between_projection_and_indicators():
    assert list(load_projection().keys) == keys()
