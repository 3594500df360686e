"""Secrets and exposure: keys come only from the environment and never reach an output; user templates cannot run
code; servers listen on loopback; nothing unpickles a file it was given.
"""

import json
import logging
import re
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agents.models import ModelSpecError, load_model
from agents.models.fake import PUPPET_REPLIES
from agents.models.loading import hf_source
from agents.prompts import PromptError, Prompts

ROOT = Path(__file__).resolve().parents[1]


class PuppetServer:
    """An OpenAI-compatible endpoint on 127.0.0.1 that answers every request in its schema with the puppet's
    canned answers, and keeps the Authorization header of every request."""

    def __init__(self):
        self.auth: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.auth.append(self.headers.get("Authorization"))
                if self.path.endswith("/tokenize"):
                    payload = {"tokens": [11, 12]}
                else:
                    payload = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                               "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": outer.reply(body)}}],
                               "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def reply(body: dict) -> str:
        schema = body["response_format"]["json_schema"]["schema"]
        properties = schema.get("properties", {})
        task = ("adapt" if "participants" in properties else "roleplay" if "action" in properties
                else "observer" if "intent" in properties else "judge")  # judge: the first allowed value
        return PUPPET_REPLIES[task](body["messages"], schema)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------ keys only from the environment


PLANTED = "sk-test-planted-" + "0123456789abcdef" * 2


@pytest.mark.parametrize("spec", [
    f"openai:gpt-4o@https://user:{PLANTED}@api.example.com/v1",
    "openai:gpt-4o@https://user@api.example.com/v1",
    f"openai:gpt-4o@https://api.example.com/v1?api_key={PLANTED}",
    f"openai:gpt-4o@https://api.example.com/v1?x=1&token={PLANTED}",
    f"openai:{PLANTED}@https://api.example.com/v1",
    f"{PLANTED}",
    "hf_" + "A1b2C3d4E5" * 4,
])
def test_a_spec_holding_a_credential_is_refused_without_repeating_it(spec):
    with pytest.raises(ModelSpecError) as exc:
        load_model(spec)
    message = str(exc.value)
    assert message == ("model spec: it holds what looks like an API key or URL credentials, which would be stored "
                       "with every result; set OPENAI_API_KEY in the environment instead")
    with pytest.raises(ModelSpecError, match="^model spec: it holds what looks like an API key"):
        hf_source(spec)  # the in-process path (training, logprob evaluation) refuses it too


@pytest.mark.parametrize("spec", ["org/task-abcdefghijklmnopqrstuvwxyz0123", "runs/hf_export", "puppet"])
def test_ordinary_specs_are_not_mistaken_for_keys(spec):
    from agents.models.base import refuse_credentials

    refuse_credentials(spec)


def test_a_cli_given_a_key_in_its_spec_exits_with_one_line_and_stores_nothing(tmp_path, capsys):
    from graphs import simulate

    with pytest.raises(SystemExit) as exc:
        simulate.main(["--culture", "JPN", "--episodes", "1", "--use-seeds", "--no-progress", "--db",
                       str(tmp_path / "s.db"), "--model", f"openai:m@http://k:{PLANTED}@127.0.0.1:9/v1"])
    assert "looks like an API key" in str(exc.value.code) and PLANTED not in str(exc.value.code)
    assert PLANTED not in "".join(capsys.readouterr())
    assert all(PLANTED.encode() not in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())


@pytest.mark.parametrize("argv,config", [
    (["--hub_token", PLANTED], None),
    (["--hub-token=" + PLANTED], None),
    ([], f"hub_token: {PLANTED}\n"),
    ([], f"env:\n  OPENAI_API_KEY: {PLANTED}\n"),
])
def test_training_refuses_a_secret_option_or_config_entry(tmp_path, monkeypatch, argv, config):
    """A `--hub_token` would be pickled into the Trainer's training_args.bin; a config's `env:` key sits in a file."""
    from training.common import parse
    from training.sft import make_parser

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # restored even if the parser sets it
    if config:
        (tmp_path / "c.yaml").write_text(config)
        argv = ["--config", str(tmp_path / "c.yaml")]
    with pytest.raises(SystemExit) as exc:
        parse(make_parser(), [*argv, "--output_dir", str(tmp_path / "out")])
    assert "secrets come from the environment" in exc.value.code and PLANTED not in exc.value.code


def test_an_option_value_that_names_a_secret_option_is_not_refused(tmp_path):
    from training.common import parse
    from training.sft import make_parser

    _, training, _ = parse(make_parser(), ["--output_dir", str(tmp_path / "hub_token"), "--run_name", "hub_token"])
    assert training.run_name == "hub_token"


