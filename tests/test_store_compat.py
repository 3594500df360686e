"""A store written by the earlier release (tests/fixtures/store_v1) opens, reads and resumes unchanged."""

import shutil
import sqlite3
from pathlib import Path

import pytest

from agents.records import Aspect
from graphs.store import Store
from tests.store_content import content

FIXTURE = Path(__file__).parent / "fixtures" / "store_v1"
FINISHED = ["ep-097a338f00367c35", "ep-2402aee37465bb8a", "ep-c1329728ae187e75", "ep-e5efde289010fa93"]
IN_FLIGHT = "ep-07edd925f4eece36"


@pytest.fixture
def old_store(tmp_path) -> Path:
    for name in ("clca.db", "clca.db.checkpoints"):
        shutil.copy(FIXTURE / name, tmp_path / name)
    return tmp_path / "clca.db"


def test_old_store_reads_every_record(old_store):
    store = Store(old_store)
    assert [e.id for e in store.episodes("JPN", "done")] == FINISHED
    assert store.episode(IN_FLIGHT).status == "running"
    assert store.episode(FINISHED[0]).config["culture"] == "JPN" and store.episode(FINISHED[0]).usage["calls"] > 0
    assert [r.command.split()[0] for r in store.runs()] == ["graphs.adapt"] + ["graphs.simulate"] * 2 + [
        "graphs.judge", "graphs.simulate"]
    assert store.runs()[0].summary is not None and store.runs()[-1].finished is None  # the killed run
    assert {r.status for r in store.scenario_records()} == {"ok"} and store.judge_models("JPN") == ["puppet"]
    counts = store.counts(culture="JPN")
    assert counts.statuses == {"done": 4, "running": 1} and counts.turns == counts.valid_turns == 16
    assert len(store.scenarios("JPN")) == 2 and len(store.scenarios(None)) == 4
    for ep in FINISHED:
        assert [t.index for t in store.turns(ep)] == [0, 1, 2, 3]
        assert len(store.intents(ep)) == 4 and all(i.valid for i in store.intents(ep))
        judgements = store.judgements(ep, "puppet")
        assert {j.aspect for j in judgements} == set(Aspect) and all(j.valid for j in judgements)
    assert store.scenario(store.episode(FINISHED[0]).scenario_id) is not None


def test_rerunning_the_old_commands_adds_nothing_and_resumes_the_episode_in_flight(old_store, capsys):
    from graphs import judge, simulate

    before = content(old_store)
    db = str(old_store)
    simulate.main(["--culture", "JPN", "--episodes", "2", "--max-turns", "2", "--model", "puppet", "--db", db,
                   "--no-progress"])
    simulate.main(["--culture", "JPN", "--episodes", "2", "--max-turns", "2", "--model", "puppet", "--db", db,
                   "--use-seeds", "--no-progress"])
    judge.main(["--culture", "JPN", "--model", "puppet", "--db", db, "--sotopia", "--no-progress"])
    assert "0 judged now, 4 already judged by puppet" in capsys.readouterr().out
    assert content(old_store) == before

    # The episode killed in flight continues from its stored checkpoint and finishes.
    simulate.main(["--culture", "JPN", "--episodes", "1", "--max-turns", "3", "--seed", "1", "--model",
                   "puppet:0.05", "--db", db, "--no-progress"])
    store = Store(old_store)
    row = store.episode(IN_FLIGHT)
    assert row.status == "done" and row.n_turns == len(store.turns(IN_FLIGHT)) == 6
    checkpoints = sqlite3.connect(f"{old_store}.checkpoints")
    assert checkpoints.execute("select count(*) from checkpoints").fetchone()[0] == 0
    after = content(old_store)
    assert {k: v for k, v in after.items() if k not in ("episodes", "turns", "intents")} == \
        {k: v for k, v in before.items() if k not in ("episodes", "turns", "intents")}
    assert [r for r in after["turns"] if r[0] != IN_FLIGHT] == [r for r in before["turns"] if r[0] != IN_FLIGHT]


def test_the_episode_in_flight_resumes_rather_than_restarts(old_store, tmp_path):
    """The resumed run makes fewer model calls than the same episode run from the start in a fresh store."""
    import json

    from graphs import simulate

    fresh = tmp_path / "fresh" / "clca.db"
    fresh.parent.mkdir()
    shutil.copy(old_store, fresh)  # the same scenarios, without the checkpoints
    Store(fresh)  # creates an empty checkpoint file on first use
    calls = []
    for db in (old_store, fresh):
        simulate.main(["--culture", "JPN", "--episodes", "1", "--max-turns", "3", "--seed", "1", "--model",
                       "puppet:0.05", "--db", str(db), "--no-progress"])
        summary = sqlite3.connect(db).execute("select summary from runs order by started desc, rowid desc").fetchone()
        calls.append(json.loads(summary[0])["usage"]["calls"])
    assert 0 < calls[0] < calls[1]
