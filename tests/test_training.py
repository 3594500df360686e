"""training.sft / training.dpo on the tiny random model and the hand-made export fixture (seconds each)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from training import dpo, sft
from training.common import SFTConfig, parse
from training.run import train_and_save

EXPORT = Path(__file__).parent / "fixtures" / "training_export"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PLAIN_CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_args(model: str, out: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", model, "--dataset_name", str(EXPORT), "--output_dir", str(out),
        "--max_steps", "2", "--per_device_train_batch_size", "2", "--learning_rate", "1e-2",
        "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "q_proj", "v_proj",
        "--logging_steps", "1", "--save_steps", "1", "--disable_tqdm", "true", *extra,
    ]


def lora_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def read_rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (EXPORT / name).read_text().splitlines()]


@pytest.fixture(scope="module")
def sft_adapter(tiny_model_dir, tmp_path_factory):
    import logging

    out = tmp_path_factory.mktemp("sft") / "adapter"
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers.clear()  # as in `study run`'s process: a root logger nobody configured
    try:
        sft.main(tiny_args(tiny_model_dir, out))
        configured = (root.handlers[:], root.level)
    finally:
        root.handlers[:], root.level = handlers, level
    assert configured == ([], level)  # the study goes on in this process: httpx must not log every request
    return out


@pytest.fixture(scope="module")
def plain_chatml_model(tiny_model_dir, tmp_path_factory):
    """The tiny model with a ChatML template that lacks {% generation %} markers, like SmolLM2's."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("plain") / "model"
    shutil.copytree(tiny_model_dir, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = PLAIN_CHATML
    tokenizer.save_pretrained(folder)
    return str(folder)


class TestSFT:
    def test_two_steps_change_the_lora_weights(self, tiny_model_dir, tmp_path):
        args = parse(sft.make_parser(), tiny_args(tiny_model_dir, tmp_path / "out"))
        trainer, record = sft.build_trainer(*args)
        before = lora_weights(trainer.model)
        assert before and record["parameters"]["trainable"] == sum(t.numel() for t in before.values())
        train_and_save(trainer, record, *args)
        after = lora_weights(trainer.model)
        assert trainer.state.global_step == 2
        assert all(not torch.equal(before[n], after[n]) for n in before if "lora_B" in n)

    @pytest.mark.parametrize("model", ["tiny_model_dir", "plain_chatml_model"])
    def test_only_assistant_tokens_carry_loss(self, model, request, tmp_path):
        spec = request.getfixturevalue(model)
        trainer, record = sft.build_trainer(*parse(sft.make_parser(), tiny_args(spec, tmp_path / "out")))
        expected_source = "model" if model == "tiny_model_dir" else "training/chat_templates/chatml_generation.jinja"
        assert record["chat_template"]["source"] == expected_source
        tokenizer = trainer.processing_class
        rows = read_rows("sft_train.jsonl")
        assert len(trainer.train_dataset) == len(rows)
        for example, row in zip(trainer.train_dataset, rows):
            labels = trainer.data_collator([example])["labels"][0]
            trained = tokenizer.decode(labels[labels != -100])
            replies = "".join(m["content"] + "<|im_end|>" for m in row["messages"] if m["role"] == "assistant")
            assert trained == replies

    def test_views_select_rows(self, tiny_model_dir, tmp_path):
        args = parse(sft.make_parser(), tiny_args(tiny_model_dir, tmp_path / "out", "--views", "intent"))
        _, record = sft.build_trainer(*args)
        intents = [r for r in read_rows("sft_train.jsonl") if r["view"] == "intent"]
        assert record["dataset"]["rows_used"]["train"] == len(intents)

    def test_outputs_describe_the_run(self, sft_adapter, tiny_model_dir):
        for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md"):
            assert (sft_adapter / name).is_file(), name
        provenance = json.loads((sft_adapter / "provenance.json").read_text())
        files = provenance["dataset"]["source"]["files"]
        assert files["sft_train.jsonl"]["rows"] == len(read_rows("sft_train.jsonl"))
        assert len(files["sft_train.jsonl"]["sha256"]) == 64
        assert provenance["model"]["spec"] == tiny_model_dir
        assert provenance["config"]["training"]["max_steps"] == 2
        assert "eval_loss" in provenance["metrics"]["eval"]
        log = json.loads((sft_adapter / "training_log.json").read_text())
        assert [e["step"] for e in log if "loss" in e] == [1, 2]
        adapter_config = json.loads((sft_adapter / "adapter_config.json").read_text())
        assert adapter_config["base_model_name_or_path"] == tiny_model_dir
        assert files["sft_train.jsonl"]["sha256"] in (sft_adapter / "README.md").read_text()
        assert provenance["batch"] == {"processes": 1, "per_device": 2, "gradient_accumulation_steps": 1,
                                       "effective": 2, "use_cpu": not torch.cuda.is_available()}
        assert provenance["dataset"]["truncation"]["train"]["dropped"] == 0
        assert "| 2 x 1 x 1 = 2 (effective) |" in (sft_adapter / "README.md").read_text()

    def test_adapter_loads_and_generates(self, sft_adapter, tiny_model_dir):
        from agents.models import GenerationParams, load_model

        model = load_model(tiny_model_dir, adapter=str(sft_adapter))
        [reply] = model.chat_many([[{"role": "user", "content": "Hello"}]], task="t",
                                  params=GenerationParams(max_new_tokens=4, temperature=0))
        assert model.usage.completion_tokens["t"] > 0 and isinstance(reply, str)

    def test_rerun_resumes_from_the_last_checkpoint(self, tiny_model_dir, tmp_path):
        out = tmp_path / "out"
        sft.main(tiny_args(tiny_model_dir, out))
        sft.main(tiny_args(tiny_model_dir, out, "--max_steps", "3"))
        provenance = json.loads((out / "provenance.json").read_text())
        assert provenance["resumed_from"].endswith("checkpoint-2")
        log = json.loads((out / "training_log.json").read_text())
        assert [e["step"] for e in log if "loss" in e] == [1, 2, 3]

    def test_merge_matches_base_plus_adapter(self, tiny_model_dir, tmp_path):
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        out = tmp_path / "out"
        sft.main(tiny_args(tiny_model_dir, out, "--merge_adapter", "true"))
        ids = torch.tensor([[5, 17, 42, 99]])
        merged = AutoModelForCausalLM.from_pretrained(out / "merged")
        with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(out))
        with torch.no_grad():
            torch.testing.assert_close(merged(ids).logits, with_adapter(ids).logits, atol=1e-5, rtol=1e-4)


