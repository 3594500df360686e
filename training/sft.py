"""`python -m training.sft`: LoRA supervised fine-tuning on the rows `python -m training.dataset` exports.

CPU demo (SmolLM2-135M, a few minutes on 2 cores):

    python -m training.sft --config configs/sft_demo.yaml --dataset_name runs/demo-data --output_dir runs/demo-adapter

The paper's QLoRA recipe on one GPU (pick the model with --model_name_or_path, see the preset's comments):

    python -m training.sft --config configs/sft_paper.yaml --dataset_name runs/CHN-data --output_dir runs/CHN-sft

Several GPUs, one process each (effective batch = per device x gradient accumulation x processes; more in
training/README.md, nodes and torchrun included):

    accelerate launch --multi_gpu --num_processes 4 -m training.sft --config configs/sft_paper.yaml \
        --gradient_accumulation_steps 1 ...

Every field of the YAML is also a flag (TRL's names) and the command line wins. Rerunning a command resumes
from the last checkpoint in output_dir; use a new output_dir to start over.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from training.common import (
    ModelConfig,
    OneLineParser,
    ScriptArguments,
    SFTConfig,
    TrainingSetupError,
    check_messages,
    load_base,
    load_splits,
    load_tokenizer,
    parse,
    row_label,
    selected_rows,
)
from training.lengths import announce, check_prediction, measure_sft, measure_splits, rows_used
from training.run import console_logging, train_and_save

log = logging.getLogger(__name__)

CHATML_TRAINING_TEMPLATE = Path(__file__).with_name("chat_templates") / "chatml_generation.jinja"


@dataclass
class SFTScriptArguments(ScriptArguments):
    views: str = field(
        default="all",
        metadata={"help": "Comma-separated row views to train on: dialogue (both perspectives), intent; "
                          "all (default): whatever the export holds."},
    )


def make_parser() -> OneLineParser:
    return OneLineParser((SFTScriptArguments, SFTConfig, ModelConfig), prog="python -m training.sft")


def build_trainer(script_args: SFTScriptArguments, training_args: SFTConfig, model_args: ModelConfig):
    """(SFTTrainer ready to train, provenance record). Data problems surface before the model loads."""
    from trl import SFTTrainer, get_peft_config

    splits, source = load_splits(script_args, "sft")

    def check(split, name: str) -> None:
        if "messages" not in split.column_names:
            raise TrainingSetupError(f"{row_label(source, name, 0)}: SFT rows need a 'messages' column")
        for i, messages in enumerate(split["messages"]):
            check_messages(messages, row_label(source, name, i))

    raw_train, train, evaluation = selected_rows(script_args, splits, source, check, "view", "views", "training rows")

    tokenizer = load_tokenizer(model_args)
    template = choose_chat_template(tokenizer, raw_train, training_args, source, script_args.dataset_train_split)
    truncation = measure_splits(
        (("train", script_args.dataset_train_split, train), ("eval", script_args.dataset_test_split, evaluation)),
        source, lambda rows, labels: measure_sft(tokenizer, rows["messages"], training_args, labels.__getitem__),
        training_args.max_length)
    if training_args.process_index == 0:
        announce(truncation, log)
    train = train.select_columns(["messages"])
    evaluation = evaluation.select_columns(["messages"]) if evaluation is not None else None

    model, tokenizer, model_notes = load_base(model_args)
    trainer = SFTTrainer(
        model=model, args=training_args, train_dataset=train, eval_dataset=evaluation, processing_class=tokenizer,
        peft_config=get_peft_config(model_args) if model_args.use_peft else None,
    )
    if not training_args.packing:
        check_prediction(truncation, trainer, log)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    record = {
        "kind": "sft",
        "model": model_notes,
        "start_adapter": None,
        "cultures": sorted(set(raw_train["culture"])) if "culture" in raw_train.column_names else [],
        "dataset": {
            "source": source, "filter": f"views={script_args.views}",
            "rows_used": rows_used(truncation),
            "truncation": truncation,
        },
        "chat_template": template,
        "parameters": {"trainable": trainable, "total": sum(p.numel() for p in trainer.model.parameters())},
    }
    return trainer, record


def choose_chat_template(tokenizer, rows, training_args: SFTConfig, source: dict, split: str) -> dict:
    """Make sure assistant-only loss has a template with `{% generation %}` markers; say which one is used.

    In order: an explicit --chat_template_path; the model's own template if it has the markers; TRL's patched
    copy for the model families it knows (Llama 3, Qwen 2.5, ...); the ChatML template shipped here for other
    ChatML models (SmolLM2), accepted only if it renders every training row exactly as the model's own
    template does, so the adapter is trained on the text it will see at inference.
    """
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    own = tokenizer.chat_template
    if not isinstance(own, str):
        raise TrainingSetupError("the tokenizer has no (single) chat template: pass --chat_template_path FILE.jinja")
    if training_args.chat_template_path:
        return {"source": training_args.chat_template_path, "sha256": _sha(Path(training_args.chat_template_path))}
    if not training_args.assistant_only_loss or has_generation_markers(own):
        return {"source": "model", "sha256": hashlib.sha256(own.encode()).hexdigest()}
    try:
        patched = get_training_chat_template(tokenizer)
    except ValueError:
        patched = None
    if patched:
        return {"source": "trl training template", "sha256": hashlib.sha256(patched.encode()).hexdigest()}
    if "<|im_start|>" not in own:
        raise TrainingSetupError(
            "the model's chat template has no {% generation %} markers and is not one TRL or clca can patch: pass "
            "--chat_template_path FILE.jinja (with markers) or --assistant_only_loss false"
        )
    shipped = CHATML_TRAINING_TEMPLATE.read_text()
    for i, messages in enumerate(rows["messages"]):
        if tokenizer.apply_chat_template(messages, tokenize=False) != tokenizer.apply_chat_template(
            messages, tokenize=False, chat_template=shipped
        ):
            raise TrainingSetupError(
                f"{row_label(source, split, i)}: {CHATML_TRAINING_TEMPLATE.name} renders this row differently from "
                "the model's own template: pass --chat_template_path FILE.jinja (with generation markers)"
            )
    training_args.chat_template_path = str(CHATML_TRAINING_TEMPLATE)
    source = f"training/chat_templates/{CHATML_TRAINING_TEMPLATE.name}"
    return {"source": source, "sha256": _sha(CHATML_TRAINING_TEMPLATE)}


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


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


if __name__ == "__main__":
    main()
