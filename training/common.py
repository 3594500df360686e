"""What `training.sft` and `training.dpo` share: argument classes, device defaults, data and model loading.

TRL's scripts are the model: one `TrlParser` over (script args, trainer config, `ModelConfig`), so a YAML file
drives a run and every field is also a command-line flag. The config subclasses here only change defaults
that would otherwise break or slow a CPU run, and widen `lora_alpha` to a float for the paper's alpha 0.1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import trl

from agents.cli import OneLineErrors
from agents.models import ModelSpecError, hf_source, load_causal_lm

log = logging.getLogger(__name__)


class TrainingSetupError(Exception):
    """A problem with the run's config, data or model, reported as one line before any training starts."""


# ---------------------------------------------------------------- arguments


@dataclass
class ScriptArguments:
    """Data and run options shared by SFT and DPO; names follow TRL's `ScriptArguments`."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Folder written by `python -m training.dataset`, or anything `datasets.load_dataset` "
                          "accepts (a hub id, a folder of data files)."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name, if any."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str = field(
        default="validation",
        metadata={"help": "Split for the final evaluation (and for eval_strategy); skipped when absent."},
    )
    merge_adapter: bool = field(
        default=False,
        metadata={"help": "After training, also write base + adapter merged into a plain model under "
                          "<output_dir>/merged (full size: never commit it)."},
    )


class DeviceDefaults:
    """Mixin for TRL configs: precision and checkpointing follow the device unless set explicitly.

    TRL defaults to bf16 and gradient checkpointing, which fail (bf16) or only cost time (checkpointing)
    on a CPU. Unset values become: bf16 on a GPU that supports it, fp16 on an older GPU, fp32 on CPU;
    gradient checkpointing on a GPU, off on CPU. Without CUDA (or Apple's MPS) `use_cpu` is set: under
    `accelerate launch` the processes otherwise train independently instead of as one DDP run (gloo).
    """

    def __post_init__(self):
        import torch

        cuda = torch.cuda.is_available()
        if not cuda and not torch.backends.mps.is_available():
            self.use_cpu = True
        if self.bf16 is None and not self.fp16:
            self.bf16 = cuda and torch.cuda.is_bf16_supported()
            self.fp16 = cuda and not self.bf16
        if self.gradient_checkpointing is None:
            self.gradient_checkpointing = cuda
        super().__post_init__()


@dataclass
class SFTConfig(DeviceDefaults, trl.SFTConfig):
    """TRL's `SFTConfig`; differs in: bf16/fp16 and gradient_checkpointing follow the device, loss on
    assistant tokens only (`assistant_only_loss=True`)."""

    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Recompute activations to save memory. Default: on for a GPU, off on CPU."}
    )
    assistant_only_loss: bool = field(
        default=True, metadata={"help": "Compute the loss on assistant tokens only (the CLCA recipe)."}
    )


@dataclass
class DPOConfig(DeviceDefaults, trl.DPOConfig):
    """TRL's `DPOConfig`; differs in: bf16/fp16 and gradient_checkpointing follow the device."""

    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Recompute activations to save memory. Default: on for a GPU, off on CPU."}
    )


@dataclass
class ModelConfig(trl.ModelConfig):
    """TRL's `ModelConfig`; differs in: `lora_alpha` is a float (the paper uses 0.1), `dtype` defaults to
    the device (bfloat16 on a GPU, float32 on CPU), `use_peft=True`. `model_name_or_path` takes a model spec:
    `smollm2`, a local folder or a hub id."""

    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA alpha (scaling = alpha / r)."})
    dtype: str | None = field(
        default=None,
        metadata={"help": "dtype of the base weights. Default: bfloat16 on a GPU, float32 on CPU.",
                  "choices": ["auto", "bfloat16", "float16", "float32"]},
    )
    use_peft: bool = field(default=True, metadata={"help": "Train a LoRA adapter (off: full fine-tuning)."})


# Secrets come from the environment (HF_TOKEN, OPENAI_API_KEY): one given as an option would be pickled into
# the Trainer's training_args.bin, and one in a config file's `env:` block lives in a file that gets shared.
SECRET_OPTIONS = ("hub_token",)
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD", re.IGNORECASE)


