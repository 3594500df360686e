import asyncio
import json
from pathlib import Path

import pytest

from agents.models import Model, ScriptedBackend, load_model
from agents.prompts import Prompts
from agents.seeds import sotopia_seeds
from graphs import adapt, scenarios, simulate
from graphs.adapt import (
    AdaptationError,
    AdaptContext,
    AdaptRequest,
    adapted_id,
    build_adapt_graph,
    extract_json,
    validate_adaptation,
)
from graphs.batch import make_parser, run
from graphs.store import DEFAULT_DB, Store
from tests.site_data import seeds_file

SNAPSHOT = Path(__file__).parent / "snapshots" / "adapt_graph.mmd"


def adapted_answer(scenario, **changes) -> str:
    """A valid adaptation of the conftest scenario (Li Wei, Chen Jing) to Japan, with `changes` applied."""
    data = {
        "setting": "Two neighbours meet in a Kyoto tea house.",
        "relationship": "acquaintances",
        "participants": [
            {**scenario.participants[0].model_dump(), "name": "Sato Hiroshi", "occupation": "retired teacher"},
            {**scenario.participants[1].model_dump(), "name": "Tanaka Yumi", "background": "Moved in last spring."},
        ],
    }
    data.update(changes)
    return json.dumps(data, ensure_ascii=False)


def run_seeds(store, seeds, culture, model, max_attempts=3, concurrency=2):
    """Adapt `seeds` (written to a seeds file next to the store) through the stage's own entry point."""
    request = AdaptRequest(culture=culture.code, seeds=str(seeds_file(store.path.parent, seeds)), model=model.spec,
                           db=str(store.path), max_attempts=max_attempts, concurrency=concurrency)
    summary = run(adapt.STAGE, request, model=model)["summary"]
    return {k: summary[k] for k in ("skipped", "adapted", "failed", "errors", "attempts", "first_try")}


@pytest.mark.parametrize("raw", [
    '{"a": 1}',
    'Sure! Here is the scenario:\n```json\n{"a": 1}\n```\nHope it helps.',
    '{not json} and then {"a": 1}',
    '{"a": 1} {"b": 2}',
])
def test_extract_json_finds_the_object_inside_any_wrapping(raw):
    assert extract_json(raw) == {"a": 1}


@pytest.mark.parametrize("raw, message", [
    ("I cannot do that.", "no JSON object"),
    ('{"setting": "Kyoto", "participants": [{"name": "Sato"', "not valid JSON"),
    ('[1, 2]', "no JSON object"),
])
def test_extract_json_failures_are_named(raw, message):
    with pytest.raises(AdaptationError, match=message):
        extract_json(raw)


def test_validation_accepts_a_real_adaptation_and_sets_provenance(scenario, culture):
    adapted = validate_adaptation(adapted_answer(scenario), scenario, culture)
    assert adapted.id == adapted_id("CHN", scenario.id) and adapted.culture == "CHN"
    assert adapted.source == f"adapted:{scenario.id}"
    assert [p.name for p in adapted.participants] == ["Sato Hiroshi", "Tanaka Yumi"]


@pytest.mark.parametrize("change, message", [
    ({"participants": "two people"}, "field participants: "),
    ({"setting": ""}, "field setting: "),
    ({"relationship": ""}, "field relationship: empty"),
    ({"mood": "tense"}, "field mood: Extra inputs"),
])
def test_validation_names_the_bad_field(scenario, culture, change, message):
    with pytest.raises(AdaptationError, match=message):
        validate_adaptation(adapted_answer(scenario, **change), scenario, culture)


