"""The third way to read an answer: the model states the answer distribution (`--method distribution`).

Meister et al. (NAACL 2025, "Benchmarking distributional alignment of large language models") find
that models state a group's opinion distribution more faithfully than their sampled answers or
option log-probabilities reveal it. Here the model is asked (`wvs_distribution.j2`) for the
percentage of people in the country choosing each option, decoded under a schema built from the
item (`agents.answers.wvs_shares_schema`: one number 0..100 per shown label, every label
required), on every backend, structured as every other answer. The shares are normalised to sum
to 1; an answer that does not validate, or whose shares are all zero, is INVALID (the unit's row
is all INVALID), never defaulted.

Units are as for `generate`: one stated distribution per persona or per sample. A unit's single
answer (for individual accuracy) is its largest share.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np

from agents.answers import WVSShares, token_budget, wvs_shares_schema
from agents.models import GenerationParams, Model
from eval.wvs.items import Item
from eval.wvs.parse import INVALID
from eval.wvs.readers import ItemAnswers, conversation


class DistributionReader:
    method = "distribution"

    def __init__(self, model: Model, params: GenerationParams):
        self.model, self.params = model, params

    def read(self, systems: list[str | None], items: list[Item], questions: list[str]) -> list[ItemAnswers]:
        """Per item, rows [units, options + 1] of stated shares in the item's (shown) option order."""
        asked = asyncio.run(self._ask([(conversation(s, q), item) for s in systems for q, item in zip(questions, items)]))
        out = []
        for i, item in enumerate(items):
            per_unit = asked[i::len(items)]
            rows = np.zeros((len(systems), len(item.codes) + 1))
            codes = np.full(len(systems), INVALID)
            for u, (_, shares) in enumerate(per_unit):
                if shares is None:
                    rows[u, -1] = 1.0
                else:
                    rows[u, :-1] = shares
                    codes[u] = item.codes[int(np.argmax(shares))]
            out.append(ItemAnswers(rows, codes, texts=[text for text, _ in per_unit]))
        return out

    async def _ask(self, requests: list[tuple[list[dict[str, str]], Item]]) -> list[tuple[str, np.ndarray | None]]:
        """(answer text, normalised shares in shown order, or None when invalid) per request, all sent at once."""

        async def one(messages: list[dict[str, str]], item: Item) -> tuple[str, np.ndarray | None]:
            labels = list(item.shown_labels)
            schema = wvs_shares_schema(labels)
            params = replace(self.params, max_new_tokens=max(self.params.max_new_tokens, token_budget(schema)))
            asked = await self.model.aanswer(messages, WVSShares, task="wvs", params=params, schema=schema)
            return asked.raw, stated_shares(asked.answer, labels)

        return list(await asyncio.gather(*(one(m, item) for m, item in requests)))


def stated_shares(answer: WVSShares | None, labels: list[str]) -> np.ndarray | None:
    """[options] shares summing to 1 from a validated answer, in `labels` order; None for an answer that is
    missing, names other labels than the item's, or puts nothing on any option."""
    if answer is None or set(answer.shares) != set(labels):
        return None
    x = np.array([answer.shares[label] for label in labels], dtype=float)
    return x / x.sum() if x.sum() > 0 else None
