"""The study's own overhead: `python -m study run` against the same stages run by hand, in one run.

    python bench/study.py                 # puppet role-player, tiny local student, 2 rounds (~3 min, 2 cores)
    python bench/study.py --rounds 3 --episodes 16

Both ways run the demo study's arms (base, cultural_prompt, clca, culture_free) with the puppet model playing,
observing and judging and a tiny random Llama as the student, so the stages cost little and what the study adds
(planning, hashing the nodes, the LangGraph steps, request.json / done.json, matching the control's rows, the
report) is what the ratio shows. "By hand" is what a user types, stage by stage, each command's `main(argv)` in one
process (so neither way pays Python start-ups the other does not): graphs.adapt, graphs.simulate, graphs.judge,
training.dataset, training.sft, eval.wvs, with the control's rows matched by a few lines of Python, and no report.
Each trial runs in its own process in a fresh folder, alternating the order each round so that load on a shared
machine hits both alike. The ratio is study / by hand of the median wall seconds (target <= 1.05).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CULTURE = "CHN"
OVERRIDES = {"max_steps": 2, "per_device_train_batch_size": 2, "lora_r": 4, "lora_alpha": 8,
             "lora_target_modules": ["q_proj", "v_proj"], "save_strategy": "no", "disable_tqdm": True,
             "max_length": 2048}
EVAL = {"items": "clca44:test", "method": "logprob", "formats": "default,reversed", "bootstrap": 50}


def study_yaml(student: str, seeds: int, episodes: int) -> str:
    return f"""name: bench
cultures: [{CULTURE}]
roleplay: {{model: puppet, concurrency: 8}}
students: [{{name: tiny, model: {student}}}]
arms: [base, cultural_prompt, clca, culture_free]
seeds: [42]
training:
  preset: {ROOT / "configs" / "sft_demo.yaml"}
  overrides: {json.dumps(OVERRIDES)}
sizes: {{seeds: {seeds}, episodes: {episodes}, samples: 2, rounds: 3}}
evaluation: {{items: [{EVAL["items"]}], readings: [{EVAL["method"]}], formats: [default, reversed],
             bootstrap: {EVAL["bootstrap"]}}}
"""


def by_study(work: Path, student: str, seeds: int, episodes: int) -> None:
    from study.config import load_study
    from study.run import run_study

    config = work / "study.yaml"
    config.write_text(study_yaml(student, seeds, episodes))
    run_study(load_study(config), work / "out", log=lambda line: None)


def by_hand(work: Path, student: str, seeds: int, episodes: int) -> None:
    import agents.prompts
    from eval.wvs import run as wvs
    from graphs import adapt, judge, simulate
    from study.pipeline import UNGROUNDED
    from training import dataset, sft

    cultural, free = str(work / "cultural.db"), str(work / "free.db")
    ungrounded = work / "ungrounded"  # the control's templates, as the study writes them
    ungrounded.mkdir()
    for name in UNGROUNDED:
        shutil.copyfile(Path(agents.prompts.__file__).with_name(f"{name}_ungrounded.j2"), ungrounded / f"{name}.j2")
    common = ["--culture", CULTURE, "--model", "puppet", "--no-progress"]
    play = ["--episodes", str(episodes), "--samples", "2", "--max-turns", "3"]
    adapt.main([*common, "--n", str(seeds), "--db", cultural])
    simulate.main([*common, *play, "--db", cultural])
    simulate.main([*common, *play, "--db", free, "--use-seeds", "--prompts", str(ungrounded)])
    for db, out in ((cultural, "data-clca"), (free, "data-free")):
        judge.main([*common, "--db", db])
        dataset.main(["--culture", CULTURE, "--db", db, "--out", str(work / out), "--judge-model", "puppet",
                      *(["--prompts", str(ungrounded)] if db == free else [])])
    # the control trains on as many rows as clca: a seeded draw of its rows
    rows = (work / "data-free" / "sft_train.jsonl").read_text().splitlines()
    target = len((work / "data-clca" / "sft_train.jsonl").read_text().splitlines())
    rng = random.Random(0)
    drawn = rng.sample(rows, target) if len(rows) >= target else rows + rng.choices(rows, k=target - len(rows))
    (work / "data-free" / "sft_train.jsonl").write_text("".join(line + "\n" for line in drawn))
    flags = [f for k, v in OVERRIDES.items()
             for f in (f"--{k}", *(str(x).lower() if isinstance(x, bool) else str(x)
                                   for x in (v if isinstance(v, list) else [v])))]
    evaluate = ["--countries", CULTURE, "--items", EVAL["items"], "--method", EVAL["method"], "--formats",
                EVAL["formats"], "--bootstrap", str(EVAL["bootstrap"]), "--model", student, "--no-plots"]
    wvs.main([*evaluate, "--out", str(work / "base.json")])
    wvs.main([*evaluate, "--prompt", "cultural", "--out", str(work / "cultural_prompt.json")])
    for data in ("data-clca", "data-free"):
        sft.main(["--config", str(ROOT / "configs" / "sft_demo.yaml"), "--model_name_or_path", student,
                  "--dataset_name", str(work / data), "--output_dir", str(work / f"adapter-{data}"), "--seed", "42",
                  "--data_seed", "42", "--report_to", "none", *flags])
        wvs.main([*evaluate, "--adapter", str(work / f"adapter-{data}"), "--out", str(work / f"{data}.json")])


def worker(way: str, work: Path, student: str, seeds: int, episodes: int) -> None:
    import contextlib
    import io
    import os

    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    import study.run  # noqa: F401 - both ways pay the same imports before the clock starts
    import training.sft  # noqa: F401

    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        (by_study if way == "study" else by_hand)(work, student, seeds, episodes)
    print(json.dumps({"way": way, "seconds": round(time.perf_counter() - started, 3)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="trials of each way (default 2)")
    parser.add_argument("--seeds", type=int, default=8, help="SOTOPIA seeds adapted (default 8)")
    parser.add_argument("--episodes", type=int, default=16, help="episodes per pipeline (default 16)")
    parser.add_argument("--worker", choices=["study", "hand"], help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--student", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, Path(args.work), args.student, args.seeds, args.episodes)

    from tests.tiny_model import build_tiny_model

    base = Path(tempfile.mkdtemp(prefix="clca-bench-study-"))
    student = str(build_tiny_model(base / "tiny"))
    seconds: dict[str, list[float]] = {"study": [], "hand": []}
    try:
        for round_ in range(args.rounds):
            for way in ("study", "hand") if round_ % 2 == 0 else ("hand", "study"):
                work = base / f"{way}-{round_}"
                work.mkdir()
                cmd = [sys.executable, __file__, "--worker", way, "--work", str(work), "--student", student,
                       "--seeds", str(args.seeds), "--episodes", str(args.episodes)]
                line = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout.splitlines()[-1]
                seconds[way].append(json.loads(line)["seconds"])
                print(f"round {round_} {way}: {seconds[way][-1]:.2f} s", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    study, hand = (statistics.median(seconds[w]) for w in ("study", "hand"))
    print(json.dumps({"study_s": study, "by_hand_s": hand, "ratio": round(study / hand, 3),
                      "trials": seconds}, indent=1))


if __name__ == "__main__":
    main()
