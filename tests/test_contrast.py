"""graphs.contrast: the ungrounded replies to kept lines, stored and resumable; training.dataset pairs them."""

import json
import re
import sqlite3

import pytest

from agents.models import Model, ScriptedBackend
from agents.records import Action, Intent, Turn
from graphs import contrast
from graphs.batch import run
from graphs.store import ContrastOutcome, EpisodeRecord, Judgement, Store
from training import dataset

SYSTEM_CHEN = (
    "Scenario: Two neighbours meet in a Suzhou teahouse.\nParticipants: Li Wei and Chen Jing\n"
    "Your profile: Chen Jing, nurse. Moved in last spring.\n"
    "Imagine you are Chen Jing. Act and speak like Chen Jing, a member of the Chinese culture."
)
LINES = [
    ("Good evening, Xiao Chen.", Action.SPEAK),
    ("bows slightly", Action.NON_VERBAL),
    ("Could I borrow your ladder?", Action.SPEAK),
    ("", Action.NONE),
    ("Just for one afternoon.", Action.SPEAK),
    ("Of course, uncle Li.", Action.SPEAK),
    ("Thank you, I will bring it back.", Action.LEAVE),
]
# the ungrounded reply to each kept line, by the turn number the role-play prompt shows
REPLIES = {"0": "ACTION: speak\nOUTPUT: Good evening, Xiao Chen.", "2": "no format at all",
           "5": "ACTION: speak\nOUTPUT: Fine, take it."}


def put_episode(store: Store, scenario, ep_id: str, quality: str) -> None:
    names = ("Li Wei", "Chen Jing")
    turns = [Turn(index=i, speaker=i % 2, name=names[i % 2], action=a, text=t, raw=t)
             for i, (t, a) in enumerate(LINES)]
    store.put_scenario(scenario)
    store.begin_episode(EpisodeRecord(id=ep_id, scenario_id=scenario.id, culture="CHN", model="m", seed=0, sample=0,
                                      config={"temperature": 0.3, "top_p": 0.9, "repetition": "off"}))
    store.finish_episode(ep_id, "done", turns, [Intent(turn_index=i, intent="Being polite.") for i in range(7)],
                         ended_by="leave", intent_version="v")
    store.put_judgements(ep_id, "judge-m", [
        Judgement(aspect="quality", label=quality, confidence="very confident", raw="", valid=True),
        Judgement(aspect="culture", label="aligned", confidence="confident", raw="", valid=True),
        Judgement(aspect="meta", label="good", confidence="confident", critique="ok", raw="", valid=True)])


@pytest.fixture
def store(tmp_path, scenario, culture, monkeypatch):
    monkeypatch.setattr("graphs.contrast.load_culture", lambda code, directory=None: culture)
    with Store(tmp_path / "s.db") as s:
        put_episode(s, scenario, "ep-kept", "good")
        put_episode(s, scenario, "ep-dropped", "bad")
    return tmp_path / "s.db"


def scripted(replies=REPLIES, fail=()):
    def reply(messages, task):
        n = re.search(r"Turn #(\d+)", messages[-1]["content"])[1]
        if n in fail:
            raise ConnectionError("endpoint went away")
        return replies[n]

    return ScriptedBackend(reply)


def contrast_run(db, backend, **request):
    return run(contrast.STAGE, contrast.ContrastRequest(culture="CHN", model="m", db=str(db), **request),
               model=Model(backend, "m", structured=False))


def test_kept_lines_are_asked_again_without_the_culture_and_stored(store):
    backend = scripted()
    state = contrast_run(store, backend)
    # spoken lines of the kept episode only: 0, 2, 4, 5; line 4 follows Li Wei's own line (Chen Jing was
    # silent), so there is nothing to answer and it is not asked
    assert sorted(re.search(r"Turn #(\d+)", r[-1]["content"])[1] for _, r in backend.requests) == ["0", "2", "5"]
    summary = state["summary"]
    assert summary["outcomes"] == {"pair": 1, "invalid": 1, "silent": 0, "identical": 1}
    assert summary["this_run"] == {"skipped": 0, "asked": 3, "failed": 0}
    assert (summary["kept_episodes"], summary["after_own_line"]) == (1, 1)
    task, request = next(r for r in backend.requests if "Turn #5" in r[1][-1]["content"])
    assert task == "contrastive"
    assert "Chinese" not in request[0]["content"] and "hierarchical" not in request[0]["content"]
    assert "Imagine you are Chen Jing." in request[0]["content"]
    assert request[1] == {"role": "user", "content": "Li Wei - ACTION: speak\nOUTPUT: Good evening, Xiao Chen."}
    # the episode's own decoding settings, seeded per line
    assert {(p.temperature, p.top_p) for p in backend.params} == {(0.3, 0.9)}
    assert len({p.seed for p in backend.params}) == 3
    with Store(store) as s:
        stored = s.contrasts(["ep-kept", "ep-dropped"])
    assert [(c.episode_id, c.turn_index, c.outcome) for c in stored] == [
        ("ep-kept", 0, ContrastOutcome.IDENTICAL), ("ep-kept", 2, ContrastOutcome.INVALID),
        ("ep-kept", 5, ContrastOutcome.PAIR)]
    pair = stored[2]
    assert (pair.text, pair.speaker, pair.model, pair.structured) == ("Fine, take it.", 1, "m", False)
    assert set(pair.prompt_versions) == {"roleplay_system_ungrounded", "roleplay_turn"}
    assert pair.config["culture"] == "CHN" and pair.run_id and pair.usage["calls"] == 1


