"""End to end: scripted models, the logprob reader on the tiny model, CLI errors, outputs, compare."""

import csv
import json
from collections import defaultdict

import numpy as np
import pytest
import torch

from agents.models import Model, ScriptedBackend, load_model
from eval.compare import main as compare_main
from eval.wvs.items import all_items, select_items
from eval.wvs.readers import LogprobReader
from eval.wvs.report import write_outputs
from eval.wvs.respondents import write_synthetic_file
from eval.wvs.run import EvalConfig, evaluate, main
from eval.wvs.survey import country

ITEMS = "Q1,Q7,Q33,Q43"


@pytest.fixture(scope="module")
def wvs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("wvs") / "synthetic.csv"
    return write_synthetic_file(path, [country("JPN"), country("MEX")], n_per_country=60, seed=5, missing_rate=0.0)


def question_item(messages):
    text = messages[-1]["content"]
    return next(q for q in ITEMS.split(",") if all_items()[q].text in text)


def survey_answering_model(path, alpha3):
    """Answers each item with the respondents' own answers, one per call: reproduces the survey exactly."""
    queues = defaultdict(list)
    for row in csv.DictReader(open(path)):
        if row["B_COUNTRY_ALPHA"] == alpha3:
            for q in ITEMS.split(","):
                queues[q].append(row[q])
    reply = lambda messages, task: json.dumps({"answer": int(queues[question_item(messages)].pop())})  # noqa: E731
    return Model(ScriptedBackend(reply), "scripted")


def test_model_answering_with_the_survey_distribution_scores_zero(wvs_file):
    cfg = EvalConfig(model="scripted", method="generate", countries="MEX", items=ITEMS, wvs_file=str(wvs_file),
                     personas=1000, unweighted=True, bootstrap=50)
    results = evaluate(cfg, model=survey_answering_model(wvs_file, "MEX"))
    model = results["summary"]["countries"]["MEX"]["model"]
    assert model["js"]["value"] == pytest.approx(0.0, abs=1e-7)
    assert model["emd"]["value"] == pytest.approx(0.0, abs=1e-12)
    assert model["kl"]["value"] == pytest.approx(0.0, abs=1e-4)  # only the smoothing remains
    assert model["invalid_rate"]["value"] == 0.0
    assert model["paper_kl"]["value"] > 0.1  # the release formula is not zero at a perfect match
    for rec in results["items"]:
        assert rec["model"][:-1] == pytest.approx(rec["survey"])
    assert results["provenance"]["counts"]["MEX"]["units"] == 60
    assert "respondent file" in results["provenance"]["survey"]["sources"]["MEX"]


def test_persona_run_accuracy_and_invalid_bucket(wvs_file):
    # always "1" for Q1, Q7 and Q43, and an unparseable reply for Q33
    reply = lambda messages, task: "I would rather not say." if question_item(messages) == "Q33" else "1"  # noqa: E731
    cfg = EvalConfig(model="scripted", method="generate", countries="JPN", items=ITEMS, wvs_file=str(wvs_file),
                     personas=25, seed=11, bootstrap=200)
    results = evaluate(cfg, model=Model(ScriptedBackend(reply), "scripted", structured=False))
    rows = {r["D_INTERVIEW"]: r for r in csv.DictReader(open(wvs_file))}
    units = sorted({a["unit"] for a in results["answers"]})
    assert len(units) == 25
    correct = [[rows[u][q] == "1" for q in ("Q1", "Q7", "Q43")] + [False] for u in units]
    summary = results["summary"]["countries"]["JPN"]
    assert summary["model"]["accuracy"]["value"] == pytest.approx(np.mean(correct))
    lo, hi = summary["model"]["accuracy"]["ci"]
    assert lo <= summary["model"]["accuracy"]["value"] <= hi
    assert summary["model"]["invalid_rate"]["value"] == pytest.approx(0.25)  # one item in four, never dropped
    q33 = next(r for r in results["items"] if r["qid"] == "Q33")
    assert q33["model"][-1] == 1.0 and q33["metrics"]["invalid_rate"]["value"] == 1.0
    assert summary["uniform"]["accuracy"]["value"] is not None
    # persona prompts carry the respondent's demographics; the sample is seeded
    again = evaluate(cfg, model=Model(ScriptedBackend(reply), "scripted", structured=False))
    assert sorted({a["unit"] for a in again["answers"]}) == units
    assert summary == again["summary"]["countries"]["JPN"]


