"""Several processes writing one store at once, new or existing, any mix of adapt, simulate and judge: no crash,
no "database is locked", no duplicate, and the store ends as one run of each command alone would leave it.

Each process is a real OS process (spawned, so nothing is shared with pytest) that imports the CLIs once and
then runs one command per round; a barrier starts the commands of a round at the same instant, which makes the
race far tighter than starting fresh interpreters (whose imports take seconds and vary by hundreds of ms).
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import sys
import traceback
from pathlib import Path

import pytest

from tests.store_content import content

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="spawned workers and file locks as on POSIX")

ROUNDS = 10  # races per mix; the reported crash hit 17 of 20 tries
SIM = ["graphs.simulate", "--culture", "CHN", "--episodes", "3", "--max-turns", "1", "--model", "puppet",
       "--concurrency", "2", "--no-progress"]
SEEDS = [*SIM, "--use-seeds"]
ADAPT = ["graphs.adapt", "--culture", "CHN", "--n", "3", "--model", "puppet", "--concurrency", "2", "--no-progress"]
JUDGE = ["graphs.judge", "--culture", "CHN", "--model", "puppet", "--concurrency", "2", "--no-progress"]


def run_command(argv: list[str], db: str) -> str:
    """Run one CLI in this process; '' on success, else the failure as one line."""
    import importlib

    module = importlib.import_module(argv[0])
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            module.main([*argv[1:], "--db", db])
    except SystemExit as exc:
        return "" if exc.code in (None, 0) else f"exit {exc.code}"
    except BaseException as exc:  # noqa: BLE001 - the crash is what the test reports
        return "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[0]
    return ""


def worker(me: int, rounds: list[tuple[str, list[list[str]]]], barrier, results) -> None:
    """Run this worker's command of every round, all workers starting each round together."""
    for db, commands in rounds:
        barrier.wait(timeout=120)
        results.put((db, me, run_command(commands[me], db)))


def race(rounds: list[tuple[str, list[list[str]]]]) -> dict[str, list[str]]:
    """db -> the failure line of each racing command ('' when it succeeded)."""
    ctx = multiprocessing.get_context("spawn")
    n = len(rounds[0][1])
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=worker, args=(i, rounds, barrier, results)) for i in range(n)]
    for p in procs:
        p.start()
    out: dict[str, list[str]] = {db: [""] * n for db, _ in rounds}
    for _ in range(n * len(rounds)):
        db, me, failure = results.get(timeout=300)
        out[db][me] = failure
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return out


MIXES = {
    # name: (commands run first, alone, to make an existing store; the commands that race)
    "two simulate --use-seeds, new store": ([], [SEEDS, SEEDS]),
    "simulate --use-seeds with different seeds, new store": ([], [SEEDS, [*SEEDS, "--seed", "1"]]),
    "two adapt, new store": ([], [ADAPT, ADAPT]),
    "adapt, adapt and simulate --use-seeds, new store": ([], [ADAPT, SEEDS, [*ADAPT, "--culture", "JPN"]]),
    # The racing judge reads only CHN episodes, which nothing else in the race writes: its result is fixed.
    "judge, simulate and adapt, existing store": (
        [ADAPT, SIM, JUDGE], [[*JUDGE, "--rejudge"], [*SEEDS, "--culture", "JPN"], [*ADAPT, "--culture", "JPN"]]),
}


@pytest.mark.parametrize("mix", MIXES)
def test_racing_writers_finish_as_if_run_one_after_the_other(mix, tmp_path):
    before, racing = MIXES[mix]
    # The expected store: the same commands one after the other, in each order (the content must not depend on it).
    expected = None
    for order in (racing, racing[::-1]):
        db = str(tmp_path / f"sequential-{len(order)}-{id(order)}.db")
        for command in [*before, *order]:
            assert run_command(command, db) == "", command
        snapshot = content(db)
        assert expected is None or snapshot == expected
        expected = snapshot
    assert expected["scenarios"]
    dbs = [str(tmp_path / f"race-{r}.db") for r in range(ROUNDS)]
    for db in dbs:
        for command in before:
            assert run_command(command, db) == "", command
    results = race([(db, racing) for db in dbs])
    failures = {Path(db).name: f for db, f in results.items() if any(f)}
    assert not failures
    for db in dbs:
        assert content(db) == expected, Path(db).name


def test_a_claim_excludes_other_processes_and_dies_with_its_holder(tmp_path):
    """An episode one process runs is skipped by the others, and taken over once that process is killed."""
    import signal
    import subprocess

    from graphs.store import Store

    db = tmp_path / "s.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom graphs.store import Store\n"
         f"with Store({str(db)!r}).claim('ep-1') as mine:\n    print(mine, flush=True)\n    time.sleep(600)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "True"
        store = Store(db)
        with store.claim("ep-1") as mine, store.claim("ep-2") as other:
            assert (mine, other) == (False, True)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with store.claim("ep-1") as mine:
        assert mine


def test_checking_a_store_path_keeps_this_process_view_of_other_writers(tmp_path):
    """Checking an open store's file (as every command does before it writes) must not cost this process its
    lock on the file. Closing a plain descriptor of it would drop the lock; another process's last close would
    then delete the -wal and -shm files under this process's connections, and every connection here, fresh ones
    included, would miss what a later process writes (the race above, between commands run in one process)."""
    import sqlite3
    import subprocess

    from graphs.batch import store_file
    from graphs.store import Store

    db = tmp_path / "s.db"
    store = Store(db)
    store.start_run("here", {})  # a write of this process's own, in the WAL
    assert store_file(db) == db
    write = "import sys\nfrom graphs.store import Store\ns = Store(sys.argv[1])\ns.start_run(sys.argv[2], {})\n"
    subprocess.run([sys.executable, "-c", write + "s.close()", str(db), "there"], check=True)
    holder = subprocess.Popen([sys.executable, "-c", write + "print('written', flush=True)\nsys.stdin.read()", str(db),
                               "later"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "written"  # and holds the store open
        fresh = sqlite3.connect(db)
        try:
            assert sorted(r[0] for r in fresh.execute("select command from runs")) == ["here", "later", "there"]
        finally:
            fresh.close()
        assert sorted(r.command for r in store.runs()) == ["here", "later", "there"]
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    store.close()