class OneLineParser(OneLineErrors, trl.TrlParser):
    """`TrlParser` whose argument errors are one line (`error: ...`) instead of a usage dump, and whose config
    file values are read as the command line would read them (type and choices checked), not taken as they are."""

    def error(self, message):
        sys.exit(f"error: {self.one_line(message)}")

    def set_defaults_with_config(self, **kwargs) -> list[str]:
        actions = {action.dest: action for action in self._actions}
        hints: dict = {}
        for kind in self.dataclass_types:
            hints.update(typing.get_type_hints(kind))
        for key, value in kwargs.items():
            if key in actions:
                kwargs[key] = _config_value(actions[key], key, value, hints.get(key), self.error)
        return super().set_defaults_with_config(**kwargs)


def _refuse_env_secrets(path: Path) -> None:
    """TrlParser copies a config's `env:` block into os.environ; a key there would sit in a shared file."""
    import yaml

    try:
        env = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("env") or {}
    except (yaml.YAMLError, ValueError, RecursionError, AttributeError):
        return  # not a mapping or not YAML: TrlParser reports it
    if isinstance(env, dict) and (secret := next((k for k in env if SECRET_NAME.search(str(k))), None)):
        sys.exit(f"error: --config {path}: env: {secret}: secrets come from the environment, not from a config file")


def _config_value(action, key: str, value, hint, error):
    """A config file's value as argparse would have turned it into the option's type; `error` otherwise.

    A mapping or list stays as it is where the field's type allows one: transformers puts `dict | str` and
    `str | list[str]` fields (lr_scheduler_kwargs, report_to) on the command line as `str` and reads the
    structured value itself."""
    if key in SECRET_OPTIONS and value is not None:
        error(f"config {key}: secrets come from the environment (HF_TOKEN), not from a config file")
    if value is None or action.type is None:
        return value
    allowed = {typing.get_origin(arg) or arg for arg in typing.get_args(hint)}
    if isinstance(value, dict) and dict in allowed or isinstance(value, list) and list in allowed and not action.nargs:
        return value
    many = action.nargs in ("+", "*") and isinstance(value, list)
    values = value if many else [value]
    converted = []
    for v in values:
        if isinstance(v, (dict, list)):
            error(f"config {key}: expected a single value, got {str(v)[:60]}")
        try:
            c = action.type(str(v))
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            error(f"config {key}: {str(v)[:60]!r} is not a valid {getattr(action.type, '__name__', 'value')}")
        if action.choices is not None and c not in action.choices:
            error(f"config {key}: {str(v)[:60]!r} is not one of {', '.join(map(str, action.choices))}")
        converted.append(c)
    return converted if many else converted[0]


def parse(parser: trl.TrlParser, argv: Iterable[str] | None) -> tuple:
    """Parse `--config FILE` plus overrides into the parser's dataclasses; every mistake becomes one line."""
    import yaml

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            sys.exit("error: --config needs a YAML file")
        path = Path(argv[i + 1])
        if not path.is_file():
            sys.exit(f"error: --config {path}: no such file")
        _refuse_env_secrets(path)
    for arg in argv:
        if arg.startswith("--") and arg[2:].replace("-", "_").split("=")[0] in SECRET_OPTIONS:
            sys.exit(f"error: {arg.split('=')[0]}: secrets come from the environment (HF_TOKEN), "
                     "not from the command line")
    try:
        return parser.parse_args_and_config(argv)
    except yaml.YAMLError as exc:
        sys.exit(f"error: config is not valid YAML: {' '.join(str(exc).split())}")
    except (ValueError, TypeError) as exc:  # unknown keys in the YAML, inconsistent TrainingArguments
        sys.exit(f"error: {' '.join(str(exc).split())}")
    except RecursionError:
        sys.exit("error: config is not valid YAML: nested too deeply")


