"""`accelerate launch --multi_gpu --num_processes 2 -m training.sft` on CPU: one DDP run over gloo, one record and one
card written by rank 0, the process count and effective batch recorded, and a run killed after a checkpoint resumed
by rerunning the same command. About 30 seconds on two idle cores (two launches of two processes each).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_training import read_rows, tiny_args

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="gloo DDP and SIGKILL")

TIMEOUT_S = 300


def launch(args: list[str], kill_at: str | None = None) -> subprocess.CompletedProcess:
    """Two processes of `training.sft` under `accelerate launch`, through tests/killer.py (a planted kill if given).

    CUDA is hidden so the run is the CPU one on any machine; a free port keeps parallel runs apart."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(port), "-m", "tests.killer", "training.sft", *args]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("CLCA_KILL_AT", None)
    if kill_at:
        env["CLCA_KILL_AT"] = kill_at
    return subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


def test_two_cpu_processes_train_one_ddp_run_and_a_killed_run_resumes(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    args = tiny_args(tiny_model_dir, out, "--max_steps", "4", "--save_steps", "2", "--seed", "7")
    # Both ranks die as their third step begins: checkpoint-2 is complete, the run is not.
    killed = launch(args, kill_at="step:3")
    assert killed.returncode != 0, killed.stderr[-3000:]
    assert "SIGKILL" in killed.stdout + killed.stderr
    assert json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2
    assert not (out / "provenance.json").exists()

    done = launch(args)  # the same command again
    assert done.returncode == 0, done.stderr[-3000:]
    assert (done.stdout + done.stderr).count(f"model card written to {out}") == 1  # rank 0 only
    provenance = json.loads((out / "provenance.json").read_text())
    assert Path(provenance["resumed_from"]).name == "checkpoint-2"
    assert provenance["batch"] == {"processes": 2, "per_device": 2, "gradient_accumulation_steps": 1,
                                   "effective": 4, "use_cpu": True}
    log = json.loads((out / "training_log.json").read_text())
    losses = {e["step"]: e for e in log if "loss" in e}
    assert sorted(losses) == [1, 2, 3, 4]
    # One DDP run: each step takes 2 rows on each of 2 processes, so the 8 rows are one epoch at step 2
    # (two independent processes would each need 4 steps per epoch).
    rows = len(read_rows("sft_train.jsonl"))
    assert losses[2]["epoch"] == pytest.approx(2 * 2 * 2 / rows)
    card = (out / "README.md").read_text()
    assert "CLCA SFT adapter" in card and "| processes | 2 (CPU) |" in card
    assert "| 2 x 1 x 2 = 4 (effective) |" in card
    assert sorted(p.name for p in out.glob("provenance*.json")) == ["provenance.json"]
    assert (out / "adapter_model.safetensors").is_file()
