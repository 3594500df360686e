"""Any OpenAI-compatible chat endpoint: `vllm serve`, llama.cpp's `llama-server` (managed or your own), others.

Structured answers go out as `response_format={"type": "json_schema", "json_schema": {"name", "schema",
"strict"}}`, the nested form that both vLLM and llama-server read (a flat `schema` key is silently
ignored by llama-server). Because servers are known to ignore a schema without an error, `self_test`
sends one request whose only valid answer is a fixed enum value before a run relies on it.

Option scoring (`ascore_options`, for `eval.wvs --method logprob`) uses llama-server's own routes, not the
OpenAI API: next-token log-probabilities from `/completion` with `n_probs`.

One `AsyncOpenAI` client per event loop (its connection pool belongs to the loop) and a semaphore
bound the requests in flight. Retries are `Model`'s, so the client's own are off: a refused connection, a
timeout, an HTTP 5xx or a body cut short is retried with bounded exponential backoff, and a request that fails
every attempt fails its episode (stored as `failed` with the reason; a rerun retries it).

Repetition controls (`GenerationParams.repetition`) go out in the fields of the engine behind the URL, found once
(`engine`): llama.cpp's `llama-server` (it answers `GET /props`) takes DRY (`dry_multiplier`, `dry_base`,
`dry_allowed_length`, `dry_penalty_last_n`), `repeat_penalty` and `frequency_penalty`; vLLM (it answers
`GET /version`) takes `repetition_penalty` and `frequency_penalty` and has no DRY; any other endpoint gets the
OpenAI API's `frequency_penalty` only. `CLCA_OPENAI_ENGINE=llama.cpp|vllm|openai` names the engine instead.

An episode's requests carry its session (`GenerationParams.session`) in the `X-Session-ID` header, so a router in
front of replicas can keep the episode on one (`CLCA_SESSION_HEADER` renames the header; empty sends none).

`CLCA_REQUEST_TIMEOUT_S` (seconds, default 600) bounds one request: a server that accepts a request and never
answers costs that long per attempt. The default suits a slow CPU model writing a long answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import email.utils
import json
import os
from collections import OrderedDict
from dataclasses import replace
from typing import Sequence

from agents.models.base import (
    Completion,
    GenerationParams,
    MalformedReply,
    Message,
    ModelSpecError,
    PermanentModelError,
    Repetition,
    ScoreRequest,
    banned_token_ids,
    refuse_credentials,
)
from agents.models.scoring import option_logprobs, prefixes_to_read

ENV_TIMEOUT = "CLCA_REQUEST_TIMEOUT_S"
ENV_SESSION_HEADER = "CLCA_SESSION_HEADER"
SESSION_HEADER = "X-Session-ID"  # what a router keys replica affinity on (vLLM production-stack: --session-key)
ENV_ENGINE = "CLCA_OPENAI_ENGINE"
ENGINES = ("llama.cpp", "vllm", "openai")
# DRY over "the whole context" on a llama-server whose context size is unknown: long enough for any episode here,
# and small for its ring buffer (4 bytes a token per request).
DRY_WINDOW_FALLBACK = 32768
SELF_TEST_VALUE = "teal-walrus-42"  # no model says this unless the decoder makes it
SELF_TEST_REASONING_TOKENS = 2048  # the self-test's budget for a model that answers only after reasoning
# Option scoring: the top next tokens asked for first; a needed token outside them is asked again with all of them.
SCORE_TOP = 50
SCORE_ALL = 1 << 30  # llama-server clamps n_probs to the vocabulary
SELF_TEST_SCHEMA = {"type": "object", "properties": {"answer": {"enum": [SELF_TEST_VALUE]}},
                    "required": ["answer"], "additionalProperties": False}


def valid_unicode(text: str) -> str:
    """Text that UTF-8 (the store, the logs) can hold: a lone surrogate, which a server's JSON escapes
    produce for half an emoji, becomes U+FFFD instead of failing the write later."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class OpenAIBackend:
    """Chat completions over HTTP; concurrent episodes send requests in parallel, up to `max_in_flight`.

    `GenerationParams.prefix` is not sent: the chat API has no portable way to prefill a reply.
    With `slots` (a llama-server this process manages), requests that share a `cache_key` are pinned to
    one slot (`id_slot`), the least recently used slot going to a new key, so an episode's inquirer,
    responder and observer prompts each stay where they were processed.
    The key is `api_key` if given, else OPENAI_API_KEY from the environment; a spec or URL holding one is
    refused (`refuse_credentials`), as the backend's name is stored with every run.
    """

    def __init__(self, model: str, base_url: str, max_in_flight: int = 8, timeout_s: float | None = None,
                 extra_body: dict | None = None, slots: int | None = None, api_key: str | None = None,
                 engine: str | None = None):
        try:
            import httpx
            import openai
        except ImportError as exc:
            raise ModelSpecError("model spec 'openai:...' needs the openai and httpx packages (core dependencies of clca)") from exc
        refuse_credentials(f"{model}@{base_url}")  # the name goes into every stored run
        self.name = f"openai:{model}@{base_url}"
        self._api_key = api_key  # None: OPENAI_API_KEY, read from the environment when a client is made
        self.model, self.base_url = model, base_url.rstrip("/")
        self.max_in_flight, self.timeout_s = max_in_flight, timeout_s or request_timeout()
        self.extra_body = dict(extra_body or {})
        self.transient_errors = (
            openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
            openai.InternalServerError, openai.APIResponseValidationError, httpx.TransportError, MalformedReply,
        )
        self._clients: dict[int, tuple] = {}  # event loop id -> (client, semaphore)
        self._banned_ids: dict[str, list[int]] = {}
        self.slots = slots
        self.context_tokens: int | None = None  # per request; known for a managed llama-server (its -c / slots)
        self._slot_of: OrderedDict[str, int] = OrderedDict()  # cache key -> slot, least recently used first
        self._engine = engine or os.environ.get(ENV_ENGINE) or None  # None: found on first use (`engine`)
        self._props_context: int | None = None  # llama-server's n_ctx per slot, asked once (`dry_window`)
        if self._engine not in (None, *ENGINES):
            raise ModelSpecError(f"{ENV_ENGINE}={self._engine!r}: expected one of {', '.join(ENGINES)}")

    @property
    def engine(self) -> str:
        """"llama.cpp", "vllm" or "openai" (any other endpoint): given, else asked of the server once
        (`GET /props` answers on llama-server, `GET /version` on vLLM)."""
        if self._engine is None:
            self._engine = detect_engine(self.base_url.removesuffix("/v1"))
        return self._engine

    @property
    def dry_window(self) -> int:
        """Tokens of context DRY searches when asked for all of it (`dry_penalty_last_n=-1`): a request's
        context (a managed server's, else the server's `n_ctx` from `GET /props`, asked once), else
        DRY_WINDOW_FALLBACK."""
        if self.context_tokens is None and self._props_context is None:
            self._props_context = llama_context_size(self.base_url.removesuffix("/v1")) or 0
        return self.context_tokens or self._props_context or DRY_WINDOW_FALLBACK

    def repetition_controls(self, repetition: Repetition) -> dict:
        """The request fields that carry `repetition` on this endpoint's engine (see the module docstring)."""
        r, out = repetition, {}
        if self.engine == "llama.cpp" and r.dry_multiplier > 0:
            out.update(dry_multiplier=r.dry_multiplier, dry_base=r.dry_base, dry_allowed_length=r.dry_allowed_length)
            # -1 (the whole context) is refused in a request, and the server's own default is the last 64 tokens,
            # which miss the earlier turns a role-player copies: the whole context is sent as its size.
            out["dry_penalty_last_n"] = r.dry_penalty_last_n if r.dry_penalty_last_n != -1 else self.dry_window
        if r.repetition_penalty != 1.0 and self.engine in ("llama.cpp", "vllm"):
            out["repeat_penalty" if self.engine == "llama.cpp" else "repetition_penalty"] = r.repetition_penalty
        if r.frequency_penalty:
            out["frequency_penalty"] = r.frequency_penalty
        return out

    def _client(self):
        import httpx
        import openai

        key = id(asyncio.get_running_loop())
        if key not in self._clients:
            http = httpx.AsyncClient(limits=httpx.Limits(max_connections=self.max_in_flight,
                                                         max_keepalive_connections=self.max_in_flight),
                                     timeout=self.timeout_s)
            api_key = self._api_key or os.environ.get("OPENAI_API_KEY", "EMPTY")
            client = openai.AsyncOpenAI(base_url=self.base_url, api_key=api_key,
                                        max_retries=0, http_client=http)
            self._clients[key] = (client, asyncio.Semaphore(self.max_in_flight))
        return self._clients[key]

    def request(self, messages: Sequence[Message], params: GenerationParams) -> dict:
        """The keyword arguments of one chat completion call."""
        body = dict(self.extra_body)
        kwargs: dict = {
            "model": self.model, "messages": list(messages), "max_tokens": params.max_new_tokens,
            "temperature": max(params.temperature, 0.0), "top_p": params.top_p if not params.greedy else 1.0,
        }
        if params.seed is not None:
            kwargs["seed"] = params.seed
        if params.stop:
            kwargs["stop"] = list(params.stop)
        if params.schema:
            kwargs["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "answer", "schema": json.loads(params.schema), "strict": True}}
        if params.banned:
            body["logit_bias"] = {str(i): -100 for i in self._ban(params.banned)}
        if self.slots and params.cache_key:
            body["id_slot"] = self._slot(params.cache_key)
        if params.session and (header := session_header()):
            kwargs["extra_headers"] = {header: params.session}
        if params.repetition.active:
            controls = self.repetition_controls(params.repetition)
            if "frequency_penalty" in controls:
                kwargs["frequency_penalty"] = controls.pop("frequency_penalty")
            body.update(controls)
        if body:
            kwargs["extra_body"] = body
        return kwargs

    async def agenerate(self, messages: Sequence[Message], params: GenerationParams, task: str) -> Completion:
        client, gate = self._client()
        if params.repetition.active and self._engine is None:
            await asyncio.to_thread(lambda: self.engine)
        if params.banned:
            await self._tokenize_banned(client, params.banned)
        async with gate:
            reply = await client.chat.completions.create(**self.request(messages, params))
        text = valid_unicode(reply_text(reply, params))
        usage = reply.usage
        timings = (reply.model_extra or {}).get("timings") or {}
        evaluated = timings.get("prompt_n")  # llama-server: prompt tokens processed, the cached rest not counted
        return Completion(text.strip(), _count(usage, "prompt_tokens"), _count(usage, "completion_tokens"),
                          int(evaluated) if evaluated is not None else None)

    @staticmethod
    def retry_after(exc: BaseException | None) -> float | None:
        """Seconds a refusal asks the client to wait (HTTP `Retry-After`, seconds or an HTTP date), or None."""
        response = getattr(exc, "response", None)
        header = response.headers.get("retry-after") if response is not None else None
        return retry_after_seconds(header)

    async def ascore_options(self, requests: Sequence[ScoreRequest]) -> list[list[float]]:
        """Option scores (`Model.ascore_options`) from llama-server's own API, exact to its float32 softmax.

        `/apply-template` renders each conversation with the server's chat template (generation prompt
        included); `/completion` with `n_predict: 1` and `n_probs` returns the next-token log-probabilities,
        from a softmax of the raw logits before any sampler, after that prompt and after each proper prefix of
        an option's tokens (the "1" of "10", sent as token ids after the text). A needed token outside the
        top `SCORE_TOP` is asked again with the whole vocabulary. Options are tokenised by the server's
        `/tokenize`. Needs llama-server (managed, or your own behind `openai:`); an endpoint without these
        routes (vLLM: not implemented) raises ModelSpecError.
        """
        import httpx

        root = self.base_url.removesuffix("/v1")
        gate = asyncio.Semaphore(self.max_in_flight)
        limits = httpx.Limits(max_connections=self.max_in_flight, max_keepalive_connections=self.max_in_flight)
        async with httpx.AsyncClient(base_url=root, timeout=self.timeout_s, limits=limits) as http:
            texts = sorted({o for _, options in requests for o in options})
            ids = dict(zip(texts, await asyncio.gather(*(self._server_tokens(http, gate, t) for t in texts))))
            return list(await asyncio.gather(*(
                self._score_one(http, gate, messages, [ids[o] for o in options]) for messages, options in requests)))

    async def _score_one(self, http, gate, messages: Sequence[Message], options: list[list[int]]) -> list[float]:
        prompt = await self._rendered(http, gate, messages)
        paths = [(), *sorted(prefixes_to_read(options))]
        wanted = [{seq[len(path)] for seq in options if len(seq) > len(path) and tuple(seq[:len(path)]) == path}
                  for path in paths]
        found = await asyncio.gather(*(self._next_logprobs(http, gate, prompt, path, need)
                                       for path, need in zip(paths, wanted)))
        return option_logprobs(dict(zip(paths, found)), options)

    async def _next_logprobs(self, http, gate, prompt: str, path: tuple[int, ...], need: set[int]) -> dict:
        """{token id: log-probability} of the next token after prompt + path, holding every token in `need`."""
        for n_probs in (SCORE_TOP, SCORE_ALL):
            body = {"prompt": [prompt, *path], "n_predict": 1, "n_probs": n_probs, "temperature": 0.0,
                    "cache_prompt": True, "post_sampling_probs": False}
            reply = await self._native(http, gate, "/completion", body, "completion_probabilities")
            top = reply["completion_probabilities"][0]["top_logprobs"]
            found = {int(t["id"]): float(t["logprob"]) for t in top}
            if need <= found.keys() or len(top) < n_probs:
                return found | {t: -float("inf") for t in need - found.keys()}
        raise AssertionError("unreachable: the whole vocabulary was asked for")

    async def acount_prompt_tokens(self, messages: Sequence[Message]) -> int:
        """Tokens of `messages` as llama-server renders them (`/apply-template`, then `/tokenize` with the special
        tokens the template writes); ModelSpecError for an endpoint without these routes."""
        import httpx

        gate = asyncio.Semaphore(1)
        async with httpx.AsyncClient(base_url=self.base_url.removesuffix("/v1"), timeout=self.timeout_s) as http:
            return len(await self._server_tokens(http, gate, await self._rendered(http, gate, messages), special=True))

    async def _rendered(self, http, gate, messages: Sequence[Message]) -> str:
        """`messages` as the server's chat template renders them, generation prompt included (`/apply-template`)."""
        return (await self._native(http, gate, "/apply-template", {"messages": list(messages)}, "prompt"))["prompt"]

    async def _server_tokens(self, http, gate, text: str, special: bool = False) -> list[int]:
        """The server's tokens of `text`; `special`: with the special tokens a rendered template writes."""
        body = {"content": text, "add_special": True, "parse_special": True} if special else \
            {"content": text, "add_special": False}
        return list((await self._native(http, gate, "/tokenize", body, "tokens"))["tokens"])

    async def _native(self, http, gate, route: str, body: dict, key: str) -> dict:
        """POST to one of llama-server's own routes; ModelSpecError for an endpoint that lacks it (an HTTP 404,
        405 or 501, or an answer without `key`)."""
        async with gate:
            response = await http.post(route, json=body)
        if response.status_code not in (404, 405, 501):
            response.raise_for_status()
            try:
                reply = response.json()
            except ValueError:
                reply = None
            if isinstance(reply, dict) and key in reply:
                return reply
        raise ModelSpecError(f"{self.base_url}: cannot score options: no llama-server {route} (HTTP "
                             f"{response.status_code}, no {key!r} in the answer); option scoring on servers needs "
                             "llama-server")

    def self_test(self) -> None:
        """Raise ModelSpecError unless the endpoint obeys a `json_schema` response format."""

        async def probe() -> str:
            params = GenerationParams(max_new_tokens=32, temperature=0.0, schema=json.dumps(SELF_TEST_SCHEMA))
            try:
                try:
                    reply = await self.agenerate([{"role": "user", "content": "Say hello."}], params, "self-test")
                except PermanentModelError:  # a reasoning model thinks first: give it room, once
                    params = replace(params, max_new_tokens=SELF_TEST_REASONING_TOKENS)
                    reply = await self.agenerate([{"role": "user", "content": "Say hello."}], params, "self-test")
            except PermanentModelError as exc:
                raise ModelSpecError(f"{self.base_url}: structured-output self-test: {exc}") from None
            except self.transient_errors as exc:
                raise ModelSpecError(f"{self.base_url}: endpoint not reachable ({type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0][:200]})") from None
            except Exception as exc:  # noqa: BLE001 - any refusal of the request is the endpoint's answer
                raise ModelSpecError(f"{self.base_url}: structured-output self-test failed "
                                     f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                                     "pass --unstructured for an endpoint that cannot constrain decoding") from None
            return reply.text

        try:  # in a thread of its own: the caller may be inside an event loop (a served graph)
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                text = pool.submit(asyncio.run, probe()).result()
        finally:
            self._clients.clear()  # they belong to the probe's loop, which is closed now
        try:
            ok = json.loads(text) == {"answer": SELF_TEST_VALUE}
        except json.JSONDecodeError:
            ok = False
        if not ok:
            raise ModelSpecError(f"{self.base_url}: ignored the json_schema response_format (answered {text[:60]!r}); "
                                 "pass --unstructured for an endpoint that cannot constrain decoding")

    async def _tokenize_banned(self, client, banned: tuple[str, ...]) -> None:
        """Token ids for banned strings from the server's own tokenizer (llama-server's or vLLM's
        `/tokenize`), fetched once per string (see `banned_token_ids`)."""
        import httpx

        root = self.base_url.removesuffix("/v1")
        async with httpx.AsyncClient(timeout=30) as http:
            for text in banned:
                if text in self._banned_ids:
                    continue
                pieces = {}
                for variant in (text, f" {text}"):
                    response = await http.post(f"{root}/tokenize", json={
                        "content": variant, "prompt": variant, "model": self.model, "add_special": False,
                        "add_special_tokens": False})
                    if response.status_code != 200:
                        raise ModelSpecError(f"{root}/tokenize: HTTP {response.status_code}; banning names needs "
                                             "a server with a tokenize endpoint (llama-server, vllm serve)")
                    pieces[variant] = response.json().get("tokens", [])
                self._banned_ids[text] = banned_token_ids([text], lambda variant: pieces[variant])

    def _slot(self, key: str) -> int:
        """The slot of a cache key: its own if it has one, else the least recently used slot."""
        if key in self._slot_of:
            self._slot_of.move_to_end(key)
            return self._slot_of[key]
        taken = set(self._slot_of.values())
        free = [s for s in range(self.slots) if s not in taken]
        slot = free[0] if free else self._slot_of.popitem(last=False)[1]
        self._slot_of[key] = slot
        return slot

    def _ban(self, banned: tuple[str, ...]) -> list[int]:
        return sorted({i for text in banned for i in self._banned_ids.get(text, [])})


def reply_text(reply, params: GenerationParams) -> str:
    """The answer in a chat completion, as servers send it.

    No choices, or a choice without a message: `MalformedReply` (retried). A null `content` beside a reasoning
    model's `reasoning_content` (vLLM's and llama-server's reasoning parsers): the answer is read there when it is
    the JSON object the schema asked for (some servers put a schema-constrained answer in the reasoning field);
    otherwise the model spent its budget thinking, and `PermanentModelError` says so and how to fix it."""
    choices = getattr(reply, "choices", None) or []
    message = getattr(choices[0], "message", None) if choices else None
    if message is None:
        raise MalformedReply("the server's reply has no choices" if not choices else
                             "the server's reply has a choice without a message")
    if message.content is not None:
        return message.content
    reasoning = getattr(message, "reasoning_content", None) or (message.model_extra or {}).get("reasoning_content")
    if not reasoning:
        return ""  # an empty answer: invalid against its shape, kept as such
    if params.schema and _is_json_object(reasoning):
        return reasoning
    finish = getattr(choices[0], "finish_reason", None)
    raise PermanentModelError(
        f"the model answered only in reasoning_content (finish_reason {finish}, content null): it spent its token "
        f"budget ({params.max_new_tokens}) reasoning; raise --max-new-tokens, or turn reasoning off on the server "
        "(vLLM: chat_template_kwargs enable_thinking=false; llama-server: --reasoning-budget 0)")


def detect_engine(root: str, timeout_s: float = 10.0) -> str:
    """The engine behind an OpenAI-compatible server root: "llama.cpp" when `GET /props` returns its
    `default_generation_settings`, "vllm" when `GET /version` returns a version, else "openai"."""
    import httpx

    probes = (("/props", "default_generation_settings", "llama.cpp"), ("/version", "version", "vllm"))
    try:
        with httpx.Client(base_url=root, timeout=timeout_s) as http:
            for route, key, engine in probes:
                response = http.get(route)
                try:
                    reply = response.json() if response.status_code == 200 else None
                except ValueError:
                    reply = None
                if isinstance(reply, dict) and key in reply:
                    return engine
    except httpx.HTTPError:
        pass
    return "openai"


def llama_context_size(root: str, timeout_s: float = 10.0) -> int | None:
    """A llama-server's context per slot (`GET /props` -> default_generation_settings.n_ctx), None when the
    server does not say."""
    import httpx

    try:
        with httpx.Client(base_url=root, timeout=timeout_s) as http:
            n_ctx = http.get("/props").json().get("default_generation_settings", {}).get("n_ctx")
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return n_ctx if isinstance(n_ctx, int) and n_ctx > 0 else None


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text.strip()), dict)
    except ValueError:
        return False


def _count(usage, key: str) -> int | None:
    value = getattr(usage, key, None) if usage is not None else None
    return int(value) if isinstance(value, int | float) else None


def retry_after_seconds(header: str | None) -> float | None:
    """An HTTP `Retry-After` value (RFC 9110 10.2.3: delay-seconds or an HTTP date) as seconds from now, or None."""
    if not header:
        return None
    text = header.strip()
    try:
        return max(float(text), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max((when - datetime.datetime.now(datetime.timezone.utc)).total_seconds(), 0.0)


def request_timeout() -> float:
    """Seconds one request may take, from CLCA_REQUEST_TIMEOUT_S (default 600); ModelSpecError if not a number > 0."""
    text = os.environ.get(ENV_TIMEOUT, "600")
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ModelSpecError(f"{ENV_TIMEOUT}={text!r}: expected a number of seconds above 0")
    return value


def session_header() -> str | None:
    """The header an episode's session goes out in: CLCA_SESSION_HEADER if set (empty: none), else X-Session-ID."""
    return os.environ.get(ENV_SESSION_HEADER, SESSION_HEADER) or None
