"""Which rows keep a trainable token at `max_length`, decided as TRL decides it, before the model loads.

TRL truncates every tokenised row to `max_length` and then drops, without a word, the rows left with nothing
to learn from (TRL 1.16):

- SFT (`SFTTrainer._prepare_dataset`): labels are the input ids where the assistant mask is set
  (`assistant_only_loss`; every token otherwise), the row is cut to `max_length` by `truncation_mode`
  (`keep_start`: the first tokens, `keep_end`: the last), and a row whose kept labels are all masked is dropped.
  With `packing`, rows are not dropped: `bfd` packing cuts each row to its first `max_length` tokens, so a row
  cut before its first assistant token stays in the data and adds no loss; the other strategies cut nothing.
- DPO (`DPOTrainer._prepare_dataset`): the prompt is the common prefix of the tokenised prompt with each of
  prompt + chosen and prompt + rejected; with `keep_start` a row whose prompt alone fills `max_length` is dropped
  (the collator would cut every completion token); with `keep_end` nothing is dropped.

The functions here tokenise the rows with the same tokenizer and chat template the trainer will use and return,
per row, None (trained on) or the reason it is not, so the run can refuse a dataset left empty and report the
rows it drops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from training.common import ROW, TrainingSetupError, row_label


@dataclass
class Measured:
    """Per-row outcome of truncation: `dropped[i]` is None when row i keeps a trainable token, else the reason;
    `cut` counts the kept rows that lost some trainable tokens to truncation."""

    dropped: list[str | None]
    cut: int

    @property
    def kept(self) -> int:
        return sum(reason is None for reason in self.dropped)


def sft_training_template(tokenizer, training_args) -> str | None:
    """The chat template SFTTrainer renders rows with (None: the tokenizer's own), as `SFTTrainer.__init__` picks it:
    a `.jinja` `chat_template_path` replaces the tokenizer's template, and with `assistant_only_loss` a template
    without `{% generation %}` markers is swapped for TRL's training copy of it.

    Sets the tokenizer's template as the trainer will (the tokenizer is this measurement's own copy).
    """
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    path = training_args.chat_template_path
    if path is not None:
        if not (Path(path).is_file() and path.endswith((".jinja", ".j2"))):
            raise TrainingSetupError(f"--chat_template_path {path}: expected a .jinja file")
        tokenizer.chat_template = Path(path).read_text(encoding="utf-8")
    if training_args.assistant_only_loss and not has_generation_markers(tokenizer.chat_template):
        return get_training_chat_template(tokenizer)
    return None


def measure_sft(tokenizer, conversations: list[list[dict]], training_args, label: Callable[[int], str]) -> Measured:
    """Which of `conversations` (TRL `messages` lists) SFT trains on at `training_args.max_length`.

    Raises TrainingSetupError naming the row (`label(i)`) if the assistant mask of a row is empty before any
    truncation (TRL would stop with a RuntimeError after the model has loaded).
    """
    template = sft_training_template(tokenizer, training_args)
    only_assistant = training_args.assistant_only_loss
    max_length, mode = training_args.max_length, training_args.truncation_mode
    if training_args.packing:
        if training_args.packing_strategy != "bfd":
            max_length = None  # the row is split across packed sequences, not cut
        mode = "keep_start"
    if mode not in ("keep_start", "keep_end"):
        raise TrainingSetupError(f"--truncation_mode {mode}: expected keep_start or keep_end")
    dropped, cut = [], 0
    for i, messages in enumerate(conversations):
        out = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, chat_template=template,
            return_assistant_tokens_mask=only_assistant,
        )
        n = len(out["input_ids"])
        trainable = [p for p, bit in enumerate(out["assistant_masks"])
                     if bit] if only_assistant else list(range(n))
        if not trainable:
            raise TrainingSetupError(
                f"{label(i)}: the chat template marks no assistant token of this row for the loss (its "
                "{% generation %} markers miss the replies): pass --chat_template_path FILE.jinja"
            )
        if max_length is None or n <= max_length:
            dropped.append(None)
            continue
        start = 0 if mode == "keep_start" else n - max_length
        kept = [p for p in trainable if start <= p < start + max_length]
        if kept:
            dropped.append(None)
            cut += len(kept) < len(trainable)
        elif mode == "keep_start":
            dropped.append(f"{n} tokens, first trainable token at {trainable[0]}: none in the first {max_length}")
        else:
            dropped.append(f"{n} tokens, last trainable token at {trainable[-1]}: none in the last {max_length}")
    return Measured(dropped, cut)


def measure_dpo(tokenizer, rows: list[dict], training_args) -> Measured:
    """Which of `rows` (conversational `prompt`, `chosen`, `rejected`) DPO trains on at `training_args.max_length`.

    Tokenises as `DPOTrainer` does, with the tokenizer's own chat template.
    """
    from trl.data_utils import common_prefix_length

    max_length, mode = training_args.max_length, training_args.truncation_mode
    dropped, cut = [], 0
    for row in rows:
        prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=True, return_dict=True,
                                               add_generation_prompt=True)["input_ids"]
        sides = [tokenizer.apply_chat_template(row["prompt"] + row[side], tokenize=True,
                                               return_dict=True)["input_ids"] for side in ("chosen", "rejected")]
        prompt_len = min(common_prefix_length(prompt, ids) for ids in sides)
        if max_length is None or mode != "keep_start":
            dropped.append(None)
        elif prompt_len >= max_length:
            dropped.append(f"prompt of {prompt_len} tokens fills max_length {max_length}")
        else:
            dropped.append(None)
            cut += max(len(ids) for ids in sides) > max_length
    return Measured(dropped, cut)


def report(measured: Measured, labels: list[str], split: str, max_length: int | None) -> dict:
    """The record of one split's truncation: counts, and every dropped row's label with its reason.

    Raises TrainingSetupError (one line) when no row is left to train or evaluate on.
    """
    drops = [{"row": labels[i], "reason": reason} for i, reason in enumerate(measured.dropped) if reason]
    if drops and not measured.kept:
        raise TrainingSetupError(
            f"max_length {max_length}: none of the {len(drops)} {split} rows keeps a trainable token after "
            f"truncation (e.g. {drops[0]['row']}: {drops[0]['reason']}); raise --max_length"
        )
    return {"rows": len(measured.dropped), "kept": measured.kept, "dropped": len(drops), "cut_short": measured.cut,
            "max_length": max_length, "dropped_rows": drops}


def measure_splits(splits, source: dict, measure: Callable[[object, list[str]], Measured], max_length: int | None
                   ) -> dict:
    """{key: `report`} for each split given as (key, split name, rows or None): `measure(rows, labels)` measures
    the rows (each carries its file line in the ROW column, so labels name the right line after filtering)."""
    truncation = {}
    for key, split_name, rows in splits:
        if rows is None:
            continue
        labels = [row_label(source, split_name, line) for line in rows[ROW]]
        truncation[key] = report(measure(rows, labels), labels, split_name, max_length)
    return truncation


def announce(truncation: dict, log) -> None:
    """One warning per split that loses rows: how many, which (the first few) and why; the full list is in
    provenance.json and the model card."""
    for split, r in truncation.items():
        if r is None or not r["dropped"]:
            continue
        first = "; ".join(f"{d['row']} ({d['reason']})" for d in r["dropped_rows"][:3])
        more = f"; and {r['dropped'] - 3} more" if r["dropped"] > 3 else ""
        log.warning("max_length %s: %d of %d %s rows keep no trainable token after truncation and are left "
                    "out: %s%s", r["max_length"], r["dropped"], r["rows"], split, first, more)


def rows_used(truncation: dict) -> dict:
    """{"train": rows trained on, "eval": rows evaluated on or None}."""
    return {key: truncation[key]["kept"] if key in truncation else None for key in ("train", "eval")}


def check_prediction(truncation: dict, trainer, log) -> None:
    """Warn when the trainer's prepared data holds another number of rows than measured here (a TRL release whose
    truncation rule differs): the record then gives the trainer's count, which is what it trains on."""
    for key, dataset in (("train", trainer.train_dataset), ("eval", trainer.eval_dataset)):
        if key in truncation and dataset is not None and dataset.num_rows != truncation[key]["kept"]:
            log.warning("%s rows after TRL's preparation: %d, measured before loading the model: %d; recording TRL's",
                        key, dataset.num_rows, truncation[key]["kept"])
            truncation[key]["kept"] = dataset.num_rows
