"""The cost of constrained decoding in process, as a ratio measured in one run.

    python bench/structured.py [--model smollm2-inprocess] [--rounds 3] [--max-new-tokens 64]

Eight role-play first-turn prompts (CHN, SOTOPIA seeds) go to the in-process transformers backend as
one batch of 8, once free (no schema, the free-text prompt) and once under the TurnAnswer schema
(xgrammar, one compiled grammar per row), `--rounds` times each, alternating, greedy, the same token
limit for both. A first untimed round fills the prefix cache, so the timed rounds measure decoding,
where the grammar's per-token mask is paid, not prompt prefill. Reported: completion tokens per second
and the time per decoding step of the batch, and the ratio of the latter (a batch decodes until its
longest row ends, and constrained rows end at different lengths, so tokens/s alone also counts idle rows). The target is at most 15% slower with the constraint. The grammar is compiled
in the untimed round (it is cached per schema).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from agents.answers import TurnAnswer, json_schema  # noqa: E402
from agents.cultures import load_culture  # noqa: E402
from agents.models import GenerationParams, Model  # noqa: E402
from agents.models.hf import HFBackend  # noqa: E402
from agents.prompts import Prompts  # noqa: E402
from agents.seeds import sotopia_seeds  # noqa: E402
from graphs.episode import EpisodeContext, speaker_view  # noqa: E402


def prompts_for(model: Model, n: int = 8) -> list[list[dict]]:
    culture, prompts = load_culture("CHN"), Prompts()
    return [speaker_view(EpisodeContext(scenario=s, culture=culture, model=model, prompts=prompts), 0, [])
            for s in sotopia_seeds()[:n]]


def timed(backend: HFBackend, requests) -> tuple[int, int, float]:
    """(completion tokens, decoding steps, seconds) of one batch. A batch decodes until its longest row
    ends, so steps (the longest row's tokens) is the work done; rows that ended early idle."""
    started = time.perf_counter()
    outs = backend._generate_batch(requests)
    return sum(o.completion_tokens for o in outs), max(o.completion_tokens for o in outs), time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-inprocess")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=64)
    args = p.parse_args()
    backend = HFBackend(args.model, max_batch=8)
    free_model, json_model = Model(backend, args.model, structured=False), Model(backend, args.model)
    greedy = GenerationParams(max_new_tokens=args.max_new_tokens, temperature=0.0)
    constrained = replace(greedy.constrained(json_schema(TurnAnswer)), max_new_tokens=args.max_new_tokens)
    kinds = {
        "free": [(m, replace(greedy, prefix="ACTION:")) for m in prompts_for(free_model)],
        "constrained": [(m, constrained) for m in prompts_for(json_model)],
    }
    for requests in kinds.values():  # untimed: compiles the grammar, caches the prompts
        backend._generate_batch(requests)
    totals = {k: [0, 0, 0.0] for k in kinds}
    for _ in range(args.rounds):
        for kind, requests in kinds.items():
            for i, value in enumerate(timed(backend, requests)):
                totals[kind][i] += value
    step = {k: s / n for k, (_, n, s) in totals.items()}
    for kind, (tokens, steps, seconds) in totals.items():
        print(f"{kind:12s} {tokens:5d} tokens, {steps:4d} steps of 8 rows in {seconds:6.1f} s: "
              f"{tokens / seconds:6.1f} tokens/s, {1000 * step[kind]:6.1f} ms per step")
    print(f"constrained / free, time per decoding step of the batch: {step['constrained'] / step['free']:.2f}x "
          f"({100 * (step['constrained'] / step['free'] - 1):+.0f}%; target at most +15%)")


if __name__ == "__main__":
    main()
