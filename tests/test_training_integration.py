"""The CPU demo preset on the real SmolLM2 for a few steps, then the adapter loads through the model seam."""

import json
from pathlib import Path

import pytest

from training import sft

EXPORT = Path(__file__).parent / "fixtures" / "training_export"
DEMO = Path(__file__).resolve().parents[1] / "configs" / "sft_demo.yaml"


@pytest.mark.integration
def test_demo_preset_trains_a_usable_smollm2_adapter(tmp_path):
    from agents.models import GenerationParams, load_model

    out = tmp_path / "demo-adapter"
    sft.main([
        "--config", str(DEMO), "--dataset_name", str(EXPORT), "--output_dir", str(out),
        "--max_steps", "2", "--save_steps", "2", "--logging_steps", "1", "--disable_tqdm", "true",
    ])
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["model"]["spec"] == "smollm2"
    assert provenance["chat_template"]["source"] == "training/chat_templates/chatml_generation.jinja"
    assert provenance["metrics"]["train"]["train_loss"] > 0

    model = load_model("smollm2", adapter=str(out))
    [reply] = model.chat_many(
        [[{"role": "system", "content": "You are Li Wei, a retired teacher in Suzhou."},
          {"role": "user", "content": "Good morning, may I share your table?"}]],
        task="demo", params=GenerationParams(max_new_tokens=8, temperature=0),
    )
    assert reply.strip() and model.usage.completion_tokens["demo"] > 0
