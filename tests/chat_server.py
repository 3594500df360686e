"""An OpenAI-compatible chat server on 127.0.0.1 that the tests control: it answers each request with what its JSON
schema allows (an adaptation that validates, else the schema's first allowed value), refuses the requests that name
`marker` with `refusal`, and holds every request after the first `answer_first` until `release` is set, so a test can
act while a run is certainly mid-flight (`holding` is set when the first request is held), and `kill` it there.
Each chat request's session header is kept (`sessions`). Also serves llama-server's
`/apply-template` and `/tokenize` (a prompt naming `marker` counts 10,000 tokens, any other 10)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from agents.models.fake import PUPPET_REPLIES, _first_allowed
from agents.models.openai_compat import SELF_TEST_VALUE

# What llama-server answers a prompt that does not fit a slot (tools/server: exceed_context_size_error).
CONTEXT_REFUSAL = {"error": {"code": 400, "message": "the request exceeds the available context size, try increasing "
                             "it", "type": "exceed_context_size_error", "n_prompt_tokens": 5120, "n_ctx": 4096}}


def answer(messages: list[dict], schema: dict) -> str:
    """What the puppet model answers (an adaptation that validates), else the schema's first allowed value."""
    if "participants" in schema.get("properties", {}):
        return PUPPET_REPLIES["adapt"](messages, schema)
    if "action" in schema.get("properties", {}):  # a turn of its own, which the quality gate lets through
        return PUPPET_REPLIES["roleplay"](messages, schema)
    return json.dumps(_first_allowed(schema))


class ChatServer:
    """See the module docstring. `chats` counts the chat requests (the structured-output self-test excluded),
    `refused` those refused."""

    def __init__(self, refusal: tuple[int, dict] = (400, CONTEXT_REFUSAL), answer_first: int | None = None):
        self.marker: str | None = None
        self.refusal, self.answer_first = refusal, answer_first
        self.refused = self.chats = 0
        self.sessions: list[str | None] = []  # each chat request's X-Session-ID header, in arrival order
        self.dead = False  # `kill`: requests get no answer, the connection is dropped
        self.holding, self.release = threading.Event(), threading.Event()
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/apply-template":
                    return self._send(200, {"prompt": "\n".join(m["content"] for m in body["messages"])})
                if self.path == "/tokenize":
                    long = outer.marker is not None and outer.marker in body["content"]
                    return self._send(200, {"tokens": list(range(10_000 if long else 10))})
                schema = body["response_format"]["json_schema"]["schema"]
                if SELF_TEST_VALUE not in json.dumps(schema):
                    with outer.lock:
                        outer.chats += 1
                        outer.sessions.append(self.headers.get("X-Session-ID"))
                        hold = outer.answer_first is not None and outer.chats > outer.answer_first
                    if hold:
                        outer.holding.set()
                        outer.release.wait()
                    if outer.dead:
                        self.close_connection = True
                        return None
                    if outer.marker is not None and outer.marker in json.dumps(body["messages"]):
                        with outer.lock:
                            outer.refused += 1
                        return self._send(*outer.refusal)
                self._send(200, {
                    "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {
                        "role": "assistant", "content": answer(body["messages"], schema)}}],
                    "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}})

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client went away while its request was held

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.spec = f"openai:m@{self.url}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def kill(self) -> None:
        """Die as a crashed server does: held requests and any still arriving lose their connection unanswered,
        and new connections are refused."""
        self.dead = True
        self.close()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