def test_validation_requires_new_names_everywhere(scenario, culture):
    people = json.loads(adapted_answer(scenario))["participants"]
    unchanged = [{**people[0], "name": "Li Wei"}, people[1]]
    with pytest.raises(AdaptationError, match=r"participants.0.name: 'Li Wei' is a name from the original"):
        validate_adaptation(adapted_answer(scenario, participants=unchanged), scenario, culture)
    leftover = [people[0], {**people[1], "goal": "Keep her weekend free from Chen's requests"}]
    with pytest.raises(AdaptationError, match=r"participants.1.goal: still uses the original name 'Chen'"):
        validate_adaptation(adapted_answer(scenario, participants=leftover), scenario, culture)
    one_person = [people[0]]
    with pytest.raises(AdaptationError, match="field participants"):
        validate_adaptation(adapted_answer(scenario, participants=one_person), scenario, culture)
    blank_job = [people[0], {**people[1], "occupation": ""}]
    with pytest.raises(AdaptationError, match=r"participants.1.occupation: empty"):
        validate_adaptation(adapted_answer(scenario, participants=blank_job), scenario, culture)


@pytest.mark.parametrize("old, text, named", [
    ("Li Wei", "LiWei came by.", True),  # written without the space
    ("Mia Davis", "我是Mia，你好。", True),  # no word boundary between scripts
    ("王伟", "王伟来了。", True),
    ("王伟", "老王来了。", False),  # a one-character family name alone is not the person
    ("田中 花子", "花子さんが来た。", True),  # a two-character given name
    ("김민준", "민준이 왔다.", False),  # Korean given names written apart from the family name are their own form
    ("Mia Davis", "Miami is warm.", False),
    ("Ann Lee", "Anna and Leela met.", False),
])
def test_old_names_are_found_in_any_script(old, text, named):
    from graphs.adapt import mentions, name_forms

    assert any(mentions(text, form) for form in name_forms(old)) is named


def test_name_pool_gives_each_person_their_own_names_and_bans_the_seed_names(scenario):
    from agents.cultures import load_culture
    from graphs.adapt import answer_schema, banned_names

    japan = load_culture("JPN")
    if japan.names is None:
        pytest.skip("the JPN culture file has no name pool yet")
    backend = ScriptedBackend(lambda messages, task: "{}")
    ctx = AdaptContext(seed=scenario, culture=japan, model=Model(backend, "m"), prompts=Prompts(), name_pool=True)
    people = answer_schema(ctx)["properties"]["participants"]["prefixItems"]
    first, second = (set(p["properties"]["name"]["enum"]) for p in people)
    assert first and second and first.isdisjoint(second)
    assert all(name.split()[0] in japan.names.family for name in first | second)  # family name first
    assert set(banned_names(scenario)) == {"Li Wei", "LiWei", "Wei", "Chen Jing", "ChenJing", "Chen", "Jing"}
    asyncio.run(build_adapt_graph().ainvoke({"attempts": []}, {"recursion_limit": 10}, context=ctx))
    sent = backend.params[0]
    assert sent.banned == banned_names(scenario) and json.loads(sent.schema)["properties"]["participants"]
    assert "Sato" in backend.requests[0][1][1]["content"] or "Suzuki" in backend.requests[0][1][1]["content"]


def test_malformed_then_wrapped_then_valid_answer_is_retried_with_the_error(tmp_path, scenario, culture):
    answers = [
        '{"setting": "Kyoto", "participants": [{"name": ',  # cut off
        "Here you go:\n```json\n" + adapted_answer(scenario, setting="") + "\n```",  # wrapped, one field empty
        "Sure!\n```json\n" + adapted_answer(scenario) + "\n```\nThe names are now Japanese.",  # wrapped and valid
    ]
    backend = ScriptedBackend(answers)
    store = Store(tmp_path / "s.db")
    counts = run_seeds(store, [scenario], culture, Model(backend, "scripted"))
    assert counts == {"skipped": 0, "adapted": 1, "failed": 0, "errors": 0, "attempts": 3, "first_try": 0}

    row = store.scenario_record(adapted_id("CHN", scenario.id))
    assert (row.status, row.attempts, row.model, row.seed_id) == ("ok", 3, "scripted", scenario.id)
    assert json.loads(row.prompt_version) == Prompts().versions(adapt.PROMPT_NAMES)
    [run_record] = store.runs()
    assert row.error is None and row.run_id == run_record.id and run_record.command == "graphs.adapt (Python)"
    assert store.scenarios(culture="CHN")[0].participants[1].name == "Tanaka Yumi"

    # each retry shows the model its previous answer and what was wrong with it
    first, second, third = (messages for _, messages in backend.requests)
    assert [m["role"] for m in first] == ["system", "user"]
    assert '"name": "Li Wei"' in first[1]["content"] and "Chinese names" in first[1]["content"]
    assert [m["role"] for m in third] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert second[2]["content"] == answers[0] and "not valid JSON" in second[3]["content"]
    assert "field setting" in third[5]["content"]


