"""Two ways to read a model's answer to a survey item.

- `LogprobReader` (in-process transformers models): the probability of each option's label
  ("1", "2", ..., or "A", "B", ... in the letters format) as the first thing the assistant says. Multi-token labels such as "10" are scored
  token by token, and a label that is a prefix of another ("1" of "10") also needs the answer to
  stop there: P("1") = P(first "1") * (1 - P(next "0" | "1")). The distribution is renormalised over
  the options; the mass the model put elsewhere is reported as `off_option_mass`. All prompts
  that share a system turn share its key/value cache: the prefix is run once per persona, not once
  per question.
- `GenerateReader` (any model spec): the model writes an answer (greedy unless a temperature is
  given). Structured (the default): the decoder may only write `{"answer": <one of the item's codes>}`
  (`agents.answers.wvs_schema`). Free text (`--unstructured`): `parse.parse_answer` reads a code out of
  it or returns INVALID.

Both return, per item, one row per unit (persona or sample) over the options plus an INVALID bin.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from agents.answers import WVSAnswer, WVSLabelAnswer, wvs_label_schema, wvs_schema
from agents.models import GenerationParams, Model, base_config, load_hf
from eval.wvs.items import Item
from eval.wvs.parse import INVALID, parse_answer


@dataclass
class ItemAnswers:
    rows: np.ndarray  # [units, options + 1]: each row sums to 1; the last column is INVALID
    codes: np.ndarray  # [units]: the unit's single answer (argmax or parsed code), INVALID = -1
    off_option_mass: np.ndarray | None = None  # [units], logprob only
    texts: list[str] | None = None  # generate only


def conversation(system: str | None, question: str) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": question}]


class LogprobReader:
    method = "logprob"

    def __init__(self, spec: str, adapter: str | None = None, batch_size: int = 16, reuse_prefix: bool = True):
        self.model, self.tokenizer = load_hf(spec, adapter, False)  # same cache key as load_model
        self.batch_size = batch_size
        self.reuse_prefix = reuse_prefix
        self.device = next(self.model.parameters()).device

    def read(self, systems: list[str | None], items: list[Item], questions: list[str]) -> list[ItemAnswers]:
        import torch

        labels = [[self.tokenizer.encode(label, add_special_tokens=False) for label in it.shown_labels] for it in items]
        out = [ItemAnswers(np.zeros((len(systems), len(it.codes) + 1)), np.full(len(systems), INVALID),
                           np.zeros(len(systems))) for it in items]
        with torch.inference_mode():
            for u, system in enumerate(systems):
                ids = [self._ids(conversation(system, q)) for q in questions]
                roots = self._next_token_logprobs(ids)
                inner = [(i, path) for i in range(len(items)) for path in _inner_paths(labels[i])]
                extra = self._plain_logprobs([ids[i] + list(path) for i, path in inner]) if inner else []
                cond = {(i, ()): roots[i] for i in range(len(items))} | dict(zip(inner, extra))
                for i, item in enumerate(items):
                    probs = np.array([_label_prob(cond, i, seq, labels[i]) for seq in labels[i]])
                    mass = probs.sum()
                    out[i].off_option_mass[u] = 1.0 - mass
                    if mass > 0:
                        out[i].rows[u, :-1] = probs / mass
                        out[i].codes[u] = item.codes[int(probs.argmax())]
                    else:
                        out[i].rows[u, -1] = 1.0
        return out

    def _ids(self, messages: list[dict[str, str]]) -> list[int]:
        return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"])

    def _next_token_logprobs(self, ids: list[list[int]]):
        """Log-probabilities of the next token after each sequence, as a [n, vocab] tensor."""
        prefix_len = _common_prefix_len(ids) if self.reuse_prefix and len(ids) > 1 else 0
        prefix_len = min(prefix_len, min(len(x) for x in ids) - 1)  # every suffix keeps a token
        if prefix_len < 1:
            return self._plain_logprobs(ids)
        return self._shared_prefix_logprobs(ids[0][:prefix_len], [x[prefix_len:] for x in ids])

    def _plain_logprobs(self, ids: list[list[int]]):
        import torch

        rows = []
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(ids), self.batch_size):
            chunk = ids[start:start + self.batch_size]
            width = max(len(x) for x in chunk)
            input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in chunk], device=self.device)
            mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in chunk], device=self.device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding must not shift positions
            logits = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                                logits_to_keep=1).logits[:, -1]
            rows.append(torch.log_softmax(logits.float(), dim=-1).cpu())
        return torch.cat(rows)

    def _shared_prefix_logprobs(self, prefix: list[int], suffixes: list[list[int]]):
        import torch
        from transformers import DynamicCache

        prefix_out = self.model(input_ids=torch.tensor([prefix], device=self.device), use_cache=True)
        layers = prefix_out.cache.layers
        rows = []
        pad, p = self.tokenizer.pad_token_id, len(prefix)
        for start in range(0, len(suffixes), self.batch_size):
            chunk = suffixes[start:start + self.batch_size]
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


class GenerateReader:
    method = "generate"

    def __init__(self, model: Model, params: GenerationParams, rules: str = "paper"):
        self.model, self.params, self.rules = model, params, rules

    def read(self, systems: list[str | None], items: list[Item], questions: list[str]) -> list[ItemAnswers]:
        asked = asyncio.run(self._ask([(conversation(s, q), item) for s in systems for q, item in zip(questions, items)]))
        texts = [text for text, _ in asked]
        out = []
        for i, item in enumerate(items):
            item_texts = texts[i::len(items)]
            codes = np.array([code for _, code in asked[i::len(items)]])
            rows = np.zeros((len(systems), len(item.codes) + 1))
            for u, code in enumerate(codes):
                rows[u, item.codes.index(code) if code != INVALID else -1] = 1.0
            out.append(ItemAnswers(rows, codes, texts=item_texts))
        return out

    async def _ask(self, requests: list[tuple[list[dict[str, str]], Item]]) -> list[tuple[str, int]]:
        """(answer text, code or INVALID) per request, all sent at once."""

        async def one(messages: list[dict[str, str]], item: Item) -> tuple[str, int]:
            if not self.model.structured:
                text = await self.model.achat(messages, task="wvs", params=self.params)
                return text, parse_answer(text, item, self.rules)
            if item.labels is not None:  # shown with letters (eval.wvs.formats): the answer is a label
                asked = await self.model.aanswer(messages, WVSLabelAnswer, task="wvs", params=self.params,
                                                 schema=wvs_label_schema(list(item.labels)))
                label = asked.answer.answer if asked.answer is not None else None
                return asked.raw, item.codes[item.labels.index(label)] if label in item.labels else INVALID
            asked = await self.model.aanswer(messages, WVSAnswer, task="wvs", params=self.params,
                                             schema=wvs_schema(list(item.codes)))
            code = asked.answer.answer if asked.answer is not None else INVALID
            return asked.raw, code if code in item.codes else INVALID

        return list(await asyncio.gather(*(one(m, item) for m, item in requests)))


# ---------------------------------------------------------------- label scoring helpers


def _inner_paths(label_seqs: list[list[int]]) -> set[tuple[int, ...]]:
    """Non-empty proper prefixes of label token sequences: where a next-token distribution is needed."""
    return {tuple(seq[:k]) for seq in label_seqs for k in range(1, len(seq))}


def _label_prob(cond: dict, item: int, seq: list[int], all_seqs: list[list[int]]) -> float:
    logp = sum(float(cond[(item, tuple(seq[:k]))][tok]) for k, tok in enumerate(seq))
    prob = float(np.exp(logp))
    continuations = {s[len(seq)] for s in all_seqs if len(s) > len(seq) and s[:len(seq)] == seq}
    if continuations:  # the answer must stop here, not go on to a longer label
        nxt = cond[(item, tuple(seq))]
        prob *= max(0.0, 1.0 - sum(float(np.exp(nxt[t])) for t in continuations))
    return prob


def _common_prefix_len(seqs: list[list[int]]) -> int:
    first, n = seqs[0], min(len(s) for s in seqs)
    for k in range(n):
        if any(s[k] != first[k] for s in seqs):
            return k
    return n