def test_a_planted_key_is_sent_to_the_endpoint_and_never_written_anywhere(tmp_path, monkeypatch, caplog, capsys,
                                                                           tiny_model_dir):
    """Every stage that runs on an OpenAI-compatible endpoint, then training on its export; every byte written
    (store, WAL, exports, dataset and model cards, results, site, logs) and everything printed or logged is
    searched for the key."""
    from eval.wvs.respondents import write_synthetic_file
    from eval.wvs.run import main as wvs_main
    from eval.wvs.survey import country
    from graphs import adapt, contrast, judge, simulate, view
    from training import dataset, sft

    key = "sk-test-planted-" + secrets.token_hex(16)
    monkeypatch.setenv("OPENAI_API_KEY", key)
    caplog.set_level(logging.DEBUG)
    server = PuppetServer()
    spec = f"openai:m@{server.url}"
    db = str(tmp_path / "runs" / "clca.db")
    try:
        adapt.main(["--culture", "JPN", "--n", "2", "--model", spec, "--db", db, "--no-progress"])
        simulate.main(["--culture", "JPN", "--episodes", "2", "--max-turns", "4", "--model", spec, "--db", db,
                       "--no-progress"])
        judge.main(["--culture", "JPN", "--model", spec, "--db", db, "--no-progress"])
        contrast.main(["--culture", "JPN", "--model", spec, "--db", db, "--no-progress"])
        data = tmp_path / "data"
        dataset.main(["--culture", "JPN", "--db", db, "--out", str(data), "--judge-model", spec,
                      "--contrastive-model", spec, "--validation-fraction", "0"])
        view.main(["--db", db, "--out", str(tmp_path / "site")])
        wvs_file = write_synthetic_file(tmp_path / "wvs.csv", [country("JPN")], n_per_country=5, seed=1)
        wvs_main(["--model", spec, "--method", "generate", "--countries", "JPN", "--items", "Q1,Q2",
                  "--wvs-file", str(wvs_file), "--personas", "3", "--bootstrap", "5",
                  "--out", str(tmp_path / "results" / "wvs.json"), "--no-plots"])
    finally:
        server.close()
    sft.main(["--model_name_or_path", tiny_model_dir, "--dataset_name", str(data), "--output_dir",
              str(tmp_path / "adapter"), "--max_steps", "1", "--per_device_train_batch_size", "2",
              "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj", "--save_steps", "1",
              "--disable_tqdm", "true"])

    assert server.auth and set(server.auth) == {f"Bearer {key}"}  # the key was used...
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = {p.name for p in written}
    assert {"clca.db", "README.md", "stats.json", "wvs.json", "provenance.json", "index.html"} <= names
    assert (tmp_path / "data" / "README.md").is_file() and (tmp_path / "adapter" / "README.md").is_file()
    leaked = [str(p.relative_to(tmp_path)) for p in written if key.encode() in p.read_bytes()]
    assert leaked == []  # ... and is in no file
    out, err = capsys.readouterr()
    assert key not in out + err + caplog.text
    assert key[3:] not in json.dumps([r.__dict__ for r in caplog.records], default=str)


# ------------------------------------------------------------------ user templates cannot run code


@pytest.mark.parametrize("template,attribute", [
    ("{{ ''.__class__.__mro__ }}", "__class__"),
    ("{{ ().__class__.__base__.__subclasses__() }}", "__class__"),
    ("{{ culture.__class__.__mro__[1].__subclasses__() }}", "__class__"),
    ("{{ lipsum.__globals__['os'].system('touch pwned') }}", "__globals__"),
    ("{{ cycler.__init__.__globals__.os.popen('id').read() }}", "__init__"),
    ("{{ self.__init__.__globals__ }}", "__init__"),
    ("{{ namespace.__init__.__globals__ }}", "__init__"),
    ("{{ culture.__dict__ }}", "__dict__"),
])
def test_a_template_reaching_for_python_internals_fails_with_a_clear_error(tmp_path, culture, template, attribute):
    (tmp_path / "x.j2").write_text(template)
    with pytest.raises(PromptError) as exc:
        Prompts(tmp_path).render("x", culture=culture)
    message = str(exc.value)
    assert message.startswith(str(tmp_path / "x.j2")) and "\n" not in message
    assert f"'{attribute}'" in message and "unsafe" in message
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


@pytest.mark.parametrize("template", ["{{ items.append(2) }}", "{{ '{0.__class__}'.format(culture) }}",
                                      "{% set d = {} %}{{ d.update(a=1) }}"])
def test_a_template_cannot_change_its_inputs_or_format_its_way_out(tmp_path, culture, template):
    (tmp_path / "x.j2").write_text(template)
    items = [1]
    with pytest.raises(PromptError, match="SecurityError: .* is unsafe"):
        Prompts(tmp_path).render("x", culture=culture, items=items)
    assert items == [1]


