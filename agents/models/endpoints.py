"""Several OpenAI-compatible endpoints serving one model, as one backend: `openai:M@URL1,URL2,...`.

Replicas of one model (`vllm serve` on each node, several llama-servers) are used together without a router:
- a session (`GenerationParams.session`: an episode's speakers and observer) stays on one endpoint, so its growing
  prompt is processed once, in that server's prefix cache; a new session goes to the endpoint with the fewest
  requests in flight (then the fewest sessions), so a slow replica gets fewer;
- a request that fails with a transient error (refused connection, timeout, 5xx, 429, a body cut short) sets its
  endpoint aside for COOL_DOWN_S and is retried (`Model`'s retries) on another, its session moving with it; when
  every endpoint is set aside, the one whose cool-down ends first is tried;
- `endpoint_counts` tells each endpoint's requests and failures apart, for the stage summaries.
Option scoring splits a batch over the endpoints that are up.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from agents.models.base import Completion, GenerationParams, Message, Repetition, ScoreRequest
from agents.models.openai_compat import OpenAIBackend

COOL_DOWN_S = 30.0  # an endpoint that failed gets no new request for this long (unless every one failed)
MAX_SESSIONS = 100_000  # sessions remembered, least recently used forgotten first


@dataclass
class Endpoint:
    backend: OpenAIBackend
    requests: int = 0
    failed: int = 0
    in_flight: int = 0
    sessions: int = 0
    down_until: float = 0.0


class MultiEndpointBackend:
    """One model behind several OpenAI-compatible endpoints (see the module docstring)."""

    def __init__(self, backends: Sequence[OpenAIBackend], name: str):
        if len(backends) < 2:
            raise ValueError("several endpoints need at least two")
        self.endpoints = [Endpoint(b) for b in backends]
        self.name = name
        self.transient_errors = backends[0].transient_errors
        self.slots = None
        self._session_of: OrderedDict[str, int] = OrderedDict()

    @property
    def context_tokens(self) -> int | None:
        known = [e.backend.context_tokens for e in self.endpoints if e.backend.context_tokens]
        return min(known) if known else None

    def repetition_controls(self, repetition: Repetition) -> dict:
        """The first endpoint's fields (each endpoint sends its own engine's)."""
        return self.endpoints[0].backend.repetition_controls(repetition)

    def self_test(self) -> None:
        for e in self.endpoints:
            e.backend.self_test()

    def endpoint_counts(self) -> dict[str, dict[str, int]]:
        """{base URL: {"requests": sent, "failed": of them, transient errors}} since this backend was made."""
        return {e.backend.base_url: {"requests": e.requests, "failed": e.failed} for e in self.endpoints}

    def _up(self) -> list[int]:
        now = time.monotonic()
        up = [i for i, e in enumerate(self.endpoints) if e.down_until <= now]
        return up or [min(range(len(self.endpoints)), key=lambda i: self.endpoints[i].down_until)]

    def pick(self, session: str | None) -> int:
        """The endpoint (index) for a request of `session`: its own while that is up, else the least busy one."""
        up = self._up()
        if session is not None and self._session_of.get(session) in up:
            self._session_of.move_to_end(session)
            return self._session_of[session]
        i = min(up, key=lambda i: (self.endpoints[i].in_flight, self.endpoints[i].sessions, i))
        if session is not None:
            self._session_of[session] = i
            self.endpoints[i].sessions += 1
            if len(self._session_of) > MAX_SESSIONS:
                self._session_of.popitem(last=False)
        return i

    async def _on(self, i: int, call):
        e = self.endpoints[i]
        e.requests += 1
        e.in_flight += 1
        try:
            return await call(e.backend)
        except self.transient_errors:
            e.failed += 1
            e.down_until = time.monotonic() + COOL_DOWN_S
            raise
        finally:
            e.in_flight -= 1

    async def agenerate(self, messages: Sequence[Message], params: GenerationParams, task: str) -> Completion:
        return await self._on(self.pick(params.session), lambda b: b.agenerate(messages, params, task))

    async def ascore_options(self, requests: Sequence[ScoreRequest]) -> list[list[float]]:
        if not requests:
            return []
        up = self._up()
        size = -(-len(requests) // len(up))
        chunks = [list(requests[k:k + size]) for k in range(0, len(requests), size)]
        scored = await asyncio.gather(*(self._on(i, lambda b, c=c: b.ascore_options(c)) for i, c in zip(up, chunks)))
        return [s for chunk in scored for s in chunk]

    async def acount_prompt_tokens(self, messages: Sequence[Message]) -> int:
        return await self._on(self.pick(None), lambda b: b.acount_prompt_tokens(messages))

    def retry_after(self, exc: BaseException | None) -> float | None:
        """A refusal's `Retry-After` only when no other endpoint is up (else the retry goes elsewhere at once)."""
        now = time.monotonic()
        if any(e.down_until <= now for e in self.endpoints):
            return None
        return OpenAIBackend.retry_after(exc)