class TestDPO:
    def test_dpo_from_sft_adapter(self, sft_adapter, tmp_path):
        out = tmp_path / "dpo"
        args = parse(dpo.make_parser(), [
            "--adapter", str(sft_adapter), "--dataset_name", str(EXPORT), "--output_dir", str(out),
            "--max_steps", "2", "--per_device_train_batch_size", "2", "--learning_rate", "1e-2",
            "--disable_tqdm", "true", "--pair_kinds", "judged",
        ])
        trainer, record = dpo.build_trainer(*args)
        before = lora_weights(trainer.model)
        train_and_save(trainer, record, *args)
        after = lora_weights(trainer.model)
        trained = [n for n in before if "default" in n]
        assert trained and any(not torch.equal(before[n], after[n]) for n in trained)
        judged = [r for r in read_rows("dpo_train.jsonl") if r["kind"] == "judged"]
        assert record["dataset"]["rows_used"]["train"] == len(judged)
        provenance = json.loads((out / "provenance.json").read_text())
        assert provenance["start_adapter"]["path"] == str(sft_adapter)
        assert provenance["model"]["spec"] == json.loads((sft_adapter / "provenance.json").read_text())["model"]["spec"]
        assert (out / "adapter_model.safetensors").is_file()


def tokenizer_only(model_dir: str, folder: Path) -> str:
    """A folder holding the model's tokenizer and nothing else: loading the model from it fails."""
    folder.mkdir()
    for file in Path(model_dir).iterdir():
        if file.name.startswith("tokenizer") or file.name == "chat_template.jinja":
            shutil.copy(file, folder)
    return str(folder)