def test_country_prompt_without_file_records_why(tmp_path):
    model = Model(ScriptedBackend(lambda m, t: "You live in" in m[0]["content"] and "2" or "x"), "scripted",
                  structured=False)
    cfg = EvalConfig(model="scripted", method="generate", countries="JPN,MEX", items="Q1,Q2", samples=3,
                     bootstrap=20, out=str(tmp_path / "r.json"))
    results = evaluate(cfg, model=model)
    assert results["provenance"]["prompt"] == "country" and results["provenance"]["notes"]
    assert "Cao" in results["provenance"]["survey"]["sources"]["JPN"]
    assert "CultureSPA" in results["provenance"]["survey"]["sources"]["MEX"]
    assert set(results["provenance"]["prompt_versions"]) == {"wvs_question", "wvs_country"}
    assert results["summary"]["countries"]["JPN"]["model"]["accuracy"]["value"] is None
    paths = write_outputs(results, cfg.out, plots=True)
    assert all(p.exists() for p in paths) and any(p.suffix == ".png" for p in paths)
    saved = json.loads(paths[0].read_text())
    assert saved["provenance"]["config"]["samples"] == 3 and "answers" not in saved
    assert len(list(csv.DictReader(open(paths[1])))) == 4


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    return load_model(tiny_model_dir, max_batch=3, structured=False)


def test_logprob_prefix_reuse_matches_plain_batches(tiny_model):
    items = select_items("Q1,Q7,Q48,Q241")  # 10- and 11-point scales have the multi-token label "10"
    questions = [f"QUESTION: {it.text} ANSWER:" for it in items]
    systems = ["You live in Japan.", None]
    reader = LogprobReader(tiny_model)
    shared = reader.read(systems, items, questions)
    tiny_model.backend.share_prefix = False
    try:
        plain = reader.read(systems, items, questions)
    finally:
        tiny_model.backend.share_prefix = True
    for a, b, item in zip(shared, plain, items):
        assert np.allclose(a.rows, b.rows, atol=1e-5) and np.allclose(a.off_option_mass, b.off_option_mass, atol=1e-5)
        assert np.allclose(a.rows.sum(axis=1), 1.0) and (a.rows[:, -1] == 0).all()
        assert ((a.off_option_mass >= -1e-9) & (a.off_option_mass <= 1)).all()
        assert set(a.codes) <= set(item.codes)


def test_multi_token_labels_split_their_shared_first_token(tiny_model):
    item = select_items("Q48")[0]
    tok, lm = tiny_model.backend.tokenizer, tiny_model.backend.model
    assert len(tok.encode("10", add_special_tokens=False)) == 2  # "1" then "0" in the tiny tokenizer
    messages = [{"role": "user", "content": "QUESTION: scale ANSWER:"}]
    ids = list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"])
    one, zero = tok.encode("1", add_special_tokens=False)[0], tok.encode("0", add_special_tokens=False)[0]
    with torch.inference_mode():  # a direct forward over prompt + "1": the next-token distributions at both ends
        logprobs = torch.log_softmax(lm(input_ids=torch.tensor([ids + [one]])).logits[0].float(), dim=-1)
    ans = LogprobReader(tiny_model).read([None], [item], ["QUESTION: scale ANSWER:"])[0]
    p_first_one = float(np.exp(logprobs[-2, one]))
    p_ten = p_first_one * float(np.exp(logprobs[-1, zero]))
    valid = 1 - ans.off_option_mass[0]
    assert ans.rows[0, 9] * valid == pytest.approx(p_ten, rel=1e-4)
    assert (ans.rows[0, 0] + ans.rows[0, 9]) * valid == pytest.approx(p_first_one, rel=1e-4)


