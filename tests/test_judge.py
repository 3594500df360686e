"""graphs.judge: answer parsing, the filter rule, the per-episode graph, resuming, and the CLI (scripted models)."""

import json
from pathlib import Path

import pytest

from agents.answers import SotopiaAnswer, parse_answer
from agents.freetext import parse_labelled
from agents.models import Asked, Model, ScriptedBackend
from agents.records import Action, Turn
from graphs import judge
from graphs.batch import run
from graphs.judge import (
    PAPER_RULE,
    SHAPES,
    FilterRule,
    FilterRuleError,
    JudgeRequest,
    build_judge_graph,
    judgement_row,
    main,
    score_rows,
    verdict,
)
from graphs.store import EpisodeRecord, Judgement, Store


def parse_judgement(aspect, raw, structured=False):
    answer, error = (parse_answer if structured else parse_labelled)(raw, SHAPES[aspect])
    return judgement_row(aspect, Asked(raw, answer, error))


def parse_scores(participant, raw, structured=False):
    answer, error = (parse_answer if structured else parse_labelled)(raw, SotopiaAnswer)
    return score_rows(participant, Asked(raw, answer, error))


QUALITY_GOOD = "QUALITY: good\nCONFIDENCE: confident"
ALIGNED = "ALIGNMENT: aligned\nCONFIDENCE: very confident"
META_GOOD = "CRITIQUE: Both judgements are right.\nLABEL: good\nCONFIDENCE: confident"


@pytest.mark.parametrize(
    "aspect, raw, label, confidence",
    [
        ("quality", "QUALITY: good\nCONFIDENCE: very confident", "good", "very confident"),
        ("quality", "**Quality:** Bad.\n**Confidence:** Confident", "bad", "confident"),
        ("quality", "QUALITY: bad - the last lines repeat\nCONFIDENCE: not sure", "bad", "not sure"),
        ("quality", "QUALITY: [good | bad]\nCONFIDENCE: [very confident | confident | not sure]", None, None),
        ("quality", "QUALITY: not good\nCONFIDENCE: confident", None, None),  # a negation is not a label
        ("quality", "QUALITY: good", None, None),  # no confidence: the whole answer is invalid
        ("quality", "QUALITY: good\nCONFIDENCE: somewhat", None, None),
        ("quality", "The dialogue is fine.", None, None),
        ("quality", "", None, None),
        ("culture", "ALIGNMENT: not aligned\nCONFIDENCE: very confident", "not aligned", "very confident"),
        ("culture", "ALIGNMENT: Aligned\nCONFIDENCE: confident", "aligned", "confident"),
        ("culture", "ALIGNMENT: good\nCONFIDENCE: confident", None, None),  # the wrong vocabulary
        ("meta", "CRITIQUE: Repetitive.\nIt loops.\nLABEL: bad\nCONFIDENCE: very confident", "bad", "very confident"),
        ("meta", "CRITIQUE: fine\nLABEL: good or bad\nCONFIDENCE: confident", None, None),
        ("quality", "QUALITY: **Yes**\nCONFIDENCE: confident", None, None),
        ("culture", "Alignment : **Not Aligned**\nconfidence:  VERY   confident", "not aligned", "very confident"),
    ],
)
def test_parse_free_text_judgement(aspect, raw, label, confidence):
    row = parse_judgement(aspect, raw)
    assert (row["label"], row["confidence"], row["valid"]) == (label, confidence, int(label is not None))
    assert row["raw"] == raw and row["aspect"] == aspect


@pytest.mark.parametrize(
    "aspect, raw, label, confidence",
    [
        ("quality", '{"quality": "good", "confidence": "very confident"}', "good", "very confident"),
        ("culture", '{"alignment": "not aligned", "confidence": "not sure"}', "not aligned", "not sure"),
        ("meta", '{"critique": "Fine.", "label": "bad", "confidence": "confident"}', "bad", "confident"),
        ("quality", '{"quality": "fine", "confidence": "confident"}', None, None),
        ("culture", '{"alignment": "aligned"}', None, None),  # a field missing
        ("quality", "QUALITY: good\nCONFIDENCE: confident", None, None),
    ],
)
def test_parse_structured_judgement(aspect, raw, label, confidence):
    row = parse_judgement(aspect, raw, structured=True)
    assert (row["label"], row["confidence"], row["valid"]) == (label, confidence, int(label is not None))


def test_meta_critique_is_kept_across_lines():
    row = parse_judgement("meta", "CRITIQUE: Repetitive.\nIt loops.\nLABEL: bad\nCONFIDENCE: very confident")
    assert row["critique"] == "Repetitive.\nIt loops."
    assert parse_judgement("quality", QUALITY_GOOD)["critique"] is None


