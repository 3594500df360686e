"""Simulation throughput, as ratios measured in one run.

    python bench/simulate.py                 # both parts
    python bench/simulate.py --part model    # concurrency 8 vs 1 on the embedded model
    python bench/simulate.py --part orchestration

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
from agents.prefix_cache import PrefixCache  # noqa: E402
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
            model.backend.prefix_cache = PrefixCache(model.backend.cache_bytes)
        runs[concurrency] = run(model, episodes=episodes, max_turns=args.max_turns, concurrency=concurrency,
                                seed=args.seed, max_new_tokens=args.max_new_tokens)
        print(line(f"concurrency {concurrency}", runs[concurrency]), flush=True)
    rate = lambda r, k: r[k] / r["wall"]  # noqa: E731
    print(f"turns/s ratio, concurrency 8 / 1: {rate(runs[8], 'turns') / rate(runs[1], 'turns'):.2f}x (target >= 4x); "
          f"completion tokens/s ratio: {rate(runs[8], 'tokens') / rate(runs[1], 'tokens'):.2f}x", flush=True)
    bench_batching(model)


def bench_batching(model) -> None:
    """Seconds per prompt, one at a time against one batch of 8: prefill alone, then decoding alone."""
    culture, prompts = load_culture("CHN"), Prompts()
    convs = [speaker_view(EpisodeContext(scenario=s, culture=culture, model=model, prompts=prompts), 0, [])
             for s in sotopia_seeds()[:8]]
    backend = model.backend

    def seconds_per_prompt(params, batch: int, cached: bool) -> float:
        backend.prefix_cache = PrefixCache(backend.cache_bytes)
        if cached:
            backend._generate_batch([(c, replace(params, max_new_tokens=1)) for c in convs])
        started = time.perf_counter()
        for k in range(0, len(convs), batch):
            backend._generate_batch([(c, params) for c in convs[k:k + batch]])
        return (time.perf_counter() - started) / len(convs)

    prefill = GenerationParams(max_new_tokens=1, temperature=0.0)
    decode = GenerationParams(max_new_tokens=48, temperature=0.0)
    for label, params, cached in (("prefill only (1 new token)", prefill, False),
                                  ("decode only (48 tokens, prompt cached)", decode, True)):
        alone, batched = seconds_per_prompt(params, 1, cached), seconds_per_prompt(params, 8, cached)
        print(f"{label}: {alone:.2f} s/prompt alone, {batched:.2f} in a batch of 8: {alone / batched:.2f}x")


def bench_orchestration(args) -> None:
    model = load_model("puppet")
    r = run(model, episodes=args.orchestration_episodes, max_turns=10, concurrency=8, seed=args.seed,
            max_new_tokens=160)
    print(line("scripted, zero latency", r))
    print(f"orchestration: {r['turns'] / r['wall']:.0f} turns/s with observer, checkpoints and SQLite "
          f"(target >= 200)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["model", "orchestration", "all"], default="all")
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


if __name__ == "__main__":
    main()
