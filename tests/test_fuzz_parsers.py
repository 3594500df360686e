"""Fuzzing every reader of model text: any reply is a valid answer or an invalid one with a one-line reason.

Nothing a model writes may crash a run or reach the store as something it cannot hold (text that is not
valid Unicode, a number too long to read). Each case hypothesis found is also a plain test below, with
its expected value.
"""

import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.answers import (
    AdaptedScenario,
    AlignmentAnswer,
    Answer,
    IntentAnswer,
    MetaAnswer,
    QualityAnswer,
    SotopiaAnswer,
    TurnAnswer,
    WVSAnswer,
    json_schema,
    parse_answer,
    validate_data,
)
from agents.freetext import choice, label, labelled_values, normalise, parse_labelled
from eval.wvs.items import all_items
from eval.wvs.parse import INVALID
from eval.wvs.parse import parse_answer as parse_wvs

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SHAPES = [TurnAnswer, IntentAnswer, QualityAnswer, AlignmentAnswer, MetaAnswer, SotopiaAnswer, AdaptedScenario,
          WVSAnswer]
ITEMS = [all_items()[q] for q in ("Q1", "Q27", "Q46", "Q106", "Q122", "Q241")]  # 4, 5, 4 options, 1-10, 0-2, 0-9

# Text a model might write, hostile parts included: any Unicode (lone surrogates too, as a JSON decoder
# produces them from escapes), the formats' own punctuation, numbers longer than Python reads.
ANY_TEXT = st.text(st.characters(codec=None), max_size=200)
FORMAT_TEXT = st.text(string.printable + "“”：＊−１２３。是否非常", max_size=200)
HUGE_NUMBER = st.integers(4301, 6000).map(lambda n: "9" * n)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)


def shape_data(shape: type[Answer]):
    """Near-valid answers: the shape's own field names with values of any JSON type."""
    names = list(json_schema(shape)["properties"])
    return st.dictionaries(st.sampled_from(names + ["extra"]), JSON_VALUES, max_size=len(names) + 1)


def labelled_text(shape: type[Answer]):
    """Free-text answers in the labelled format with any values, in any order, with markdown around."""
    labels = [label(shape, name) for name in json_schema(shape)["properties"]]
    line = st.tuples(st.sampled_from(labels), st.sampled_from(["", "**", "- ", "# "]), FORMAT_TEXT | HUGE_NUMBER)
    return st.lists(line, max_size=len(labels) + 2).map(
        lambda lines: "\n".join(f"{mark}{lab}:{mark} {value}" for lab, mark, value in lines))


def storable(answer: Answer) -> bool:
    """What the store writes: the answer's JSON, as UTF-8."""
    answer.model_dump_json().encode("utf-8")
    return True


def check(result, shape):
    answer, reason = result
    if answer is None:
        assert isinstance(reason, str) and reason and "\n" not in reason
    else:
        assert isinstance(answer, shape) and reason == "" and storable(answer)


# ------------------------------------------------------------------ structured answers (JSON)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.__name__)
@FUZZ
@given(data=st.data())
def test_any_json_reply_is_an_answer_or_invalid(shape, data):
    raw = data.draw(ANY_TEXT | shape_data(shape).map(json.dumps) | JSON_VALUES.map(json.dumps)
                    | HUGE_NUMBER | HUGE_NUMBER.map(lambda n: '{"answer": ' + n + "}"))
    check(parse_answer(raw, shape), shape)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.__name__)
@FUZZ
@given(data=st.data())
def test_any_decoded_data_is_an_answer_or_invalid(shape, data):
    check(validate_data(data.draw(shape_data(shape) | JSON_VALUES), shape), shape)


