"""Backend faults mid-run, against an OpenAI-compatible server on 127.0.0.1 that the test controls: refused
connections, requests that never get an answer, HTTP 500s and bodies cut short. Each is retried with bounded
backoff; a request that fails every attempt fails its episode (stored with the reason), the run goes on, exits
non-zero with a summary, and a rerun completes the work. The CLIs run as subprocesses, as a user runs them.

(Stopping and restarting a real llama-server mid-run is in tests/test_llama_server_backend.py.)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agents.models.fake import PUPPET_REPLIES, _first_allowed
from agents.models.openai_compat import ENV_TIMEOUT, SELF_TEST_VALUE
from graphs.store import Store

TIMEOUT_S = 1.0  # the client's per-request timeout in these runs (CLCA_REQUEST_TIMEOUT_S)
HANG_S = 2.5  # a hung request answers only after the client gave up on it
DOWN_S = 1.0  # a refusal window: the retries wait 0.5 s, then 1 s more, so exactly one attempt is refused


def answer(messages: list[dict], schema: dict) -> str:
    """What the puppet model answers (an adaptation that validates; a turn of its own, which the quality gate
    lets through), else the schema's first allowed value."""
    properties = schema.get("properties", {})
    if "participants" in properties:
        return PUPPET_REPLIES["adapt"](messages, schema)
    if "action" in properties:
        return PUPPET_REPLIES["roleplay"](messages, schema)
    return json.dumps(_first_allowed(schema))