class TestTruncation:
    """Rows left with no trainable token at max_length are counted before the model loads, as TRL drops them."""

    MAX = "140"  # the tiny tokenizer puts the first assistant token of 5 of 8 train and 1 of 2 validation rows later

    def test_sft_rows_without_a_trainable_token_are_named_and_not_counted(self, tiny_model_dir, tmp_path, caplog):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
        expected = {}
        for split, name in (("train", "sft_train.jsonl"), ("eval", "sft_validation.jsonl")):
            expected[split] = {"kept": [], "dropped": []}
            for line, row in enumerate(read_rows(name), 1):
                out = tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True,
                                                    return_assistant_tokens_mask=True)
                first = out["assistant_masks"].index(1)
                kind = "kept" if first < int(self.MAX) else "dropped"
                expected[split][kind].append((f"{EXPORT / name} line {line}", out["input_ids"][: int(self.MAX)]))
        assert expected["train"]["kept"] and expected["train"]["dropped"] and expected["eval"]["dropped"]

        args = parse(sft.make_parser(), tiny_args(tiny_model_dir, tmp_path / "out", "--max_length", self.MAX))
        trainer, record = sft.build_trainer(*args)
        for split, prepared in (("train", trainer.train_dataset), ("eval", trainer.eval_dataset)):
            # TRL's prepared rows are exactly the ones measured as kept, and the record counts only those.
            assert sorted(prepared["input_ids"]) == sorted(ids for _, ids in expected[split]["kept"])
            truncation = record["dataset"]["truncation"][split]
            assert record["dataset"]["rows_used"][split] == truncation["kept"] == len(expected[split]["kept"])
            assert [d["row"] for d in truncation["dropped_rows"]] == [label for label, _ in expected[split]["dropped"]]
            assert all(f"none in the first {self.MAX}" in d["reason"] for d in truncation["dropped_rows"])
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "max_length" in r.getMessage()]
        n_train = len(expected["train"]["dropped"])
        assert any(f"{n_train} of 8 train rows" in w and expected["train"]["dropped"][0][0] in w for w in warnings)

        train_and_save(trainer, record, *args)
        out = tmp_path / "out"
        provenance = json.loads((out / "provenance.json").read_text())
        assert provenance["dataset"]["rows_used"] == {"train": 8 - n_train, "eval": 1}
        card = (out / "README.md").read_text()
        assert f"rows used: {8 - n_train} train" in card and f"**{n_train} of 8 train rows left out**" in card
        assert all(label in card for label, _ in expected["train"]["dropped"])

    def test_dpo_pairs_whose_prompt_fills_max_length_are_named_and_not_counted(self, tiny_model_dir, tmp_path):
        args = parse(dpo.make_parser(), tiny_args(tiny_model_dir, tmp_path / "out", "--max_length", self.MAX))
        trainer, record = dpo.build_trainer(*args)
        truncation = record["dataset"]["truncation"]["train"]
        assert trainer.train_dataset.num_rows == record["dataset"]["rows_used"]["train"] == truncation["kept"]
        assert 0 < truncation["kept"] < truncation["rows"] == len(read_rows("dpo_train.jsonl"))
        assert all(len(row["prompt_ids"]) < int(self.MAX) for row in trainer.train_dataset)
        for drop in truncation["dropped_rows"]:
            assert drop["row"].startswith(f"{EXPORT / 'dpo_train.jsonl'} line ")
            assert int(drop["reason"].split()[2]) >= int(self.MAX), drop

    @pytest.mark.parametrize(("main", "max_length", "kind"), [(sft.main, "100", "sft"), (dpo.main, "120", "dpo")])
    def test_nothing_left_is_one_line_before_the_model_loads(self, main, max_length, kind, tiny_model_dir,
                                                              tmp_path):
        # The folder has the tokenizer but no weights: had the model been loaded, the error would say so.
        spec = tokenizer_only(tiny_model_dir, tmp_path / "tokenizer-only")
        with pytest.raises(SystemExit) as exit_info:
            main(tiny_args(spec, tmp_path / "out", "--max_length", max_length))
        message = exit_info.value.code
        assert isinstance(message, str) and "\n" not in message, message
        assert message.startswith(f"error: max_length {max_length}: none of the ")
        assert f"{kind}_train.jsonl line 1" in message and "raise --max_length" in message
        assert not (tmp_path / "out").exists()