@pytest.mark.parametrize("raw,reason", [
    # found by fuzzing: an integer longer than Python converts raised ValueError out of json.loads
    ('{"answer": ' + "9" * 5000 + "}", "not JSON (a number of more than 4300 digits)"),
    # found by fuzzing: nesting deeper than the recursion limit raised RecursionError
    ("[" * 100_000, "not JSON (nested too deeply)"),
    # a lone surrogate escape decodes to text the store cannot encode as UTF-8: pydantic refuses it
    ('{"action": "speak", "text": "Hi \\ud83d"}',
     "field text: Input should be a valid string, unable to parse raw data as a unicode string"),
])
def test_found_cases_are_invalid_with_their_reason(raw, reason):
    shape = WVSAnswer if raw.startswith('{"answer"') else TurnAnswer
    assert parse_answer(raw, shape) == (None, reason)


def test_valid_json_answers_still_read():
    assert parse_answer('{"action": "speak", "text": "Hi \\ud83d\\ude00"}', TurnAnswer) == (
        TurnAnswer(action="speak", text="Hi \U0001F600"), "")
    assert parse_answer('{"answer": 3}', WVSAnswer) == (WVSAnswer(answer=3), "")


# ------------------------------------------------------------------ free-text answers (--unstructured)


@pytest.mark.parametrize("shape", SHAPES[:-2], ids=lambda s: s.__name__)
@FUZZ
@given(data=st.data())
def test_any_labelled_reply_is_an_answer_or_invalid(shape, data):
    raw = data.draw(ANY_TEXT | labelled_text(shape))
    check(parse_labelled(raw, shape), shape)


@FUZZ
@given(raw=ANY_TEXT | FORMAT_TEXT, options=st.lists(st.sampled_from(["good", "bad", "not aligned", "aligned", "a-b",
                                                                      "speak", "none"]), min_size=1, unique=True))
def test_choice_is_one_option_or_none(raw, options):
    assert choice(raw, options) in [*options, None]


@FUZZ
@given(raw=ANY_TEXT)
def test_normalise_and_labelled_values_never_raise(raw):
    assert isinstance(normalise(raw), str)
    assert set(labelled_values(raw, ["ACTION", "OUTPUT", "FINANCIAL"])) <= {"ACTION", "OUTPUT", "FINANCIAL"}


def test_found_labelled_case_a_number_too_long_to_read_is_invalid():
    raw = "BELIEVABILITY: " + "9" * 5000
    assert parse_labelled(raw, SotopiaAnswer) == (None, f"BELIEVABILITY: {'9' * 60!r} is not one of the allowed values")


# ------------------------------------------------------------------ WVS answers (generate --unstructured)


@pytest.mark.parametrize("rules", ["paper", "lenient"])
@FUZZ
@given(raw=ANY_TEXT | FORMAT_TEXT | HUGE_NUMBER | HUGE_NUMBER.map("ANSWER: {}".format), item=st.sampled_from(ITEMS))
def test_any_wvs_reply_is_an_option_code_or_invalid(rules, raw, item):
    assert parse_wvs(raw, item, rules) in (*item.codes, INVALID)


@pytest.mark.parametrize("rules", ["paper", "lenient"])
@pytest.mark.parametrize("raw", ["9" * 5000, "ANSWER: " + "1" * 4400, "answer: " + "٣" * 5000])
def test_found_wvs_case_a_number_too_long_to_read_is_invalid(rules, raw):
    assert parse_wvs(raw, ITEMS[0], rules) == INVALID


# ------------------------------------------------------------------ adapted scenarios, judge filter rules


@FUZZ
@given(raw=ANY_TEXT | shape_data(AdaptedScenario).map(json.dumps) | JSON_VALUES.map(json.dumps)
       | HUGE_NUMBER.map(lambda n: '{"setting": ' + n + "}"))
def test_any_adaptation_reply_is_a_scenario_or_an_adaptation_error(raw):
    from agents.cultures import load_culture
    from agents.records import Scenario
    from agents.seeds import sotopia_seeds
    from graphs.adapt import AdaptationError, validate_adaptation

    seed, culture = sotopia_seeds()[0], load_culture("JPN")
    try:
        assert isinstance(validate_adaptation(raw, seed, culture), Scenario)
    except AdaptationError as exc:
        assert str(exc) and "\n" not in str(exc)


