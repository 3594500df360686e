"""Items, bundled survey shares, and the (synthetic) WVS-7 respondent file."""

import csv

import numpy as np
import pytest

from eval.wvs.items import WVSError, all_items, select_items
from eval.wvs.respondents import RespondentFile, write_synthetic_file
from eval.wvs.survey import BundledShares, country

CLCA44 = [f"Q{i}" for i in range(1, 42)] + ["Q43", "Q44", "Q45"]


def test_item_sets_and_metadata():
    clca = select_items("clca44")
    assert [i.qid for i in clca] == list(CLCA44) and len(clca) == 44 and "Q42" not in CLCA44
    q1, q122, q241 = (all_items()[q] for q in ("Q1", "Q122", "Q241"))
    assert q1.codes == (1, 2, 3, 4) and q1.options[0] == "Very important" and q1.scale == "ordinal"
    assert q122.codes == (0, 1, 2)  # zero-based in WVS-7
    assert q241.scale == "nominal" and q241.numeric_labels
    everything = select_items("all")
    assert "Q223" not in {i.qid for i in everything} and "Q260" not in {i.qid for i in everything}
    assert [i.qid for i in select_items("Q27, Q1")] == ["Q27", "Q1"]


def test_bundled_sources_per_country():
    shares = BundledShares()
    assert "CultureSPA" in shares.source("MEX") and "Cao" in shares.source("JPN")
    assert "CultureSPA" in shares.source("CHN")  # preferred where both have the country
    for code in ("CHN", "DEU", "GBR", "MEX", "JPN"):
        for item in select_items("clca44"):
            dist = shares.distribution(code, item)
            assert dist is not None and dist.sum() == pytest.approx(1.0)
    # CultureSPA divides by the whole sample: raw CHN Q105 shares sum to about 0.23, ours to 1
    raw = shares._tables["culturespa"]["CHN"]["Q105"]
    assert sum(raw.values()) < 0.5
    assert shares.distribution("CHN", all_items()["Q105"])[0] == pytest.approx(raw["0"] / sum(raw.values()))
    assert shares.distribution("JPN", all_items()["Q1"])[0] == pytest.approx(0.9284, abs=1e-3)


def test_unknown_country_and_item_are_one_line_errors():
    with pytest.raises(WVSError, match="unknown country 'ATL'"):
        country("ATL")
    with pytest.raises(WVSError, match="unknown item 'Q42x'"):
        select_items("Q1,Q42x")
    with pytest.raises(WVSError, match="no bundled survey shares") as exc:
        BundledShares().source("FRA")
    assert "\n" not in str(exc.value)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = tmp_path_factory.mktemp("wvs") / "wvs7_synthetic.csv"
    return write_synthetic_file(path, [country("JPN"), country("MEX")], n_per_country=400, seed=3)


def test_synthetic_file_has_official_columns_and_no_real_data(synthetic):
    header = next(csv.reader(synthetic.open()))
    for name in ("B_COUNTRY", "B_COUNTRY_ALPHA", "D_INTERVIEW", "W_WEIGHT", "Q1", "Q259", "Q260", "X003R",
                 "H_SETTLEMENT", "Q287"):
        assert name in header


def test_weighted_distribution_by_hand(synthetic):
    item = all_items()["Q6"]
    data = RespondentFile(synthetic, [item])
    rows = [r for r in csv.DictReader(synthetic.open()) if r["B_COUNTRY_ALPHA"] == "JPN"]
    weights = np.zeros(4)
    for r in rows:
        if int(r["Q6"]) > 0:
            weights[int(r["Q6"]) - 1] += float(r["W_WEIGHT"])
    assert np.allclose(data.distribution("JPN", item), weights / weights.sum())
    unweighted = RespondentFile(synthetic, [item], weighted=False).distribution("JPN", item)
    assert not np.allclose(unweighted, weights / weights.sum())
    # drawn from the bundled shares, so close to them
    assert np.abs(data.distribution("JPN", item) - BundledShares().distribution("JPN", item)).max() < 0.08


def test_personas_and_seeded_sampling(synthetic):
    data = RespondentFile(synthetic, select_items("clca44"))
    a, b = data.sample("MEX", 50, seed=1), data.sample("MEX", 50, seed=1)
    assert [r.interview for r in a] == [r.interview for r in b] and len({r.interview for r in a}) == 50
    assert [r.interview for r in data.sample("MEX", 50, seed=2)] != [r.interview for r in a]
    assert len(data.sample("MEX", 5000, seed=1)) == 400
    persona = a[0].persona
    assert persona["sex"] in ("male", "female") and persona["household"].isdigit()
    assert all(code in all_items()[q].codes for q, code in a[0].answers.items())


def test_numeric_country_codes_and_semicolons(tmp_path):
    path = tmp_path / "wvs.csv"
    path.write_text("B_COUNTRY;W_WEIGHT;Q1\n392;1.0;1\n392;3.0;2\n392;1.0;-2\n")
    data = RespondentFile(path, [all_items()["Q1"]])
    assert data.countries() == ["JPN"]
    assert data.distribution("JPN", all_items()["Q1"]).tolist() == [0.25, 0.75, 0.0, 0.0]


@pytest.mark.parametrize("content,message", [
    ("W_WEIGHT,Q1\n1,1\n", "line 1: no B_COUNTRY"),
    ("B_COUNTRY,Q1\n392,1\n", "no W_WEIGHT column"),
    ("B_COUNTRY,W_WEIGHT,Q1\n392,1,1\n999,1,1\n", "line 3: column B_COUNTRY: .999. is not a WVS-7 country"),
    ("B_COUNTRY,W_WEIGHT,Q1\n392,x,1\n", "line 2:"),
])
def test_bad_respondent_files(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(WVSError, match=message) as exc:
        RespondentFile(path, [all_items()["Q1"]])
    assert "\n" not in str(exc.value)


def test_country_absent_from_file(synthetic):
    with pytest.raises(WVSError, match="no respondents for DEU"):
        RespondentFile(synthetic, [all_items()["Q1"]]).respondents("DEU")
