"""Several endpoints of one model (`openai:M@URL1,URL2`): episodes spread over them, each episode on one, an
endpoint that dies mid-run has its episodes finished on the others, and the summary counts requests per endpoint."""

import sqlite3
import threading
from collections import defaultdict

import pytest

from agents.models import ModelSpecError, load_model
from graphs import simulate
from tests.chat_server import ChatServer


@pytest.fixture
def pair():
    servers = ChatServer(), ChatServer()
    yield servers
    for s in servers:
        s.close()


def spec_of(*servers: ChatServer) -> str:
    return "openai:m@" + ",".join(s.url for s in servers)


def run(spec: str, db, *args: str) -> None:
    simulate.main(["--culture", "CHN", "--use-seeds", "--model", spec, "--db", str(db), "--no-progress",
                   "--max-turns", "2", *args])


def episode_turns(db) -> dict[str, list[int]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select e.id, t.idx from episodes e join turns t on t.episode_id = e.id "
                            "where e.status = 'done' order by e.id, t.idx").fetchall()
    out = defaultdict(list)
    for ep, idx in rows:
        out[ep].append(idx)
    return dict(out)


def test_each_episode_stays_on_one_endpoint_and_both_get_episodes(tmp_path, pair, capsys):
    a, b = pair
    run(spec_of(a, b), tmp_path / "clca.db", "--episodes", "8", "--concurrency", "4")
    out = capsys.readouterr().out
    assert len(episode_turns(tmp_path / "clca.db")) == 8
    on_a, on_b = set(a.sessions), set(b.sessions)
    assert None not in on_a | on_b  # every request carries its episode's session header
    assert on_a and on_b and not on_a & on_b  # spread, and no episode split between endpoints
    assert len(on_a | on_b) == 8
    assert f"requests per endpoint: {a.url} {a.chats}, {b.url} {b.chats}" in out


def test_an_endpoint_killed_mid_run_has_its_episodes_finished_on_the_other(tmp_path, pair, capsys):
    a, b = pair
    a.answer_first = 5  # then holds: the run is certainly mid-flight on A when A dies
    threading.Thread(target=lambda: (a.holding.wait(), a.kill()), daemon=True).start()
    db = tmp_path / "clca.db"
    run(spec_of(a, b), db, "--episodes", "6", "--concurrency", "3")
    out = capsys.readouterr().out
    assert "6 done, 0 invalid (unparseable turn), 0 failed" in out
    turns = episode_turns(db)
    assert len(turns) == 6 and all(idx == [0, 1, 2, 3] for idx in turns.values())  # nothing lost or twice
    moved = set(a.sessions) & set(b.sessions)
    assert moved  # A's episodes in flight went on on B
    line = next(line for line in out.splitlines() if line.startswith("requests per endpoint:"))
    assert f"{a.url} " in line and "failed, retried on the others" in line and f"{b.url} {b.chats}" in line
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from episodes").fetchone()[0] == 6


def test_a_bad_list_of_endpoints_is_one_line(pair):
    a, _ = pair
    for spec, says in [(f"openai:m@{a.url},{a.url}", "named twice"), (f"openai:m@{a.url},ftp://x", "expected")]:
        with pytest.raises(ModelSpecError, match=says):
            load_model(spec)


def test_session_header_can_be_renamed_or_dropped(monkeypatch):
    from agents.models.base import GenerationParams
    from agents.models.openai_compat import OpenAIBackend

    backend = OpenAIBackend("m", "http://127.0.0.1:9/v1")
    params = GenerationParams(session="ep-1")
    assert backend.request([], params)["extra_headers"] == {"X-Session-ID": "ep-1"}
    monkeypatch.setenv("CLCA_SESSION_HEADER", "x-user-id")
    assert backend.request([], params)["extra_headers"] == {"x-user-id": "ep-1"}
    monkeypatch.setenv("CLCA_SESSION_HEADER", "")
    assert "extra_headers" not in backend.request([], params)


@pytest.mark.integration
def test_two_llama_servers_one_killed_mid_run_the_run_completes(gguf, tmp_path):
    """The real engine: two llama-server processes serving SmolLM2 as two endpoints; one is SIGKILLed once the first
    episode is stored, while the others are in flight. The run ends with every episode, each stored once."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    from agents.models.llama_server import LlamaServer

    root = Path(__file__).resolve().parents[1]
    db = tmp_path / "clca.db"
    with LlamaServer(gguf, slots=3, ctx_per_slot=4096, threads=1, log_dir=tmp_path / "a") as a, \
            LlamaServer(gguf, slots=3, ctx_per_slot=4096, threads=1, log_dir=tmp_path / "b") as b:
        spec = f"openai:smollm2@{a.base_url},{b.base_url}"
        proc = subprocess.Popen([sys.executable, "-m", "graphs.simulate", "--culture", "CHN", "--use-seeds",
                                 "--episodes", "6", "--max-turns", "2", "--concurrency", "4", "--model", spec,
                                 "--db", str(db), "--no-progress"], cwd=root, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def finished() -> int:
            try:
                with sqlite3.connect(db, timeout=30) as conn:
                    return conn.execute("select count(*) from episodes where status != 'running'").fetchone()[0]
            except sqlite3.OperationalError:  # the store is not made yet
                return 0

        while finished() == 0 and proc.poll() is None:  # the event: the first episode is stored
            time.sleep(0.2)
        a.proc.kill()
        out, err = proc.communicate(timeout=1800)
    assert proc.returncode == 0, err
    line = next(line for line in out.splitlines() if line.startswith("requests per endpoint:"))
    assert "failed, retried on the others" in line and b.base_url in line
    with sqlite3.connect(db) as conn:
        statuses = dict(conn.execute("select status, count(*) from episodes group by status").fetchall())
        assert sum(statuses.values()) == 6 and statuses.get("failed", 0) == 0 and statuses.get("running", 0) == 0
        assert conn.execute("select count(*) from turns").fetchone()[0] == \
            conn.execute("select sum(n_turns) from episodes").fetchone()[0]


def test_option_scores_are_split_over_the_endpoints_in_order():
    import asyncio

    from agents.models.endpoints import MultiEndpointBackend

    class Scorer:
        transient_errors = (ConnectionError,)
        context_tokens = None

        def __init__(self, url):
            self.base_url, self.seen = url, []

        async def ascore_options(self, requests):
            self.seen += [m for m, _ in requests]
            return [[float(m)] for m, _ in requests]

    a, b = Scorer("http://a/v1"), Scorer("http://b/v1")
    multi = MultiEndpointBackend([a, b], "openai:m@http://a/v1,http://b/v1")
    requests = [(i, ["1"]) for i in range(5)]
    assert asyncio.run(multi.ascore_options(requests)) == [[float(i)] for i in range(5)]
    assert a.seen and b.seen and sorted(a.seen + b.seen) == list(range(5))
    assert asyncio.run(multi.ascore_options([])) == []
    assert multi.endpoint_counts() == {"http://a/v1": {"requests": 1, "failed": 0},
                                       "http://b/v1": {"requests": 1, "failed": 0}}
