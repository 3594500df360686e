"""`python -m training.dpo`: preference training (DPO) of a LoRA adapter on exported CLCA pairs.

The CLCA paper trains with SFT only; DPO is this project's extension, on the pairs `training.dataset` writes
(`judged`: a kept vs a filtered-out reply; `contrastive`: the culture-grounded persona's reply vs the same
persona's reply without culture grounding).

From the CPU demo's SFT adapter (the base model is read from the adapter's provenance):

    python -m training.dpo --config configs/dpo_demo.yaml --adapter runs/demo-adapter --dataset_name runs/demo-data

From a base model, with a fresh LoRA adapter:

    python -m training.dpo --config configs/dpo_demo.yaml --model_name_or_path smollm2 --output_dir runs/demo-dpo

Several GPUs or nodes: `accelerate launch --multi_gpu --num_processes N -m training.dpo ...` with the same flags
(training/README.md). Every YAML field is also a flag; rerunning a command resumes from the last checkpoint in
output_dir.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from training.common import (
    DPOConfig,
    ModelConfig,
    OneLineParser,
    ScriptArguments,
    TrainingSetupError,
    adapter_base_spec,
    check_messages,
    load_base,
    load_splits,
    load_tokenizer,
    parse,
    row_label,
    selected_rows,
)
from training.lengths import announce, check_prediction, measure_dpo, measure_splits, rows_used
from training.run import console_logging, train_and_save

log = logging.getLogger(__name__)


@dataclass
class DPOScriptArguments(ScriptArguments):
    pair_kinds: str = field(
        default="all",
        metadata={"help": "Comma-separated pair kinds to train on: judged, contrastive; all (default): whatever "
                          "the export holds."},
    )
    adapter: str | None = field(
        default=None,
        metadata={"help": "Start from this SFT adapter folder (trained further; its starting copy is the DPO "
                          "reference). --model_name_or_path then defaults to the adapter's base model."},
    )


def make_parser() -> OneLineParser:
    return OneLineParser((DPOScriptArguments, DPOConfig, ModelConfig), prog="python -m training.dpo")


def build_trainer(script_args: DPOScriptArguments, training_args: DPOConfig, model_args: ModelConfig):
    """(DPOTrainer ready to train, provenance record). Data problems surface before the model loads."""
    from peft import PeftModel
    from trl import DPOTrainer, get_peft_config

    splits, source = load_splits(script_args, "dpo")

    def check(split, name: str) -> None:
        if missing := {"prompt", "chosen", "rejected"} - set(split.column_names):
            raise TrainingSetupError(f"{row_label(source, name, 0)}: DPO rows need columns {sorted(missing)}")
        for i, row in enumerate(split.select_columns(["prompt", "chosen", "rejected"])):
            _check_pair(row, row_label(source, name, i))

    raw_train, train, evaluation = selected_rows(script_args, splits, source, check, "kind", "pair_kinds", "pairs")

    start_adapter = None
    if script_args.adapter:
        adapter_dir = Path(script_args.adapter)
        if not (adapter_dir / "adapter_config.json").is_file():
            raise TrainingSetupError(f"--adapter {adapter_dir}: not an adapter folder (no adapter_config.json)")
        model_args.model_name_or_path = model_args.model_name_or_path or adapter_base_spec(adapter_dir)
        weights = adapter_dir / "adapter_model.safetensors"
        start_adapter = {
            "path": str(adapter_dir),
            "sha256": hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else None,
        }
    tokenizer = load_tokenizer(model_args)
    truncation = measure_splits(
        (("train", script_args.dataset_train_split, train), ("eval", script_args.dataset_test_split, evaluation)),
        source, lambda rows, _: measure_dpo(tokenizer, list(rows.select_columns(["prompt", "chosen", "rejected"])),
                                            training_args),
        training_args.max_length)
    if training_args.process_index == 0:
        announce(truncation, log)
    train = train.select_columns(["prompt", "chosen", "rejected"])
    evaluation = evaluation.select_columns(["prompt", "chosen", "rejected"]) if evaluation is not None else None

    model, tokenizer, model_notes = load_base(model_args)
    peft_config = None
    if start_adapter:
        # ref_model=None below: TRL keeps the adapter's starting weights as the reference policy.
        model = PeftModel.from_pretrained(model, script_args.adapter, is_trainable=True)
    elif model_args.use_peft:
        peft_config = get_peft_config(model_args)
    trainer = DPOTrainer(
        model=model, ref_model=None, args=training_args, train_dataset=train, eval_dataset=evaluation,
        processing_class=tokenizer, peft_config=peft_config,
    )
    check_prediction(truncation, trainer, log)
    own = tokenizer.chat_template or ""
    record = {
        "kind": "dpo",
        "model": model_notes,
        "start_adapter": start_adapter,
        "cultures": sorted(set(raw_train["culture"])) if "culture" in raw_train.column_names else [],
        "dataset": {
            "source": source, "filter": f"pair_kinds={script_args.pair_kinds}",
            "rows_used": rows_used(truncation),
            "truncation": truncation,
        },
        "chat_template": {"source": "model", "sha256": hashlib.sha256(own.encode()).hexdigest()},
        "parameters": {
            "trainable": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in trainer.model.parameters()),
        },
    }
    return trainer, record


def _check_pair(row: dict, where: str) -> None:
    """A conversational preference pair: a prompt conversation and one assistant reply on each side."""
    if not isinstance(row["prompt"], list) or not row["prompt"]:
        raise TrainingSetupError(f"{where}: 'prompt' must be a non-empty list of messages")
    for side in ("chosen", "rejected"):
        reply = row[side]
        if not isinstance(reply, list) or not reply or any(m.get("role") != "assistant" for m in reply):
            raise TrainingSetupError(f"{where}: '{side}' must be a list of assistant messages")
    check_messages(row["prompt"] + row["chosen"], where)


def main(argv: list[str] | None = None) -> dict:
    console_logging()
    script_args, training_args, model_args = parse(make_parser(), argv)
    try:
        trainer, record = build_trainer(script_args, training_args, model_args)
    except TrainingSetupError as exc:
        sys.exit(f"error: {exc}")
    metrics = train_and_save(trainer, record, script_args, training_args, model_args)
    trainer.accelerator.print(f"adapter, tokenizer and model card written to {training_args.output_dir}")
    return metrics


if __name__ == "__main__":
    main()
