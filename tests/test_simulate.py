import os
import signal
import sqlite3
import subprocess
import sys

import pytest

from agents.models import Model, ScriptedBackend, load_model
from agents.seeds import sotopia_seeds
from graphs import simulate
from graphs.batch import run
from graphs.simulate import SimulateRequest, plan_episodes
from graphs.store import Store


def run_sim(store, plan, culture, model, max_turns=3, concurrency=2):
    """The episodes of `plan` (planned on the SOTOPIA seeds, seed 0), through the stage's own entry point."""
    request = SimulateRequest(culture=culture.code, episodes=len(plan), model=model.spec, db=str(store.path),
                              max_turns=max_turns, concurrency=concurrency, use_seeds=True)
    return run(simulate.STAGE, request, model=model)["summary"]["this_run"]


def test_plan_is_seeded_and_ids_are_stable():
    seeds = list(sotopia_seeds())
    a = plan_episodes(seeds, "CHN", "m", seed=1, episodes=6, samples=2)
    b = plan_episodes(seeds, "CHN", "m", seed=1, episodes=6, samples=2)
    assert [p.id for p in a] == [p.id for p in b] and len({p.id for p in a}) == 6
    assert [p.sample for p in a] == [0, 1, 0, 1, 0, 1]
    assert [p.id for p in plan_episodes(seeds, "CHN", "m", 2, 6, 2)] != [p.id for p in a]
    assert [p.id for p in plan_episodes(seeds, "DEU", "m", 1, 6, 2)] != [p.id for p in a]


def test_episodes_are_stored_with_turns_intents_and_provenance(tmp_path, culture):
    store = Store(tmp_path / "s.db")
    plan = plan_episodes(list(sotopia_seeds()), "CHN", "puppet", 0, 3, 1)
    counts = run_sim(store, plan, culture, load_model("puppet"))
    assert counts == {"skipped": 0, "done": 3, "invalid": 0, "failed": 0, "elsewhere": 0}
    for p in plan:
        row = store.episode(p.id)
        assert row.status == "done" and row.n_turns == 6 and row.ended_by == "max_turns"
        assert "observer_turn" in row.prompt_versions and row.model == "puppet"
        assert len(store.turns(p.id)) == 6 and len(store.intents(p.id)) == 6
    # rerunning adds nothing
    assert run_sim(store, plan, culture, load_model("puppet"))["skipped"] == 3
    assert store.counts().turns == 18
    # finished episodes leave no checkpoints behind
    checkpoints = sqlite3.connect(store.checkpoint_path)
    assert checkpoints.execute("select count(*) from checkpoints").fetchone()[0] == 0


TURN = '{"action": "speak", "text": "hi"}'
INTENT = '{"intent": "Greeting.", "reason": "Polite.", "cultural": false}'


def test_crashed_episode_resumes_from_its_checkpoint(tmp_path, culture):
    store = Store(tmp_path / "s.db")
    plan = plan_episodes(list(sotopia_seeds()), "CHN", "m", 0, 1, 1)
    calls = {"n": 0}

    def flaky(messages, task):
        calls["n"] += 1
        if calls["n"] == 5:  # third speaker turn: a non-transient crash
            raise RuntimeError("GPU fell over")
        return TURN if task == "roleplay" else INTENT

    counts = run_sim(store, plan, culture, Model(ScriptedBackend(flaky), "m"))
    assert counts["failed"] == 1 and "GPU fell over" in store.episode(plan[0].id).error

    healthy = ScriptedBackend(lambda m, t: TURN if t == "roleplay" else INTENT)
    counts = run_sim(store, plan, culture, Model(healthy, "m"))
    assert counts["done"] == 1
    # 4 calls (2 turns + 2 intents) were checkpointed; only the remaining 4 turns x 2 calls are made again
    assert len(healthy.requests) == 8
    assert [t.index for t in store.turns(plan[0].id)] == list(range(6))


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_sigkill_then_rerun_stores_every_episode_exactly_once(tmp_path):
    from tests.chat_server import ChatServer

    # An episode of three rounds is 12 requests; two run at once. After 28 answers at least one episode is stored,
    # and the server holds every request after them: the kill comes while two episodes certainly wait mid-flight.
    server = ChatServer(answer_first=28)
    db = tmp_path / "kill.db"
    cmd = [sys.executable, "-m", "graphs.simulate", "--culture", "CHN", "--episodes", "6", "--max-turns", "3",
           "--model", server.spec, "--db", str(db), "--concurrency", "2", "--no-progress", "--use-seeds"]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not server.holding.wait(0.1):
            assert proc.poll() is None, "graphs.simulate ended before its requests were held"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        store = Store(db)
        assert 1 <= store.counts().statuses.get("done", 0) < 6
        assert store.counts().statuses.get("running", 0) >= 1
        server.answer_first = None
        server.release.set()
        subprocess.run(cmd, check=True, capture_output=True)
    finally:
        server.close()
    rows = store.episodes()
    assert len(rows) == 6 and {r.status for r in rows} == {"done"}
    assert store.counts().turns == 36
    assert len({(r.id, t.index) for r in rows for t in store.turns(r.id)}) == 36