def rows(**labels):
    """Judgements from aspect=(label, confidence) or aspect=None for an invalid answer."""
    return [
        Judgement(aspect=a, label=v[0] if v else None, confidence=v[1] if v else None, valid=v is not None)
        for a, v in labels.items()
    ]


@pytest.mark.parametrize(
    "judgements, kept, reasons, invalid",
    [
        (rows(quality=("good", "confident"), culture=("aligned", "confident"), meta=("good", "confident")),
         True, (), ()),
        (rows(quality=("bad", "very confident"), culture=("aligned", "confident"), meta=("good", "confident")),
         False, ("quality=bad@very confident",), ()),
        (rows(quality=("bad", "confident"), culture=("aligned", "confident"), meta=("bad", "not sure")),
         True, (), ()),
        (rows(quality=("good", "confident"), culture=("aligned", "confident"), meta=("bad", "very confident")),
         False, ("meta=bad@very confident",), ()),
        # the culture label only feeds the meta-judgement in the paper's rule
        (rows(quality=("good", "confident"), culture=("not aligned", "very confident"), meta=("good", "confident")),
         True, (), ()),
        (rows(quality=("good", "confident"), culture=None, meta=None), True, (), ("meta",)),
        (rows(quality=("good", "confident")), True, (), ("meta",)),  # a missing aspect reads as invalid
    ],
)
def test_paper_rule(judgements, kept, reasons, invalid):
    v = verdict(judgements, PAPER_RULE)
    assert (v.kept, v.judged, v.reasons, v.invalid) == (kept, True, reasons, invalid)


def test_rule_options():
    assert verdict([], PAPER_RULE).judged is False and verdict([], PAPER_RULE).kept is False
    assert verdict([], FilterRule.parse("none")).kept is True
    strict = FilterRule.parse("meta=bad@very confident,quality=bad@very confident", on_invalid="drop")
    v = verdict(rows(quality=("good", "confident"), culture=None, meta=None), strict)
    assert not v.kept and v.reasons == ("meta invalid",)
    any_confidence = FilterRule.parse("culture=not aligned")
    assert not verdict(rows(culture=("not aligned", "not sure")), any_confidence).kept
    several = FilterRule.parse("quality=bad@very confident/confident")
    assert not verdict(rows(quality=("bad", "confident")), several).kept
    assert verdict(rows(quality=("bad", "not sure")), several).kept


@pytest.mark.parametrize(
    "text, message",
    [
        ("meta=awful", "label must be one of good, bad"),
        ("tone=good", "aspect one of quality, culture, meta"),
        ("quality=bad@sure", "confidence must be one of"),
        ("quality", "expected aspect=label"),
        (" , ", "empty"),
    ],
)
def test_bad_rules_name_the_part(text, message):
    with pytest.raises(FilterRuleError, match=message):
        FilterRule.parse(text)


def test_graph_topology_snapshot():
    expected = Path("tests/snapshots/judge_graph.mmd").read_text()
    assert build_judge_graph().get_graph().draw_mermaid() == expected


def turn(i, text=None, valid=True, action=Action.SPEAK):
    names = ("Li Wei", "Chen Jing")
    text = f"Hello, this is line {i}." if text is None else text  # distinct lines: the quality gate drops copies
    return Turn(index=i, speaker=i % 2, name=names[i % 2], action=action if valid else None, text=text,
                raw=text, valid=valid)


def stored_episode(store, scenario, ep_id, turns, status="done"):
    store.put_scenario(scenario)
    store.begin_episode(EpisodeRecord(id=ep_id, scenario_id=scenario.id, culture="CHN", model="m", seed=0, sample=0))
    store.finish_episode(ep_id, status, turns, [], ended_by="max_turns", intent_version="v")


def answering(replies_by_question):
    """A judge that answers each question by the key its prompt asks for, and records the order."""

    def reply(messages, task):
        assert task == "judge"
        question = messages[-1]["content"]
        for key, answer in replies_by_question.items():
            if f"\n{key}:" in question:
                return answer
        raise AssertionError(question)

    return ScriptedBackend(reply)


def run_judge(store, culture, backend, structured=False, **kw):
    """Judge the store's CHN episodes through the stage's own entry point; this run's counts."""
    request = JudgeRequest(culture=culture.code, model="judge-m", db=str(store.path), **kw)
    return run(judge.STAGE, request, model=Model(backend, "judge-m", structured=structured))["summary"]["this_run"]


