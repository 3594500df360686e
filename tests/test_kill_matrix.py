"""Kill matrix: `graphs.adapt`, `graphs.simulate` and `graphs.judge` are SIGKILLed at seeded random moments
(inside store writes, halfway through model calls, and at random times while working), rerun after every kill,
and the final store must equal an uninterrupted run's: same ids, counts, statuses and contents. `training.sft`
is killed while saving a checkpoint and while training, and resumes from the last complete checkpoint to the
same adapter as an uninterrupted run.

The commands run as subprocesses on the puppet model (with latency, so calls are in flight when a kill lands)
through `tests/killer.py`, which plants the kill without changing what the command does. About a minute on
two idle cores; marked `kill_matrix` (part of the default suite) so it can be selected or skipped with -m.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.store_content import content

pytestmark = [pytest.mark.kill_matrix,
              pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")]

KILLS = 10  # per command
TIMEOUT_S = 300
# Sized so that ten kills, each after a few writes, calls or a fraction of a second, leave work undone (the
# puppet's latency per call, in seconds, sets the pace): an uninterrupted run takes one to three seconds.
COMMANDS = {
    "graphs.adapt": ["--culture", "CHN", "--n", "30", "--model", "puppet:0.1", "--concurrency", "2",
                     "--no-progress"],
    "graphs.simulate": ["--culture", "CHN", "--use-seeds", "--episodes", "8", "--max-turns", "2", "--model",
                        "puppet:0.05", "--concurrency", "2", "--no-progress"],
    "graphs.judge": ["--culture", "CHN", "--model", "puppet:0.2", "--concurrency", "2", "--no-progress"],
}
JUDGED_EPISODES = 20
# kind -> the range a kill moment is drawn from: the N-th store write (the run's row and the seed scenarios come
# first), the N-th model call, or seconds after the command's first store write.
MOMENTS = {"write": (2, 6), "call": (1, 6), "time": (0.0, 0.25)}


def env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(module: str, args: list[str], kill: tuple[str, float] | None = None) -> int:
    """Run a command, killed at `kill` (kind, moment) if given; returns its exit status (-9 when killed)."""
    cmd = [sys.executable, "-m", "tests.killer", module, *args]
    if kill is None or kill[0] != "time":
        planted = {"CLCA_KILL_AT": f"{kill[0]}:{int(kill[1])}"} if kill else {}
        done = subprocess.run(cmd, env={**env(), **planted}, capture_output=True, text=True, timeout=TIMEOUT_S)
        assert done.returncode in (0, -signal.SIGKILL), done.stderr[-3000:]
        return done.returncode
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if line.startswith("KILLER started"):
                time.sleep(kill[1])
                proc.send_signal(signal.SIGKILL)
                break
        proc.stderr.read()
        return proc.wait(timeout=TIMEOUT_S)
    finally:
        proc.kill()


def kill_plan(name: str, seed: int = 0) -> list[tuple[str, float]]:
    """KILLS seeded (kind, moment) pairs, every kind at least three times."""
    rng = random.Random(f"{name}:{seed}")
    kinds = [k for k in MOMENTS for _ in range(3)]
    kinds += [rng.choice(list(MOMENTS)) for _ in range(KILLS - len(kinds))]
    rng.shuffle(kinds)
    return [(k, rng.randint(*MOMENTS[k]) if k != "time" else round(rng.uniform(*MOMENTS[k]), 3)) for k in kinds]


def kill_and_rerun(module: str, args: list[str], db: Path) -> list[tuple[tuple[str, float], int]]:
    """Run the command under every kill of its plan, then once more to the end; (kill, exit status) pairs."""
    outcomes = [(kill, run(module, [*args, "--db", str(db)], kill)) for kill in kill_plan(module)]
    assert run(module, [*args, "--db", str(db)]) == 0
    return outcomes


@pytest.fixture(scope="module")
def episodes_db(tmp_path_factory) -> Path:
    """Finished puppet episodes for the judge to work on."""
    db = tmp_path_factory.mktemp("episodes") / "s.db"
    assert run("graphs.simulate", ["--culture", "CHN", "--use-seeds", "--episodes", str(JUDGED_EPISODES),
                                   "--max-turns", "1",
                                   "--model", "puppet", "--no-progress", "--db", str(db)]) == 0
    return db


@pytest.mark.parametrize("module", COMMANDS)
def test_killed_and_rerun_equals_uninterrupted(module, tmp_path, episodes_db):
    reference, killed = tmp_path / "reference.db", tmp_path / "killed.db"
    if module == "graphs.judge":
        shutil.copy(episodes_db, reference)
        shutil.copy(episodes_db, killed)
    args = COMMANDS[module]
    assert run(module, [*args, "--db", str(reference)]) == 0
    outcomes = kill_and_rerun(module, args, killed)

    missed = [(kill, rc) for kill, rc in outcomes if rc != -signal.SIGKILL]
    assert not missed, f"these runs were not killed (rc 0: the work was done first, make it bigger): {missed}"
    expected = content(reference)
    assert content(killed) == expected
    assert expected["scenarios"] and (module != "graphs.judge" or expected["judgements"])
    conn = sqlite3.connect(killed)
    assert conn.execute("select count(*) from episodes where status != 'done'").fetchone()[0] == 0
    # Only the uninterrupted runs finished (the judge's store came with the run that simulated its episodes).
    assert conn.execute("select count(finished) from runs").fetchone()[0] == 1 + (module == "graphs.judge")
    if module == "graphs.simulate":  # finished episodes leave no checkpoints behind
        checkpoints = sqlite3.connect(f"{killed}.checkpoints")
        assert checkpoints.execute("select count(*) from checkpoints").fetchone()[0] == 0


def test_sft_killed_while_saving_and_training_resumes_to_the_same_adapter(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from tests.test_training import tiny_args

    def args(out: Path) -> list[str]:
        return tiny_args(tiny_model_dir, out, "--max_steps", "6", "--save_steps", "2", "--seed", "7")

    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert run("training.sft", args(reference)) == 0
    # Killed inside the second checkpoint: checkpoint-4 holds weights but no trainer state.
    assert run("training.sft", args(killed), ("save", 2)) == -signal.SIGKILL
    assert (killed / "checkpoint-4").is_dir() and not (killed / "checkpoint-4" / "trainer_state.json").exists()
    # Resumed from checkpoint-2 (the partial checkpoint-4 is passed over), then killed again while training.
    # Killed as its second step (global step 4) begins: checkpoint-4 is still the partial one.
    assert run("training.sft", args(killed), ("step", 2)) == -signal.SIGKILL
    assert run("training.sft", args(killed)) == 0
    provenance = json.loads((killed / "provenance.json").read_text())
    assert Path(provenance["resumed_from"]).name == "checkpoint-2"
    log = json.loads((killed / "training_log.json").read_text())
    assert [e["step"] for e in log if "loss" in e][-1] == 6
    want, got = load_file(reference / "adapter_model.safetensors"), load_file(killed / "adapter_model.safetensors")
    assert want.keys() == got.keys()
    for name in want:
        assert (want[name] - got[name]).abs().max().item() < 1e-5, name
