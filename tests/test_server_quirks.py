"""OpenAI-compatible servers as people run them: token counts missing or null, replies without choices or message,
a reasoning model's answer in `reasoning_content`, HTTP 429 with `Retry-After`. A local server on 127.0.0.1
serves each shape; each is read, retried or refused with one line, never a crash."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from agents.models.base import MAX_RETRY_AFTER_S, GenerationParams, Model, ModelSpecError, PermanentModelError
from agents.models.fake import _first_allowed
from agents.models.openai_compat import SELF_TEST_VALUE, OpenAIBackend, retry_after_seconds
from graphs.store import Store

SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
STRUCTURED = GenerationParams(max_new_tokens=16, schema=json.dumps(SCHEMA))


class QuirkyServer:
    """Chat completions whose n-th reply (1-based, self-test included) has the shape `shapes[n]`, the last shape
    repeating; a normal reply satisfies the request's schema. Records when each request arrived."""

    def __init__(self, shapes: list[str]):
        self.shapes, self.arrivals = shapes, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.arrivals.append(time.monotonic())
                shape = outer.shapes[min(len(outer.arrivals), len(outer.shapes)) - 1]
                schema = (body.get("response_format") or {}).get("json_schema", {}).get("schema")
                content = json.dumps(_first_allowed(schema)) if schema else "ACTION: speak\nOUTPUT: Hello there."
                if SELF_TEST_VALUE in json.dumps(schema or {}):
                    content = json.dumps({"answer": SELF_TEST_VALUE})
                message = {"role": "assistant", "content": content}
                usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
                choices = [{"index": 0, "finish_reason": "stop", "message": message}]
                headers = {}
                if shape == "429":
                    return self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": "1"})
                if shape == "429-date":
                    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=2), usegmt=True)
                    return self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": later})
                if shape == "no-usage":
                    usage = None
                elif shape == "null-counts":
                    usage = {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None}
                elif shape == "no-choices":
                    choices = []
                elif shape == "null-message":
                    choices[0]["message"] = None
                elif shape == "reasoning-json":
                    message.update(content=None, reasoning_content=content)
                elif shape == "reasoning-only":
                    message.update(content=None, reasoning_content="Let me think about this step by step. First")
                    choices[0]["finish_reason"] = "length"
                reply = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": choices}
                if usage is not None:
                    reply["usage"] = usage
                self._send(200, reply, headers)

            def _send(self, status: int, payload: dict, headers: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)), **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(*shapes: str) -> QuirkyServer:
        servers.append(QuirkyServer(list(shapes)))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def ask(server: QuirkyServer, params: GenerationParams = STRUCTURED) -> tuple[Model, str]:
    model = Model(OpenAIBackend("m", server.url), "openai:m", backoff_s=0.05)
    text = asyncio.run(model.achat([{"role": "user", "content": "Hi"}], task="roleplay", params=params))
    return model, text


@pytest.mark.parametrize("shape", ["no-usage", "null-counts"])
def test_missing_or_null_token_counts_are_counted_as_unknown(serve, shape):
    model, text = ask(serve(shape))
    assert json.loads(text) == {"answer": _first_allowed(SCHEMA)["answer"]}
    totals = model.usage.totals()
    assert totals["calls"] == 1 and totals["calls_without_token_counts"] == 1
    assert totals["prompt_tokens"] == 0 and totals["completion_tokens"] == 0


def test_known_counts_say_nothing_unknown(serve):
    model, _ = ask(serve("ok"))
    assert "calls_without_token_counts" not in model.usage.totals()
    assert model.usage.totals()["prompt_tokens"] == 7


@pytest.mark.parametrize("shape", ["no-choices", "null-message"])
def test_a_reply_without_choices_or_message_is_retried_then_answered(serve, shape):
    server = serve(shape, "ok")
    model, text = ask(server)
    assert json.loads(text)["answer"] and model.usage.retries == 1 and len(server.arrivals) == 2


def test_a_reply_without_choices_every_time_fails_with_a_named_reason(serve):
    with pytest.raises(Exception, match="the server's reply has no choices"):
        ask(serve("no-choices"))


def test_a_schema_answer_in_reasoning_content_is_read(serve):
    _, text = ask(serve("reasoning-json"))
    assert json.loads(text) == {"answer": _first_allowed(SCHEMA)["answer"]}


def test_a_model_that_only_reasons_is_one_permanent_line_not_retried(serve):
    server = serve("reasoning-only")
    with pytest.raises(PermanentModelError, match=r"spent its token budget \(16\) reasoning; raise --max-new-tokens"):
        ask(server)
    assert len(server.arrivals) == 1


def test_the_self_test_tells_a_reasoning_model_from_a_server_that_ignores_schemas(serve):
    with pytest.raises(ModelSpecError) as caught:
        OpenAIBackend("m", serve("reasoning-only").url).self_test()
    assert "reasoning" in str(caught.value) and "ignored the json_schema" not in str(caught.value)
    assert "\n" not in str(caught.value)
    OpenAIBackend("m", serve("reasoning-json").url).self_test()  # schema honoured in the reasoning field: fine


@pytest.mark.parametrize("shape, wait_s", [("429", 1.0), ("429-date", 1.0)])
def test_retry_after_is_honoured(serve, shape, wait_s):
    server = serve(shape, "ok")
    model, text = ask(server)
    assert json.loads(text)["answer"] and model.usage.retries == 1
    # The retry came no sooner than the server asked (backoff alone would wait 0.05 s). An HTTP date has
    # one-second resolution, so the 2 s asked may be 1 s and a fraction by the time it is read.
    assert server.arrivals[1] - server.arrivals[0] >= wait_s


def test_retry_after_values_and_the_bound_on_each_wait():
    assert retry_after_seconds("3") == 3.0 and retry_after_seconds(" 0.5 ") == 0.5
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: now
    backend = OpenAIBackend("m", "http://127.0.0.1:9/v1")
    model = Model(backend, "openai:m")
    refused = SimpleNamespace(response=SimpleNamespace(headers={"retry-after": "3600"}))
    state = SimpleNamespace(outcome=SimpleNamespace(exception=lambda: refused), attempt_number=1)
    assert model._wait(state) == MAX_RETRY_AFTER_S


def test_simulate_on_a_server_without_token_counts_completes(serve, tmp_path):
    """The reported case: every episode failed on adding None to the token count."""
    server = serve("null-counts")
    db = tmp_path / "s.db"
    done = subprocess.run(
        [sys.executable, "-m", "graphs.simulate", "--culture", "CHN", "--episodes", "1", "--max-turns", "1",
         "--use-seeds", "--model", f"openai:m@{server.url}", "--db", str(db), "--no-progress"],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    with Store(db) as store:
        statuses = [e.status for e in store.episodes()]
    assert statuses == ["done"]