# ---------------------------------------------------------------- data


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_splits(args: ScriptArguments, kind: str):
    """(DatasetDict with train and maybe test split, provenance of the source) for `kind` "sft" or "dpo".

    A folder written by `training.dataset` is read as JSON lines (`<kind>_train.jsonl`, `<kind>_validation.jsonl`
    become the splits "train" and "validation"); anything else goes to `datasets.load_dataset` unchanged.
    """
    import datasets

    if not args.dataset_name:
        raise TrainingSetupError("--dataset_name is required (a folder written by `python -m training.dataset`)")
    folder = Path(args.dataset_name)
    export_files = {split: folder / f"{kind}_{split}.jsonl" for split in ("train", "validation")}
    if export_files["train"].is_file():
        present = {split: p for split, p in export_files.items() if p.is_file()}
        try:
            splits = datasets.load_dataset("json", data_files={s: str(p) for s, p in present.items()})
        except Exception as exc:  # noqa: BLE001 - pyarrow and datasets raise many types for a malformed file
            raise TrainingSetupError(f"{folder}: cannot read {kind} rows ({_first_line(exc)})") from exc
        source = {
            "dataset_name": str(folder),
            "files": {p.name: {"sha256": sha256_file(p), "rows": splits[s].num_rows} for s, p in present.items()},
        }
        for extra in ("stats.json", "README.md"):
            if (folder / extra).is_file():
                source["files"][extra] = {"sha256": sha256_file(folder / extra)}
        return splits, source
    if folder.is_dir() and any(folder.glob("*_train.jsonl")):
        raise TrainingSetupError(f"{folder}: no {kind}_train.jsonl in this exported dataset folder")
    try:
        splits = datasets.load_dataset(args.dataset_name, name=args.dataset_config)
    except Exception as exc:  # noqa: BLE001 - load_dataset raises many types for a missing dataset
        raise TrainingSetupError(f"--dataset_name {args.dataset_name!r}: cannot load ({_first_line(exc)})") from exc
    if not isinstance(splits, datasets.DatasetDict):
        raise TrainingSetupError(f"--dataset_name {args.dataset_name!r}: expected named splits")
    source = {
        "dataset_name": args.dataset_name, "dataset_config": args.dataset_config,
        "fingerprints": {s: d._fingerprint for s, d in splits.items()},
        "rows": {s: d.num_rows for s, d in splits.items()},
    }
    return splits, source


def pick_splits(splits, args: ScriptArguments):
    """(train, eval or None) after checking that the train split exists."""
    if args.dataset_train_split not in splits:
        raise TrainingSetupError(
            f"--dataset_train_split {args.dataset_train_split!r}: not a split of {args.dataset_name} "
            f"(has {sorted(splits)})"
        )
    return splits[args.dataset_train_split], splits.get(args.dataset_test_split)


ROW = "__clca_row"  # column holding each row's index in its split, so a dropped row is named by its file line


def selected_rows(args: ScriptArguments, splits, source: dict, check, column: str, flag: str, nothing: str):
    """(raw train split, train rows, eval rows or None): each split checked row by row (`check(split, name)`
    raises TrainingSetupError naming the row), then cut to the values `--flag` selects in `column`
    (`filter_column`), every row keeping its position in ROW. TrainingSetupError when no training row is left
    ("--flag VALUE: no `nothing` left in DATASET")."""
    raw_train, raw_eval = pick_splits(splits, args)
    wanted = getattr(args, flag)
    checked = {}
    for name, split in ((args.dataset_train_split, raw_train), (args.dataset_test_split, raw_eval)):
        if split is None:
            continue
        check(split, name)
        checked[name] = filter_column(split.add_column(ROW, list(range(split.num_rows))), column, wanted, flag,
                                      f"{args.dataset_name} {name}", require_all=split is raw_train)
    train, evaluation = checked[args.dataset_train_split], checked.get(args.dataset_test_split)
    if train.num_rows == 0:
        raise TrainingSetupError(f"--{flag} {wanted}: no {nothing} left in {args.dataset_name}")
    return raw_train, train, evaluation


def filter_column(dataset, column: str, wanted: str, flag: str, where: str, require_all: bool = True):
    """Rows whose `column` is one of the comma-separated `wanted` values (all rows if the column is absent).

    `require_all` (for the train split) turns a wanted value that no row has, usually a typo, into an error.
    `all` keeps every row, whichever values the export happens to hold.
    """
    if wanted.strip() == "all":
        return dataset
    values = [v.strip() for v in wanted.split(",") if v.strip()]
    if not values:
        raise TrainingSetupError(f"--{flag}: empty")
    if column not in dataset.column_names:
        log.warning("%s has no %r column: --%s ignored, all rows kept", where, column, flag)
        return dataset
    known = set(dataset.unique(column))
    unknown = [v for v in values if v not in known]
    if unknown and require_all:
        raise TrainingSetupError(f"--{flag}: {unknown} not in {where} (it has {sorted(map(str, known))})")
    return dataset.filter(lambda row: row[column] in values)


