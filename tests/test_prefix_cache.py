import torch

from agents.models.prefix_cache import PrefixCache


def kv(tokens: int, layers: int = 2):
    """Keys/values whose entries are their own positions, so a slice shows where it came from."""
    pos = torch.arange(tokens, dtype=torch.float32).view(1, 1, tokens, 1)
    return [(pos.clone(), -pos.clone()) for _ in range(layers)]


def test_lookup_finds_the_longest_shared_prefix():
    cache = PrefixCache(max_bytes=10**6)
    cache.store([1, 2, 3, 4], kv(4))
    cache.store([1, 9, 9], kv(3))
    n, found = cache.lookup([1, 2, 3, 7, 8])
    assert n == 3 and found[0][0].shape[2] == 4
    assert cache.lookup([5, 6]) == (0, None)
    assert cache.hit_tokens == 3 and cache.looked_up_tokens == 7


def test_a_sequence_that_extends_a_cached_one_replaces_it():
    cache = PrefixCache(max_bytes=10**6)
    cache.store([1, 2], kv(2))
    cache.store([1, 2, 3], kv(3))
    assert len(cache) == 1 and cache.lookup([1, 2, 3])[0] == 3


def test_least_recently_used_sequences_go_first_beyond_the_budget():
    one = sum(k.nbytes + v.nbytes for k, v in kv(4))
    cache = PrefixCache(max_bytes=2 * one)
    cache.store([1, 1, 1, 1], kv(4))
    cache.store([2, 2, 2, 2], kv(4))
    cache.lookup([1, 1])  # touch the first: the second is now the oldest
    cache.store([3, 3, 3, 3], kv(4))
    assert cache.lookup([2, 2, 2, 2])[0] == 0
    assert cache.lookup([1, 1, 1, 1])[0] == 4 and cache.lookup([3, 3, 3, 3])[0] == 4