def test_a_seed_that_never_validates_is_stored_as_failed_then_retried(tmp_path, scenario, culture):
    store = Store(tmp_path / "s.db")
    # answers with the seed it was shown, unchanged
    copycat = ScriptedBackend(lambda messages, task: json.dumps(extract_json(messages[1]["content"])))
    counts = run_seeds(store, [scenario], culture, Model(copycat, "copycat"), max_attempts=2)
    assert counts["failed"] == 1 and counts["adapted"] == 0 and len(copycat.requests) == 2
    row = store.scenario_record(adapted_id("CHN", scenario.id))
    assert (row.status, row.attempts, row.scenario) == ("failed", 2, None)
    assert row.error == "field participants.0.name: 'Li Wei' is a name from the original scenario"
    assert '"Li Wei"' in row.raw and row.model == "copycat"
    assert store.scenarios(culture="CHN") == []

    # a rerun retries the failure; a success replaces the failed row whole and is then skipped
    good = ScriptedBackend(lambda messages, task: adapted_answer(scenario))
    assert run_seeds(store, [scenario], culture, Model(good, "good"))["adapted"] == 1
    row = store.scenario_record(adapted_id("CHN", scenario.id))
    assert (row.status, row.error, row.raw, row.model) == ("ok", None, None, "good")
    assert run_seeds(store, [scenario], culture, Model(good, "good"))["skipped"] == 1
    assert len(good.requests) == 1


def test_a_crashing_model_is_recorded_as_a_failure(tmp_path, scenario, culture):
    def crash(messages, task):
        raise RuntimeError("GPU fell over")

    store = Store(tmp_path / "s.db")
    assert run_seeds(store, [scenario], culture, Model(ScriptedBackend(crash), "m"))["failed"] == 1
    row = store.scenario_record(adapted_id("CHN", scenario.id))
    assert row.status == "failed" and row.error == "RuntimeError: GPU fell over"


def test_graph_topology_matches_snapshot():
    drawn = build_adapt_graph().get_graph().draw_mermaid()
    if not SNAPSHOT.exists():
        SNAPSHOT.write_text(drawn)
    assert drawn == SNAPSHOT.read_text()


def test_cli_adapts_then_simulate_plays_the_adapted_scenarios(tmp_path, capsys):
    db = str(tmp_path / "demo.db")
    with pytest.raises(SystemExit, match=r"^error: no adapted scenarios for JPN in .*graphs.adapt.*--use-seeds$"):
        simulate.main(["--culture", "JPN", "--model", "puppet", "--db", db, "--no-progress"])

    adapt.main(["--culture", "JPN", "--n", "3", "--model", "puppet", "--db", db, "--no-progress"])
    assert "3 adapted, 0 failed" in capsys.readouterr().out
    adapt.main(["--culture", "JPN", "--n", "4", "--model", "puppet", "--db", db, "--no-progress"])
    assert "1 adapted, 0 failed (never validated), 3 already adapted" in capsys.readouterr().out

    store = Store(db)
    adapted = store.scenarios(culture="JPN")
    seeds = {s.id: s for s in sotopia_seeds()}
    assert len(adapted) == 4
    for s in adapted:
        seed = seeds[s.source.removeprefix("adapted:")]
        assert {p.name for p in s.participants}.isdisjoint({p.name for p in seed.participants})
        assert seed.setting.startswith(s.setting)  # the puppet only renames (and cuts to the shape's length)

    simulate.main(["--culture", "JPN", "--episodes", "2", "--max-turns", "2", "--model", "puppet", "--db", db,
                   "--no-progress"])
    episodes = store.episodes(culture="JPN")
    assert len(episodes) == 2 and {e.scenario_id for e in episodes} <= {s.id for s in adapted}
    for e in episodes:  # an episode leads to the model and prompt versions that made its scenario
        row = store.scenario_record(e.scenario_id)
        assert row.model == "puppet" and "adapt_user" in json.loads(row.prompt_version)


