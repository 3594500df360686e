"""A PEFT LoRA adapter as a GGUF LoRA, for `llama-server --lora`: converted once, cached by content hash.

The converter is llama.cpp's own `convert_lora_to_gguf.py` from the pinned sources that `make llama-server` builds
(copied with its `conversion` package and `gguf-py` into `.venv/share/llama.cpp`; `CLCA_LLAMA_CPP` names another
checkout of llama.cpp). It needs the base model's transformers config, not its weights: for a GGUF base that
config is read from the GGUF's own metadata. The result is `<cache>/<sha256 of the adapter>.gguf` (cache:
$CLCA_LORA_GGUF_CACHE, else ~/.cache/clca/lora-gguf), written atomically, so a second use of the same adapter
(another arm's evaluation, a rerun) converts nothing.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from agents.models.base import ModelSpecError

ENV_SOURCES = "CLCA_LLAMA_CPP"
CONVERTER = "convert_lora_to_gguf.py"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
ENV_CACHE = "CLCA_LORA_GGUF_CACHE"  # where converted adapters are kept (default ~/.cache/clca/lora-gguf)


def adapter_sha256(adapter: str | Path) -> str:
    """sha256 over the adapter's config and weights (hex): what identifies an adapter in provenance and the cache.
    ModelSpecError when the folder lacks either file."""
    folder, digest = Path(adapter), hashlib.sha256()
    for name in ADAPTER_FILES:
        path = folder / name
        if not path.is_file():
            raise ModelSpecError(f"adapter {folder}: no {name} (expected a PEFT LoRA folder from training.sft)")
        with path.open("rb") as fh:
            digest.update(name.encode() + b"\0" + hashlib.file_digest(fh, "sha256").digest())
    return digest.hexdigest()


def llama_cpp_sources() -> Path:
    """The folder holding the converter: $CLCA_LLAMA_CPP, else `.venv/share/llama.cpp` beside this Python."""
    env = os.environ.get(ENV_SOURCES)
    folder = Path(env) if env else Path(sys.executable).parent.parent / "share" / "llama.cpp"
    if not (folder / CONVERTER).is_file():
        raise ModelSpecError(f"no {CONVERTER} in {folder}: run `make llama-server` (it copies llama.cpp's converter "
                             f"there), set ${ENV_SOURCES} to a llama.cpp checkout, or evaluate in process "
                             "(smollm2-inprocess)")
    return folder


def gguf_lora(adapter: str | Path, base_gguf: Path, cache: Path | None = None) -> Path:
    """The GGUF LoRA of a PEFT `adapter` trained on the model in `base_gguf`, converted on first use.

    Raises ModelSpecError (one line, ending with the converter's last line) when conversion fails."""
    cache = Path(cache or os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "clca" / "lora-gguf")
    path = cache / f"{adapter_sha256(adapter)}.gguf"
    if path.is_file():
        return path
    sources = llama_cpp_sources()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.{os.getpid()}.partial")  # renamed into place: never half a file seen
    with tempfile.TemporaryDirectory(prefix="clca-lora-") as tmp:
        _write_base_config(base_gguf, Path(tmp))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(sources / "gguf-py"), str(sources)]),
               "HF_HUB_OFFLINE": "1"}
        done = subprocess.run([sys.executable, str(sources / CONVERTER), "--base", tmp, "--outtype", "f32",
                               "--outfile", str(partial), str(adapter)], env=env, capture_output=True, text=True)
    if done.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelSpecError(f"adapter {adapter}: {CONVERTER} failed (exit {done.returncode}): {last}")
    os.replace(partial, path)
    return path


def _write_base_config(base_gguf: Path, folder: Path) -> None:
    """The transformers config of the model in `base_gguf` (read from the GGUF's metadata) into `folder`."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = AutoConfig.from_pretrained(str(base_gguf.parent), gguf_file=base_gguf.name)
    if not config.architectures:  # a GGUF's metadata names no class; the converter picks its mapping by it
        config.architectures = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config.model_type]]
    config.save_pretrained(folder)
