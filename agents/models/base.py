"""The seam every backend sits behind: decoding params, a completion, option scores, retries and usage counts.

Graphs talk only to `Model`. With `structured` on (the default), each request carries the JSON
schema of its answer shape and the backend's decoder enforces it; `Model.aanswer` then validates the
answer against the same shape. With it off (`--unstructured`), prompts ask for `KEY: value` lines and
`agents.freetext` reads them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol, Sequence

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from agents.answers import Answer, json_schema, parse_answer, token_budget
from agents.freetext import parse_labelled
from agents.model_identity import model_identity
from agents.records import Message

log = logging.getLogger(__name__)



# Every model spec `load_model` takes, as error messages and --model helps list them.
MODEL_SPECS = ("smollm2, smollm2-inprocess, gguf:PATH, a hub id (org/name) or a model folder, "
               "openai:MODEL@URL[,URL...], vllm:MODEL, puppet[:SECONDS]")


class ModelSpecError(ValueError):
    """A model spec that names nothing we can load, or an endpoint that cannot serve the run."""


class RepetitionError(ValueError):
    """A repetition-control text that names an unknown field or an out-of-range value; one line."""


@dataclass(frozen=True)
class Repetition:
    """Repetition controls sent with a request; the defaults are all off. Each engine applies what it has
    (`Model.repetition_controls` says what, per engine):

    - DRY ("Don't Repeat Yourself", p-e-w, llama.cpp's `dry_*` sampler): a candidate token that would extend a
      sequence already in the context by one more token, the match being `n` tokens long, loses
      `dry_multiplier * dry_base ** (n - dry_allowed_length)` from its logit once n >= dry_allowed_length; the
      match never crosses a sequence breaker (a token holding a newline, `:`, `"` or `*`: llama.cpp's defaults), so
      a JSON answer's own keys and quotes are not penalised. `dry_penalty_last_n` tokens of context are searched
      (-1: all of it; llama-server, whose own default is the last 64 tokens and which refuses -1, is sent its
      context size). llama-server and the in-process backend (`agents.models.hf`); vLLM has no DRY.
    - `repetition_penalty`: the CTRL penalty (Keskar et al. 2019) on every token already in the context: a
      positive logit divided by it, a negative one multiplied (1: off). llama-server `repeat_penalty` (last 64
      tokens), vLLM and transformers `repetition_penalty` (prompt and answer).
    - `frequency_penalty`: OpenAI's, subtracted once per earlier occurrence in the answer (0: off); every engine.

    Measured on SmolLM2 (docs/benchmarks.md): DRY at 0.8/1.75/2 stops the role-play loops with every answer
    valid; a token penalty also hits the JSON's own repeated tokens and cut the turns short.
    """

    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = -1
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0

    @property
    def active(self) -> bool:
        return self.dry_multiplier > 0 or self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0

    @classmethod
    def parse(cls, text: str) -> Repetition:
        """'none' (all off), 'dry' (DRY_DEFAULT), or comma-separated `field=value` pairs over those
        ('dry,repetition_penalty=1.05' starts from DRY_DEFAULT). RepetitionError names a bad part."""
        base, pairs = cls(), {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            if part.lower() in ("none", "off"):
                base = cls()
                continue
            if part.lower() == "dry":
                base = DRY_DEFAULT
                continue
            key, sep, value = part.partition("=")
            key = key.strip().replace("-", "_")
            kinds = {f.name: f.type for f in fields(cls)}
            if not sep or key not in kinds:
                raise RepetitionError(f"repetition {part!r}: expected none, dry or field=value with field one of "
                                      f"{', '.join(kinds)}")
            try:
                pairs[key] = int(value) if kinds[key] == "int" else float(value)
            except ValueError:
                raise RepetitionError(f"repetition {part!r}: {value.strip()!r} is not a number") from None
        out = replace(base, **pairs)
        if out.dry_multiplier < 0 or out.dry_base < 1 or out.dry_allowed_length < 1 or out.repetition_penalty <= 0 \
                or out.dry_penalty_last_n < -1 or not -2 <= out.frequency_penalty <= 2:
            raise RepetitionError(f"repetition {text!r}: out of range (dry_multiplier >= 0, dry_base >= 1, "
                                  "dry_allowed_length >= 1, dry_penalty_last_n >= -1, repetition_penalty > 0, "
                                  "frequency_penalty in [-2, 2])")
        return out

    def __str__(self) -> str:
        if not self.active:
            return "none"
        return ",".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self)
                        if getattr(self, f.name) != f.default or (self.dry_multiplier > 0 and f.name.startswith("dry")))


# The stages' default for role-play, observer and judge requests: llama-server's DRY values measured on SmolLM2.
DRY_DEFAULT = Repetition(dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=2)
DRY_DEFAULT_TEXT = "dry"
REPETITION_HELP = ("repetition controls: 'dry' (DRY 0.8/1.75/2, the default), 'none', or field=value,... over "
                   "dry_multiplier, dry_base, dry_allowed_length, dry_penalty_last_n, repetition_penalty, "
                   "frequency_penalty (vLLM has no DRY; see docs/reliability.md)")


@dataclass(frozen=True)
class GenerationParams:
    """Decoding settings; defaults follow the CLCA release (top_p 0.7, sampling on)."""

    max_new_tokens: int = 200
    temperature: float = 0.7
    top_p: float = 0.7
    seed: int | None = None
    # Free text only: the reply is forced to start with this text (returned as part of it). Small
    # models follow a labelled format far more reliably when its first token is given.
    prefix: str = ""
    # Generation ends at the first of these strings (cut from the reply).
    stop: tuple[str, ...] = ()
    # The answer's JSON schema (as JSON text: hashable, and the key compiled grammars are cached by).
    schema: str | None = None
    # Strings the model may not write (each token that spells one alone is banned): a seed's names.
    banned: tuple[str, ...] = ()
    # Requests with the same key continue one growing prompt (an episode's speaker or observer): an
    # engine with slots keeps them on one slot, so each turn processes only its new tokens.
    cache_key: str | None = None
    # Requests of one episode (its speakers' and observer's) share a session: several endpoints send them all to one
    # (its prefix cache), and a router in front of replicas reads it from the session header (`openai_compat`).
    session: str | None = None
    # Repetition controls (off by default; the role-play, observer and judge stages set theirs).
    repetition: Repetition = Repetition()  # noqa: RUF009 - frozen

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def constrained(self, schema: dict[str, Any]) -> GenerationParams:
        """These params with `schema` enforced and a token limit the longest allowed answer fits in;
        prefix and stop strings are free-text devices and are dropped."""
        return replace(self, schema=json.dumps(schema), max_new_tokens=token_budget(schema), prefix="", stop=())


class MalformedReply(Exception):
    """A server's answer without a reply in it (no choices, a null message): retried like a dropped connection."""


class PermanentModelError(Exception):
    """A request the endpoint will refuse however often it is sent (a prompt past the context, a 4xx other than
    408/409/429, a model that spends its whole budget reasoning): not retried; one line says why."""


@dataclass(frozen=True)
class Completion:
    text: str
    # None where the server did not say (a missing or null `usage` field): counted as unknown, never as 0.
    prompt_tokens: int | None
    completion_tokens: int | None
    # Prompt tokens the engine actually processed (the rest came from its cache); None when it does not say.
    prompt_evaluated: int | None = None


class ChatBackend(Protocol):
    """The seam: one chat conversation in, one completion out (backends batch concurrent calls)."""

    name: str
    transient_errors: tuple[type[BaseException], ...]

    async def agenerate(self, messages: Sequence[Message], params: GenerationParams, task: str) -> Completion: ...


# One option-scoring request: a chat conversation (the reply to come next) and the candidate replies.
ScoreRequest = tuple[Sequence[Message], Sequence[str]]


class ScoringBackend(ChatBackend, Protocol):
    """A backend that can also score options (`Model.ascore_options` says what a score is)."""

    async def ascore_options(self, requests: Sequence[ScoreRequest]) -> list[list[float]]: ...


@dataclass(frozen=True)
class Asked:
    """One model answer read into its shape: `answer` is None when it did not validate (`error` says why)."""

    raw: str
    answer: Answer | None
    error: str = ""


@dataclass
class Usage:
    calls: Counter = field(default_factory=Counter)
    prompt_tokens: Counter = field(default_factory=Counter)
    completion_tokens: Counter = field(default_factory=Counter)
    prompt_evaluated: Counter = field(default_factory=Counter)  # only from engines that report it
    invalid: Counter = field(default_factory=Counter)  # answers that did not validate against their shape
    unknown: Counter = field(default_factory=Counter)  # calls whose server sent no token counts
    retries: int = 0

    def add(self, task: str, completion: Completion) -> None:
        self.calls[task] += 1
        if completion.prompt_tokens is None or completion.completion_tokens is None:
            self.unknown[task] += 1
        self.prompt_tokens[task] += completion.prompt_tokens or 0
        self.completion_tokens[task] += completion.completion_tokens or 0
        if completion.prompt_evaluated is not None:
            self.prompt_evaluated[task] += completion.prompt_evaluated

    def totals(self) -> dict[str, int]:
        out = {
            "calls": sum(self.calls.values()),
            "prompt_tokens": sum(self.prompt_tokens.values()),
            "completion_tokens": sum(self.completion_tokens.values()),
            "invalid_answers": sum(self.invalid.values()),
            "retries": self.retries,
        }
        if self.prompt_evaluated:
            out["prompt_tokens_evaluated"] = sum(self.prompt_evaluated.values())
        if self.unknown:
            out["calls_without_token_counts"] = sum(self.unknown.values())
        return out


# The longest wait a server's `Retry-After` gets per retry: with 4 attempts a request waits at most 3 minutes.
MAX_RETRY_AFTER_S = 60.0


class Model:
    """What the graphs call. Wraps a backend with retry-with-backoff and per-task usage counts. `spec` is the spec
    it was loaded from (provenance), `identity` the model it names (`model_identity`: what stored keys use)."""

    def __init__(self, backend: ChatBackend, spec: str, max_attempts: int = 4, backoff_s: float = 0.5,
                 structured: bool = True):
        self.backend = backend
        self.spec = spec
        self.identity = model_identity(spec)
        self.structured = structured
        self.usage = Usage()
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s

    async def acomplete(self, messages: Sequence[Message], *, task: str,
                        params: GenerationParams | None = None) -> Completion:
        params = params or GenerationParams()
        async for attempt in self._retrying():
            with attempt:
                completion = await self.backend.agenerate(list(messages), params, task)
        self.usage.add(task, completion)
        return completion

    def repetition_controls(self, repetition: Repetition) -> dict[str, Any]:
        """The engine's own fields that carry `repetition` on this backend ({} where none apply): what a run
        records as applied. A control the engine lacks (DRY on vLLM) is absent."""
        if not repetition.active:
            return {}
        applied = getattr(self.backend, "repetition_controls", None)
        return dict(applied(repetition)) if applied else {}

    def endpoint_counts(self) -> dict[str, dict[str, int]] | None:
        """Per endpoint of a spec with several (`openai:M@URL1,URL2`): {URL: {"requests", "failed"}} so far; else
        None."""
        counts = getattr(self.backend, "endpoint_counts", None)
        return counts() if counts else None

    @property
    def context_tokens(self) -> int | None:
        """Tokens one request may hold, prompt and answer together, where the backend knows it (a managed
        llama-server: its context per slot); None where it does not."""
        return getattr(self.backend, "context_tokens", None)

    async def acount_prompt_tokens(self, messages: Sequence[Message]) -> int | None:
        """Tokens of `messages` rendered by the engine's chat template, where the backend can count them and knows
        its context (`context_tokens`); else None."""
        count = getattr(self.backend, "acount_prompt_tokens", None)
        return await count(list(messages)) if count is not None and self.context_tokens else None

    @property
    def scores_options(self) -> bool:
        """Whether the backend can score options (`ascore_options`)."""
        return callable(getattr(self.backend, "ascore_options", None))

    async def ascore_options(self, requests: Sequence[ScoreRequest], *, task: str) -> list[list[float]]:
        """Per request, per option: the natural-log probability that the model's reply begins with the option.

        The analogue of lm-evaluation-harness's loglikelihood and Concordia's `sample_choice`: a score is the sum
        of the log-probabilities of the option's tokens (tokenised on their own, after the conversation's
        generation prompt), not normalised by length nor over the options. One rule added for multiple choice:
        where an option's tokens begin another option's ("1" of "10"), the shorter option's probability also
        requires the reply to stop there, P("1") * (1 - P("0" | "1")), so the options are disjoint events whose
        probabilities sum to at most 1 (the rest is the mass the model put elsewhere). A probability of 0 is
        -inf. Requests sent together may share work (the in-process backend runs their common prefix once).
        Raises ModelSpecError, naming the spec, when the backend cannot score; ValueError for an empty option.
        """
        if not self.scores_options:
            raise ModelSpecError(f"model spec {self.spec!r}: cannot score options (its backend gives no token "
                                 "log-probabilities)")
        if any(not option for _, options in requests for option in options):
            raise ValueError("an option to score must not be empty")
        async for attempt in self._retrying():
            with attempt:
                scores = await self.backend.ascore_options([(list(m), list(o)) for m, o in requests])
        self.usage.calls[task] += len(requests)
        return scores

    def score_options(self, messages: Sequence[Message], options: Sequence[str], *, task: str = "score") -> list[float]:
        """Synchronous helper for scripts: `ascore_options` of one conversation."""
        return asyncio.run(self.ascore_options([(messages, options)], task=task))[0]

    async def achat(self, messages: Sequence[Message], *, task: str, params: GenerationParams | None = None) -> str:
        return (await self.acomplete(messages, task=task, params=params)).text

    async def aanswer(self, messages: Sequence[Message], shape: type[Answer], *, task: str, params: GenerationParams,
                      schema: dict[str, Any] | None = None) -> Asked:
        """Ask for one answer of `shape` (or of `schema`, a narrowed copy of its schema) and read it.

        Structured: the decoder enforces the schema, the reply is validated as JSON. Unstructured: the
        reply is read from `KEY: value` lines. Either way an answer that fails is returned with
        answer=None and counted, never defaulted.
        """
        if self.structured:
            params = params.constrained(schema or json_schema(shape))
        raw = await self.achat(messages, task=task, params=params)
        answer, error = parse_answer(raw, shape) if self.structured else parse_labelled(raw, shape)
        if answer is None:
            self.usage.invalid[task] += 1
        return Asked(raw, answer, error)

    def chat_many(
        self, conversations: Sequence[Sequence[Message]], *, task: str, params: GenerationParams | None = None
    ) -> list[str]:
        """Synchronous batch helper for scripts: all conversations go out concurrently."""

        async def run() -> list[str]:
            return list(await asyncio.gather(*(self.achat(c, task=task, params=params) for c in conversations)))

        return asyncio.run(run())

    def _wait(self, state) -> float:
        """Seconds before the next attempt: what the server asked for (`Retry-After`, read by the backend's
        `retry_after`), at most MAX_RETRY_AFTER_S, else exponential backoff (at most 30 s)."""
        asked = getattr(self.backend, "retry_after", lambda exc: None)(state.outcome.exception())
        if asked is not None:
            return min(max(asked, 0.0), MAX_RETRY_AFTER_S)
        return wait_exponential(multiplier=self._backoff_s, max=30)(state)

    def _retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            stop=stop_after_attempt(self._max_attempts),
            wait=self._wait,
            retry=retry_if_exception_type(self.backend.transient_errors),
            before_sleep=self._count_retry,
            reraise=True,
        )

    def _count_retry(self, state) -> None:
        self.usage.retries += 1
        log.warning("transient model error (%s); retry %d", state.outcome.exception(), state.attempt_number)


def banned_token_ids(banned: Sequence[str], tokenize) -> list[int]:
    """Token ids that keep a model from writing any of `banned` (names), given the engine's `tokenize`.

    Each string is tried with and without a leading space. A string that is one token is banned as that
    token. A longer one is banned by its last token, which the model cannot write to finish the name
    ("Finnegan" -> "Fin" + "negan": "negan" goes); for names of fewer than five characters the last piece
    is too common a fragment to ban, so those are left to validation."""
    ids: set[int] = set()
    for text in banned:
        for variant in (text, f" {text}"):
            tokens = list(tokenize(variant))
            if len(tokens) == 1 or (len(tokens) > 1 and len(text) >= 5):
                ids.add(int(tokens[-1]))
    return sorted(ids)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text before the first stop string (generation stops after it, so it is still there)."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[: min(cuts)] if cuts else text


# Credentials never travel in a model spec: a spec is stored with every run, episode, result and card.
# The shapes of the keys people point OpenAI-compatible clients at (OpenAI, Anthropic, Hugging Face, Groq, Google)
# and any credential a URL can carry (user:password@, ?api_key=).
_KEY_SHAPES = re.compile(r"(?<![A-Za-z0-9])(sk-[A-Za-z0-9_-]{20,}|sk_[A-Za-z0-9_-]{20,}|hf_[A-Za-z0-9]{30,}"
                         r"|gsk_[A-Za-z0-9]{40,}|AIza[A-Za-z0-9_-]{35})")
_URL_CREDENTIALS = re.compile(r"://[^/?#\s]*@|[?&;](api[_-]?key|key|token|access[_-]?token|secret|password|sig)=",
                              re.IGNORECASE)


def refuse_credentials(spec: str) -> None:
    """ModelSpecError, without repeating the spec, if it carries what looks like an API key or URL credentials;
    keys come only from the environment (OPENAI_API_KEY)."""
    if _KEY_SHAPES.search(spec) or _URL_CREDENTIALS.search(spec):
        raise ModelSpecError("model spec: it holds what looks like an API key or URL credentials, which would be "
                             "stored with every result; set OPENAI_API_KEY in the environment instead")
