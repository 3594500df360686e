"""Keys and values of recent sequences, reused by later prompts that start the same way.

On a CPU a role-play turn is bound by prompt prefill: a 600-token prompt costs about a second and
is compute-bound, so batching cannot hide it (docs/benchmarks.md). But a speaker's next prompt is its
previous prompt and reply plus the partner's new line, and the observer's grows the same way, so
keeping each finished sequence's keys and values and prefilling only the tokens after the longest
cached prefix removes most of that work. vLLM does this on a GPU (automatic prefix caching).
transformers' continuous batching engine shares prefixes too, but on a CPU its SDPA path attends over
all sequences of a batch at once; it measured slower than plain batched `generate` here.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys and values, each [1, kv_heads, tokens, head_dim]


class PrefixCache:
    """Least recently used sequences, up to a memory budget; a sequence a newer one extends is dropped."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[int, ...], tuple[torch.Tensor, KV]] = OrderedDict()
        self._bytes = 0
        self.hit_tokens = 0  # prompt tokens served from the cache since creation
        self.looked_up_tokens = 0

    def lookup(self, ids: list[int]) -> tuple[int, KV | None]:
        """(n, keys/values) of the cached sequence sharing the longest prefix with `ids`; n <= len(ids)."""
        self.looked_up_tokens += len(ids)
        if not ids or not self._entries:
            return 0, None
        query = torch.tensor(ids)
        best, best_key = 0, None
        for key, (tokens, _) in self._entries.items():
            n = min(len(tokens), len(query))
            differ = (tokens[:n] != query[:n]).nonzero()
            shared = int(differ[0]) if len(differ) else n
            if shared > best:
                best, best_key = shared, key
        if best_key is None:
            return 0, None
        self._entries.move_to_end(best_key)
        self.hit_tokens += best
        return best, self._entries[best_key][1]

    def store(self, ids: list[int], kv: KV) -> None:
        """Keep `kv` (covering exactly `ids`), evicting the least recently used beyond the budget."""
        key = tuple(ids)
        for old in [k for k in self._entries if len(k) <= len(key) and key[: len(k)] == k]:
            self._drop(old)  # a prefix of the new sequence: nothing it could serve that the new one cannot
        self._entries[key] = (torch.tensor(ids), kv)
        self._bytes += _nbytes(kv)
        while self._bytes > self.max_bytes and len(self._entries) > 1:
            self._drop(next(iter(self._entries)))

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, key: tuple[int, ...]) -> None:
        _, kv = self._entries.pop(key)
        self._bytes -= _nbytes(kv)


def _nbytes(kv: KV) -> int:
    return sum(k.nbytes + v.nbytes for k, v in kv)
