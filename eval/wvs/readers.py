"""Two ways to read a model's answer to a survey item.

- `LogprobReader` (a model whose backend scores options, `Model.ascore_options`): the probability of
  each option's label ("1", "2", ..., or "A", "B", ... in the letters format) as the first thing the assistant
  says. Multi-token labels such as "10" are scored token by token, and a label that is a prefix of another
  ("1" of "10") also needs the answer to stop there: P("1") = P(first "1") * (1 - P(next "0" | "1")). The
  distribution is renormalised over the options; the mass the model put elsewhere is reported as
  `off_option_mass`. A unit's prompts are scored in one call, so the backend runs the system turn they share
  once per persona, not once per question.
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
from agents.models import GenerationParams, Model
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

    def __init__(self, model: Model):
        self.model = model

    def read(self, systems: list[str | None], items: list[Item], questions: list[str]) -> list[ItemAnswers]:
        out = [ItemAnswers(np.zeros((len(systems), len(it.codes) + 1)), np.full(len(systems), INVALID),
                           np.zeros(len(systems))) for it in items]
        for u, system in enumerate(systems):
            # one call per unit: its prompts share the system turn, which the backend runs once
            requests = [(conversation(system, q), list(it.shown_labels)) for q, it in zip(questions, items)]
            scores = asyncio.run(self.model.ascore_options(requests, task="wvs"))
            for i, item in enumerate(items):
                probs = np.exp(np.array(scores[i]))
                mass = probs.sum()
                out[i].off_option_mass[u] = 1.0 - mass
                if mass > 0:
                    out[i].rows[u, :-1] = probs / mass
                    out[i].codes[u] = item.codes[int(probs.argmax())]
                else:
                    out[i].rows[u, -1] = 1.0
        return out


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