def check_messages(messages, where: str) -> None:
    """A conversation TRL can train on: a list of role/content dicts with at least one assistant reply."""
    if not isinstance(messages, list) or not messages:
        raise TrainingSetupError(f"{where}: 'messages' must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or not isinstance(
            m.get("content"), str
        ):
            raise TrainingSetupError(f"{where}: message {i} needs role system|user|assistant and a string content")
    if not any(m["role"] == "assistant" for m in messages):
        raise TrainingSetupError(f"{where}: no assistant message to learn from")


def row_label(source: dict, split: str, index: int) -> str:
    """'FILE line N' for an exported folder (one row per line), 'split row N' otherwise."""
    for name in source.get("files", {}):
        if name.endswith(f"_{split}.jsonl"):
            return f"{Path(source['dataset_name']) / name} line {index + 1}"
    return f"{source['dataset_name']} {split} row {index + 1}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# ---------------------------------------------------------------- model


def load_base(model_args: ModelConfig):
    """(model, tokenizer, notes) for the spec in `--model_name_or_path`, ready for a trainer.

    Loaded by the shared loader (`agents.models.load_causal_lm`, training=True): left on the CPU for the
    Trainer (and accelerate) to place. 4/8-bit QLoRA needs bitsandbytes and a CUDA GPU; without them the run
    falls back to full-precision LoRA and says so in the notes (recorded in provenance.json).
    """
    spec = model_args.model_name_or_path
    if not spec:
        raise TrainingSetupError("--model_name_or_path is required (smollm2, a local folder or a hub id)")
    quantization = "4bit" if model_args.load_in_4bit else "8bit" if model_args.load_in_8bit else None
    options = {"bnb_4bit_quant_type": model_args.bnb_4bit_quant_type,
               "bnb_4bit_use_double_quant": model_args.use_bnb_nested_quant,
               "bnb_4bit_quant_storage": model_args.bnb_4bit_quant_storage} if quantization == "4bit" else {}
    try:
        loaded = load_causal_lm(spec, training=True, dtype=model_args.dtype, quantization=quantization,
                                quantization_options=options, revision=model_args.model_revision,
                                attn_implementation=model_args.attn_implementation)
    except ModelSpecError as exc:
        raise TrainingSetupError(str(exc).replace("model spec ", "--model_name_or_path ", 1)) from exc
    return loaded.model, loaded.tokenizer, loaded.notes


def adapter_base_spec(adapter_dir: Path) -> str:
    """The model spec an adapter written by this package was trained on (provenance.json, else adapter_config)."""
    provenance = adapter_dir / "provenance.json"
    if provenance.is_file():
        return json.loads(provenance.read_text())["model"]["spec"]
    config = adapter_dir / "adapter_config.json"
    if not config.is_file():
        raise TrainingSetupError(f"--adapter {adapter_dir}: not an adapter folder (no adapter_config.json)")
    return json.loads(config.read_text())["base_model_name_or_path"]


def load_tokenizer(model_args: ModelConfig):
    """The tokenizer `load_base` gives the trainer, loaded alone (no weights read) so that rows can be measured
    against `max_length` before the model loads. Same source resolution as `agents.models.load_causal_lm`
    (`hf_source`: a folder or hub id, or the GGUF file `smollm2` names) and the same pad token. Raises
    TrainingSetupError (one line) when it cannot be loaded."""
    from transformers import AutoTokenizer

    spec = model_args.model_name_or_path
    if not spec:
        raise TrainingSetupError("--model_name_or_path is required (smollm2, a local folder or a hub id)")
    try:
        path, gguf_file = hf_source(spec)
        tokenizer = AutoTokenizer.from_pretrained(path, **({"gguf_file": gguf_file} if gguf_file else {}))
    except ModelSpecError as exc:
        raise TrainingSetupError(str(exc).replace("model spec ", "--model_name_or_path ", 1)) from exc
    except OSError as exc:
        raise TrainingSetupError(f"--model_name_or_path {spec!r}: cannot load its tokenizer ({_first_line(exc)})") \
            from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
