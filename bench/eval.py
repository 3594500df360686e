"""WVS evaluation speed on SmolLM2: prompts per second for `logprob` against `generate`, in one run.

    .venv/bin/python bench/eval.py [--personas 2] [--country CHN]

Both methods read the same persona x clca44 prompts (personas from a synthetic respondent file).
`logprob` runs once with the persona prefix cache shared across questions and once without, so the
gain of prefix reuse shows too. Prints the ratios and the projected wall time of the paper's full
protocol (1000 personas x 44 items x 5 countries = 220,000 prompts) at each measured rate.
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
    args = parser.parse_args()

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


if __name__ == "__main__":
    main()