def test_graph_judges_stores_and_resumes(tmp_path, culture, scenario):
    store = Store(tmp_path / "s.db")
    stored_episode(store, scenario, "ep-a", [turn(0, "Good morning, neighbour."), turn(1, "Morning!"),
                                             turn(2, "I REPEAT", valid=False)], status="invalid")
    stored_episode(store, scenario, "ep-short", [turn(0), turn(1, "??", valid=False)], status="invalid")
    backend = answering({"CRITIQUE": META_GOOD, "QUALITY": "QUALITY: bad\nCONFIDENCE: very confident",
                         "ALIGNMENT": "no idea"})
    assert run_judge(store, culture, backend) == {"skipped": 0, "judged": 1, "failed": 0}
    assert [task for task, _ in backend.requests] == ["judge"] * 3
    # quality and culture first (in either order), then meta, which sees the first two answers
    meta_messages = backend.requests[2][1]
    assert "Quality: bad (very confident)" in meta_messages[-1]["content"]
    assert "Alignment with Chinese culture: no usable answer" in meta_messages[-1]["content"]
    # the judge sees the whole scenario (goals too) and only the valid turns
    system = meta_messages[0]["content"]
    assert "Borrow a ladder" in system and "Turn 1\nLi Wei: Good morning, neighbour.\nChen Jing: Morning!" in system
    assert "I REPEAT" not in system
    by_aspect = {j.aspect: j for j in store.judgements("ep-a", "judge-m")}
    assert set(by_aspect) == {"quality", "culture", "meta"}
    assert by_aspect["culture"].valid is False and by_aspect["culture"].label is None
    assert by_aspect["culture"].raw == "no idea"
    assert by_aspect["meta"].critique == "Both judgements are right."
    assert by_aspect["quality"].prompt_version.startswith("judge_system:")
    assert "judge_quality:" in by_aspect["quality"].prompt_version
    assert store.judgements("ep-short") == []  # one valid line: nothing to judge
    assert not verdict(store.judgements("ep-a", "judge-m")).kept
    # rerun: nothing asked again; --rejudge asks again
    again = answering({"CRITIQUE": META_GOOD, "QUALITY": QUALITY_GOOD, "ALIGNMENT": ALIGNED})
    assert run_judge(store, culture, again)["skipped"] == 1 and again.requests == []
    assert run_judge(store, culture, again, rejudge=True)["judged"] == 1
    assert verdict(store.judgements("ep-a", "judge-m")).kept


def test_a_failing_model_stores_nothing_and_is_retried(tmp_path, culture, scenario):
    store = Store(tmp_path / "s.db")
    stored_episode(store, scenario, "ep-a", [turn(0), turn(1)])

    def broken(messages, task):
        raise RuntimeError("server went away")

    assert run_judge(store, culture, ScriptedBackend(broken))["failed"] == 1
    assert store.judgements("ep-a") == []
    backend = answering({"CRITIQUE": META_GOOD, "QUALITY": QUALITY_GOOD, "ALIGNMENT": ALIGNED})
    assert run_judge(store, culture, backend)["judged"] == 1


def test_cli_with_puppet(tmp_path, capsys):
    from graphs import simulate

    db = str(tmp_path / "s.db")
    simulate.main(["--culture", "CHN", "--episodes", "3", "--max-turns", "2", "--model", "puppet", "--db", db,
                   "--use-seeds", "--no-progress"])
    main(["--culture", "CHN", "--model", "puppet", "--db", db, "--no-progress"])
    out = capsys.readouterr().out
    assert "3 judged now" in out and "quality 3/3" in out and "3 kept, 0 dropped" in out
    main(["--culture", "CHN", "--model", "puppet", "--db", db, "--no-progress"])
    assert "0 judged now, 3 already judged by puppet" in capsys.readouterr().out
    runs = Store(db).runs("graphs.judge")
    assert len(runs) == 2 and all(r.summary["kept"] == 3 for r in runs)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--filter", "meta=awful"], "error: filter rule 'meta=awful'"),
        (["--culture", "XXX"], "error: unknown culture 'XXX'"),
        (["--culture", "DEU"], "no finished DEU episodes"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, args, message):
    db = str(tmp_path / "empty.db")
    argv = ["--culture", "CHN", "--model", "puppet", "--db", db, *args]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_sotopia_scores_parse_per_dimension():
    from graphs.judge import SOTOPIA_DIMENSIONS

    raw = ("BELIEVABILITY: 8\nRELATIONSHIP: \u22122\nKNOWLEDGE: **7/10**\nSECRET: \uff0d3\nSOCIAL_RULES: 0\n"
           "FINANCIAL: 0.\nGOAL: \uff17")  # a Unicode minus, a full-width minus and a full-width 7
    by_aspect = {r["aspect"]: r for r in parse_scores(1, raw)}
    assert set(by_aspect) == {f"{d}:1" for d in SOTOPIA_DIMENSIONS}
    scores = {a: r["score"] for a, r in by_aspect.items()}
    assert scores == {"believability:1": 8.0, "relationship:1": -2.0, "knowledge:1": 7.0, "secret:1": -3.0,
                      "social_rules:1": 0.0, "financial_and_material_benefits:1": 0.0, "goal:1": 7.0}
    # out of range (secret is -10..0), the placeholder and a fraction make the answer invalid, never clamped
    for bad in ("SECRET: 3", "SECRET: ...", "GOAL: 7.5"):
        key = bad.split(":")[0]
        broken = "\n".join(bad if line.startswith(key + ":") else line for line in raw.splitlines())
        assert {r["valid"] for r in parse_scores(1, broken)} == {0}, bad
    structured = json.dumps({d: 0 for d in SOTOPIA_DIMENSIONS})
    assert {r["valid"] for r in parse_scores(0, structured, structured=True)} == {1}