def test_a_rerun_asks_nothing_and_a_failed_line_is_retried(store):
    first = contrast_run(store, scripted(fail={"2"}))
    assert first["summary"]["this_run"] == {"skipped": 0, "asked": 2, "failed": 1}
    assert [f["reason"] for f in first["summary"]["failures"]] == ["ConnectionError: endpoint went away"]
    backend = scripted()
    again = contrast_run(store, backend)
    assert again["summary"]["this_run"] == {"skipped": 2, "asked": 1, "failed": 0}
    assert [re.search(r"Turn #(\d+)", r[-1]["content"])[1] for _, r in backend.requests] == ["2"]
    assert again["summary"]["failures"] == []
    assert contrast_run(store, scripted())["summary"]["this_run"] == {"skipped": 3, "asked": 0, "failed": 0}
    # another seed is another set of replies
    assert contrast_run(store, scripted(), seed=1)["summary"]["this_run"]["asked"] == 3


def test_the_dataset_pairs_stored_replies_without_a_model(store, tmp_path, culture, monkeypatch):
    monkeypatch.setattr("training.dataset.load_culture", lambda code, directory=None: culture)
    contrast_run(store, scripted())
    out = tmp_path / "data"
    stats = dataset.main(["--culture", "CHN", "--db", str(store), "--out", str(out), "--contrastive-model", "m",
                          "--validation-fraction", "0"])
    rows = [json.loads(line) for line in (out / "dpo_train.jsonl").read_text().splitlines()]
    pairs = [r for r in rows if r["kind"] == "contrastive"]
    assert len(pairs) == 1
    assert pairs[0]["prompt"] == [
        {"role": "system", "content": SYSTEM_CHEN},
        {"role": "user", "content": "Good evening, Xiao Chen."},
        {"role": "assistant", "content": "bows slightly"},
        {"role": "user", "content": "Could I borrow your ladder?\nJust for one afternoon."},
    ]
    assert pairs[0]["chosen"] == [{"role": "assistant", "content": "Of course, uncle Li."}]
    assert pairs[0]["rejected"] == [{"role": "assistant", "content": "Fine, take it."}]
    assert stats["notes"] == {"contrastive replies invalid (no pair)": 1,
                              "contrastive replies identical (no pair)": 1,
                              "contrastive lines without a stored reply": 1,
                              "contrastive replies superseded by a later one": 0,
                              "intent rows cut at a missing or invalid intent": 0}
    provenance = stats["provenance"]
    assert provenance["contrastive_model"] == "m" and provenance["contrastive_replies"]["seeds"] == [0]


def test_the_dataset_names_the_command_when_no_reply_is_stored(store, tmp_path, culture, monkeypatch, capsys):
    monkeypatch.setattr("training.dataset.load_culture", lambda code, directory=None: culture)
    with pytest.raises(SystemExit) as exc:
        dataset.main(["--culture", "CHN", "--db", str(store), "--out", str(tmp_path / "d"),
                      "--contrastive-model", "other"])
    message = str(exc.value.code)
    assert "\n" not in message and "no contrastive replies by other" in message
    assert f"python -m graphs.contrast --culture CHN --db {store} --model other" in message
    assert not (tmp_path / "d").exists()


def test_bad_requests_are_one_line_before_a_model_loads(store, tmp_path, capsys):
    def fails(argv):
        with pytest.raises(SystemExit) as exc:
            contrast.main(argv)
        code = exc.value.code  # sys.exit("error: ...") or argparse's status 2 after its message
        assert code not in (0, None)
        return code.splitlines() if isinstance(code, str) else capsys.readouterr().err.strip().splitlines()[-1:]

    [line] = fails(["--culture", "CHN", "--db", str(tmp_path / "none.db"), "--model", "puppet"])
    assert "no such store" in line
    [line] = fails(["--culture", "CHN", "--db", str(store), "--model", "puppet", "--filter", "meta=awful"])
    assert "meta" in line
    [line] = fails(["--culture", "CHN", "--db", str(store), "--model", "puppet", "--judge-model", "nobody"])
    assert "no CHN episode passes the filter" in line
    [line] = fails(["--culture", "CHN", "--db", str(store), "--modle", "puppet"])
    assert "--model" in line


def test_old_stores_gain_the_contrasts_table_when_opened(tmp_path):
    db = tmp_path / "old.db"
    with Store(db):
        pass
    conn = sqlite3.connect(db)
    conn.execute("drop table contrasts")
    conn.commit()
    conn.close()
    with Store(db) as s:
        assert s.contrasts(["ep-x"]) == []
