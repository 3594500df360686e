import sqlite3

import pytest

from agents.answers import SotopiaAnswer
from agents.records import Aspect
from graphs.store import SCHEMA, EpisodeRecord, Judgement, Store, StoreError


def test_judgements_replace_per_judge_model_and_keep_others(tmp_path):
    store = Store(tmp_path / "s.db")
    first = [Judgement(Aspect.QUALITY, label="bad", confidence="very confident"),
             Judgement("meta", raw="???", valid=False)]
    store.put_judgements("ep-1", "judge-a", first)
    store.put_judgements("ep-1", "judge-b", [Judgement(Aspect.QUALITY, label="good")])
    store.put_judgements("ep-1", "judge-a", [Judgement(Aspect.QUALITY, label="good")])

    rows = store.judgements("ep-1")
    assert [(r.judge_model, r.aspect, r.label) for r in rows] == [
        ("judge-a", Aspect.QUALITY, "good"), ("judge-b", Aspect.QUALITY, "good")]
    assert store.judgements("ep-1", "judge-b")[0].judge_model == "judge-b"
    assert store.judgements("ep-2") == []


def test_records_round_trip_typed(tmp_path):
    store = Store(tmp_path / "s.db")
    run_id = store.start_run("graphs.simulate --culture CHN", {"culture": "CHN", "served": None})
    store.begin_episode(EpisodeRecord(id="ep-1", scenario_id="s", culture="CHN", model="m", seed=3, sample=1,
                                      max_turns=4, prompt_versions={"roleplay_turn": "abc"}, config={"seed": 3},
                                      run_id=run_id))
    episode = store.episode("ep-1")
    assert (episode.status, episode.prompt_versions, episode.config, episode.usage) == (
        "running", {"roleplay_turn": "abc"}, {"seed": 3}, None)
    store.finish_episode("ep-1", "done", [], [], ended_by="max_turns", intent_version="v", usage={"calls": 2})
    assert store.episode("ep-1").usage == {"calls": 2} and store.episodes("CHN", "done") == [store.episode("ep-1")]
    store.put_judgements("ep-1", "j", [Judgement("goal:1", score=7.0, run_id=run_id)])
    [judgement] = store.judgements("ep-1")
    assert judgement.aspect is Aspect.GOAL_1 and judgement.score == 7.0 and judgement.created
    store.finish_run(run_id, {"done": 1})
    run = store.run(run_id)
    assert (run.config, run.summary, run.finished is not None) == \
        ({"culture": "CHN", "served": None}, {"done": 1}, True)
    assert store.runs("graphs.sim") == [run] and store.runs("graphs.judge") == [] and store.runs() == [run]
    assert store.judge_models("CHN") == ["j"] and store.judge_models("JPN") == []
    counts = store.counts(["ep-1", "ep-none"])
    assert (counts.statuses, counts.turns, counts.intents) == ({"done": 1}, 0, 0)
    assert store.counts([]).statuses == {} and store.counts(culture="CHN").statuses == {"done": 1}


def test_a_field_outside_the_schema_is_an_error_not_a_new_column(tmp_path):
    store = Store(tmp_path / "s.db")
    with pytest.raises(StoreError, match="no provenance field 'sead_id'"):
        store.put_failed_scenario("x", sead_id="typo")
    with pytest.raises(TypeError):
        Judgement("quality", lable="good")
    with pytest.raises(ValueError):
        Judgement("goal:2")  # there is no participant 2
    conn = sqlite3.connect(store.path)
    columns = {t: [r[1] for r in conn.execute(f"pragma table_info({t})").fetchall()] for t in SCHEMA}
    assert columns == {t: list(cols) for t, (cols, _, _) in SCHEMA.items()}


def test_aspects_are_the_judge_questions_and_every_sotopia_dimension_per_participant():
    sotopia = {a for a in Aspect if a.dimension}
    assert sotopia == {Aspect.sotopia(d, i) for d in SotopiaAnswer.model_fields for i in (0, 1)}
    assert {a for a in Aspect if not a.dimension} == {Aspect.QUALITY, Aspect.CULTURE, Aspect.META}
    assert Aspect.GOAL_1.participant == 1 and Aspect.GOAL_1.dimension == "goal" and str(Aspect.GOAL_1) == "goal:1"
