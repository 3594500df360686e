"""Train, then leave a self-describing output folder: adapter + tokenizer, model card, provenance, log.

Shared by `training.sft` and `training.dpo`. Everything written here is enough to say later which base model,
which data files (by hash), which config and which commit produced an adapter, and how training went.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from agents.provenance import git_state

log = logging.getLogger(__name__)


def console_logging() -> None:
    """The training package's INFO lines (resuming, merging) on stderr. Not the root logger's level: a process that
    trains and goes on (`study run`) would otherwise print every library's INFO lines, httpx's one per request."""
    logger = logging.getLogger("training")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)

TEMPLATES = Path(__file__).with_name("templates")


def train_and_save(trainer, record: dict, script_args, training_args, model_args) -> dict:
    """Train (resuming from the last complete checkpoint in output_dir if there is one), evaluate, save; return
    metrics."""
    out = Path(training_args.output_dir)
    resume = training_args.resume_from_checkpoint
    if resume is None and out.is_dir():
        resume = last_checkpoint(out)  # rerunning the same command continues an interrupted run
    if resume:
        log.info("resuming from %s", resume)
    result = trainer.train(resume_from_checkpoint=resume)
    metrics = {"train": result.metrics}
    if trainer.eval_dataset is not None:
        metrics["eval"] = trainer.evaluate()

    model = trainer.model
    if hasattr(model, "peft_config"):
        # The spec, not the resolved path, so `load_model(spec, adapter=DIR)` and the card name the same model.
        for config in model.peft_config.values():
            config.base_model_name_or_path = record["model"]["spec"]
    trainer.save_model(str(out))
    if trainer.is_world_process_zero():
        record.update(
            resumed_from=str(resume) if resume else None,
            batch=batch_record(training_args),
            metrics=metrics,
            config={
                "script": dataclasses.asdict(script_args),
                "training": training_args.to_dict(),
                "model": dataclasses.asdict(model_args),
            },
        )
        write_record(out, record, trainer.state.log_history)
        if script_args.merge_adapter:
            merge_adapter(record["model"]["spec"], out, out / "merged")
    trainer.accelerator.wait_for_everyone()
    return metrics


def batch_record(training_args) -> dict:
    """Processes (`accelerate launch`/`torchrun` ranks), per-device and effective batch size (per device x gradient
    accumulation x processes: the rows behind one optimizer step)."""
    processes = training_args.world_size
    per_device, accumulation = training_args.per_device_train_batch_size, training_args.gradient_accumulation_steps
    return {"processes": processes, "per_device": per_device, "gradient_accumulation_steps": accumulation,
            "effective": per_device * accumulation * processes, "use_cpu": training_args.use_cpu}


def last_checkpoint(out: Path) -> str | None:
    """The newest checkpoint the Trainer finished writing, or None.

    The Trainer writes a checkpoint's weights first and its trainer_state.json last; a run killed in between
    leaves a folder that `transformers.trainer_utils.get_last_checkpoint` would pick and the resume would fail
    on, so a checkpoint counts only once its state file is there and reads as JSON.
    """
    done = []
    for folder in out.glob("checkpoint-*"):
        step = folder.name.removeprefix("checkpoint-")
        try:
            json.loads((folder / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        if step.isdigit():
            done.append((int(step), folder))
    return str(max(done)[1]) if done else None


def write_record(out: Path, record: dict, log_history: list[dict]) -> None:
    """training_log.json, provenance.json and the README.md model card."""
    import torch

    record = {
        **record,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git": git_state(),
        "versions": _versions(),
        "device": {
            "cuda_devices": torch.cuda.device_count(),
            "name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        },
    }
    (out / "training_log.json").write_text(json.dumps(log_history, indent=2))
    (out / "provenance.json").write_text(json.dumps(record, indent=2, default=str))
    env = Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined, keep_trailing_newline=True)
    card = env.get_template("model_card.md.j2").render(r=record, name=out.name, out=str(out))
    (out / "README.md").write_text(card)


def merge_adapter(spec: str, adapter_dir: Path, out: Path) -> Path:
    """Base weights + LoRA folded into one plain model folder (with the adapter's tokenizer).

    The base is reloaded unquantised (merging into 4-bit weights loses precision), in float32 on the CPU.
    """
    from peft import PeftModel
    from transformers import AutoTokenizer

    from training.common import ModelConfig, load_base

    base, _, _ = load_base(ModelConfig(model_name_or_path=spec, dtype="float32"))
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(out)
    log.info("merged model written to %s", out)
    return out


def _versions() -> dict:
    import importlib.metadata as md

    names = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes")
    found = {}
    for name in names:
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return found
