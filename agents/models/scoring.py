"""Option scores from next-token log-probabilities, the rule every scoring backend shares.

A backend finds, for each conversation, the next-token log-probabilities after the generation prompt and
after each proper prefix of an option's tokens (`prefixes_to_read`); `option_logprobs` combines them into
the scores `Model.ascore_options` defines: the sum of the option's token log-probabilities, and, for an
option whose tokens begin a longer option's ("1" of "10"), the probability that the reply stops there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

Tokens = tuple[int, ...]


def prefixes_to_read(options: Sequence[Sequence[int]]) -> set[Tokens]:
    """Non-empty proper prefixes of the options' token sequences: where a next-token distribution is needed
    besides the one right after the prompt (the empty prefix)."""
    return {tuple(seq[:k]) for seq in options for k in range(1, len(seq))}


def option_logprobs(next_logprobs: Mapping[Tokens, object], options: Sequence[Sequence[int]]) -> list[float]:
    """Score of each option (natural log; -inf for probability 0) from `next_logprobs`: for the empty prefix
    and each of `prefixes_to_read(options)`, something indexed by token id that gives that token's
    log-probability next (a [vocab] tensor, or a mapping that answers -inf for a token it does not hold)."""
    scores = []
    for seq in options:
        logp = sum(float(next_logprobs[tuple(seq[:k])][tok]) for k, tok in enumerate(seq))
        prob = float(np.exp(logp))
        continuations = {s[len(seq)] for s in options if len(s) > len(seq) and list(s[:len(seq)]) == list(seq)}
        if continuations:  # the answer must stop here, not go on to a longer option
            nxt = next_logprobs[tuple(seq)]
            prob *= max(0.0, 1.0 - sum(float(np.exp(nxt[t])) for t in continuations))
        scores.append(math.log(prob) if prob > 0 else -math.inf)
    return scores


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix all `seqs` share."""
    first, n = seqs[0], min(len(s) for s in seqs)
    for k in range(n):
        if any(s[k] != first[k] for s in seqs):
            return k
    return n
