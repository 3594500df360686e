"""In-process transformers backend: hub ids, local folders, LoRA adapters, `smollm2-inprocess`.

Option scoring (`ascore_options`) reads next-token log-probabilities from forward passes; prompts scored
together run the prefix they share once (a persona's system turn, not once per question).
Concurrent requests share one batched `generate` call. Each row keeps its own temperature/top-p, token
limit, stop strings and answer schema: xgrammar compiles the schema to a grammar (cached per schema)
and masks every row's next-token scores with its own grammar, so the answer's shape is certain
whatever the model. Prompts are prefilled from the longest cached prefix (`prefix_cache`).

Repetition controls (`GenerationParams.repetition`) are applied per row by `_RowRepetition`, before the grammar's
mask: DRY as llama.cpp defines it (transformers 5 has no DRY processor), the CTRL `repetition_penalty` and
OpenAI's `frequency_penalty`. All three lower scores by finite amounts, so a token the grammar requires stays
possible. transformers' `no_repeat_ngram_size` is not offered: it bans (-inf) any token that completes an n-gram
already in the context, which includes the prompt's own JSON skeletons, so it can leave a grammar-constrained
row with no allowed token at all.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Sequence

from agents.models.base import (
    Completion,
    GenerationParams,
    Message,
    Repetition,
    ScoreRequest,
    banned_token_ids,
    cut_at_stop,
)
from agents.models.batching import BatchingBackend, batch_seed
from agents.models.loading import base_config, load_causal_lm
from agents.models.scoring import common_prefix_len, option_logprobs, prefixes_to_read


@functools.lru_cache(maxsize=4)
def load_hf(spec: str, adapter: str | None = None, load_in_4bit: bool = False):
    """(model, tokenizer) for inference (`load_causal_lm`), cached so agents and readers share one copy."""
    loaded = load_causal_lm(spec, adapter=adapter, quantization="4bit" if load_in_4bit else None)
    return loaded.model, loaded.tokenizer


class HFBackend(BatchingBackend):
    """In-process transformers model: batched `generate` over prompts whose start is already cached.

    Each prompt is prefilled alone from the longest cached prefix (`agents.models.prefix_cache`); the
    batch then decodes together, which is where batching pays. Every finished prompt + reply is cached
    for the turn after. Models whose cache is not one plain key/value tensor per layer and token
    (sliding windows, linear attention) are run without reuse.
    """

    cache_bytes = 2 * 2**30  # keys/values kept for reuse
    share_prefix = True  # option scoring: run the prefix a call's prompts share once (off: every prompt whole)

    def __init__(self, spec: str, adapter: str | None = None, load_in_4bit: bool = False, max_batch: int = 8):
        super().__init__(max_batch)
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        from agents.models.prefix_cache import PrefixCache

        self.name = spec
        self.model, self.tokenizer = load_hf(spec, adapter, load_in_4bit)
        self.device = next(self.model.parameters()).device
        layers = DynamicCache(config=base_config(self.model)).layers
        reusable = all(type(layer) is DynamicLayer for layer in layers)
        self.prefix_cache = PrefixCache(self.cache_bytes) if reusable else None
        self._compiler = None
        self._grammars: dict[str, object] = {}
        self._breakers: frozenset[int] | None = None

    @staticmethod
    def repetition_controls(repetition: Repetition) -> dict:
        """What `_RowRepetition` applies of `repetition`: every field (DRY included)."""
        return {k: v for k, v in vars(repetition).items()
                if (k.startswith("dry") and repetition.dry_multiplier > 0)
                or (k == "repetition_penalty" and v != 1.0) or (k == "frequency_penalty" and v)}

    def _sequence_breakers(self) -> frozenset[int]:
        """Token ids whose text holds one of DRY_BREAKERS (computed once per tokenizer)."""
        if self._breakers is None:
            vocab = len(self.tokenizer)
            texts = self.tokenizer.batch_decode([[i] for i in range(vocab)])
            self._breakers = frozenset(i for i, t in enumerate(texts) if any(b in t for b in DRY_BREAKERS))
        return self._breakers

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
        processors = []
        if any(p.banned for p in params):
            processors.append(_RowBans([self._banned_ids(p.banned) for p in params]))
        if any(p.repetition.active for p in params):  # finite penalties, before the grammar's mask
            processors.append(_RowRepetition([p.repetition for p in params], [width - len(r) for r in rows], width,
                                             self._sequence_breakers()))
        if any(p.schema for p in params):  # before sampling: the grammar decides what may be sampled
            processors.append(_RowGrammar([self._grammar(p.schema) if p.schema else None for p in params],
                                          base_config(self.model).vocab_size, width))
        with torch.inference_mode():
            # All but each prompt's last token go into the cache; `generate` feeds the last one.
            reuse = {} if self.prefix_cache is None else {
                "cache": self._left_padded([self._prefill(r[:-1]) for r in rows], [width - len(r) for r in rows])}
            input_ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows], device=self.device)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
            if seeds:  # one draw stream per batch, fixed by its members' seeds
                torch.manual_seed(batch_seed(seeds))
            sampling = {"do_sample": False} if all(p.greedy for p in params) else {
                "do_sample": True, "temperature": 1.0, "top_p": 1.0}
            if sampling["do_sample"]:
                processors.append(_RowSampling(params))
            out = self.model.generate(
                input_ids=input_ids, attention_mask=mask, **reuse,
                max_new_tokens=max(p.max_new_tokens for p in params), logits_processor=processors,
                stopping_criteria=[_RowEnds(params, width, tok)], pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id, return_dict_in_generate=True, **sampling,
            )
        replies = [_trim(g, tok.pad_token_id)[:p.max_new_tokens]
                   for g, p in zip(out.sequences[:, width:].tolist(), params)]
        if reuse:
            self._keep(rows, replies, out.cache, width)
        # U+FFFD stands for bytes that are not valid UTF-8 (a grammar that reads codepoints can let
        # through a surrogate's three bytes, which decode to three of them): they carry no text.
        texts = [p.prefix + cut_at_stop(tok.decode(g, skip_special_tokens=True).replace("\ufffd", ""), p.stop)
                 for g, p in zip(replies, params)]
        return [Completion(t.strip(), len(r), len(g)) for t, r, g in zip(texts, rows, replies)]

    async def ascore_options(self, requests: Sequence[ScoreRequest]) -> list[list[float]]:
        """Scores as `Model.ascore_options` defines them; forward passes in batches of `max_batch` prompts."""
        return await asyncio.to_thread(self._score, requests)

    def _score(self, requests: Sequence[ScoreRequest]) -> list[list[float]]:
        import torch

        tok = self.tokenizer
        ids = [list(tok.apply_chat_template(list(m), add_generation_prompt=True, tokenize=True)["input_ids"])
               for m, _ in requests]
        options = [[tok.encode(o, add_special_tokens=False) for o in opts] for _, opts in requests]
        with torch.inference_mode():
            roots = self._next_token_logprobs(ids)
            inner = [(i, path) for i in range(len(requests)) for path in prefixes_to_read(options[i])]
            extra = self._plain_logprobs([ids[i] + list(path) for i, path in inner]) if inner else []
        after = [{(): roots[i]} for i in range(len(requests))]
        for (i, path), row in zip(inner, extra):
            after[i][path] = row
        return [option_logprobs(after[i], options[i]) for i in range(len(requests))]

    def _next_token_logprobs(self, ids: list[list[int]]):
        """Log-probabilities of the next token after each sequence, as a [n, vocab] tensor."""
        prefix_len = common_prefix_len(ids) if self.share_prefix and len(ids) > 1 else 0
        prefix_len = min(prefix_len, min(len(x) for x in ids) - 1)  # every suffix keeps a token
        if prefix_len < 1:
            return self._plain_logprobs(ids)
        return self._shared_prefix_logprobs(ids[0][:prefix_len], [x[prefix_len:] for x in ids])

    def _plain_logprobs(self, ids: list[list[int]]):
        """Next-token log-probabilities after each whole sequence ([n, vocab]), left-padded batches."""
        import torch

        rows = []
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(ids), self.max_batch):
            chunk = ids[start:start + self.max_batch]
            width = max(len(x) for x in chunk)
            input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in chunk], device=self.device)
            mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in chunk], device=self.device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding must not shift positions
            logits = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                                logits_to_keep=1).logits[:, -1]
            rows.append(torch.log_softmax(logits.float(), dim=-1).cpu())
        return torch.cat(rows)

    def _shared_prefix_logprobs(self, prefix: list[int], suffixes: list[list[int]]):
        """Next-token log-probabilities after prefix + each suffix ([n, vocab]): the prefix runs once and
        its keys/values are shared by every row."""
        import torch
        from transformers import DynamicCache

        prefix_out = self.model(input_ids=torch.tensor([prefix], device=self.device), use_cache=True)
        layers = prefix_out.cache.layers
        rows = []
        pad, p = self.tokenizer.pad_token_id, len(prefix)
        for start in range(0, len(suffixes), self.max_batch):
            chunk = suffixes[start:start + self.max_batch]
            b, width = len(chunk), max(len(x) for x in chunk)
            cache = DynamicCache(config=base_config(self.model))
            for li, layer in enumerate(layers):
                cache.update(layer.keys.expand(b, -1, -1, -1), layer.values.expand(b, -1, -1, -1), li)
            # suffixes are right-padded: real tokens sit right after the prefix, pads come last
            input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in chunk], device=self.device)
            suffix_mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in chunk], device=self.device)
            mask = torch.cat([torch.ones(b, p, dtype=suffix_mask.dtype, device=self.device), suffix_mask], dim=1)
            positions = torch.arange(p, p + width, device=self.device).expand(b, width)
            # the vocabulary projection only at each row's last real token, not at every position
            last = [len(x) - 1 for x in chunk]
            keep = sorted(set(last))
            logits = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache,
                                logits_to_keep=torch.tensor(keep, device=self.device)).logits
            picked = logits[torch.arange(b, device=self.device), torch.tensor([keep.index(j) for j in last])]
            rows.append(torch.log_softmax(picked.float(), dim=-1).cpu())
        return torch.cat(rows)

    def _grammar(self, schema: str):
        """The compiled grammar of a JSON schema, compiled once per backend and schema.

        No free whitespace between tokens: with it, xgrammar lets a model loop on spaces until the
        token limit (seen with vLLM's xgrammar JSON)."""
        if schema not in self._grammars:
            import xgrammar as xgr

            if self._compiler is None:
                info = xgr.TokenizerInfo.from_huggingface(
                    self.tokenizer, vocab_size=base_config(self.model).vocab_size,
                    stop_token_ids=[self.tokenizer.eos_token_id])
                self._compiler = xgr.GrammarCompiler(info)
            self._grammars[schema] = self._compiler.compile_json_schema(_bounded_strings(json.loads(schema)),
                                                                         any_whitespace=False)
        return self._grammars[schema]

    def _banned_ids(self, banned: tuple[str, ...]) -> list[int]:
        return banned_token_ids(banned, lambda text: self.tokenizer.encode(text, add_special_tokens=False))

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


def _bounded_strings(node):
    """The schema without `pattern` on strings that have a `maxLength`, as JSON text for xgrammar.

    xgrammar ignores maxLength beside a pattern, and compiles a bounded pattern (`[^"]{0,299}`) into a
    mask that took 21 ms per row and token here, against 0.01 ms for the same string bounded by
    maxLength alone (bench/structured.py); the length bound is what keeps an answer closing in time."""
    if isinstance(node, dict):
        keep = {k: _bounded_strings(v) for k, v in node.items()}
        if "maxLength" in keep and "pattern" in keep:
            del keep["pattern"]
        return keep
    if isinstance(node, list):
        return [_bounded_strings(v) for v in node]
    return node


class _RowGrammar:
    """Per-row constrained decoding: row i's scores are masked by its own grammar (None: unconstrained).

    A new instance per `generate` call, as its matchers follow that call's rows token by token."""

    def __init__(self, grammars: list, vocab_size: int, width: int):
        import xgrammar as xgr

        self.matchers = [xgr.GrammarMatcher(g) if g is not None else None for g in grammars]
        self.bitmask = xgr.allocate_token_bitmask(len(grammars), vocab_size)
        self.width = width

    def __call__(self, input_ids, scores):
        import xgrammar as xgr

        generated = input_ids.shape[1] > self.width
        active = []
        for i, matcher in enumerate(self.matchers):
            if matcher is None or matcher.is_terminated():
                continue  # a finished row's scores are ignored: `generate` pads it
            if generated and not matcher.accept_token(int(input_ids[i, -1])):
                self.matchers[i] = None  # cannot happen under the mask; leave the row to fail validation
                continue
            if matcher.is_terminated():
                continue
            matcher.fill_next_token_bitmask(self.bitmask, i)
            active.append(i)
        if active:
            xgr.apply_token_bitmask_inplace(scores, self.bitmask.to(scores.device), indices=active)
        return scores


# llama.cpp's default DRY sequence breakers (common/common.h): a match never runs across a token holding one.
DRY_BREAKERS = ("\n", ":", '"', "*")
DRY_MAX_MATCH = 64  # tokens a DRY match is followed back at most (keeps the penalty finite and the search short)


def dry_matches(tokens: Sequence[int], breakers: frozenset[int], last_n: int = -1) -> dict[int, int]:
    """{next token: length of the longest suffix of `tokens` that occurred before and was followed by it}.

    The DRY search (p-e-w, as in llama.cpp's sampler): for every earlier occurrence of the last token, the
    match is followed back while the tokens before it agree with the context's own, stopping at a sequence
    breaker and at DRY_MAX_MATCH; a breaker never starts or follows a match. `last_n` limits the search to the
    last tokens (-1: all)."""
    import numpy as np

    ctx = np.asarray(tokens[-last_n:] if last_n > 0 else tokens)
    n = len(ctx)
    if n < 2 or int(ctx[-1]) in breakers:
        return {}
    found: dict[int, int] = {}
    for i in np.flatnonzero(ctx[:-1] == ctx[-1]).tolist():
        following = int(ctx[i + 1])
        if following in breakers:
            continue
        length = 1
        while length <= i and length < DRY_MAX_MATCH and ctx[i - length] == ctx[n - 1 - length] \
                and int(ctx[i - length]) not in breakers:
            length += 1
        found[following] = max(found.get(following, 0), length)
    return found


class _RowRepetition:
    """Per-row repetition controls (`Repetition`): DRY, the CTRL repetition penalty over the whole context, and
    OpenAI's frequency penalty over the answer so far. Left padding (`pads[i]` tokens) is not context."""

    def __init__(self, controls: list[Repetition], pads: list[int], width: int, breakers: frozenset[int]):
        self.controls, self.pads, self.width, self.breakers = controls, pads, width, breakers

    def __call__(self, input_ids, scores):
        import torch

        for i, r in enumerate(self.controls):
            if not r.active:
                continue
            row = input_ids[i, self.pads[i]:]
            if r.repetition_penalty != 1.0:
                seen = torch.unique(row)
                picked = scores[i, seen]
                scores[i, seen] = torch.where(picked > 0, picked / r.repetition_penalty, picked * r.repetition_penalty)
            if r.frequency_penalty:
                answer = input_ids[i, self.width:]
                if answer.numel():
                    counts = torch.bincount(answer, minlength=scores.shape[1])[:scores.shape[1]]
                    scores[i] -= r.frequency_penalty * counts.to(scores.dtype)
            if r.dry_multiplier > 0:
                for token, length in dry_matches(row.tolist(), self.breakers, r.dry_penalty_last_n).items():
                    if length >= r.dry_allowed_length and token < scores.shape[1]:
                        scores[i, token] -= r.dry_multiplier * r.dry_base ** (length - r.dry_allowed_length)
        return scores


class _RowBans:
    """Per-row banned tokens (a seed's names while adapting it)."""

    def __init__(self, banned: list[list[int]]):
        self.banned = banned

    def __call__(self, input_ids, scores):
        for i, ids in enumerate(self.banned):
            if ids:
                scores[i, ids] = float("-inf")
        return scores


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
