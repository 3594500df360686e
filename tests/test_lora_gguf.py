"""Adapters on the engine: a PEFT LoRA converted to a GGUF LoRA (cached by content hash) and served by the managed
llama-server scores options as the same adapter does in process."""

import asyncio
import shutil

import pytest

from agents.models import ModelSpecError
from agents.models.lora_gguf import adapter_sha256, gguf_lora

# The largest JS distance between llama-server's and the in-process option distributions for one prompt, with a
# random adapter on SmolLM2 (measured 2026-12-06: docs/benchmarks.md, "Adapters on llama-server").
ADAPTER_AGREEMENT_JS = 0.08


def test_the_adapter_hash_follows_its_content(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    (a / "adapter_config.json").write_text('{"r": 4}')
    (a / "adapter_model.safetensors").write_bytes(b"weights")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    assert adapter_sha256(a) == adapter_sha256(b) and len(adapter_sha256(a)) == 64
    (b / "adapter_model.safetensors").write_bytes(b"other weights")
    assert adapter_sha256(a) != adapter_sha256(b)
    (b / "adapter_config.json").unlink()
    with pytest.raises(ModelSpecError, match="no adapter_config.json"):
        adapter_sha256(b)


def test_a_missing_converter_is_one_line(tmp_path, monkeypatch):
    adapter = tmp_path / "a"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"x")
    monkeypatch.setenv("CLCA_LLAMA_CPP", str(tmp_path / "nowhere"))
    with pytest.raises(ModelSpecError, match="no convert_lora_to_gguf.py in .*make llama-server") as exc:
        gguf_lora(adapter, tmp_path / "base.gguf", cache=tmp_path / "cache")
    assert "\n" not in str(exc.value)


@pytest.fixture(scope="module")
def random_adapter(tmp_path_factory):
    """A LoRA on SmolLM2's attention with random A and B (B scaled down), so it visibly moves the answers."""
    import torch
    from peft import LoraConfig, get_peft_model

    from agents.models import load_causal_lm, plain_copy

    folder = tmp_path_factory.mktemp("adapter")
    torch.manual_seed(0)
    model = plain_copy(load_causal_lm("smollm2-inprocess").model)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.mul_(0.3)
    peft.save_pretrained(folder)
    return folder


@pytest.mark.integration
def test_an_adapter_on_llama_server_scores_as_in_process(gguf, random_adapter, tmp_path, monkeypatch):
    import numpy as np

    from agents.models import load_model
    from agents.models.llama_server import stop_shared
    from eval.wvs.metrics import js_distance

    monkeypatch.setenv("CLCA_LORA_GGUF_CACHE", str(tmp_path / "cache"))
    options = [str(k) for k in range(1, 11)]
    requests = [([{"role": "system", "content": f"You live in {place}."},
                  {"role": "user", "content": f"How important is {topic} in your life? Answer 1 (not at all) to 10 "
                                              "(very). ANSWER:"}], options)
                for place in ("China", "Mexico") for topic in ("family", "work")]

    def distributions(model) -> list:
        scores = asyncio.run(model.ascore_options(requests, task="wvs"))
        return [np.exp(s) / np.exp(s).sum() for s in scores]

    def js(p, q) -> float:
        return float(js_distance(p[None], q[None])[0])

    try:
        served = distributions(load_model("smollm2", adapter=str(random_adapter), scoring=True, log_dir=tmp_path))
        converted = list((tmp_path / "cache").glob("*.gguf"))
        assert [p.stem for p in converted] == [adapter_sha256(random_adapter)]
        base = distributions(load_model("smollm2", scoring=True, log_dir=tmp_path))
    finally:
        stop_shared()
    local = distributions(load_model("smollm2-inprocess", adapter=str(random_adapter), scoring=True))
    gaps = [js(a, b) for a, b in zip(served, local)]
    moved = [js(a, b) for a, b in zip(served, base)]
    print(f"adapter: served vs in process JS max {max(gaps):.4f}; served adapter vs served base JS max "
          f"{max(moved):.4f}")
    assert max(gaps) < ADAPTER_AGREEMENT_JS
    assert max(moved) > 2 * max(gaps)  # the adapter is applied: it moves the answers more than the engines differ
