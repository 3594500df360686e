"""Simulation throughput on each engine, as ratios measured in one run.

    python bench/simulate.py                       # every part
    python bench/simulate.py --part engines        # llama-server and in process, concurrency 1 and 8
    python bench/simulate.py --part orchestration  # zero-latency scripted model
    python bench/simulate.py --part batching       # in process: prefill vs decoding, batch of 8 vs 1

engines: one plan for every engine (`--episodes` China episodes on the SOTOPIA seeds, `--max-turns`
rounds, observer on, structured answers): turns per second for the embedded default (`smollm2`, the
managed llama-server) and the in-process backend (`smollm2-inprocess`), each at concurrency 1 and 8.
The in-process run at concurrency 1 is slow; `--inprocess-serial-episodes` plays the first few of the
same plan there. For llama-server, every request is logged (its prompt stream, messages and reply) and
the prompt tokens the server evaluated (`timings.prompt_n`) are set against the minimum with perfect
prefix reuse: per stream (an episode's inquirer, responder or observer), each prompt's tokens beyond
the longest prefix it shares with the stream's previous prompt + reply. Then the server's own prefill
and decode rates are measured (one long uncached prompt; 8 and 1 parallel generations), and the
compute-bound limit of the concurrency-8 run is computed from its token counts: the prompt tokens the
server evaluated at the prefill rate plus reply tokens at the batched decode rate. (The per-stream
minimum can exceed what the server evaluates: its RAM prompt cache also shares text across streams.) Targets: llama-server at least 2x the
in-process turns/s at concurrency 8; prompt tokens evaluated at most 1.3x the minimum; the run at
least 70% of its computed limit.

orchestration: turns per second with a zero-latency scripted model, so what is measured is the
batch graph (planning, the Send fan-out of episode subgraphs, progress events), the observer node,
the checkpointer and the SQLite writes; best of `--repeat` runs. The target is at least 200.
"""

from __future__ import annotations

import argparse
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
from agents.prompts import Prompts  # noqa: E402
from agents.seeds import sotopia_seeds  # noqa: E402
from graphs.episode import EpisodeContext, speaker_view  # noqa: E402
from graphs import simulate  # noqa: E402
from graphs.batch import run as run_stage  # noqa: E402
from graphs.simulate import SimulateRequest  # noqa: E402
from graphs.store import Store  # noqa: E402


def run(model, *, episodes: int, max_turns: int, concurrency: int, seed: int, max_new_tokens: int = 160,
        first: int | None = None) -> dict:
    """Simulate into a fresh store; returns turns, valid turns, model calls, tokens and wall seconds."""
    before = model.usage.totals()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.db")
        request = SimulateRequest(culture="CHN", episodes=first or episodes, model=model.spec, db=str(store.path),
                                  max_turns=max_turns, concurrency=concurrency, seed=seed, use_seeds=True,
                                  max_new_tokens=max_new_tokens)
        started, cpu_started = time.perf_counter(), time.process_time()
        run_stage(simulate.STAGE, request, model=model, command="bench/simulate.py")
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        counts = store.counts()
        turns, valid, statuses = counts.turns, counts.valid_turns, counts.statuses
        intents, valid_intents = counts.intents, counts.valid_intents
    after = model.usage.totals()
    return {"turns": turns, "valid": valid, "intents": intents, "valid_intents": valid_intents, "wall": wall, "cpu": cpu,
            "calls": after["calls"] - before["calls"], "statuses": statuses,
            "tokens": after["completion_tokens"] - before["completion_tokens"],
            "prompt": after["prompt_tokens"] - before["prompt_tokens"],
            "evaluated": after.get("prompt_tokens_evaluated", 0) - before.get("prompt_tokens_evaluated", 0)}


def line(label: str, r: dict) -> str:
    return (f"{label:<34} {r['turns']:>4} turns ({r['valid']} valid, {r['valid_intents']}/{r['intents']} labels) "
            f"{r['calls']:>4} calls {r['tokens']:>6} reply tokens {r['wall']:>7.1f} s "
            f"{r['turns'] / r['wall']:>6.3f} turns/s  {r['statuses']}")


class Recorder:
    """Wraps a backend: keeps every request's stream key, messages and reply, for the reuse minimum."""

    def __init__(self, backend):
        self.backend, self.requests = backend, []
        self.name, self.transient_errors = backend.name, backend.transient_errors

    async def agenerate(self, messages, params, task):
        completion = await self.backend.agenerate(messages, params, task)
        self.requests.append((params.cache_key or task, list(messages), completion))
        return completion


def minimum_prompt_tokens(requests, tokenizer) -> tuple[int, int]:
    """(prompt tokens sent, prompt tokens a perfect prefix cache would still evaluate), per stream in order."""
    sent = minimum = 0
    previous: dict[str, list[int]] = {}
    for key, messages, completion in requests:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        before = previous.get(key, [])
        shared = next((k for k, (a, b) in enumerate(zip(ids, before)) if a != b), min(len(ids), len(before)))
        sent += len(ids)
        minimum += len(ids) - shared
        previous[key] = ids + tokenizer.encode(completion.text, add_special_tokens=False)
    return sent, minimum


