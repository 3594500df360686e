"""The OpenAI-compatible backend against local test servers: request shape, the structured-output self-test,
retries on transient faults, and a clear error for an endpoint that is down."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agents.models import GenerationParams, ModelSpecError, load_model
from agents.models.openai_compat import SELF_TEST_VALUE


class FakeServer:
    """An OpenAI-compatible chat endpoint on 127.0.0.1 whose answers a test decides: `reply(body) -> (status,
    content)`; every request body is kept."""

    def __init__(self, reply):
        self.bodies: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self.path.startswith("/v1/"):  # llama-server's own routes are not here
                    self.send_error(404)
                    return
                outer.bodies.append(body)
                status, content = reply(body)
                payload = json.dumps({
                    "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": content}}],
                    "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
                    "timings": {"prompt_n": 2, "cache_n": 5},
                }).encode() if status == 200 else b'{"error": "boom"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def obeying():
    """A server that answers in the requested schema: the self-test's enum value, else a fixed turn."""

    def reply(body):
        schema = body.get("response_format", {}).get("json_schema", {}).get("schema", {})
        if SELF_TEST_VALUE in json.dumps(schema):
            return 200, json.dumps({"answer": SELF_TEST_VALUE})
        return 200, json.dumps({"action": "speak", "text": "Hello."})

    server = FakeServer(reply)
    yield server
    server.close()


def test_structured_request_uses_the_nested_json_schema_form_and_reads_timings(obeying):
    model = load_model(f"openai:m@{obeying.url}", max_batch=2)
    from agents.answers import TurnAnswer

    params = GenerationParams(max_new_tokens=50, temperature=0.0, seed=3, prefix="ACTION:", stop=("\n\n",))
    asked = model.chat_many([[{"role": "user", "content": "hi"}]], task="t", params=params)  # free-form call
    assert asked == [json.dumps({"action": "speak", "text": "Hello."})]
    import asyncio

    result = asyncio.run(model.aanswer([{"role": "user", "content": "hi"}], TurnAnswer, task="roleplay",
                                       params=params))
    assert result.answer is not None and result.answer.text == "Hello."
    body = obeying.bodies[-1]
    assert body["response_format"]["type"] == "json_schema"
    nested = body["response_format"]["json_schema"]
    assert nested["strict"] is True and nested["schema"]["properties"]["action"]["enum"][0] == "speak"
    assert "stop" not in body and body["seed"] == 3 and body["max_tokens"] > 50  # the shape's own token limit
    assert model.usage.totals()["prompt_tokens_evaluated"] == 4  # llama-server's timings.prompt_n, twice


def test_self_test_refuses_an_endpoint_that_ignores_response_format():
    server = FakeServer(lambda body: (200, "Hello! How can I help you today?"))
    try:
        with pytest.raises(ModelSpecError) as error:
            load_model(f"openai:m@{server.url}")
        message = str(error.value)
        assert server.url in message and "ignored the json_schema response_format" in message
        assert "--unstructured" in message and "\n" not in message
        load_model(f"openai:m@{server.url}", structured=False)  # free text: no self-test
    finally:
        server.close()


def test_self_test_refuses_a_schema_read_from_the_wrong_key():
    """Like llama-server with a flat `schema` key: HTTP 200, valid JSON, but not the value the schema forces."""
    server = FakeServer(lambda body: (200, json.dumps({"answer": "hello"})))
    try:
        with pytest.raises(ModelSpecError, match="ignored the json_schema"):
            load_model(f"openai:m@{server.url}")
    finally:
        server.close()


def test_an_endpoint_that_is_down_at_start_is_one_clear_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    with pytest.raises(ModelSpecError) as error:
        load_model(f"openai:m@http://127.0.0.1:{port}/v1")
    assert "not reachable" in str(error.value) and "\n" not in str(error.value)


def test_server_errors_are_retried_then_answered(obeying):
    calls = []

    def flaky(body):
        calls.append(1)
        if SELF_TEST_VALUE in json.dumps(body.get("response_format", {})):
            return 200, json.dumps({"answer": SELF_TEST_VALUE})
        return (500, "") if len(calls) <= 3 else (200, "fine")

    server = FakeServer(flaky)
    try:
        model = load_model(f"openai:m@{server.url}")
        model._backoff_s = 0.001
        assert model.chat_many([[{"role": "user", "content": "hi"}]], task="t") == ["fine"]
        assert model.usage.retries == 2
    finally:
        server.close()


def test_option_scoring_on_an_endpoint_without_llama_servers_routes_is_one_clear_line(obeying):
    model = load_model(f"openai:m@{obeying.url}", structured=False, scoring=True)
    with pytest.raises(ModelSpecError, match=r"cannot score options: no llama-server /tokenize .*needs llama-server"):
        model.score_options([{"role": "user", "content": "Pick 1 or 2."}], ["1", "2"])
