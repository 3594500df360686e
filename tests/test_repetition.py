"""Repetition controls: parsed from one option, carried per task by the stages, sent in each engine's own fields,
recorded in provenance and the summary."""

from __future__ import annotations

import http.server
import json
import threading

import pytest

from agents.models import DRY_DEFAULT, GenerationParams, Model, Repetition, RepetitionError, ScriptedBackend
from agents.models.hf import _RowRepetition, dry_matches
from agents.models.openai_compat import DRY_WINDOW_FALLBACK, OpenAIBackend, detect_engine
from agents.models.vllm_offline import repetition_fields
from graphs import judge, simulate
from graphs.batch import BatchInputError, run
from graphs.judge import JudgeError, JudgeRequest
from graphs.simulate import SimulateRequest
from graphs.store import Store

TURN = '{"action": "speak", "text": "Good evening, how was your trip?"}'
INTENT = '{"intent": "Greeting.", "reason": "Polite.", "cultural": false}'


def test_parse():
    assert Repetition.parse("dry") == DRY_DEFAULT and DRY_DEFAULT.active
    assert Repetition.parse("none") == Repetition() and not Repetition().active
    assert Repetition.parse("dry,dry_multiplier=0.5") == Repetition(dry_multiplier=0.5, dry_base=1.75)
    assert Repetition.parse("repetition-penalty=1.1").repetition_penalty == 1.1
    assert Repetition.parse(str(Repetition.parse("dry,frequency_penalty=0.2"))) == Repetition.parse(
        "dry,frequency_penalty=0.2")
    assert str(Repetition()) == "none"


@pytest.mark.parametrize("text, message", [
    ("dri", "expected none, dry or field=value"), ("dry_base=fast", "'fast' is not a number"),
    ("dry_base=0.5", "out of range"), ("repetition_penalty=0", "out of range"),
])
def test_bad_text_names_the_part(text, message):
    with pytest.raises(RepetitionError, match=message):
        Repetition.parse(text)


@pytest.mark.parametrize("engine, body, top", [
    ("llama.cpp", {"dry_multiplier": 0.8, "dry_base": 1.75, "dry_allowed_length": 2,
                   "dry_penalty_last_n": DRY_WINDOW_FALLBACK, "repeat_penalty": 1.1},
     {"frequency_penalty": 0.2}),
    ("vllm", {"repetition_penalty": 1.1}, {"frequency_penalty": 0.2}),
    ("openai", {}, {"frequency_penalty": 0.2}),
])
def test_each_engine_gets_its_own_fields(engine, body, top):
    backend = OpenAIBackend("m", "http://127.0.0.1:9/v1", engine=engine)
    rep = Repetition.parse("dry,repetition_penalty=1.1,frequency_penalty=0.2")
    kwargs = backend.request([{"role": "user", "content": "hi"}], GenerationParams(repetition=rep))
    assert kwargs.get("extra_body", {}) == body
    assert {k: kwargs[k] for k in top} == top
    assert Model(backend, "m").repetition_controls(rep) == {**body, **top}
    plain = backend.request([{"role": "user", "content": "hi"}], GenerationParams())
    assert "extra_body" not in plain and "frequency_penalty" not in plain


def test_vllm_has_no_dry():
    assert repetition_fields(DRY_DEFAULT) == {}
    assert repetition_fields(Repetition(repetition_penalty=1.05)) == {"repetition_penalty": 1.05}


class _Server(http.server.BaseHTTPRequestHandler):
    routes: dict = {}

    def do_GET(self):  # noqa: N802 - the stdlib's name
        body = self.routes.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.end_headers()
        self.wfile.write(json.dumps(body or {}).encode())

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("routes, engine", [
    ({"/props": {"default_generation_settings": {}}}, "llama.cpp"),
    ({"/version": {"version": "0.11.0"}}, "vllm"),
    ({}, "openai"),
])
def test_engine_is_detected_from_the_server(routes, engine):
    handler = type("Handler", (_Server,), {"routes": routes})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        root = f"http://127.0.0.1:{server.server_port}"
        assert detect_engine(root) == engine
        assert OpenAIBackend("m", f"{root}/v1").engine == engine
    finally:
        server.shutdown()
        server.server_close()


def test_dry_searches_the_whole_context_on_llama_server():
    """llama-server reads an absent dry_penalty_last_n as its default, the last 64 tokens, and refuses -1: a
    role-player's copy of the partner's turn (further back than that, before the instruction) went unpenalised.
    The whole context is sent as its size: a managed server's per-slot context, else /props' n_ctx."""
    handler = type("Handler", (_Server,), {"routes": {"/props": {"default_generation_settings": {"n_ctx": 4096}}}})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        backend = OpenAIBackend("m", f"http://127.0.0.1:{server.server_port}/v1")
        assert backend.repetition_controls(DRY_DEFAULT)["dry_penalty_last_n"] == 4096
        backend.context_tokens = 2048  # a managed server knows its slots' context
        assert backend.repetition_controls(DRY_DEFAULT)["dry_penalty_last_n"] == 2048
        window = Repetition.parse("dry,dry_penalty_last_n=100")
        assert backend.repetition_controls(window)["dry_penalty_last_n"] == 100
    finally:
        server.shutdown()
        server.server_close()


def test_an_unreachable_server_is_a_plain_openai_endpoint():
    assert detect_engine("http://127.0.0.1:9", timeout_s=2) == "openai"


