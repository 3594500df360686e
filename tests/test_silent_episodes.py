"""Silent and degenerate episodes: the minimum-utterance rule counts utterances, not turns; an episode with too
few is not judged, not in Table 9, not exported, and every summary says how many were left out and why; an
export that would write no training row stops with one line and writes nothing."""

import json

import pytest

from agents.records import Action, Intent, Turn
from graphs import judge
from graphs.judge import MIN_UTTERANCES, TOO_FEW_UTTERANCES, screen_episodes, utterances
from graphs.store import EpisodeRecord, Store
from training import dataset

NAMES = ("Li Wei", "Chen Jing")


def turn(i: int, action: Action | None, text: str = "", valid: bool = True) -> Turn:
    return Turn(index=i, speaker=i % 2, name=NAMES[i % 2], action=action, text=text, raw=text, valid=valid)


def test_utterances_count_speech_and_non_verbal_acts_with_text():
    turns = [
        turn(0, Action.SPEAK, "Good morning."),  # 1
        turn(1, Action.NONE),
        turn(2, Action.NON_VERBAL, "bows slightly"),  # 2
        turn(3, Action.NON_VERBAL, ""),  # a gesture without a description says nothing
        turn(4, Action.SPEAK, "  "),  # speaking no words either
        turn(5, Action.LEAVE, "Goodbye."),  # leaving is not an utterance, whatever text comes with it
        turn(6, None, "garbled", valid=False),
    ]
    assert utterances(turns) == 2
    assert utterances([turn(i, Action.NONE) for i in range(6)]) == 0  # six valid turns, no conversation


# Episode id -> turns. Every line is two words, so Table 9's figures are easy to check by hand.
EPISODES = {
    "ep-talk": [turn(0, Action.SPEAK, "Hello neighbour."), turn(1, Action.SPEAK, "Hello teacher."),
                turn(2, Action.SPEAK, "Ladder please?"), turn(3, Action.SPEAK, "Not today.")],
    "ep-gesture": [turn(0, Action.NON_VERBAL, "bows deeply"), turn(1, Action.SPEAK, "Welcome back.")],
    "ep-silent": [turn(i, Action.NONE) for i in range(6)],  # both personas only ever choose `none`
    "ep-one-sided": [turn(0, Action.SPEAK, "Anyone home?"), turn(1, Action.NONE), turn(2, Action.NONE),
                     turn(3, Action.LEAVE)],
    # an unparseable turn ends the episode: only the turns before it count
    "ep-cut": [turn(0, Action.SPEAK, "Hello there."), turn(1, None, "%%%", valid=False),
               turn(2, Action.SPEAK, "Too late.")],
}
JUDGEABLE = ["ep-gesture", "ep-talk"]


def fill(store: Store, scenario, episodes: dict[str, list[Turn]], intent_valid: bool = True) -> None:
    store.put_scenario(scenario)
    for ep_id, turns in episodes.items():
        store.begin_episode(EpisodeRecord(id=ep_id, scenario_id=scenario.id, culture="CHN", model="m", seed=0,
                                          sample=0, max_turns=3, prompt_versions={}, config={}))
        intents = [Intent(turn_index=t.index, intent="Being polite." if intent_valid else "", cultural=True,
                          valid=intent_valid) for t in turns if t.valid]
        store.finish_episode(ep_id, "done", turns, intents, ended_by="max_turns", intent_version="v")


@pytest.fixture
def store(tmp_path, scenario):
    store = Store(tmp_path / "s.db")
    fill(store, scenario, EPISODES)
    return store


def test_episodes_with_too_few_utterances_are_left_out_and_counted(store):
    judgeable, left_out = screen_episodes(store, "CHN")
    assert [r.id for r in judgeable] == JUDGEABLE
    assert left_out == {TOO_FEW_UTTERANCES: 3} and str(MIN_UTTERANCES) in TOO_FEW_UTTERANCES


def test_judge_skips_them_and_says_so(store, capsys):
    judge.main(["--culture", "CHN", "--model", "puppet", "--db", str(store.path), "--no-progress"])
    out = capsys.readouterr().out
    assert f"2 CHN episodes (3 more left out: {TOO_FEW_UTTERANCES}): 2 judged now" in out
    assert [e.id for e in store.episodes() if store.judgements(e.id)] == JUDGEABLE
    [run] = store.runs()
    summary = run.summary
    assert summary["not_judgeable"] == {TOO_FEW_UTTERANCES: 3}


def test_export_leaves_them_out_of_table9_and_the_rows(store, tmp_path, capsys):
    judge.main(["--culture", "CHN", "--model", "puppet", "--db", str(store.path), "--no-progress"])
    stats = dataset.main(["--culture", "CHN", "--db", str(store.path), "--out", str(tmp_path / "data"),
                          "--validation-fraction", "0"])
    assert f"2 episodes (3 more left out: {TOO_FEW_UTTERANCES}), 2 kept" in capsys.readouterr().out
    assert stats["episodes"]["not_judgeable"] == {TOO_FEW_UTTERANCES: 3}
    t9 = stats["table9"]
    # 2 conversations; 4 + 2 lines of two words; rounds (4+1)//2 + (2+1)//2 = 3
    assert (t9["conversations"], t9["avg_lines"], t9["avg_turns"]) == (2, 3.0, 1.5)
    assert (t9["avg_words_per_line"], t9["avg_words_per_turn"], t9["cultural_intent_pct"]) == (2.0, 4.0, 100.0)
    rows = [json.loads(line) for line in (tmp_path / "data" / "sft_train.jsonl").read_text().splitlines()]
    assert sorted({r["episode_id"] for r in rows}) == JUDGEABLE and len(rows) == 2 * 3  # two dialogue views + intent


def test_only_silent_episodes_is_a_one_line_error_everywhere(tmp_path, scenario):
    store = Store(tmp_path / "s.db")
    fill(store, scenario, {k: EPISODES[k] for k in ("ep-silent", "ep-one-sided")})
    with pytest.raises(SystemExit) as error:
        judge.main(["--culture", "CHN", "--model", "puppet", "--db", str(store.path), "--no-progress"])
    assert "at least 2 utterances" in str(error.value) and "2 finished with fewer" in str(error.value)
    out = tmp_path / "data"
    with pytest.raises(SystemExit) as error:
        dataset.main(["--culture", "CHN", "--db", str(store.path), "--out", str(out), "--filter", "none"])
    message = str(error.value)
    assert "no CHN episode passes the filter" in message and f"2 more left out: {TOO_FEW_UTTERANCES}" in message
    assert "\n" not in message and not out.exists()


def test_an_export_without_a_single_row_writes_nothing(tmp_path, scenario):
    """Kept episodes whose every intent is invalid, exported as intent rows only: no row at all."""
    store = Store(tmp_path / "s.db")
    fill(store, scenario, {k: EPISODES[k] for k in JUDGEABLE}, intent_valid=False)
    out = tmp_path / "data"
    out.mkdir()
    (out / "sft_train.jsonl").write_text("an earlier export\n")
    with pytest.raises(SystemExit) as error:
        dataset.main(["--culture", "CHN", "--db", str(store.path), "--out", str(out), "--filter", "none",
                      "--views", "intent"])
    message = str(error.value)
    assert message.startswith("error: ") and "\n" not in message
    assert "2 CHN episodes pass the filter but give no training row" in message
    assert "intent rows without any valid intent: 2" in message
    assert [p.name for p in out.iterdir()] == ["sft_train.jsonl"]
    assert (out / "sft_train.jsonl").read_text() == "an earlier export\n"
