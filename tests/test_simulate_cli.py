"""Bad command lines fail before anything is stored, with one line naming what is wrong."""

import pytest

from agents.cultures import BUILTIN_DIR
from graphs.simulate import main


def fails(argv, tmp_path) -> str:
    db = tmp_path / "s.db"
    with pytest.raises(SystemExit) as caught:
        main([*argv, "--db", str(db), "--no-progress"])
    message = str(caught.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert not db.exists()
    return message


def test_unknown_culture(tmp_path):
    assert "unknown culture 'XYZ' (available: AUS, " in fails(["--culture", "XYZ", "--model", "puppet"], tmp_path)


def test_malformed_culture_file(tmp_path):
    user = tmp_path / "cultures"
    user.mkdir()
    text = (BUILTIN_DIR / "chn.yaml").read_text().replace("power_distance: 80", "power_distance: lots")
    (user / "chn.yaml").write_text(text)
    message = fails(["--culture", "CHN", "--cultures-dir", str(user), "--model", "puppet"], tmp_path)
    assert "chn.yaml: field hofstede_scores.power_distance: Input should be a valid integer" in message


def test_bad_model_spec(tmp_path):
    assert "openai:<model>@<http base url>" in fails(["--culture", "CHN", "--model", "openai:gpt", "--use-seeds"],
                                                     tmp_path)


def test_no_adapted_scenarios_is_reported_before_the_model_loads(tmp_path):
    message = fails(["--culture", "CHN", "--model", "no/such-model"], tmp_path)
    assert "no adapted scenarios for CHN" in message and "--use-seeds" in message


def test_non_positive_counts(tmp_path):
    assert "must be at least 1" in fails(["--culture", "CHN", "--episodes", "0", "--model", "puppet"], tmp_path)


@pytest.mark.parametrize("module", ["graphs.simulate", "graphs.adapt", "graphs.judge"])
@pytest.mark.parametrize("kind, expected", [
    ("folder", "is a folder, not a SQLite file"),
    ("text file", "is not a SQLite database"),
    ("read-only folder", "is not a writable folder"),
])
def test_a_store_path_that_cannot_hold_a_store_is_one_line(module, kind, expected, tmp_path):
    import importlib
    import os

    if kind == "folder":
        db = tmp_path / "runs"
        db.mkdir()
    elif kind == "text file":
        db = tmp_path / "notes.db"
        db.write_text("my notes\n")
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        (tmp_path / "ro").mkdir(mode=0o500)
        db = tmp_path / "ro" / "s.db"
    before = db.read_text() if db.is_file() else None
    with pytest.raises(SystemExit) as caught:
        importlib.import_module(module).main(["--culture", "CHN", "--model", "puppet", "--db", str(db), "--no-progress",
                                              *(["--use-seeds"] if module == "graphs.simulate" else [])])
    message = str(caught.value.code)
    assert message.startswith("error: db: ") and expected in message and "\n" not in message
    assert (db.read_text() if db.is_file() else None) == before  # nothing written


def done(db) -> int:
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        return conn.execute("select count(*) from episodes where status = 'done'").fetchone()[0]
    except sqlite3.OperationalError:  # the table is not there yet
        return 0
    finally:
        conn.close()


def test_ctrl_c_is_one_line_and_a_rerun_resumes(tmp_path):
    import signal
    import subprocess
    import sys

    from tests.chat_server import ChatServer
    from tests.conftest import sigint_as_in_a_terminal

    # One episode of one round is 4 requests (2 turns, 2 intents); the server then holds every request, so the
    # signal comes while the second episode certainly waits on the model and the first is stored.
    server = ChatServer(answer_first=4)
    db = tmp_path / "s.db"
    argv = [sys.executable, "-m", "graphs.simulate", "--culture", "CHN", "--use-seeds", "--episodes", "3",
            "--max-turns", "1", "--model", server.spec, "--concurrency", "1", "--no-progress", "--db", str(db)]
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=sigint_as_in_a_terminal)
        while not server.holding.wait(0.1):  # the second episode's first request has arrived
            assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert done(db) == 1
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        server.release.set()
    try:
        assert proc.returncode == 130, err[-2000:]
        assert err.strip().splitlines() == ["interrupted: finished work is stored; rerun the same command to resume"]
        server.answer_first = None
        rerun = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0 and "3 done" in rerun.stdout and "1 already stored" in rerun.stdout
    finally:
        server.close()
