"""WVS evaluation speed on SmolLM2, in one run.

    .venv/bin/python bench/eval.py [--personas 2] [--country CHN]
    .venv/bin/python bench/eval.py --adapter runs/study-demo/stages/sft-chn-.../adapter [--items all]

Without --adapter: prompts per second for `logprob` against `generate`, both reading the same persona x clca44
prompts (personas from a synthetic respondent file); `logprob` runs once with the persona prefix cache shared
across questions and once without, so the gain of prefix reuse shows too. Prints the ratios and the projected
wall time of the paper's full protocol (1000 personas x 44 items x 5 countries = 220,000 prompts) at each rate.

With --adapter: `eval.wvs --method logprob` of the adapted SmolLM2 on the managed llama-server (the adapter as a
GGUF LoRA) against in process (PEFT on transformers), same items and country prompt: prompts per second of
each (model loading and conversion excluded), their ratio (target: the engine at least 2x), and the agreement,
the largest and median per-item JS distance between the two engines' option distributions.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would shadow the `eval` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from agents.models import GenerationParams, load_model  # noqa: E402
from agents.prompts import Prompts  # noqa: E402
from eval.wvs.items import select_items  # noqa: E402
from eval.wvs.readers import GenerateReader, LogprobReader  # noqa: E402
from eval.wvs.respondents import RespondentFile, write_synthetic_file  # noqa: E402
from eval.wvs.formats import FORMATS, render_question  # noqa: E402
from eval.wvs.survey import country  # noqa: E402

FULL_PROTOCOL = 1000 * 44 * 5


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--personas", type=int, default=2)
    parser.add_argument("--country", default="CHN")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--adapter", help="compare the engines on this adapter instead (see the docstring)")
    parser.add_argument("--items", default="all", help="with --adapter: eval.wvs --items")
    args = parser.parse_args()
    if args.adapter:
        return engines(args.adapter, args.country, args.items, args.batch_size)

    c = country(args.country)
    items = select_items("clca44")
    prompts = Prompts()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_synthetic_file(f"{tmp}/wvs.csv", [c], n_per_country=max(args.personas, 10), seed=0)
        people = RespondentFile(path, items).sample(c.alpha3, args.personas, seed=0)
    systems = [prompts.render("wvs_persona", country=c.name, **p.persona).text for p in people]
    # the default format, ending in the bare "ANSWER:" both readers are timed on
    questions = [render_question(prompts, "logprob", FORMATS["default"], it, "", c.name) for it in items]
    n = len(systems) * len(questions)

    t0 = time.perf_counter()
    reader = LogprobReader(load_model("smollm2-inprocess", max_batch=args.batch_size, structured=False))
    print(f"model load {time.perf_counter() - t0:.1f} s; {n} prompts per method "
          f"({len(systems)} personas x {len(items)} items, {c.alpha3})")
    reader.read(systems[:1], items[:2], questions[:2])  # warm-up

    rates = {}
    for label, reuse in (("logprob (prefix reuse)", True), ("logprob (no reuse)", False)):
        reader.model.backend.share_prefix = reuse
        t0 = time.perf_counter()
        reader.read(systems, items, questions)
        rates[label] = n / (time.perf_counter() - t0)

    model = load_model("smollm2-inprocess", max_batch=args.batch_size)  # shares the loaded weights
    params = GenerationParams(max_new_tokens=args.max_new_tokens, temperature=0.0)
    t0 = time.perf_counter()
    GenerateReader(model, params).read(systems, items, questions)
    rates[f"generate (greedy, <= {args.max_new_tokens} tokens)"] = n / (time.perf_counter() - t0)

    for label, rate in rates.items():
        hours = FULL_PROTOCOL / rate / 3600
        print(f"{label:34} {rate:7.2f} prompts/s   full protocol (220k prompts): {hours:7.1f} h")
    logprob, no_reuse, generate = rates.values()
    print(f"logprob / generate speed-up: {logprob / generate:.1f}x (target >= 2x)")
    print(f"prefix reuse speed-up:       {logprob / no_reuse:.2f}x")


def engines(adapter: str, country_code: str, items: str, batch_size: int) -> None:
    import numpy as np

    from agents.models.llama_server import stop_shared
    from eval.wvs.metrics import js_distance
    from eval.wvs.run import EvalConfig, evaluate

    runs = {}
    for label, spec in (("llama-server", "smollm2"), ("in process", "smollm2-inprocess")):
        t0 = time.perf_counter()
        results = evaluate(EvalConfig(model=spec, adapter=adapter, countries=country_code, items=items,
                                      method="logprob", bootstrap=10, batch_size=batch_size))
        stop_shared()
        seconds = results["provenance"]["seconds"]  # reading only: after the model (and adapter) loaded
        runs[label] = (results["items"], len(results["items"]) / seconds)
        print(f"{label:13} {len(results['items'])} prompts in {seconds:.1f} s ({runs[label][1]:.2f} prompts/s; "
              f"{time.perf_counter() - t0:.1f} s with loading)")
    (served, served_rate), (local, local_rate) = runs.values()

    def options(record) -> np.ndarray:
        p = np.asarray(record["model"][:-1], dtype=float)  # the options, INVALID (the rest of the mass) dropped
        return p / p.sum()

    gaps = [float(js_distance(options(a)[None], options(b)[None])[0]) for a, b in zip(served, local)]
    print(f"llama-server / in process: {served_rate / local_rate:.2f}x prompts/s (target >= 2x)")
    print(f"agreement: per-item JS between the engines, max {max(gaps):.4f}, median {float(np.median(gaps)):.4f} "
          f"over {len(gaps)} items")


if __name__ == "__main__":
    main()