class TestConfig:
    def test_yaml_drives_the_run_and_flags_override_it(self, tmp_path):
        config = tmp_path / "run.yaml"
        config.write_text(yaml.safe_dump({
            "model_name_or_path": "smollm2", "dataset_name": "data/x", "views": "intent", "learning_rate": 3e-4,
            "lora_alpha": 0.1, "lora_r": 4, "max_steps": 7, "output_dir": "runs/x",
        }))
        script, training, model = parse(sft.make_parser(), [
            "--config", str(config), "--learning_rate", "5e-5", "--lora_alpha", "0.5",
        ])
        assert (training.learning_rate, model.lora_alpha) == (5e-5, 0.5)
        assert (script.views, model.lora_r, training.max_steps, model.model_name_or_path) == ("intent", 4, 7, "smollm2")

    @pytest.mark.parametrize("preset", sorted(p.name for p in CONFIGS.glob("*.yaml")))
    def test_presets_parse(self, preset):
        parser = (dpo if preset.startswith("dpo") else sft).make_parser()
        script, training, model = parse(parser, ["--config", str(CONFIGS / preset)])
        assert training.seed == 42 and model.use_peft

    def test_paper_preset_is_the_papers_recipe(self):
        _, training, model = parse(sft.make_parser(), ["--config", str(CONFIGS / "sft_paper.yaml")])
        assert (model.lora_r, model.lora_alpha, model.lora_dropout) == (4, 0.1, 0.5)
        assert sorted(model.lora_target_modules) == ["q_proj", "v_proj"] and model.load_in_4bit
        assert training.per_device_train_batch_size * training.gradient_accumulation_steps == 8
        assert (training.max_length, training.learning_rate, training.assistant_only_loss) == (2048, 1e-4, True)

    @pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU defaults")
    def test_cpu_gets_fp32_without_checkpointing(self, tmp_path):
        config = SFTConfig(output_dir=str(tmp_path))
        assert (config.bf16, config.fp16, config.gradient_checkpointing) == (False, False, False)
        # Without CUDA, use_cpu is set whatever was given: accelerate's processes then join one gloo DDP run.
        assert SFTConfig(output_dir=str(tmp_path), use_cpu=False).use_cpu is True


class TestErrors:
    def one_line_error(self, main, argv) -> str:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        message = exit_info.value.code
        assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message
        return message

    def test_unknown_config_key(self, tmp_path):
        config = tmp_path / "bad.yaml"
        config.write_text("learning_rate: 1e-4\nlora_rank: 8\n")
        assert "lora_rank" in self.one_line_error(sft.main, ["--config", str(config)])

    def test_bad_value_and_missing_file(self, tmp_path):
        config = tmp_path / "bad.yaml"
        config.write_text("learning_rate: fast\n")
        assert "learning_rate" in self.one_line_error(sft.main, ["--config", str(config)])
        assert "nope.yaml" in self.one_line_error(sft.main, ["--config", str(tmp_path / "nope.yaml")])

    def test_missing_dataset(self, tiny_model_dir, tmp_path):
        argv = ["--model_name_or_path", tiny_model_dir, "--dataset_name", str(tmp_path / "no-data"),
                "--output_dir", str(tmp_path / "out")]
        assert "no-data" in self.one_line_error(sft.main, argv)
        assert "no-data" in self.one_line_error(dpo.main, argv)

    def test_malformed_row_names_file_and_line(self, tiny_model_dir, tmp_path):
        data = tmp_path / "data"
        shutil.copytree(EXPORT, data)
        rows = read_rows("sft_train.jsonl")
        rows[2]["messages"] = [m for m in rows[2]["messages"] if m["role"] != "assistant"]
        (data / "sft_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        message = self.one_line_error(sft.main, tiny_args(tiny_model_dir, tmp_path / "out")[:2] + [
            "--dataset_name", str(data), "--output_dir", str(tmp_path / "out")])
        assert "sft_train.jsonl line 3" in message and "assistant" in message

    def test_unknown_view(self, tiny_model_dir, tmp_path):
        argv = tiny_args(tiny_model_dir, tmp_path / "out", "--views", "dialog")
        assert "dialog" in self.one_line_error(sft.main, argv)


def test_all_takes_whatever_kinds_the_export_holds_and_a_named_missing_kind_is_an_error():
    from datasets import Dataset

    from training.common import TrainingSetupError, filter_column

    only_contrastive = Dataset.from_list([{"kind": "contrastive"}, {"kind": "contrastive"}])
    assert filter_column(only_contrastive, "kind", "all", "pair_kinds", "x").num_rows == 2
    with pytest.raises(TrainingSetupError, match=r"--pair_kinds: \['judged'\] not in x"):
        filter_column(only_contrastive, "kind", "judged,contrastive", "pair_kinds", "x")