class FaultyServer:
    """Chat completions that satisfy each request's JSON schema, except for the faults planned by request number
    (1-based, counting the requests that reach the server, the structured-output self-test excluded):

    - "500": HTTP 500;
    - "truncate": a 200 whose body stops halfway (Content-Length promises more), then the connection closes;
    - "hang": the answer comes after HANG_S, when the client has timed out;
    - "refuse": the connection closes without an answer and the server stops listening for DOWN_S, so the
      retry that follows is refused.
    """

    def __init__(self, faults: dict[int, str]):
        self.faults = dict(faults)
        self.fail_if = lambda body: False  # also answer 500 to every request this says yes to
        self.requests = 0
        self.lock = threading.Lock()
        self.port = 0
        self._listen()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _listen(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                schema = body["response_format"]["json_schema"]["schema"]
                fault = None
                if SELF_TEST_VALUE not in json.dumps(schema):
                    with outer.lock:
                        outer.requests += 1
                        fault = outer.faults.get(outer.requests) or ("500" if outer.fail_if(body) else None)
                if fault == "refuse":
                    self.close_connection = True
                    threading.Thread(target=outer._bounce).start()
                    return
                if fault == "500":
                    return self._send(500, b'{"error": {"message": "boom"}}')
                if fault == "hang":
                    time.sleep(HANG_S)
                payload = json.dumps({
                    "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {
                        "role": "assistant", "content": answer(body["messages"], schema)}}],
                    "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
                }).encode()
                if fault == "truncate":
                    self._send(200, payload, cut=len(payload) // 2)
                    self.close_connection = True
                    return
                try:
                    self._send(200, payload)
                except OSError:
                    pass  # a hung request's client is gone

            def _send(self, status: int, payload: bytes, cut: int | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload[:cut])
                self.wfile.flush()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def _bounce(self) -> None:
        """Stop listening (connections are refused), then listen again on the same port."""
        self.close()
        time.sleep(DOWN_S)
        self._listen()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def env():
    return {**os.environ, ENV_TIMEOUT: str(TIMEOUT_S), "HF_HUB_OFFLINE": "1"}


def cli(module: str, server: FaultyServer, db, env, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", module, "--culture", "CHN", "--model", f"openai:m@{server.url}", "--db", str(db),
           "--concurrency", "1", "--no-progress", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def last_summary(db) -> dict:
    return Store(db).runs()[-1].summary


def test_simulate_retries_faults_fails_the_episode_that_runs_out_and_a_rerun_completes(tmp_path, env):
    # Three episodes of one round each, one at a time: four requests an episode (two turns, two intents).
    # Episode 1 meets each fault once and recovers; episode 2's first request fails all four attempts (500s);
    # episode 3 runs on a healthy server.
    faults = {1: "500", 3: "truncate", 5: "hang", 7: "refuse", 9: "500", 10: "500", 11: "500", 12: "500"}
    server = FaultyServer(faults)
    db = tmp_path / "s.db"
    try:
        run = cli("graphs.simulate", server, db, env, "--use-seeds", "--episodes", "3", "--max-turns", "1")
        assert run.returncode == 1, run.stderr[-2000:]
        assert "3 episodes requested for China: 2 done, 0 invalid (unparseable turn), 1 failed" in run.stdout
        assert server.requests == 16  # 8 for episode 1, 4 for episode 2, 4 for episode 3
        episodes = Store(db).episodes()
        assert sorted(r.status for r in episodes) == ["done", "done", "failed"]
        failed = next(r for r in episodes if r.status == "failed")
        assert failed.error.startswith("InternalServerError: Error code: 500")
        # retries: one each for the 500, the cut body, the timeout, the dropped connection and the refused
        # retry after it, three for the request that failed
        assert last_summary(db)["usage"]["retries"] == 8
        done = [r for r in episodes if r.status == "done"]
        assert all(len(Store(db).turns(r.id)) == 2 for r in done)

        rerun = cli("graphs.simulate", server, db, env, "--use-seeds", "--episodes", "3", "--max-turns", "1")
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert "3 done, 0 invalid (unparseable turn), 0 failed; 2 already stored" in rerun.stdout
        assert server.requests == 20  # only the failed episode ran again
        store = Store(db)
        assert {r.status for r in store.episodes()} == {"done"} and store.episode(failed.id).error is None
        assert store.counts().turns == 6
    finally:
        server.close()


def test_adapt_and_judge_record_a_failed_request_exit_non_zero_and_a_rerun_completes(tmp_path, env):
    db = tmp_path / "s.db"
    server = FaultyServer({1: "500", 2: "500", 3: "500", 4: "500"})  # the first seed's only request fails
    try:
        run = cli("graphs.adapt", server, db, env, "--n", "2")
        assert run.returncode == 1, run.stderr[-2000:]
        assert "2 seeds for China: 1 adapted, 1 failed" in run.stdout and "1 on a model error" in run.stdout
        rows = Store(db).scenario_records("CHN")
        assert sorted(r.status for r in rows) == ["failed", "ok"]
        assert next(r for r in rows if r.status == "failed").error.startswith("InternalServerError")
        assert cli("graphs.adapt", server, db, env, "--n", "2").returncode == 0
        assert {r.status for r in Store(db).scenario_records("CHN")} == {"ok"}

        assert cli("graphs.simulate", server, db, env, "--episodes", "2", "--max-turns", "1").returncode == 0
        # Every judge question about one episode fails (its questions go out side by side, so a count would not do).
        store = Store(db)
        first = store.episodes()[0]
        name = store.scenario(first.scenario_id).participants[0].name
        server.fail_if = lambda body: name in json.dumps(body["messages"])
        run = cli("graphs.judge", server, db, env)
        assert run.returncode == 1
        assert "1 judged now, 0 already judged" in run.stdout and "1 failed" in run.stdout
        assert f"{first.id}: InternalServerError: Error code: 500" in run.stdout  # its reason, one line
        assert store.judgements(first.id) == []
        server.fail_if = lambda body: False
        rerun = cli("graphs.judge", server, db, env)
        assert rerun.returncode == 0 and "1 judged now, 1 already judged" in rerun.stdout
        store = Store(db)
        assert sum(bool(store.judgements(e.id)) for e in store.episodes()) == 2
    finally:
        server.close()


def test_a_server_that_never_answers_costs_the_timeout_per_attempt_not_forever(tmp_path, env):
    """Every request hangs: four attempts of TIMEOUT_S plus 3.5 s of backoff, then the episode fails."""
    server = FaultyServer({n: "hang" for n in range(1, 5)})
    try:
        started = time.monotonic()
        run = cli("graphs.simulate", server, tmp_path / "s.db", env, "--use-seeds", "--episodes", "1",
                  "--max-turns", "1")
        assert run.returncode == 1 and "1 failed" in run.stdout
        assert Store(tmp_path / "s.db").episodes()[0].error.startswith("APITimeoutError")
        assert time.monotonic() - started < 60
    finally:
        server.close()


def test_an_unusable_timeout_setting_is_one_line(tmp_path, env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = subprocess.run([sys.executable, "-m", "graphs.simulate", "--culture", "CHN", "--use-seeds", "--model",
                          f"openai:m@http://127.0.0.1:{port}/v1", "--db", str(tmp_path / "s.db")],
                         capture_output=True, text=True, env={**env, ENV_TIMEOUT: "soon"}, timeout=120)
    assert run.returncode == 1 and run.stderr.strip().splitlines() == [
        f"error: {ENV_TIMEOUT}='soon': expected a number of seconds above 0"]