@pytest.mark.parametrize("raw", ['{"setting": ' + "9" * 5000 + "}", '{"a": ' * 50_000])
def test_found_adaptation_case_is_an_adaptation_error(raw):
    """Found by fuzzing: json's ValueError (digit limit) and RecursionError escaped `extract_json`."""
    from graphs.adapt import AdaptationError, extract_json

    with pytest.raises(AdaptationError, match=r"^the answer is not valid JSON \(a number too long or nesting too "
                                              r"deep\)$"):
        extract_json(raw)


@FUZZ
@given(text=FORMAT_TEXT | st.lists(st.sampled_from(["meta=bad", "quality=good@not sure", "culture=aligned",
                                                    "@", "=", ",", "/", "none", "quality=bad@very confident/x"]),
                                   max_size=4).map(",".join),
       on_invalid=st.sampled_from(["keep", "drop", "maybe"]))
def test_any_filter_rule_text_parses_or_is_a_filter_rule_error(text, on_invalid):
    from graphs.filter import FilterRule, FilterRuleError

    try:
        rule = FilterRule.parse(text, on_invalid)
    except FilterRuleError as exc:
        assert "\n" not in str(exc)
    else:
        assert FilterRule.parse(str(rule).rsplit(" (on invalid", 1)[0], on_invalid) == rule  # round trip


# ------------------------------------------------------------------ text from an HTTP endpoint


def test_a_lone_surrogate_from_a_server_becomes_a_replacement_character():
    """Found by fuzzing the parsers: a JSON reply escape for half an emoji (`\\ud83d`) gave a `str` that the
    store cannot encode as UTF-8; the raw text is now valid Unicode and the answer is read normally."""
    import asyncio

    from agents.models import GenerationParams, load_model
    from tests.test_openai_backend import FakeServer

    server = FakeServer(lambda body: (200, "ACTION: speak\nOUTPUT: Hi \ud83d"))
    try:
        model = load_model(f"openai:m@{server.url}", structured=False)
        asked = asyncio.run(model.aanswer([{"role": "user", "content": "hi"}], TurnAnswer, task="roleplay",
                                          params=GenerationParams(max_new_tokens=20)))
    finally:
        server.close()
    assert asked.raw == "ACTION: speak\nOUTPUT: Hi \ufffd" and asked.raw.encode("utf-8")
    assert asked.answer == TurnAnswer(action="speak", text="Hi \ufffd")


# ------------------------------------------------------------------ whole runs on arbitrary replies


REPLY_TEXT = st.text(st.characters(codec="utf-8"), max_size=120)  # what a backend can return (no lone surrogates)
NEAR_VALID = st.sampled_from(['{"action": "speak", "text": "Hello there."}', '{"action": "none", "text": ""}',
                              '{"action": "leave", "text": ""}', '{"action": "speak", "text": ""}', "{}", "",
                              '{"intent": "Greeting.", "reason": "Polite.", "cultural": false}'])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(replies=st.lists(REPLY_TEXT | NEAR_VALID, min_size=1, max_size=8))
def test_an_episode_on_arbitrary_replies_is_stored_with_its_invalid_turns_marked(tmp_path_factory, culture, replies):
    import itertools

    from agents.models import Model, ScriptedBackend
    from agents.seeds import sotopia_seeds
    from graphs import simulate
    from graphs.batch import run
    from graphs.simulate import plan_episodes
    from graphs.store import Store

    store = Store(tmp_path_factory.mktemp("ep") / "s.db")
    cycle = itertools.cycle(replies)
    model = Model(ScriptedBackend(lambda messages, task: next(cycle)), "scripted")
    plan = plan_episodes(list(sotopia_seeds())[:1], culture.code, "scripted", 0, 1, 1)
    request = simulate.SimulateRequest(culture=culture.code, episodes=1, model="scripted", db=str(store.path),
                                       max_turns=3, concurrency=1, use_seeds=True, scenario_ids=[plan[0].scenario.id])
    counts = run(simulate.STAGE, request, model=model)["summary"]["this_run"]
    assert counts["failed"] == 0 and counts["done"] + counts["invalid"] == 1
    for turn in store.turns(plan[0].id):
        assert turn.valid == (parse_answer(turn.raw, TurnAnswer)[0] is not None)
    for intent in store.intents(plan[0].id):
        assert intent.valid == (parse_answer(intent.raw, IntentAnswer)[0] is not None)


