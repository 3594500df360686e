"""A few points of the kill matrix on the embedded default (SmolLM2 on the managed llama-server): `graphs.simulate`
SIGKILLed at three moments while the real model is answering, rerun after each kill, ends with the episodes,
statuses and well-formed turns of an uninterrupted run. (That a killed run leaves no llama-server is
tests/test_llama_server_backend.py's.)

Sampled text may differ between the two stores (the server batches requests differently when a run resumes),
so this compares what the issue asks of a resumed run: ids, statuses and counts, and that every stored turn
and label is there exactly once.
"""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.kill_matrix]
ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--culture", "CHN", "--use-seeds", "--episodes", "3", "--max-turns", "2", "--model", "smollm2",
        "--concurrency", "3", "--no-progress"]
KILL_AFTER_S = (8.0, 15.0, 25.0)  # after the command's first store write; the model loads before it


def simulate(db: Path, kill_after: float | None = None) -> int:
    cmd = [sys.executable, "-m", "tests.killer", "graphs.simulate", *ARGS, "--db", str(db)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        if kill_after is not None:
            for line in proc.stderr:
                if line.startswith("KILLER started"):
                    time.sleep(kill_after)
                    proc.send_signal(signal.SIGKILL)
                    break
        proc.stderr.read()
        return proc.wait(timeout=900)
    finally:
        proc.kill()


def outcome(db: Path) -> dict:
    conn = sqlite3.connect(db)
    try:
        episodes = sorted(conn.execute("select id, status from episodes").fetchall())
        turns = conn.execute("select episode_id, idx, count(*) from turns group by episode_id, idx").fetchall()
        intents = conn.execute("select episode_id, turn_index, count(*) from intents "
                               "group by episode_id, turn_index").fetchall()
        n_turns = dict(conn.execute("select id, n_turns from episodes").fetchall())
        stored = dict(conn.execute("select episode_id, count(*) from turns group by episode_id").fetchall())
        assert all(n == 1 for *_, n in turns + intents), "a turn or label stored twice"
        assert all(stored.get(i, 0) == n for i, n in n_turns.items()), (n_turns, stored)
        for episode, count in stored.items():  # turn indices 0..n-1, each with its label
            assert sorted(i for e, i, _ in turns if e == episode) == list(range(count))
            assert sorted(i for e, i, _ in intents if e == episode) == list(range(count))
        return {"episodes": episodes}
    finally:
        conn.close()


def test_simulate_on_the_real_model_killed_three_times_resumes_to_an_uninterrupted_run(tmp_path, gguf):
    reference = tmp_path / "reference.db"
    assert simulate(reference) == 0
    killed = tmp_path / "killed.db"
    statuses = [simulate(killed, after) for after in KILL_AFTER_S]
    assert -signal.SIGKILL in statuses  # at least one kill landed before the run ended
    assert simulate(killed) == 0
    assert outcome(killed) == outcome(reference)
    assert {s for _, s in outcome(killed)["episodes"]} <= {"done", "invalid"}
