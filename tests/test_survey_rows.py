"""`training.survey_rows`: survey answers as SFT rows, asked as the evaluation asks and drawn in the survey's shares."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from agents.prompts import Prompts
from eval.wvs.formats import FORMATS, present, render_question
from eval.wvs.items import select_items
from eval.wvs.readers import conversation
from eval.wvs.survey import BundledShares
from training.survey_rows import drawn_counts, main, survey_rows


@pytest.mark.parametrize(("shares", "n", "expected"), [
    ([0.5, 0.5], 3, [2, 1]),  # a tie goes to the earlier option
    ([0.7, 0.2, 0.1], 10, [7, 2, 1]),
    ([0.34, 0.33, 0.33], 2, [1, 1, 0]),
    ([1.0, 0.0], 4, [4, 0]),
])
def test_drawn_counts_are_the_largest_remainders(shares, n, expected):
    assert drawn_counts(np.array(shares), n).tolist() == expected


def test_rows_ask_as_the_evaluation_asks_and_answer_in_the_survey_shares():
    rows, record = survey_rows("CHN", "clca44:train", "default,reversed", rows_per_item=10, seed=3)
    prompts, shares = Prompts(), BundledShares()
    items = {it.qid: it for it in select_items("clca44:train")}
    assert record["asked"] and set(record["asked"]) <= set(items)
    for qid in record["asked"][:5]:
        item = items[qid]
        expected = drawn_counts(shares.distribution("CHN", item), 10)
        for name in ("default", "reversed"):
            mine = [r for r in rows if r["item"] == qid and r["format"] == name]
            assert Counter(r["code"] for r in mine) == {c: k for c, k in zip(item.codes, expected) if k}
            shown = present(item, FORMATS[name])
            question = render_question(prompts, "logprob", FORMATS[name], shown, "", "China")
            for r in mine:  # the system and user turns LogprobReader scores after, then the code's shown label
                assert r["messages"][:-1] == conversation("You live in China.", question)
                assert r["messages"][-1] == {"role": "assistant",
                                             "content": shown.shown_labels[shown.codes.index(r["code"])]}
    again, _ = survey_rows("CHN", "clca44:train", "default,reversed", rows_per_item=10, seed=3)
    assert again == rows  # seeded


def test_export_holds_items_out_and_records_provenance(tmp_path, capsys):
    stats = main(["--culture", "JPN", "--items", "clca44:train", "--rows-per-item", "4", "--out", str(tmp_path)])
    train = [json.loads(line) for line in (tmp_path / "sft_train.jsonl").open()]
    validation = [json.loads(line) for line in (tmp_path / "sft_validation.jsonl").open()]
    assert {r["item"] for r in validation} == set(stats["validation_items"])
    assert not {r["item"] for r in train} & set(stats["validation_items"])
    assert len(train) + len(validation) == len(stats["asked"]) * 4
    assert stats["prompt_versions"]["wvs_country"] and stats["git"]["commit"] is not None
    assert "JPN: " in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["--culture", "XXX"], "unknown country 'XXX'"),
    (["--culture", "CHN", "--items", "nope"], "nope"),
    (["--culture", "CHN", "--formats", "upside"], "unknown format 'upside'"),
    (["--culture", "CHN", "--rows-per-item", "0"], "--rows-per-item must be at least 1"),
])
def test_bad_input_is_one_line(tmp_path, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--out", str(tmp_path / "o")])
    assert str(exit_.value.code).startswith("error: ") and message in str(exit_.value.code)
    assert "\n" not in str(exit_.value.code) and not (tmp_path / "o").exists()
