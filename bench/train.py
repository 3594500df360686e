"""Step time and peak memory of `training.sft` against a plain TRL `SFTTrainer` script, in one run.

    python bench/train.py                       # SmolLM2-135M, the export fixture, 2 rounds x 6 steps (~4 min, 2 cores)
    python bench/train.py --model PATH --rounds 3 --steps 10 --batch 4

Each trial runs in its own process (so its peak RSS is its own), alternating ours / plain so that load on a
shared machine hits both alike. Both train the same rows with the same LoRA, batch, length and seed; the plain
script is what a TRL user would write by hand (it needs the same GGUF-to-plain-model copy to train SmolLM2).
Step time is the median over steps after the first (warm-up); the ratio is ours / plain (target <= 1.05).
Peak memory: the process's maximum resident set (ru_maxrss, includes the model load) and, on a GPU,
torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPORT = ROOT / "tests" / "fixtures" / "training_export"
SETTINGS = {"max_length": 512, "lora_r": 8, "lora_alpha": 16, "lr": 2e-4, "seed": 42,
            "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="model spec (default smollm2)")
    parser.add_argument("--dataset_name", default=str(EXPORT), help="exported dataset folder")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=2, help="per-device batch size")
    parser.add_argument("--threads", type=int, help="torch CPU threads per trial (default: torch's own choice); "
                        "1 avoids thread-spinning collapse on a machine shared with other jobs")
    parser.add_argument("--worker", choices=["ours", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    results: dict[str, list[dict]] = {"ours": [], "plain": []}
    for round_ in range(args.rounds):
        for path in ("ours", "plain") if round_ % 2 == 0 else ("plain", "ours"):
            out = Path(tempfile.gettempdir()) / f"clca-bench-train-{os.getpid()}-{path}-{round_}"
            cmd = [sys.executable, __file__, "--worker", path, "--model", args.model,
                   "--dataset_name", args.dataset_name, "--steps", str(args.steps), "--batch", str(args.batch),
                   "--out", str(out)] + (["--threads", str(args.threads)] if args.threads else [])
            line = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout.splitlines()[-1]
            results[path].append(json.loads(line))
            print(f"round {round_} {path}: {results[path][-1]}", flush=True)
    summary = {}
    for path, trials in results.items():
        steps = [s for t in trials for s in t["step_s"][1:]]
        summary[path] = {
            "median_step_s": statistics.median(steps),
            "peak_rss_mib": max(t["peak_rss_mib"] for t in trials),
            "peak_cuda_mib": max(t["peak_cuda_mib"] for t in trials),
        }
    ratio = summary["ours"]["median_step_s"] / summary["plain"]["median_step_s"]
    # Paired per round: the two trials of a round ran back to back, so they saw similar machine load.
    paired = [statistics.median(o["step_s"][1:]) / statistics.median(p["step_s"][1:])
              for o, p in zip(results["ours"], results["plain"])]
    print(json.dumps(summary, indent=2))
    print(f"model {args.model}, {args.rounds} rounds x {args.steps} steps, batch {args.batch}, "
          f"threads {args.threads or 'default'}: step time ours/plain = {ratio:.3f} over all steps, "
          f"{statistics.median(paired):.3f} median of per-round ratios {[round(r, 3) for r in paired]} "
          "(target <= 1.05)")


def worker(args) -> None:
    """One trial: build the trainer one way, time each optimizer step, print one JSON line."""
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, *_, **__):
            self._start = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.times.append(time.perf_counter() - self._start)

    if args.threads:
        torch.set_num_threads(args.threads)
    trainer = (build_ours if args.worker == "ours" else build_plain)(args)
    timer = StepTimer()
    trainer.add_callback(timer)
    trainer.train()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    peak_cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
    print(json.dumps({"step_s": [round(t, 4) for t in timer.times], "peak_rss_mib": round(peak_rss),
                      "peak_cuda_mib": round(peak_cuda)}))


def common_flags(args) -> dict:
    return {"output_dir": args.out, "max_steps": args.steps, "per_device_train_batch_size": args.batch,
            "learning_rate": SETTINGS["lr"], "max_length": SETTINGS["max_length"], "seed": SETTINGS["seed"],
            "save_strategy": "no", "logging_steps": 1, "disable_tqdm": True}


def build_ours(args):
    """training.sft's own path: TrlParser over the CLI flags, then `build_trainer`."""
    from training import sft
    from training.common import parse

    flags = {**common_flags(args), "model_name_or_path": args.model, "dataset_name": args.dataset_name,
             "lora_r": SETTINGS["lora_r"], "lora_alpha": SETTINGS["lora_alpha"], "lora_dropout": 0.05}
    argv = [item for k, v in flags.items() for item in (f"--{k}", str(v))]
    argv += ["--lora_target_modules", *SETTINGS["targets"]]
    trainer, _ = sft.build_trainer(*parse(sft.make_parser(), argv))
    return trainer


def build_plain(args):
    """What a user would write with TRL alone: load, LoraConfig, SFTConfig, SFTTrainer."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer
    from trl.chat_template_utils import has_generation_markers

    from agents.models import hf_source, plain_copy
    from training.sft import CHATML_TRAINING_TEMPLATE

    path, gguf_file = hf_source(args.model)
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(path, **extra)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **extra)
    if gguf_file:
        model = plain_copy(model)
    rows = load_dataset("json", data_files=str(Path(args.dataset_name) / "sft_train.jsonl"), split="train")
    cuda = torch.cuda.is_available()
    config = SFTConfig(
        **common_flags(args), assistant_only_loss=True, bf16=cuda, gradient_checkpointing=cuda,
        chat_template_path=None if has_generation_markers(tokenizer.chat_template) else str(CHATML_TRAINING_TEMPLATE),
    )
    lora = LoraConfig(r=SETTINGS["lora_r"], lora_alpha=SETTINGS["lora_alpha"], lora_dropout=0.05,
                      target_modules=SETTINGS["targets"], task_type="CAUSAL_LM")
    return SFTTrainer(model=model, args=config, train_dataset=rows.select_columns(["messages"]),
                      processing_class=tokenizer, peft_config=lora)


if __name__ == "__main__":
    main()