def test_dry_matches_follow_the_repeat_back_and_stop_at_breakers():
    # ... 5 6 7 8 | 5 6 7 -> 8 would extend a 3-token repeat
    assert dry_matches([1, 5, 6, 7, 8, 2, 5, 6, 7], frozenset()) == {8: 3}
    assert dry_matches([1, 5, 6, 7, 8, 2, 5, 6, 7], frozenset({6})) == {8: 1}  # the match stops at a breaker
    assert dry_matches([5, 9, 5], frozenset({9})) == {}  # a breaker never follows a match
    assert dry_matches([1, 2, 3], frozenset()) == {}
    assert dry_matches([5, 6, 7, 8, 2, 5, 6, 7], frozenset(), last_n=4) == {}  # outside the window


def test_row_repetition_lowers_the_repeating_token_by_a_finite_amount():
    import torch

    ids = torch.tensor([[0, 0, 5, 6, 7, 8, 2, 5, 6, 7]])  # two pads, then the context
    scores = torch.zeros(1, 10)
    out = _RowRepetition([DRY_DEFAULT], [2], 10, frozenset())(ids, scores.clone())
    assert out[0, 8] == pytest.approx(-0.8 * 1.75 ** (3 - 2))
    assert torch.isfinite(out).all() and (out[0, :8] == 0).all()
    assert (_RowRepetition([Repetition()], [2], 10, frozenset())(ids, scores.clone()) == 0).all()


def scripted():
    lines = iter(range(1000))  # a different line every turn: the quality gate drops repeated turns
    return ScriptedBackend(lambda m, t: (f'{{"action": "speak", "text": "Line {next(lines)} of our talk."}}'
                                         if t == "roleplay" else INTENT))


def test_simulate_sends_dry_by_default_and_records_it(tmp_path, culture):
    backend = scripted()
    request = SimulateRequest(culture=culture.code, episodes=1, model="m", db=str(tmp_path / "s.db"), max_turns=1,
                              use_seeds=True)
    final = run(simulate.STAGE, request, model=Model(backend, "m"))
    assert {p.repetition for p in backend.params} == {DRY_DEFAULT}  # role-play and observer
    assert final["summary"]["repetition"] == {"requested": str(DRY_DEFAULT), "applied": {}}  # the fake applies none
    config = Store(tmp_path / "s.db").episodes("CHN")[0].config
    assert config["repetition"] == "dry"


def test_simulate_repetition_can_be_turned_off_or_changed(tmp_path, culture):
    for text, expected in (("none", Repetition()), ("dry_multiplier=0.5", Repetition(dry_multiplier=0.5))):
        backend = scripted()
        request = SimulateRequest(culture=culture.code, episodes=1, model="m", db=str(tmp_path / f"{text}.db"),
                                  max_turns=1, use_seeds=True, repetition=text)
        run(simulate.STAGE, request, model=Model(backend, "m"))
        assert {p.repetition for p in backend.params} == {expected}
    with pytest.raises(BatchInputError, match="repetition 'dri'"):
        simulate.resolve(SimulateRequest(culture="CHN", use_seeds=True, repetition="dri", db=str(tmp_path / "x.db")),
                         model=Model(scripted(), "m"))


def test_judge_carries_its_repetition(tmp_path, culture):
    db = str(tmp_path / "s.db")
    run(simulate.STAGE, SimulateRequest(culture="CHN", episodes=1, model="m", db=db, max_turns=1, use_seeds=True),
        model=Model(scripted(), "m"))
    with pytest.raises(JudgeError, match="repetition 'dri'"):
        judge.resolve(JudgeRequest(culture="CHN", db=db, repetition="dri"), model=Model(scripted(), "j"))
    for text, expected in (("dry", DRY_DEFAULT), ("none", Repetition())):
        backend = ScriptedBackend(lambda m, t: "no idea")  # invalid answers: stored as such, still asked
        final = run(judge.STAGE, JudgeRequest(culture="CHN", db=db, repetition=text, rejudge=True),
                    model=Model(backend, "j", structured=False))
        assert backend.params and {p.repetition for p in backend.params} == {expected}
        assert final["summary"]["repetition"]["requested"] == str(expected)


def test_in_process_dry_keeps_answers_valid_and_breaks_greedy_loops(tiny_model_dir):
    """The tiny random model loops under greedy decoding; DRY, applied before the grammar's mask, leaves every
    schema-constrained answer valid and repeats fewer 3-grams."""
    import asyncio

    from agents.answers import TurnAnswer, json_schema
    from agents.models import load_model
    from graphs.quality import dup_ngram_fraction

    model = load_model(tiny_model_dir)
    schema = json_schema(TurnAnswer)  # narrowed to a spoken turn of at least 40 characters
    schema["properties"]["action"]["enum"] = ["speak"]
    schema["properties"]["text"] = {"type": "string", "minLength": 40, "maxLength": 200}

    def ask(rep: Repetition) -> list:
        params = GenerationParams(max_new_tokens=60, temperature=0.0, repetition=rep)

        async def go():
            return await asyncio.gather(*(model.aanswer([{"role": "user", "content": f"Say something {k}"}],
                                                        TurnAnswer, task="t", params=params, schema=schema)
                                         for k in range(4)))
        return asyncio.run(go())

    plain, dry = ask(Repetition()), ask(Repetition(dry_multiplier=2.0, dry_allowed_length=2))
    assert all(a.answer is not None for a in plain + dry), [a.error for a in plain + dry]

    def dup(asked):
        return sum(dup_ngram_fraction(list(a.answer.text), 3) for a in asked)  # characters: the tiny BPE's units
    assert dup(dry) < dup(plain), (plain, dry)
