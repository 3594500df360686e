import json
import re
import sqlite3

import pytest

from agents.records import Scenario
from graphs.scenarios import ScenarioFileError, import_scenarios, main, read_scenarios
from graphs.store import Store


def adapted(scenario: Scenario, n: int) -> Scenario:
    return scenario.model_copy(update={"id": f"{scenario.id}-{n}", "culture": "JPN"})


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def stored_ids(store):
    return [r.id for r in store.scenario_records()]


def test_export_then_import_round_trips(tmp_path, scenario, capsys):
    source = Store(tmp_path / "a.db")
    originals = [adapted(scenario, n) for n in range(3)]
    for s in originals:
        source.put_scenario(s, seed_id=scenario.id, model="m", prompt_version="{}", attempts=1)
    source.put_failed_scenario("jpn-never", culture="JPN", seed_id="x", error="field setting: empty", attempts=3)
    out = tmp_path / "jpn.jsonl"
    main(["export", "--culture", "jpn", "--out", str(out), "--db", str(tmp_path / "a.db")])
    assert read_scenarios(out) == originals  # failed rows are not exported

    main(["import", str(out), "--db", str(tmp_path / "b.db")])
    assert "imported 3 scenarios" in capsys.readouterr().out
    target = Store(tmp_path / "b.db")
    assert target.scenarios(culture="JPN") == originals
    row = target.scenario_record(originals[0].id)
    assert row.model is None and row.run_id  # provenance: the import run, not a model
    assert target.run(row.run_id).config["file"] == str(out)

    main(["import", str(out), "--db", str(tmp_path / "b.db")])  # again: nothing changes
    assert "imported 0 scenarios from" in (printed := capsys.readouterr().out) and "(3 already stored" in printed


@pytest.mark.parametrize("bad_line, message", [
    ("{not json", r"line 2: invalid JSON \(Expecting property name enclosed in double quotes at column 2\)"),
    ('["a list"]', r"line 2: expected a JSON object \(a scenario\), got list"),
    ("MISSING_GOAL", r"line 2: field participants\.1\.goal: Field required"),
    ("ONE_PERSON", r"line 2: field participants\.1: Field required"),
    ("BAD_CULTURE", r"line 2: field culture: String should match pattern"),
    ("UNKNOWN_FIELD", r"line 2: field mood: Extra inputs are not permitted"),
    ("REPEATED_ID", r"line 2: field id: 'test-teahouse-0' already on line 1"),
    ("BLANK_SETTING", r"line 2: field setting: Value error, blank \(only whitespace\)"),
    ("BLANK_NAME", r"line 2: field participants\.0\.name: Value error, blank \(only whitespace\)"),
    ("BLANK_GOAL", r"line 2: field participants\.1\.goal: Value error, blank \(only whitespace\)"),
])
def test_malformed_file_names_line_and_field_and_imports_nothing(tmp_path, scenario, bad_line, message):
    good = adapted(scenario, 0)
    data = json.loads(adapted(scenario, 1).to_json())
    broken = {
        "MISSING_GOAL": lambda d: d["participants"][1].pop("goal"),
        "ONE_PERSON": lambda d: d.update(participants=d["participants"][:1]),
        "BAD_CULTURE": lambda d: d.update(culture="Japan"),
        "UNKNOWN_FIELD": lambda d: d.update(mood="tense"),
        "REPEATED_ID": lambda d: d.update(id=good.id),
        "BLANK_SETTING": lambda d: d.update(setting=" \t "),
        "BLANK_NAME": lambda d: d["participants"][0].update(name="   "),
        "BLANK_GOAL": lambda d: d["participants"][1].update(goal="\n"),
    }
    if bad_line in broken:
        broken[bad_line](data)
        bad_line = json.dumps(data)
    path = write_lines(tmp_path / "in.jsonl", [good.to_json(), bad_line, adapted(scenario, 2).to_json()])
    store = Store(tmp_path / "s.db")
    with pytest.raises(ScenarioFileError, match="^" + re.escape(f"{tmp_path}/in.jsonl: ") + message):
        import_scenarios(store, path)
    assert stored_ids(store) == []  # line 1 was valid, and still nothing was stored


def test_cli_error_is_one_line_and_keeps_what_was_stored(tmp_path, scenario):
    db = str(tmp_path / "s.db")
    kept = adapted(scenario, 0)
    Store(db).put_scenario(kept, model="m")
    edited = kept.model_copy(update={"setting": "A different place."})
    path = write_lines(tmp_path / "in.jsonl", [adapted(scenario, 5).to_json(), edited.to_json()])
    with pytest.raises(SystemExit) as caught:
        main(["import", str(path), "--db", db])
    assert str(caught.value.code) == (
        f"error: {path}: line 2: field id: 'test-teahouse-0' is already stored with different content "
        "(give the edited scenario a new id)")
    assert Store(db).scenario(kept.id) == kept and Store(db).scenario(adapted(scenario, 5).id) is None


def test_missing_file_and_missing_store(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: .*nope\.jsonl: cannot read"):
        main(["import", str(tmp_path / "nope.jsonl"), "--db", str(tmp_path / "s.db")])
    with pytest.raises(SystemExit, match=r"^error: .*other\.db: no such store$"):
        main(["export", "--culture", "JPN", "--out", str(tmp_path / "o.jsonl"), "--db", str(tmp_path / "other.db")])


def test_store_import_is_one_transaction(tmp_path, scenario):
    store = Store(tmp_path / "s.db")
    unstorable = {"attempts": object()}  # sqlite cannot bind it: the second row fails mid-insert
    with pytest.raises(sqlite3.Error):
        store.import_scenarios([(adapted(scenario, 0), {}), (adapted(scenario, 1), unstorable)])
    assert stored_ids(store) == []


def test_list_shows_failures_with_their_reason(tmp_path, scenario, capsys):
    db = str(tmp_path / "s.db")
    store = Store(db)
    store.put_scenario(adapted(scenario, 0), seed_id=scenario.id, model="smollm2", attempts=2)
    store.put_failed_scenario("jpn-x", culture="JPN", seed_id="x", model="smollm2", attempts=3,
                              error="field participants.0.name: 'Li Wei' is a name from the original scenario")
    main(["list", "--culture", "JPN", "--db", db])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t")[:2] == ["jpn-x", "failed"] and "smollm2 x3  field participants.0.name" in lines[0]
    assert lines[1].split("\t") == ["test-teahouse-0", "ok", "JPN", "test-teahouse", "smollm2 x2"]