def test_every_template_environment_is_sandboxed():
    """User folders go through `Prompts`; every other Jinja environment loads only the project's own templates
    (site pages, dataset and model cards) from a folder fixed in the package."""
    from jinja2.sandbox import SandboxedEnvironment

    assert isinstance(Prompts().env, SandboxedEnvironment)
    loaders = {str(p.relative_to(ROOT)): re.findall(r"\bEnvironment\(\s*loader=FileSystemLoader\(([\w.]+)\)", text)
               for p in source_files() if re.search(r"\bEnvironment\(", text := p.read_text())}
    assert loaders == {"graphs/view.py": ["ASSETS"], "training/dataset.py": ["CARD_TEMPLATE.parent"],
                       "training/run.py": ["TEMPLATES"]}
    for path, [name] in loaders.items():
        assert re.search(rf"^{name.split('.')[0]} = Path\(__file__\)", (ROOT / path).read_text(), re.MULTILINE)


# ------------------------------------------------------------------ servers listen on loopback


def test_the_site_server_binds_loopback_by_default(tmp_path):
    from graphs import view

    server = view.serve(tmp_path, port=0)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.server_close()
    assert not any("--host" in a.option_strings for a in view.make_parser()._actions)


def test_the_managed_llama_server_binds_loopback(tmp_path):
    from agents.models.llama_server import LlamaServer

    cmd = LlamaServer(tmp_path / "m.gguf", slots=1, log_dir=tmp_path).command(Path("/bin/llama-server"), 5555)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"


def test_langgraph_dev_which_serves_the_graphs_binds_loopback_by_default():
    from langgraph_cli.cli import dev

    [host] = [p for p in dev.params if p.name == "host"]
    assert host.default == "127.0.0.1"


def test_no_source_binds_every_interface():
    found = [str(p.relative_to(ROOT)) for p in source_files(".py", ".json", ".toml", ".yaml", "Makefile")
             if re.search(r"0\.0\.0\.0|host\s*=\s*['\"]['\"]|--host[ =]::", p.read_text())]
    assert found == []


# ------------------------------------------------------------------ nothing unpickles a file it was given


def source_files(*suffixes: str) -> list[Path]:
    suffixes = suffixes or (".py",)
    return [p for folder in ("agents", "graphs", "training", "eval", "bench") for p in (ROOT / folder).rglob("*")
            if p.is_file() and (p.suffix in suffixes or p.name in suffixes)] + \
        [p for p in ROOT.glob("*") if p.is_file() and (p.suffix in suffixes or p.name in suffixes)]


UNSAFE = re.compile(r"\bimport pickle\b|\bpickle\.loads?\(|\bcloudpickle\b|\bdill\b|\bjoblib\b|\bshelve\b|"
                    r"\bmarshal\.loads?\(|yaml\.load\(|yaml\.unsafe_load|yaml\.full_load|allow_pickle\s*=\s*True|"
                    r"weights_only\s*=\s*False|trust_remote_code\s*=\s*True|np\.load\("
                    r"|torch\.load\((?![^)]*weights_only=True)")


def test_no_source_unpickles_or_runs_remote_code():
    found = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in source_files() for m in UNSAFE.finditer(p.read_text())]
    assert found == []


def test_a_pickled_weights_file_is_refused_without_running_it(tiny_model_dir, tmp_path):
    """A model folder whose weights are a pickle that runs code on load (`pytorch_model.bin`): transformers loads
    it with `weights_only=True`, so loading fails and the code never runs."""
    import shutil

    import torch

    from agents.models import load_hf

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"model.embed_tokens.weight": Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(Exception) as exc:
        load_hf(str(folder))
    assert "weights_only" in str(exc.value) or "Unpickl" in type(exc.value).__name__ + str(exc.value)
    assert not marker.exists()


def test_the_managed_llama_server_is_not_sent_the_users_key(tmp_path, monkeypatch):
    """OPENAI_API_KEY is meant for the endpoint the user names; the llama-server clca starts takes no key."""
    import asyncio
    from types import SimpleNamespace

    from agents.answers import TurnAnswer
    from agents.models import GenerationParams, llama_server

    monkeypatch.setenv("OPENAI_API_KEY", PLANTED)
    server = PuppetServer()
    monkeypatch.setattr(llama_server, "shared_server", lambda *a, **k: SimpleNamespace(base_url=server.url, slots=2,
                                                                                     ctx_per_slot=4096))
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    try:
        model = load_model(f"gguf:{tmp_path / 'm.gguf'}", max_batch=1)
        asyncio.run(model.aanswer([{"role": "user", "content": "Turn #1"}], TurnAnswer, task="roleplay",
                                  params=GenerationParams(max_new_tokens=20)))
    finally:
        server.close()
    assert len(server.auth) == 2 and set(server.auth) == {"Bearer EMPTY"}  # the self-test and the answer