def test_logprob_end_to_end_on_tiny_model(tiny_model_dir, tmp_path):
    out = tmp_path / "tiny.json"
    main(["--model", tiny_model_dir, "--countries", "MEX", "--items", "Q1,Q2,Q48", "--bootstrap", "30",
          "--out", str(out), "--no-plots"])
    results = json.loads(out.read_text())
    mex = results["summary"]["countries"]["MEX"]["model"]
    assert 0 <= mex["js"]["value"] <= np.sqrt(np.log(2)) and mex["off_option_mass"]["value"] is not None
    assert results["provenance"]["config"]["method"] == "logprob" and results["provenance"]["git_commit"]


@pytest.mark.parametrize("argv,message", [
    (["--countries", "XYZ"], "unknown country 'XYZ'"),
    (["--countries", "FRA"], "no bundled survey shares"),
    (["--items", "Q1,Q999"], "unknown item 'Q999'"),
    (["--prompt", "persona"], "needs --wvs-file"),
    (["--wvs-file", "/nonexistent.csv"], "no such file"),
    (["--method", "logprob"], "model spec 'puppet': cannot score options"),
])
def test_cli_errors_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--model", "puppet", "--method", "generate", *argv])
    text = str(exc.value.code)
    assert text.startswith("error: ") and message in text and "\n" not in text


def test_cli_country_missing_from_wvs_file(wvs_file):
    with pytest.raises(SystemExit, match="no respondents for DEU"):
        main(["--model", "puppet", "--method", "generate", "--countries", "DEU", "--wvs-file", str(wvs_file)])


def test_puppet_and_compare_table(tmp_path, capsys):
    base, adapted = tmp_path / "base.json", tmp_path / "adapted.json"
    common = ["--method", "generate", "--countries", "JPN,MEX", "--items", "Q1,Q27", "--bootstrap", "20", "--no-plots"]
    main(["--model", "puppet", *common, "--out", str(base)])
    main(["--model", "puppet", *common, "--prompt", "cultural", "--out", str(adapted)])
    capsys.readouterr()
    compare_main([str(base), str(adapted)])
    table = capsys.readouterr().out
    assert "paper_kl (lower is better)" in table and "Average" in table and "warning: the runs differ in prompt" in table
    lines = table.splitlines()
    delta = next(line for line in lines[lines.index("js (lower is better)"):] if line.strip().startswith("delta"))
    assert delta.split()[1:] == ["+0.0000", "+0.0000", "+0.0000"]  # the puppet ignores the prompt
    with pytest.raises(SystemExit, match="error: .*not a results file"):
        (tmp_path / "x.json").write_text("{}")
        compare_main([str(base), str(tmp_path / "x.json")])


@pytest.mark.integration
def test_smollm2_logprob_and_generate_on_three_items(tmp_path):
    common = ["--model", "smollm2", "--countries", "JPN", "--items", "Q1,Q7,Q43", "--bootstrap", "50", "--no-plots"]
    main([*common, "--out", str(tmp_path / "lp.json")])
    main([*common, "--method", "generate", "--parser", "lenient", "--out", str(tmp_path / "gen.json")])
    for name in ("lp.json", "gen.json"):
        jpn = json.loads((tmp_path / name).read_text())["summary"]["countries"]["JPN"]["model"]
        assert 0 <= jpn["js"]["value"] <= np.sqrt(np.log(2)) and 0 <= jpn["invalid_rate"]["value"] <= 1


def test_adapter_is_loaded_and_recorded(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from agents.models.lora_gguf import adapter_sha256

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    args = ["--model", tiny_model_dir, "--countries", "JPN", "--items", "Q1,Q2", "--bootstrap", "10", "--no-plots"]
    main([*args, "--out", str(tmp_path / "base.json")])
    main([*args, "--adapter", str(tmp_path / "adapter"), "--out", str(tmp_path / "adapted.json")])
    base_r, adapted_r = (json.loads((tmp_path / n).read_text()) for n in ("base.json", "adapted.json"))
    assert adapted_r["provenance"]["config"]["adapter"] == str(tmp_path / "adapter")
    assert adapted_r["provenance"]["adapter_sha256"] == adapter_sha256(tmp_path / "adapter")
    assert base_r["provenance"]["adapter_sha256"] is None
    assert base_r["items"][0]["model"] != adapted_r["items"][0]["model"]  # the random LoRA moved the answers