def test_cli_errors_are_one_line_and_store_nothing(tmp_path):
    db = str(tmp_path / "s.db")
    with pytest.raises(SystemExit, match=r"^error: unknown culture 'XYZ'"):
        adapt.main(["--culture", "XYZ", "--model", "puppet", "--db", db])
    bad = tmp_path / "seeds.jsonl"
    bad.write_text('{"id": "x"}\n')
    with pytest.raises(SystemExit, match=r"^error: .*seeds.jsonl: line 1: field setting: Field required"):
        adapt.main(["--culture", "JPN", "--seeds", str(bad), "--model", "puppet", "--db", db])
    assert not Path(db).exists()


def test_user_seed_file_is_adapted(tmp_path, scenario):
    seeds = tmp_path / "mine.jsonl"
    seeds.write_text(scenario.to_json() + "\n")
    db = str(tmp_path / "s.db")
    adapt.main(["--culture", "DEU", "--seeds", str(seeds), "--model", "puppet", "--db", db, "--no-progress"])
    [adapted] = Store(db).scenarios(culture="DEU")
    assert adapted.id == adapted_id("DEU", scenario.id) and adapted.participants[0].name != "Li Wei"


def test_store_clis_share_db_and_prompts_defaults():
    for parser in (make_parser(adapt.STAGE), make_parser(simulate.STAGE)):
        args = parser.parse_args(["--culture", "JPN"])
        assert (args.db, args.prompts) == (DEFAULT_DB, None)
    for command in (["export", "--culture", "JPN", "--out", "f"], ["import", "f"], ["list"]):
        assert scenarios.make_parser().parse_args(command).db == DEFAULT_DB


@pytest.mark.integration
def test_smollm2_adapts_one_scenario_or_records_why_not(tmp_path, culture):
    """SmolLM2-135M on llama-server: its answer always has the shape; it may still fail a validation rule."""
    seed = sotopia_seeds()[0]
    store = Store(tmp_path / "s.db")
    model = load_model("smollm2", max_batch=1, log_dir=tmp_path)
    counts = run_seeds(store, [seed], culture, model, max_attempts=2, concurrency=1)
    assert counts["adapted"] + counts["failed"] == 1
    row = store.scenario_record(adapted_id("CHN", seed.id))
    assert row.model == "smollm2" and row.seed_id == seed.id
    if row.status == "ok":
        adapted = row.scenario
        assert {p.name for p in adapted.participants}.isdisjoint({p.name for p in seed.participants})
    else:
        assert row.status == "failed" and row.attempts == 2 and row.scenario is None
        assert json.loads(row.raw)["participants"]  # valid JSON of the shape, failing a validation rule
        assert row.error.startswith("field ")  # each rule names its field: a name kept, a text cut short, ...
    assert model.usage.calls["adapt"] == row.attempts


def test_name_pool_leaves_out_names_that_share_a_part_with_the_seed():
    from agents.cultures import load_culture
    from graphs.adapt import answer_schema

    usa = load_culture("USA")
    seed = next(s for s in sotopia_seeds() if any(p.name.split()[-1] in usa.names.family for p in s.participants))
    ctx = AdaptContext(seed=seed, culture=usa, model=Model(ScriptedBackend([]), "m"), prompts=Prompts(),
                       name_pool=True)
    offered = [n for p in answer_schema(ctx)["properties"]["participants"]["prefixItems"]
               for n in p["properties"]["name"]["enum"]]
    old_parts = {w for p in seed.participants for w in p.name.split()}
    assert offered and not any(set(n.split()) & old_parts for n in offered)