def test_sotopia_node_scores_both_participants(tmp_path, culture, scenario):
    from graphs.judge import SOTOPIA_ASPECTS, needs_judging

    store = Store(tmp_path / "s.db")
    stored_episode(store, scenario, "ep-a", [turn(0), turn(1)])
    plain = answering({"CRITIQUE": META_GOOD, "QUALITY": QUALITY_GOOD, "ALIGNMENT": ALIGNED})
    run_judge(store, culture, plain)
    assert needs_judging(store, "ep-a", "judge-m", sotopia=True)
    sotopia = ("BELIEVABILITY: 9\nRELATIONSHIP: 1\nKNOWLEDGE: 2\nSECRET: 0\nSOCIAL_RULES: 0\nFINANCIAL: 0\n"
               "GOAL: 4")
    scores = answering({"BELIEVABILITY": sotopia, "CRITIQUE": META_GOOD, "QUALITY": QUALITY_GOOD,
                        "ALIGNMENT": ALIGNED})
    assert run_judge(store, culture, scores, sotopia=True)["judged"] == 1
    sotopia_requests = [m for _, m in scores.requests if "\nBELIEVABILITY:" in m[-1]["content"]]
    assert len(sotopia_requests) == 2
    assert {m[-1]["content"].split("'s part")[0].removeprefix("Score ") for m in sotopia_requests} == {
        "Li Wei", "Chen Jing"}
    by_aspect = {j.aspect: j for j in store.judgements("ep-a", "judge-m")}
    assert set(SOTOPIA_ASPECTS) <= set(by_aspect)
    assert by_aspect["goal:0"].score == 4.0 and by_aspect["believability:1"].score == 9.0
    assert by_aspect["knowledge:0"].score == 2.0
    assert not needs_judging(store, "ep-a", "judge-m", sotopia=True)
    assert verdict(store.judgements("ep-a", "judge-m")).kept  # the filter reads quality and meta only


def test_structured_judge_sends_each_shape_and_stores_valid_answers(tmp_path, culture, scenario):
    store = Store(tmp_path / "s.db")
    stored_episode(store, scenario, "ep-a", [turn(0), turn(1)])

    def reply(messages, task):
        fields = json.loads(backend.params[-1].schema)["properties"]
        return json.dumps({k: v["enum"][-1] if "enum" in v else "Looks right." for k, v in fields.items()})

    backend = ScriptedBackend(reply)
    assert run_judge(store, culture, backend, structured=True)["judged"] == 1
    by_aspect = {j.aspect: j for j in store.judgements("ep-a", "judge-m")}
    assert {a: (r.label, r.confidence, r.valid) for a, r in by_aspect.items()} == {
        "quality": ("bad", "not sure", True), "culture": ("not aligned", "not sure", True),
        "meta": ("bad", "not sure", True)}
    assert by_aspect["meta"].critique == "Looks right."
    assert all(p.prefix == "" for p in backend.params)


@pytest.mark.integration
def test_smollm2_on_llama_server_gives_valid_judgements(tmp_path, culture, scenario):
    """The embedded model on the managed llama-server: under the schema every judge answer validates."""
    from agents.models import load_model
    from graphs.judge import LABELS

    store = Store(tmp_path / "s.db")
    stored_episode(store, scenario, "ep-a", [turn(0, "Good evening, Xiao Chen. May I borrow your ladder?"),
                                             turn(1, "Of course, uncle Li. I will bring it over.")])
    model = load_model("smollm2", max_batch=2, log_dir=tmp_path)
    counts = run(judge.STAGE, JudgeRequest(culture=culture.code, model="smollm2", db=str(store.path)),
                 model=model)["summary"]["this_run"]
    assert counts["judged"] == 1 and model.usage.calls["judge"] == 3
    for row in store.judgements("ep-a", "smollm2"):
        assert row.valid and row.label in LABELS[row.aspect][1], row.raw
