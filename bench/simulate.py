"""Simulation throughput, as ratios measured in one run.

    python bench/simulate.py                 # both parts
    python bench/simulate.py --part model    # concurrency 8 vs 1 on the embedded model
    python bench/simulate.py --part orchestration

model: turns per second (speaker turns; every turn also costs one observer call) on SmolLM2 with
8 episodes in flight against 1, the same model object and settings for both. The target is at least
4x: concurrent episodes share the engine's batch. The run at 8 plays 16 episodes so that episodes
ending early (unparseable turns) are replaced and 8 stay in flight. Each run also reports how many
tokens went through the model against how many prompt and reply tokens were asked for: the
difference is prompt prefill saved by the prefix cache.

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
from agents.models import load_model  # noqa: E402
from agents.prompts import Prompts  # noqa: E402
from agents.seeds import sotopia_seeds  # noqa: E402
from graphs.episode import EpisodeContext  # noqa: E402
from graphs.simulate import plan_episodes, simulate  # noqa: E402
from graphs.store import Store  # noqa: E402


def run(model, *, episodes: int, max_turns: int, concurrency: int, seed: int, max_new_tokens: int) -> dict:
    """Simulate into a fresh store; returns turns, model calls, completion tokens and wall seconds."""
    culture, prompts = load_culture("CHN"), Prompts()
    plan = plan_episodes(sotopia_seeds(), culture.code, model.spec, seed, episodes, 1)
    before = model.usage.totals()
    computed = [0]
    hook = None
    if hasattr(model.backend, "model"):  # count tokens through the in-process model: prefill + decode
        hook = model.backend.model.register_forward_pre_hook(
            lambda _, args, kwargs: computed.__setitem__(0, computed[0] + (kwargs.get("input_ids", args[0] if args
                                                                                        else None)).numel()),
            with_kwargs=True)
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
    if hook:
        hook.remove()
    after = model.usage.totals()
    delta = {k: after[k] - before[k] for k in ("calls", "prompt_tokens", "completion_tokens")}
    return {"turns": turns, "wall": wall, "calls": delta["calls"], "tokens": delta["completion_tokens"],
            "asked": delta["prompt_tokens"] + delta["completion_tokens"], "computed": computed[0],
            "statuses": statuses}


def line(label: str, r: dict) -> str:
    return (f"{label:<28} {r['turns']:>5} turns {r['calls']:>5} calls {r['tokens']:>6} tokens "
            f"{r['wall']:>7.1f} s  {r['turns'] / r['wall']:>8.2f} turns/s  {r['tokens'] / r['wall']:>7.1f} tok/s  "
            f"{r['statuses']}" + (f"  model ran {r['computed']} of {r['asked']} prompt+reply tokens"
                                  if r["computed"] else ""))


def bench_model(args) -> None:
    model = load_model(args.model, max_batch=8)
    run(model, episodes=1, max_turns=1, concurrency=1, seed=99, max_new_tokens=8)  # load and warm up
    one = run(model, episodes=args.episodes_serial, max_turns=args.max_turns, concurrency=1, seed=args.seed,
              max_new_tokens=args.max_new_tokens)
    print(line("concurrency 1", one), flush=True)
    eight = run(model, episodes=16, max_turns=args.max_turns, concurrency=8, seed=args.seed,
                max_new_tokens=args.max_new_tokens)
    print(line("concurrency 8", eight))
    rate = lambda r, k: r[k] / r["wall"]  # noqa: E731
    print(f"turns/s ratio, concurrency 8 / 1: {rate(eight, 'turns') / rate(one, 'turns'):.2f}x (target >= 4x); "
          f"completion tokens/s ratio: {rate(eight, 'tokens') / rate(one, 'tokens'):.2f}x", flush=True)


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
    p.add_argument("--episodes-serial", type=int, default=2, help="episodes at concurrency 1 (8 run at 8)")
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