@settings(max_examples=30, deadline=None)
@given(replies=st.lists(REPLY_TEXT | st.integers(-3, 12).map(lambda c: json.dumps({"answer": c})), min_size=1,
                        max_size=6), structured=st.booleans())
def test_wvs_generate_reader_rows_are_distributions_over_options_and_invalid(replies, structured):
    import itertools

    from agents.models import GenerationParams, Model, ScriptedBackend
    from eval.wvs.readers import GenerateReader

    cycle = itertools.cycle(replies)
    model = Model(ScriptedBackend(lambda messages, task: next(cycle)), "scripted", structured=structured)
    answers = GenerateReader(model, GenerationParams(max_new_tokens=16)).read([None, "sys"], ITEMS[:2], ["q1", "q2"])
    for item, ans in zip(ITEMS[:2], answers):
        assert ans.rows.shape == (2, len(item.codes) + 1) and (ans.rows.sum(axis=1) == 1).all()
        assert all(code in (*item.codes, INVALID) for code in ans.codes)


@pytest.fixture(scope="module")
def simulated_store(tmp_path_factory):
    """Two puppet episodes (CHN seeds), to judge; copied per example."""

    from agents.seeds import sotopia_seeds
    from graphs import simulate
    from graphs.batch import run
    from graphs.store import Store

    path = tmp_path_factory.mktemp("judged") / "s.db"
    store = Store(path)
    seeds = list(sotopia_seeds())[:2]
    for seed in seeds:
        store.put_scenario(seed, seed_id=seed.id)
    run(simulate.STAGE, simulate.SimulateRequest(culture="CHN", episodes=2, model="puppet", db=str(path), max_turns=2,
                                                 concurrency=1, use_seeds=True, scenario_ids=[s.id for s in seeds]))
    return path


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(replies=st.lists(REPLY_TEXT | st.sampled_from(['{"quality": "good", "confidence": "confident"}',
                                                      '{"alignment": "aligned", "confidence": "not sure"}',
                                                      '{"critique": "", "label": "bad", "confidence": "confident"}',
                                                      "QUALITY: good\nCONFIDENCE: confident"]),
                        min_size=1, max_size=6), structured=st.booleans())
def test_judging_arbitrary_replies_stores_every_judgement_with_invalid_ones_marked(tmp_path_factory, simulated_store,
                                                                                  replies, structured):
    import itertools
    import sqlite3

    from agents.models import Model, ScriptedBackend
    from graphs import judge
    from graphs.batch import run
    from graphs.judge import judgeable_episodes
    from graphs.store import Store

    path = tmp_path_factory.mktemp("judge") / "s.db"
    with sqlite3.connect(simulated_store) as source, sqlite3.connect(path) as copy:
        source.backup(copy)  # the store is in WAL mode: a file copy could miss the latest writes
    store = Store(path)
    cycle = itertools.cycle(replies)
    model = Model(ScriptedBackend(lambda messages, task: next(cycle)), "judge-fuzz", structured=structured)
    episodes = judgeable_episodes(store, "CHN")
    assert len(episodes) == 2
    request = judge.JudgeRequest(culture="CHN", model="judge-fuzz", db=str(path), concurrency=1, sotopia=True)
    counts = run(judge.STAGE, request, model=model)["summary"]["this_run"]
    assert counts == {"skipped": 0, "judged": len(episodes), "failed": 0}
    for episode in episodes:
        rows = store.judgements(episode.id, "judge-fuzz")
        assert {"quality", "culture", "meta"} <= {r.aspect for r in rows}
        for row in rows:
            assert row.valid in (False, True) and row.valid == (row.label is not None or row.score is not None)