def server_rates(base_url: str, prompt: str) -> dict:
    """llama-server's prefill tokens/s (one uncached prompt) and decode tokens/s at 1 and 8 in parallel."""
    import concurrent.futures

    import httpx

    root = base_url.removesuffix("/v1")

    def complete(text: str, n: int, cache: bool = False) -> dict:
        body = {"prompt": text, "n_predict": n, "cache_prompt": cache, "temperature": 0, "ignore_eos": True}
        return httpx.post(f"{root}/completion", json=body, timeout=600).json()["timings"]

    complete(prompt, 1)  # warm
    prefill = complete(prompt + " Again.", 1)
    rates = {"prefill_tok_s": prefill["prompt_n"] / (prefill["prompt_ms"] / 1000)}
    for parallel in (1, 8):
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
            list(pool.map(lambda k: complete(f"Count slowly {k}:", 48, True), range(parallel)))
        rates[f"decode_tok_s_{parallel}"] = 48 * parallel / (time.perf_counter() - started)
    return rates


def bench_engines(args) -> None:
    from transformers import AutoTokenizer

    from agents.models import SMOLLM2_GGUF, smollm2_dir

    from agents.models.llama_server import stop_shared

    runs = {}
    for spec in args.engines.split(","):
        for concurrency in (1, 8):
            stop_shared()  # each llama-server run gets its own server: its slot count, a cold prompt cache
            model = load_model(spec, max_batch=concurrency, log_dir=Path(tempfile.gettempdir()))
            recorder = Recorder(model.backend) if spec == "smollm2" else None
            if recorder:
                model.backend = recorder
            first = args.inprocess_serial_episodes if (spec, concurrency) == ("smollm2-inprocess", 1) else None
            r = run(model, episodes=args.episodes, max_turns=args.max_turns, concurrency=concurrency, seed=args.seed,
                    first=first)
            if recorder:
                r["requests"] = recorder.requests
            runs[spec, concurrency] = r
            print(line(f"{spec} at concurrency {concurrency}", r), flush=True)
    rate = lambda r: r["turns"] / r["wall"]  # noqa: E731
    if ("smollm2-inprocess", 8) in runs and ("smollm2", 8) in runs:
        print(f"llama-server / in process, turns/s at concurrency 8: "
              f"{rate(runs['smollm2', 8]) / rate(runs['smollm2-inprocess', 8]):.2f}x (target >= 2x); "
              f"at 1: {rate(runs['smollm2', 1]) / rate(runs['smollm2-inprocess', 1]):.2f}x")
    if ("smollm2", 8) not in runs:
        return
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir(), gguf_file=SMOLLM2_GGUF)
    for concurrency in (1, 8):
        r = runs["smollm2", concurrency]
        sent, minimum = minimum_prompt_tokens(r["requests"], tokenizer)
        r["minimum"] = minimum
        print(f"llama-server at {concurrency}: {r['evaluated']} prompt tokens evaluated of {sent} sent; minimum with "
              f"perfect prefix reuse {minimum}: {r['evaluated'] / minimum:.2f}x the minimum (target <= 1.3x); "
              f"{r['evaluated'] / r['turns']:.0f} evaluated per turn against {minimum / r['turns']:.0f}")
    r = runs["smollm2", 8]
    first_prompt = r["requests"][0][1]
    stop_shared()
    server = load_model("smollm2", max_batch=8, log_dir=Path(tempfile.gettempdir())).backend
    rates = server_rates(server.base_url, "\n".join(m["content"] for m in first_prompt))
    limit_s = r["evaluated"] / rates["prefill_tok_s"] + r["tokens"] / rates["decode_tok_s_8"]
    print(f"server rates: prefill {rates['prefill_tok_s']:.0f} tok/s; decode {rates['decode_tok_s_1']:.1f} tok/s alone, "
          f"{rates['decode_tok_s_8']:.1f} tok/s with 8 in parallel")
    print(f"compute-bound limit of the concurrency-8 run: {r['evaluated']} prompt tokens evaluated + {r['tokens']} reply "
          f"tokens = {limit_s:.0f} s, {r['turns'] / limit_s:.3f} turns/s; measured {r['wall']:.0f} s: "
          f"{limit_s / r['wall']:.0%} of the limit (target >= 70%)")


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
    """The batch graph `python -m graphs.simulate` runs, best of `--repeat` runs (other load on a shared
    machine only ever slows a run down)."""
    rates, cpu_rates = [], []
    for _ in range(args.repeat):
        model = load_model("puppet")
        r = run(model, episodes=args.orchestration_episodes, max_turns=10, concurrency=8, seed=args.seed,
                max_new_tokens=160)
        print(line("scripted, zero latency", r))
        rates.append(r["turns"] / r["wall"])
        cpu_rates.append(r["turns"] / r["cpu"])
    print(f"orchestration: {max(rates):.0f} turns/s (best of {len(rates)}: {', '.join(f'{x:.0f}' for x in rates)}) "
          f"with observer, checkpoints and SQLite (target >= 200); {max(cpu_rates):.0f} turns per CPU second "
          "(this process's threads; less sensitive to other load)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["engines", "batching", "orchestration", "all"], default="all")
    p.add_argument("--episodes", type=int, default=16, help="episodes of the plan, every engine")
    p.add_argument("--max-turns", type=int, default=3, help="rounds per episode")
    p.add_argument("--engines", default="smollm2,smollm2-inprocess", help="model specs to compare")
    p.add_argument("--inprocess-serial-episodes", type=int, default=4,
                   help="of the plan, the first N for the slow in-process run at concurrency 1")
    p.add_argument("--orchestration-episodes", type=int, default=40)
    p.add_argument("--repeat", type=int, default=3, help="orchestration runs; the best counts")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(f"{platform.node()} {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f}")
    if args.part in ("orchestration", "all"):
        bench_orchestration(args)
    if args.part in ("engines", "all"):
        bench_engines(args)
    if args.part in ("batching", "all"):
        bench_batching(load_model("smollm2-inprocess", max_batch=8))


if __name__ == "__main__":
    main()
