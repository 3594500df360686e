"""The rule-based quality gate (graphs/quality.py) on hand-made turns: loops are caught, ordinary talk passes."""

from __future__ import annotations

import pytest

from agents.records import Action, Turn
from graphs.quality import (
    MAX_DUP_3GRAM_FRACTION,
    RULE_TEXT,
    dup_line_fraction,
    dup_ngram_fraction,
    episode_quality,
    turn_quality,
    words,
)

LOOP = ("I'm going to leave the room now, I'm going to leave the room now, I'm going to leave the room now, "
        "I'm going to leave the room now")
ORDINARY = [
    "Good evening, Auntie Li. Thank you for inviting us; the dumplings smell wonderful.",
    "You are too kind. Please sit down, and tell me how your new job at the bank is going.",
    "It keeps me busy, but my manager is patient with me. I am learning a lot about loans.",
    "That is good to hear. Your mother must be proud. Will you stay for tea after dinner?",
    "I would love to, if it is no trouble. I brought some oolong from Fujian for you.",
]


def turn(i: int, text: str, action: Action = Action.SPEAK, valid: bool = True) -> Turn:
    return Turn(index=i, speaker=i % 2, name=("Mei", "Li")[i % 2], action=action if valid else None, text=text,
                valid=valid)


def test_the_issue_loop_is_gated_on_its_3grams():
    q = turn_quality(turn(0, LOOP))
    assert q.dup_3gram > MAX_DUP_3GRAM_FRACTION
    assert "dup_3gram" in q.reasons and q.gated


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_sentences_pass(text):
    q = turn_quality(turn(0, text))
    assert q.reasons == () and q.dup_3gram == 0.0


def test_an_ordinary_episode_passes():
    result = episode_quality([turn(i, t) for i, t in enumerate(ORDINARY)])
    assert result.passed and result.gated_turns == {}


def test_one_looping_turn_fails_the_episode_and_names_the_turn():
    turns = [turn(0, ORDINARY[0]), turn(1, ORDINARY[1]), turn(2, LOOP), turn(3, ORDINARY[3])]
    result = episode_quality(turns)
    assert not result.passed
    assert list(result.gated_turns) == [2] and "dup_3gram" in result.gated_turns[2]
    assert f"repeated word 3-grams > {MAX_DUP_3GRAM_FRACTION}" in result.describe()


def test_measures():
    assert dup_ngram_fraction(words("a b c a b c")) == pytest.approx(1 / 4)  # abc bca cab abc: one repeat
    assert dup_ngram_fraction(words("one two")) == 0.0
    assert words("I'm HERE, don\u2019t go") == ["i'm", "here", "don\u2019t", "go"]
    assert dup_line_fraction("yes\nno\nyes\n\nyes") == pytest.approx(2 / 4)


def test_repeated_lines_are_gated():
    q = turn_quality(turn(0, "Please come in.\nPlease come in.\nPlease come in."))
    assert "dup_lines" in q.reasons


def test_too_few_distinct_words_is_gated_but_a_short_answer_is_not():
    assert "few_distinct" in turn_quality(turn(0, "no no no no no no no no no")).reasons
    assert turn_quality(turn(0, "No, no, thank you.")).reasons == ()


def test_a_turn_repeated_across_the_episode_is_gated_even_by_the_other_speaker():
    turns = [turn(0, ORDINARY[0]), turn(1, ORDINARY[1]), turn(2, ORDINARY[1].upper())]
    assert episode_quality(turns).gated_turns == {2: ("repeated_turn",)}


def test_a_short_ordinary_exchange_passes():
    assert episode_quality([turn(0, "Good morning, neighbour."), turn(1, "Morning!"), turn(2, "Hi there.")]).passed


def test_a_looping_leave_is_gated():
    assert not episode_quality([turn(0, ORDINARY[0]), turn(1, LOOP, action=Action.LEAVE)]).passed


def test_silent_and_invalid_turns_are_not_measured():
    turns = [turn(0, LOOP, action=Action.NONE), turn(1, LOOP, valid=False), *(turn(i + 2, t) for i, t in
                                                                           enumerate(ORDINARY))]
    result = episode_quality(turns)
    assert result.passed and [t.index for t in result.turns] == [2, 3, 4, 5, 6]


def test_the_rule_text_names_every_threshold():
    assert str(MAX_DUP_3GRAM_FRACTION) in RULE_TEXT and "0.3" in RULE_TEXT and "8 words" in RULE_TEXT


# ------------------------------------------------------------------ wired in: judge, export, viewer


