"""Simulation throughput, as ratios measured in one run.

    python bench/simulate.py                 # both parts
    python bench/simulate.py --part model    # concurrency 8 vs 1 on the embedded model
    python bench/simulate.py --part orchestration
    python bench/simulate.py --part batching # only prefill vs decoding, batch of 8 vs 1

model: turns per second (speaker turns; every turn also costs one observer call) on SmolLM2 with
8 episodes in flight against 1, the same weights and settings for both. The target is at least 4x:
concurrent episodes share one batched `generate` call. The run at 8 plays 32 episodes so that
episodes ending early (unparseable turns) are replaced and 8 stay in flight for most of it. Each run
reports how many prompt tokens came from the prefix cache. Then the same eight first-turn prompts
are run one at a time and as one batch, once for prefill alone and once for decoding alone (prompts
already cached), to show which part batching speeds up on this machine.

orchestration: turns per second with a zero-latency scripted model, so what is measured is the
graph, the observer node, the checkpointer and the SQLite writes. The target is at least 200.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from agents.cultures import load_culture  # noqa: E402
from agents.models import GenerationParams, load_model  # noqa: E402
from agents.models.prefix_cache import PrefixCache  # noqa: E402
from agents.prompts import Prompts  # noqa: E402
from agents.seeds import sotopia_seeds  # noqa: E402
from graphs.episode import EpisodeContext, speaker_view  # noqa: E402
from graphs.simulate import plan_episodes, simulate  # noqa: E402
from graphs.store import Store  # noqa: E402


def run(model, *, episodes: int, max_turns: int, concurrency: int, seed: int, max_new_tokens: int) -> dict:
    """Simulate into a fresh store; returns turns, model calls, completion tokens and wall seconds."""
    culture, prompts = load_culture("CHN"), Prompts()
    plan = plan_episodes(sotopia_seeds(), culture.code, model.spec, seed, episodes, 1)
    before = model.usage.totals()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.db")
        started = time.perf_counter()
        asyncio.run(simulate(
            store, plan, culture=culture, model=model, prompts=prompts, max_turns=max_turns,
            concurrency=concurrency, seed=seed, run_id="bench", config={}, progress=False,
            speaker_params=replace(EpisodeContext.speaker_params, max_new_tokens=max_new_tokens),
        ))
        wall = time.perf_counter() - started
        turns = store.db.execute("select count(*) from turns").fetchone()[0]
        statuses = dict(store.db.execute("select status, count(*) from episodes group by status").fetchall())
    after = model.usage.totals()
    cache = getattr(model.backend, "prefix_cache", None)
    return {"turns": turns, "wall": wall, "calls": after["calls"] - before["calls"],
            "tokens": after["completion_tokens"] - before["completion_tokens"], "statuses": statuses,
            "cached": f"{cache.hit_tokens} of {cache.looked_up_tokens}" if cache else ""}


def line(label: str, r: dict) -> str:
    return (f"{label:<28} {r['turns']:>5} turns {r['calls']:>5} calls {r['tokens']:>6} tokens "
            f"{r['wall']:>7.1f} s  {r['turns'] / r['wall']:>8.2f} turns/s  {r['tokens'] / r['wall']:>7.1f} tok/s  "
            f"{r['statuses']}" + (f"  prompt tokens from the prefix cache: {r['cached']}" if r["cached"] else ""))


def bench_model(args) -> None:
    runs = {}
    for concurrency, episodes in ((1, args.episodes_serial), (8, args.episodes_parallel)):
        model = load_model(args.model, max_batch=concurrency)  # shares the weights; its own prefix cache
        if concurrency == 1:
            run(model, episodes=1, max_turns=1, concurrency=1, seed=99, max_new_tokens=8)  # load and warm up
            if getattr(model.backend, "prefix_cache", None) is not None:
                model.backend.prefix_cache = PrefixCache(model.backend.cache_bytes)
        runs[concurrency] = run(model, episodes=episodes, max_turns=args.max_turns, concurrency=concurrency,
                                seed=args.seed, max_new_tokens=args.max_new_tokens)
        print(line(f"concurrency {concurrency}", runs[concurrency]), flush=True)
    rate = lambda r, k: r[k] / r["wall"]  # noqa: E731
    print(f"turns/s ratio, concurrency 8 / 1: {rate(runs[8], 'turns') / rate(runs[1], 'turns'):.2f}x (target >= 4x); "
          f"completion tokens/s ratio: {rate(runs[8], 'tokens') / rate(runs[1], 'tokens'):.2f}x", flush=True)
    if getattr(model.backend, "prefix_cache", None) is not None:  # in-process models only
        bench_batching(model)


def bench_batching(model) -> None:
    """Seconds per prompt, one at a time against one batch of 8: prefill alone, then decoding alone.

    Prefill is timed as plain forward passes over the whole prompts (one padded batch of 8 against
    8 single ones), so the figure is the hardware's, not the backend's: the backend prefills each
    row on its own precisely because a padded batch does not pay here.
    """
    import torch

    culture, prompts = load_culture("CHN"), Prompts()
    convs = [speaker_view(EpisodeContext(scenario=s, culture=culture, model=model, prompts=prompts), 0, [])
             for s in sotopia_seeds()[:8]]
    backend = model.backend
    tok, net = backend.tokenizer, backend.model
    rows = [tok(tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True),
                add_special_tokens=False)["input_ids"] for c in convs]
    width = max(len(r) for r in rows)

    def forward(batch: list[list[int]]) -> None:
        longest = max(len(r) for r in batch)
        ids = torch.tensor([[tok.pad_token_id] * (longest - len(r)) + r for r in batch])
        mask = torch.tensor([[0] * (longest - len(r)) + [1] * len(r) for r in batch])
        net(input_ids=ids, attention_mask=mask, logits_to_keep=1)

    with torch.inference_mode():
        started = time.perf_counter()
        for r in rows:
            forward([r])
        alone = (time.perf_counter() - started) / len(rows)
        started = time.perf_counter()
        forward(rows)
        batched = (time.perf_counter() - started) / len(rows)
    print(f"first-turn prompts: {min(map(len, rows))}-{width} tokens")
    print(f"prefill only (forward pass): {alone:.2f} s/prompt alone, {batched:.2f} in a padded batch of 8: "
          f"{alone / batched:.2f}x")

    decode = GenerationParams(max_new_tokens=48, temperature=0.0)
    backend._generate_batch([(c, replace(decode, max_new_tokens=1)) for c in convs])  # prompts into the cache
    timings = []
    for batch in (1, 8):
        started = time.perf_counter()
        for k in range(0, len(convs), batch):
            backend._generate_batch([(c, decode) for c in convs[k:k + batch]])
        timings.append((time.perf_counter() - started) / len(convs))
    print(f"decode only (48 tokens, prompts cached): {timings[0]:.2f} s/prompt alone, {timings[1]:.2f} in a batch "
          f"of 8: {timings[0] / timings[1]:.2f}x")


def bench_orchestration(args) -> None:
    model = load_model("puppet")
    r = run(model, episodes=args.orchestration_episodes, max_turns=10, concurrency=8, seed=args.seed,
            max_new_tokens=160)
    print(line("scripted, zero latency", r))
    print(f"orchestration: {r['turns'] / r['wall']:.0f} turns/s with observer, checkpoints and SQLite "
          f"(target >= 200)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["model", "batching", "orchestration", "all"], default="all",
                   help="batching: only the prefill/decode comparison of the model part")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--episodes-serial", type=int, default=4, help="episodes at concurrency 1")
    p.add_argument("--episodes-parallel", type=int, default=32, help="episodes at concurrency 8")
    p.add_argument("--max-turns", type=int, default=2, help="rounds per episode")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--orchestration-episodes", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(f"{platform.node()} {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f}")
    if args.part in ("orchestration", "all"):
        bench_orchestration(args)
    if args.part in ("model", "all"):
        bench_model(args)
    if args.part == "batching":
        bench_batching(load_model(args.model, max_batch=8))


if __name__ == "__main__":
    main()
