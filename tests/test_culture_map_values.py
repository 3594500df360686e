"""The map's ten indicators: data file, item set, values from shares, and the two indices' shortcut."""

import numpy as np
import pytest
import yaml

from eval.wvs.items import all_items, select_items
from eval.wvs.map_indicators import DATA_DIR, MapError, indicator_values, indicators, keys, map_items
from eval.wvs.survey import BundledShares

MAP_ITEMS = ["Q8", "Q14", "Q15", "Q17", "Q45", "Q46", "Q57", "Q154", "Q155", "Q164", "Q182", "Q184", "Q209", "Q254"]


def chn_dists() -> dict:
    shares, items = BundledShares(), all_items()
    return {q: shares.distribution("CHN", items[q]) for q in map_items()}


def test_data_file_has_ten_cited_indicators_on_two_dimensions():
    raw = yaml.safe_load((DATA_DIR / "iw_items.yaml").read_text())
    assert [ind.ivs for ind in indicators()] == ["F063", "Y003", "F120", "G006", "E018",
                                                 "A008", "F118", "E025", "A165", "Y002"]
    assert [ind.dimension for ind in indicators()] == ["traditional_secular"] * 5 + ["survival_self_expression"] * 5
    for entry in raw["indicators"]:
        assert entry["sources"] and set(entry["sources"]) <= set(raw["sources"])
    # polarity as Inglehart & Welzel code it: God important, pride, respect for authority -> traditional
    toward = {ind.key: ind.toward for ind in indicators()}
    assert toward == {"god": -1, "autonomy": 1, "abortion": 1, "national_pride": 1, "respect_authority": 1,
                      "happiness": -1, "homosexuality": 1, "petition": -1, "trust": -1, "postmaterialism": 1}


def test_iw10_item_set_is_exactly_the_map_items():
    assert list(map_items()) == MAP_ITEMS
    assert [it.qid for it in select_items("iw10")] == MAP_ITEMS


def test_values_are_expected_codes_on_the_official_scales():
    dists = chn_dists()
    values = dict(zip(keys(), indicator_values(dists)))
    assert values["god"] == pytest.approx(dists["Q164"] @ np.arange(1, 11))
    pride = dists["Q254"][:4] / dists["Q254"][:4].sum()  # "not of this nationality" is not on the scale
    assert values["national_pride"] == pytest.approx(pride @ np.arange(1, 5))
    mention = {q: dists[q][0] for q in ("Q8", "Q14", "Q15", "Q17")}
    assert values["autonomy"] == pytest.approx(mention["Q8"] + mention["Q14"] - mention["Q15"] - mention["Q17"])
    # totals need not be 1 (an INVALID-free row, or raw counts): shares are renormalised per item
    scaled = indicator_values({q: 7.0 * d for q, d in dists.items()})
    assert scaled == pytest.approx(indicator_values(dists))
    # leading axes broadcast, e.g. bootstrap replicates
    stacked = indicator_values({q: np.stack([d, d]) for q, d in dists.items()})
    assert stacked.shape == (2, 10) and stacked[1] == pytest.approx(indicator_values(dists))


def test_missing_items_are_named():
    dists = chn_dists()
    del dists["Q209"], dists["Q254"]
    with pytest.raises(MapError, match="Q209, Q254"):
        indicator_values(dists)


def respondents(n: int, rng: np.random.Generator):
    """Synthetic respondents with correlated answers: a latent trait drives all six choices."""
    latent = rng.normal(size=n)
    logistic = lambda a: 1 / (1 + np.exp(-a))
    mentions = {"Q8": logistic(0.4 - latent), "Q14": logistic(-0.3 - 0.5 * latent),
                "Q15": logistic(-1.0 + 1.2 * latent), "Q17": logistic(-0.8 + 0.7 * latent)}
    mentioned = {q: rng.random(n) < p for q, p in mentions.items()}
    # first and second priority among 1 order, 2 more say, 3 prices, 4 free speech; never the same twice
    first, second = np.zeros(n, int), np.zeros(n, int)
    for i in range(n):
        w = np.array([1.0, 0.6, 1.0, 0.6]) * np.exp(np.array([1, -1, 1, -1]) * 0.8 * latent[i])
        first[i] = rng.choice(4, p=w / w.sum()) + 1
        w[first[i] - 1] = 0
        second[i] = rng.choice(4, p=w / w.sum()) + 1
    return mentioned, first, second


def official_y002(first: int, second: int) -> int:
    """The 4-item index as coded in the IVS: 1 materialist, 3 post-materialist, 2 mixed."""
    if {first, second} == {1, 3}:
        return 1
    if {first, second} == {2, 4}:
        return 3
    return 2


def index_values(mentioned, first, second, valid=None):
    dists = chn_dists()
    valid = valid or {}
    for q, m in mentioned.items():
        ok = valid.get(q, np.ones(len(m), bool))
        dists[q] = np.array([m[ok].sum(), (~m[ok]).sum()], dtype=float)
    for q, choice in (("Q154", first), ("Q155", second)):
        ok = valid.get(q, np.ones(len(choice), bool))
        dists[q] = np.bincount(choice[ok], minlength=5)[1:].astype(float)
    return dict(zip(keys(), indicator_values(dists)))


def test_indices_from_shares_equal_the_respondent_level_indices():
    """Known answer: the mean of the official per-respondent Y003 and Y002 over synthetic respondents."""
    mentioned, first, second = respondents(3000, np.random.default_rng(7))
    y003 = (mentioned["Q8"].astype(int) + mentioned["Q14"] - mentioned["Q15"] - mentioned["Q17"])
    y002 = np.array([official_y002(a, b) for a, b in zip(first, second)])
    values = index_values(mentioned, first, second)
    assert values["autonomy"] == pytest.approx(y003.mean(), abs=1e-12)
    assert values["postmaterialism"] == pytest.approx(y002.mean(), abs=1e-12)
    assert 1.2 < y002.mean() < 2.8 and -1.5 < y003.mean() < 1.5  # the synthetic data is not degenerate


def test_indices_with_missing_answers_differ_only_by_the_item_wise_denominators():
    """With 8% of each answer missing at random, the official index counts complete cases only,
    the shares use each item's own valid answers: the two means stay within a few hundredths."""
    rng = np.random.default_rng(11)
    mentioned, first, second = respondents(3000, rng)
    valid = {q: rng.random(3000) > 0.08 for q in [*mentioned, "Q154", "Q155"]}
    complete_y003 = np.all([valid[q] for q in mentioned], axis=0)
    complete_y002 = valid["Q154"] & valid["Q155"]
    y003 = (mentioned["Q8"].astype(int) + mentioned["Q14"] - mentioned["Q15"] - mentioned["Q17"])[complete_y003]
    y002 = np.array([official_y002(a, b) for a, b in zip(first, second)])[complete_y002]
    values = index_values(mentioned, first, second, valid)
    assert abs(values["autonomy"] - y003.mean()) < 0.03
    assert abs(values["postmaterialism"] - y002.mean()) < 0.03