@pytest.fixture
def gated_store(tmp_path, scenario):
    """Two finished CHN episodes: one ordinary, one with the issue's looping turn."""
    from graphs.store import EpisodeRecord, Store

    store = Store(tmp_path / "s.db")
    store.put_scenario(scenario)
    for ep_id, texts in (("ep-ok", ORDINARY[:4]), ("ep-loop", [ORDINARY[0], ORDINARY[1], LOOP, ORDINARY[3]])):
        store.begin_episode(EpisodeRecord(id=ep_id, scenario_id=scenario.id, culture="CHN", model="m", seed=0,
                                          sample=0))
        store.finish_episode(ep_id, "done", [turn(i, t) for i, t in enumerate(texts)], [], ended_by="max_turns",
                             intent_version="v")
    return store


def good_judge():
    from agents.models import ScriptedBackend

    def reply(messages, task):
        question = messages[-1]["content"]
        if "\nALIGNMENT:" in question:
            return "ALIGNMENT: aligned\nCONFIDENCE: confident"
        if "\nCRITIQUE:" in question:
            return "CRITIQUE: ok\nLABEL: good\nCONFIDENCE: confident"
        return "QUALITY: good\nCONFIDENCE: very confident"

    return ScriptedBackend(reply)


def judge_all(store, **kw):
    from agents.models import Model
    from graphs import judge
    from graphs.batch import run

    backend = good_judge()
    final = run(judge.STAGE, judge.JudgeRequest(culture="CHN", model="j", db=str(store.path), **kw),
                model=Model(backend, "j", structured=False))
    return final["summary"], backend


def test_gated_episodes_are_not_judged_and_counted_by_reason(gated_store):
    from graphs.judge import QUALITY_GATE, QUALITY_GATE_ANY, judgeable_episodes

    summary, backend = judge_all(gated_store)
    assert summary["episodes"] == 1 and summary["kept"] == 1
    assert summary["not_judgeable"][QUALITY_GATE_ANY] == 1
    assert summary["not_judgeable"][QUALITY_GATE + f"repeated word 3-grams > {MAX_DUP_3GRAM_FRACTION}"] == 1
    assert all("leave the room now, I'm going" not in m[0]["content"] for _, m in backend.requests)
    assert [e.id for e in judgeable_episodes(gated_store, "CHN")] == ["ep-ok"]


def test_the_summary_names_each_gated_episode_once_then_its_reasons():
    from graphs.filter import QUALITY_GATE, QUALITY_GATE_ANY, TOO_FEW_UTTERANCES, left_out_text

    counts = {TOO_FEW_UTTERANCES: 1, QUALITY_GATE_ANY: 6, QUALITY_GATE + "repeats an earlier turn": 6,
              QUALITY_GATE + "repeated lines > 0.3": 1}
    assert left_out_text(counts) == (f" (1 more left out: {TOO_FEW_UTTERANCES}) (6 more left out by the quality "
                                     "gate: 6 repeats an earlier turn, 1 repeated lines > 0.3)")
    assert left_out_text({TOO_FEW_UTTERANCES: 2}, sep=", ") == f", 2 more left out: {TOO_FEW_UTTERANCES}"
    assert left_out_text({}) == ""


def test_no_quality_gate_judges_them_all(gated_store):
    summary, _ = judge_all(gated_store, quality_gate=False)
    assert summary["episodes"] == 2 and "no quality gate" in summary["rule"]


def test_the_export_drops_gated_episodes_and_says_so(gated_store, tmp_path):
    import json

    from training import dataset

    judge_all(gated_store, quality_gate=False)  # judged, and kept by the judge: only the gate drops it
    out = tmp_path / "data"
    dataset.main(["--culture", "CHN", "--db", str(gated_store.path), "--out", str(out), "--judge-model", "j"])
    stats = json.loads((out / "stats.json").read_text())
    assert stats["episodes"]["kept"] == 1 and stats["episodes"]["not_judgeable"]["quality gate (episodes, any "
                                                                                  "reason)"] == 1
    assert "quality gate: repeated word 3-grams > 0.5" in stats["provenance"]["filter"]
    rows = "".join(p.read_text() for p in out.glob("sft_*.jsonl"))
    assert "leave the room now" not in rows and "Auntie Li" in rows
    kept_all = tmp_path / "all"
    dataset.main(["--culture", "CHN", "--db", str(gated_store.path), "--out", str(kept_all), "--judge-model", "j",
                  "--no-quality-gate"])
    assert "leave the room now" in "".join(p.read_text() for p in kept_all.glob("sft_*.jsonl"))


def test_the_viewer_marks_gated_turns(gated_store, tmp_path):
    from graphs import view

    view.build_site(gated_store.path, tmp_path / "site")
    page = (tmp_path / "site" / "episodes" / "ep-loop.html").read_text()
    assert 'data-gated="true"' in page and page.count('class="status status-gated"') == 1
    assert "gated: repeated word 3-grams &gt; 0.5" in page
    assert 'data-gated="false"' in (tmp_path / "site" / "episodes" / "ep-ok.html").read_text()
