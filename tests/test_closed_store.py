"""A store is closed when a command ends (no -wal or -shm beside it, a plain copy holds everything), is copied
consistently by `python -m graphs.store backup` while another process writes it, and a write that fails (full
disk, read-only file) ends the command with one line and leaves the store as it was."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from graphs.store import Store
from tests.store_content import content
from tests.test_concurrent_writers import ADAPT, JUDGE, SEEDS, run_command

SIDE_FILES = ("-wal", "-shm", ".checkpoints-wal", ".checkpoints-shm")


def leftovers(db: Path) -> list[str]:
    return [db.name + end for end in SIDE_FILES if db.with_name(db.name + end).exists()]


def test_every_command_closes_its_store_and_a_plain_copy_holds_everything(tmp_path):
    db = tmp_path / "s.db"
    for command in (ADAPT, SEEDS, JUDGE):  # adapt, simulate (with its checkpoint file), judge
        assert run_command(command, str(db)) == "", command
        assert leftovers(db) == [], command[0]
        copy = tmp_path / "copy" / f"{command[0]}.db"
        copy.parent.mkdir(exist_ok=True)
        shutil.copyfile(db, copy)
        assert content(copy) == content(db), command[0]
        assert leftovers(db) == [], command[0]  # reading it through SQLite closed it again
    final = content(db)
    assert final["scenarios"] and final["episodes"] and final["turns"] and final["judgements"]


def test_a_failing_command_closes_its_store_too(tmp_path):
    db = tmp_path / "s.db"
    assert run_command(SEEDS, str(db)) == ""
    assert run_command([*JUDGE, "--culture", "JPN"], str(db)).startswith("exit")  # nothing to judge: one line
    assert leftovers(db) == []


WRITER = """
import pathlib, sys
from graphs.store import Store
store, stop, i = Store(sys.argv[1]), pathlib.Path(sys.argv[2]), 0
while not stop.exists():
    store.start_run(f"writer {i}", {"i": i})
    i += 1
    if i == 200:
        print(i, flush=True)  # runs committed so far; it goes on until told to stop
store.close()
print(i, flush=True)
"""


def test_backup_while_another_process_writes_is_consistent_and_complete(tmp_path):
    src, dst, stop = tmp_path / "s.db", tmp_path / "backup" / "copy.db", tmp_path / "stop"
    assert run_command(SEEDS, str(src)) == ""
    before = content(src)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(src), str(stop)], stdout=subprocess.PIPE, text=True)
    try:
        committed = int(writer.stdout.readline())  # the writer is writing now
        done = subprocess.run([sys.executable, "-m", "graphs.store", "backup", str(src), str(dst)],
                              capture_output=True, text=True, timeout=120)
        stop.touch()
        assert done.returncode == 0, done.stderr
        total = int(writer.stdout.readline())
        assert writer.wait(timeout=60) == 0
    finally:
        stop.touch()
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert leftovers(dst) == [] and dst.with_name(dst.name + ".checkpoints").is_file()
    conn = sqlite3.connect(dst)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        runs = [r[0] for r in conn.execute("select command from runs where command like 'writer %'")]
    finally:
        conn.close()
    indices = sorted(int(c.split()[1]) for c in runs)
    assert indices == list(range(len(indices)))  # one snapshot: a prefix of the writer's runs, no gap
    assert committed <= len(indices) < total  # all it had committed when the copy began; it wrote on after
    assert content(dst) == before  # everything the simulation stored (the writer adds only runs)
    with Store(dst) as store:  # the copy opens and reads as a store
        assert len(store.runs()) == len(indices) + 1


def test_backup_refuses_what_it_cannot_do_in_one_line(tmp_path):
    (tmp_path / "notes.db").write_text("my notes\n")
    assert run_command(SEEDS, str(tmp_path / "s.db")) == ""
    (tmp_path / "taken.db").write_text("")
    for src, dst, expected in [("missing.db", "a.db", "no such store"), ("notes.db", "b.db", "not a SQLite store"),
                               ("s.db", "taken.db", "exists already")]:
        done = subprocess.run([sys.executable, "-m", "graphs.store", "backup", str(tmp_path / src),
                               str(tmp_path / dst)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 1 and expected in done.stderr and len(done.stderr.strip().splitlines()) == 1, \
            done.stderr
    assert (tmp_path / "taken.db").read_text() == ""


# (command, commands that make the store it needs, the Store method that writes its results)
WRITES = [(ADAPT, [], "put_scenario"), (SEEDS, [], "finish_episode"),
          ([*JUDGE, "--rejudge"], [SEEDS], "put_judgements")]


@pytest.mark.parametrize("command, before, method", WRITES, ids=["adapt", "simulate", "judge"])
def test_a_write_that_fails_ends_the_command_in_one_line_and_keeps_the_store(command, before, method, tmp_path,
                                                                               monkeypatch):
    """A full disk or read-only store, as SQLite reports it while a result is being written (the error raised
    inside the result's transaction, before its commit): one line naming the store and the cause, exit 1, the
    store intact, and a rerun ends as a run that never failed."""
    reference, db = tmp_path / "reference.db", tmp_path / "s.db"
    for c in [*before, command]:
        assert run_command(c, str(reference)) == ""
    for c in before:
        assert run_command(c, str(db)) == ""
    stored_before = content(db)

    real_writing, real_method, armed = Store._writing, getattr(Store, method), []

    @contextlib.contextmanager
    def failing_writing(self):
        with real_writing(self):
            yield
            if armed:
                raise sqlite3.OperationalError("database or disk is full")

    def arming(self, *args, **kwargs):
        armed.append(True)
        return real_method(self, *args, **kwargs)

    monkeypatch.setattr(Store, "_writing", failing_writing)
    monkeypatch.setattr(Store, method, arming)
    module = __import__(command[0], fromlist=["main"])
    with pytest.raises(SystemExit) as caught:
        module.main([*command[1:], "--db", str(db)])
    message = str(caught.value.code)
    assert len(message.splitlines()) == 1 and str(db) in message and "database or disk is full" in message, message
    monkeypatch.undo()

    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    results = {"put_scenario": "scenarios", "finish_episode": "turns", "put_judgements": "judgements"}[method]
    assert content(db)[results] == stored_before[results]  # the failed transactions left nothing
    assert leftovers(db) == []
    assert run_command(command, str(db)) == ""
    assert content(db) == content(reference)
