"""Persona attributes (public / private, fixed) from the scenario file to every prompt, and SOTOPIA's per-viewer text."""

import asyncio
import importlib
import json
import re
import shlex
from pathlib import Path

import pytest

from agents.answers import adapted_scenario_schema, answer_format
from agents.cultures import load_culture
from agents.models import Model, ScriptedBackend, load_model
from agents.models.fake import PuppetBackend
from agents.prompts import Prompts
from agents.records import Attribute, Persona, Scenario, Visibility
from agents.seeds import SeedError, _env_texts, sotopia_seeds, split_viewers
from graphs import adapt
from graphs.adapt import (
    AdaptationError,
    AdaptContext,
    AdaptRequest,
    adapt_messages,
    adapted_id,
    answer_schema,
    validate_adaptation,
)
from graphs.batch import run
from graphs.episode import EpisodeContext, speaker_view
from graphs.scenarios import ScenarioFileError, read_scenarios
from graphs.store import EpisodeRecord, Store
from tests import prompt_corpus
from tests.site_data import seeds_file

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "jpn_scenarios.jsonl"
SCRIPT = ROOT / "docs" / "examples" / "attributes.sh"


def with_attributes(scenario: Scenario, *people: dict) -> Scenario:
    data = json.loads(scenario.to_json())
    for person, attributes in zip(data["participants"], people):
        person["attributes"] = attributes
    return Scenario.model_validate(data)


@pytest.fixture
def marked(scenario):
    """Every attribute value is a marker that says whose it is and who may see it."""
    return with_attributes(
        scenario,
        {"faith": {"value": "P0-PRIVATE-FAITH", "visibility": "private"},
         "home_region": {"value": "P0-PUBLIC-REGION", "visibility": "public"},
         "siblings": {"value": 4242, "visibility": "public", "fixed": True}},
        {"faith": {"value": "P1-PRIVATE-FAITH", "visibility": "private"},
         "home_region": {"value": "P1-PUBLIC-REGION", "visibility": "public"},
         "savings": {"value": 9191.5, "visibility": "private", "fixed": True}},
    )


def values(persona: Persona, visibility: Visibility) -> list[str]:
    return [str(a.value) for a in persona.attributes.values() if a.visibility is visibility]


# ------------------------------------------------------------------ records and scenario files


def test_attributes_round_trip_through_json_and_the_store(tmp_path, marked):
    assert Scenario.from_json(marked.to_json()) == marked
    assert marked.participants[0].attributes["siblings"] == Attribute(value=4242, visibility="public", fixed=True)
    assert marked.participants[1].attributes["savings"].value == 9191.5
    path = tmp_path / "in.jsonl"
    path.write_text(marked.to_json() + "\n", encoding="utf-8")
    from graphs.scenarios import export_scenarios, import_scenarios

    store = Store(tmp_path / "s.db")
    assert import_scenarios(store, path) == (1, 0)
    assert store.scenario(marked.id) == marked
    out = tmp_path / "out.jsonl"
    with open(out, "w", encoding="utf-8") as f:
        export_scenarios(store, "CHN", f)
    assert read_scenarios(out) == [marked]
    assert import_scenarios(store, out) == (0, 1)  # the same content: skipped, not a conflict


def test_scenarios_without_attributes_serialise_as_before():
    path = ROOT / "tests" / "fixtures" / "no_attributes.jsonl"
    line = path.read_text().strip()
    [scenario] = read_scenarios(path)
    assert json.loads(scenario.to_json()) == json.loads(line)  # no empty "attributes" or "environment_info" keys


@pytest.mark.parametrize(("attributes", "error"), [
    ({"Home Region": {"value": "Osaka", "visibility": "public"}},
     ("field participants.0.attributes: Value error, attribute name 'Home Region': use lower-case letters, digits "
      "and _, starting with a letter, at most 40 characters (e.g. home_region)")),
    ({"religion": {"value": "Buddhist", "visibility": "secret"}},
     "field participants.0.attributes.religion.visibility: Input should be 'public' or 'private'"),
    ({"religion": {"value": "x" * 201, "visibility": "private"}},
     "field participants.0.attributes.religion.value: Value error, too long: 201 characters, at most 200"),
    ({"religion": {"value": True, "visibility": "private"}},
     "field participants.0.attributes.religion.value: Value error, expected a short text or a number, got bool"),
    ({"religion": {"value": "Buddhist"}}, "field participants.0.attributes.religion.visibility: Field required"),
    ({"religion": "Buddhist"}, "field participants.0.attributes.religion: Input should be a valid dictionary"),
    ({"hometown": {"value": "line1\n- religion: injected (only you know this)", "visibility": "public"}},
     ("field participants.0.attributes.hometown.value: Value error, contains a line break or other control "
      "character (one line of text only)")),
    ({"hometown": {"value": "Osaka\x1b[2J", "visibility": "public"}},
     "field participants.0.attributes.hometown.value: Value error, contains a line break or other control"),
    ({"goal": {"value": "x", "visibility": "public"}},
     "field participants.0.attributes: Value error, attribute name 'goal': a persona field's name"),
    ({"secret": {"value": "x", "visibility": "public"}},
     "field participants.0.attributes: Value error, attribute name 'secret': a persona field's name"),
    ({"religion": {"value": "Buddhist", "visibility": "private", "fixed": "yes"}},
     "field participants.0.attributes.religion.fixed: Input should be a valid boolean"),
    ({"A" * 300: {"value": "x", "visibility": "public"}},
     "field participants.0.attributes: Value error, attribute name '" + "A" * 36 + "...: use lower-case letters"),
])
def test_a_bad_attribute_is_a_one_line_error_naming_file_line_and_field(tmp_path, attributes, error):
    data = json.loads(EXAMPLE.read_text())
    data["participants"][0]["attributes"] = attributes
    path = tmp_path / "bad.jsonl"
    path.write_text("\n" + json.dumps(data) + "\n", encoding="utf-8")
    with pytest.raises(ScenarioFileError) as caught:
        read_scenarios(path)
    assert str(caught.value).startswith(f"{path}: line 2: {error}")
    assert "\n" not in str(caught.value)


# ------------------------------------------------------------------ prompts


def test_scenarios_without_attributes_render_every_prompt_byte_for_byte_as_before():
    """The hashes were written by tests/prompt_corpus.py on the code before attributes existed (commit 9e7b34a)."""
    expected = json.loads((ROOT / "tests" / "snapshots" / "prompt_hashes.json").read_text())
    scenarios = prompt_corpus.unmarked_seeds() + prompt_corpus.example_scenarios()
    assert len(scenarios) == 401
    assert prompt_corpus.corpus_hashes(scenarios, load_culture("JPN")) == expected


def test_no_builtin_template_changed_its_version():
    """Attributes are rendered by templates of their own: the versions stored with earlier runs stay valid.
    These are the versions before attributes existed (commit 9e7b34a)."""
    before = {
        "adapt_retry": "f07775f0503f", "adapt_system": "71473ccac535", "adapt_user": "259bc5ff4bbd",
        "judge_culture": "028e761e4b23", "judge_meta": "d21b3af3d8a8", "judge_quality": "3ad85bdf560e",
        "judge_sotopia": "c2233464e58c", "judge_system": "3acb7dfd086f", "observer_system": "d31aef90648a",
        "observer_turn": "30952d6f9174", "roleplay_system": "6151f6c9283a", "roleplay_system_ungrounded": "4ef5ec9302a9",
        "roleplay_turn": "db2983f1ddf3", "sft_dialogue_system": "299363054fba", "sft_intent_system": "5ac13c7e4267",
    }
    assert Prompts().versions(list(before)) == before


@pytest.mark.parametrize("structured", [True, False])
def test_each_reader_sees_exactly_the_attributes_it_may(marked, culture, structured):
    """Every prompt the pipeline renders: role-play (self and partner, with and without the culture), observer,
    judge (every question), training rows (dialogue and intent) and the adaptation request."""
    p0, p1 = marked.participants
    for view, messages in prompt_corpus.views(marked, culture, structured=structured).items():
        text = "\n".join(m["content"] for m in messages)
        reader = prompt_corpus.READERS[view]
        if reader == "adapt":  # the adaptation model rewrites them all; fixed ones are shown as kept
            assert all(v in text for p in (p0, p1) for v in values(p, Visibility.PRIVATE)), view
            continue
        public = values(p0, Visibility.PUBLIC) + values(p1, Visibility.PUBLIC)
        assert all(v in text for v in public), view
        own = values((p0, p1)[reader], Visibility.PRIVATE) if reader in (0, 1) else []
        others = [v for p in (p0, p1) for v in values(p, Visibility.PRIVATE) if v not in own]
        assert all(v in text for v in own), view
        assert not any(v in text for v in others), (view, [v for v in others if v in text])
        assert ("only you know this" in text) == bool(own), view


def test_worked_example_partner_sees_the_region_and_not_the_religion(culture):
    [study] = read_scenarios(EXAMPLE)
    ctx = EpisodeContext(scenario=study, culture=culture, model=load_model("puppet"), prompts=Prompts())
    tanaka = speaker_view(ctx, 1, [])[0]["content"]  # Tanaka Yumi's system turn: Sato Hiroshi is her partner
    assert "- home region: Osaka, in Kansai" in tanaka and "Jodo Shinshu" not in tanaka
    assert "- religion: not religious; visits a Shinto shrine at New Year (only you know this)" in tanaka
    sato = speaker_view(ctx, 0, [])[0]["content"]
    assert "- religion: Jodo Shinshu Buddhist (only you know this)" in sato and "Shinto shrine" not in sato
    assert "- home region: Sapporo, in Hokkaido" in sato


def test_an_empty_attribute_template_leaves_every_prompt_as_without_attributes(tmp_path, marked, scenario, culture):
    """A study that places attributes in its own templates blanks persona_attributes.j2."""
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "persona_attributes.j2").write_text("{# placed by my roleplay_system.j2 #}\n")
    assert prompt_corpus.views(marked, culture, Prompts(folder))["observer"] == \
        prompt_corpus.views(scenario, culture)["observer"]


# ------------------------------------------------------------------ adaptation


def test_adaptation_asks_for_the_attributes_and_keeps_fixed_ones(tmp_path, marked, culture):
    ctx = AdaptContext(seed=marked, culture=culture, model=load_model("puppet"), prompts=Prompts())
    request = adapt_messages(ctx, [])[1]["content"]
    assert '"attributes": {"faith": "P0-PRIVATE-FAITH", "home_region": "P0-PUBLIC-REGION"}' in request
    assert '"attributes": {"faith": "...", "home_region": "..."}' in request  # the answer's shape
    assert "These facts about Li Wei stay as they are: siblings: 4242." in request
    schema = answer_schema(ctx)
    first, _ = schema["properties"]["participants"]["prefixItems"]
    assert first["properties"]["attributes"]["required"] == ["faith", "home_region"]
    assert first["properties"]["attributes"]["additionalProperties"] is False
    assert "attributes" in first["required"]

    answer = json.loads(asyncio.run(ctx.model.achat(adapt_messages(ctx, []), task="adapt",
                                                    params=ctx.params.constrained(schema))))
    answer["participants"][0]["attributes"] = {"faith": "Chan Buddhist", "home_region": "Sichuan"}
    adapted = validate_adaptation(json.dumps(answer), marked, culture)
    new = adapted.participants[0].attributes
    assert new["faith"] == Attribute(value="Chan Buddhist", visibility="private")
    assert new["home_region"] == Attribute(value="Sichuan", visibility="public")
    assert new["siblings"] == marked.participants[0].attributes["siblings"]  # fixed: copied
    assert list(new) == list(marked.participants[0].attributes)  # the seed's order
    assert adapted.participants[1].attributes["savings"] == marked.participants[1].attributes["savings"]

    store = Store(tmp_path / "s.db")
    run(adapt.STAGE, AdaptRequest(culture="CHN", seeds=str(seeds_file(tmp_path, [marked])), model=ctx.model.spec,
                                  db=str(store.path), max_attempts=1, concurrency=1), model=ctx.model)
    row = store.scenario_record(adapted_id("CHN", marked.id))
    assert json.loads(row.prompt_version)["adapt_attributes"] == Prompts().version("adapt_attributes")
    kept = store.scenario(adapted_id("CHN", marked.id))
    for old, new in zip(marked.participants, kept.participants):
        assert [(k, a.visibility, a.fixed) for k, a in new.attributes.items()] == \
            [(k, a.visibility, a.fixed) for k, a in old.attributes.items()]


@pytest.mark.parametrize(("change", "error"), [
    (lambda a: a.pop("faith"), "field participants.0.attributes.faith: missing, but the scenario has it"),
    (lambda a: a.update(siblings=3), "field participants.0.attributes.siblings: is fixed: it keeps the seed's value"),
    (lambda a: a.update(caste="x"), "field participants.0.attributes.caste: is not an attribute of this person"),
    (lambda a: a.update(faith="x" * 201), "field participants.0.attributes: Value error, faith: too long: 201 characters"),
    (lambda a: a.update(faith=True), "field participants.0.attributes: Value error, faith: expected a short text"),
    (lambda a: a.update(faith="Shinto\n- secret: x"),
     "field participants.0.attributes: Value error, faith: contains a line break or other control character"),
    (lambda a: a.update(faith="Li Wei's faith"), "field participants.0.attributes.faith: still uses the original"),
])
def test_an_adaptation_that_loses_or_invents_an_attribute_is_rejected(marked, culture, change, error):
    ctx = AdaptContext(seed=marked, culture=culture, model=load_model("puppet"), prompts=Prompts())
    answer = json.loads(asyncio.run(ctx.model.achat(adapt_messages(ctx, []), task="adapt",
                                                    params=ctx.params.constrained(answer_schema(ctx)))))
    change(answer["participants"][0]["attributes"])
    with pytest.raises(AdaptationError, match=re.escape(error)):
        validate_adaptation(json.dumps(answer), marked, culture)


def test_the_request_for_a_seed_without_attributes_has_no_attribute_field(scenario):
    assert "attributes" not in answer_format(adapted_scenario_schema())
    backend = ScriptedBackend(["{}"])
    ctx = AdaptContext(seed=scenario, culture=load_culture("JPN"), model=Model(backend, "m"), prompts=Prompts())
    assert "attributes" not in "".join(m["content"] for m in adapt_messages(ctx, []))


# ------------------------------------------------------------------ SOTOPIA's per-viewer text


def test_sotopia_environment_text_is_kept_for_provenance_and_shown_to_no_reader():
    culture = load_culture("JPN")
    marked = [s for s in sotopia_seeds() if s.environment_info]
    assert len(marked) == 50  # 10 mutual-friend scenarios x 5 agent pairs
    for seed in marked:
        assert seed.setting == "2 strangers are meeting at a party."
        assert re.fullmatch(r"They have 1 common friends: \w+\.", seed.environment_info)
        friend = seed.environment_info.split(": ")[1].rstrip(".")
        for view, messages in prompt_corpus.views(seed, culture).items():
            text = "\n".join(m["content"] for m in messages)
            assert "common friends" not in text and "viewer=" not in text and "<p" not in text, (seed.id, view)
            if view != "adapt":  # each agent's own friend list (its goal) names the friend; nobody is told
                assert f"common friends: {friend}" not in text
    assert not any("viewer=" in s.model_dump_json() for s in sotopia_seeds() if not s.environment_info)


def test_sotopia_agent_text_goes_to_that_agent_only():
    env = {"env_id": "E1", "scenario": 'A shop. <p viewer="agent_1">The price tag says 40.</p> '
                                       '<p viewer="environment">The shop closes soon.</p>',
           "agent_goals": ['Buy the lamp. <p viewer="agent_0">Pay at most 30.</p>',
                           'Sell the lamp. <p viewer="agent_0">The seller needs cash.</p>']}
    setting, goals, environment, private = _env_texts(env)
    assert setting == "A shop."
    assert goals == ["Buy the lamp. Pay at most 30.", "Sell the lamp."]
    assert environment == ["The shop closes soon."]
    assert private == [["The seller needs cash."], ["The price tag says 40."]]
    with pytest.raises(SeedError, match=r"field x: unknown viewer 'agent_7'"):
        split_viewers('<p viewer="agent_7">hidden</p>', "field x")
    with pytest.raises(SeedError, match=r"field x: <p> markup"):
        split_viewers('<p viewer="environment">a</p> <p>b</p>', "field x")
    assert split_viewers("No markup.  Two spaces kept.", "f") == ("No markup.  Two spaces kept.", {})


# ------------------------------------------------------------------ the worked example, end to end


def test_worked_example_runs_end_to_end_and_every_prompt_keeps_religion_private(tmp_path, monkeypatch):
    """docs/examples/attributes.sh's commands on the puppet model, in process, with every model request recorded."""
    sent: list[tuple[str, list[dict]]] = []
    original = PuppetBackend._reply

    def record(self, messages, task, params):
        sent.append((task, messages))
        return original(self, messages, task, params)

    monkeypatch.setattr(PuppetBackend, "_reply", record)
    monkeypatch.chdir(ROOT)
    out = tmp_path / "example"
    variables = {"MODEL": "puppet", "OUT": str(out), "DB": str(out / "study.db"), "PY": "python"}
    commands = [line for line in SCRIPT.read_text().splitlines() if line.startswith("$PY -m ")]
    assert [c.split()[2] for c in commands] == ["graphs.scenarios", "graphs.adapt", "graphs.scenarios",
                                               "graphs.simulate", "graphs.judge", "training.dataset", "graphs.view"]
    for command in commands:
        words = [re.sub(r"\$(\w+)", lambda m: variables[m.group(1)], w) for w in shlex.split(command)]
        importlib.import_module(words[2]).main(words[3:])

    store = Store(out / "study.db")
    [adapted] = store.scenarios(culture="DEU")
    [study] = read_scenarios(EXAMPLE)
    religion = [p.attributes["religion"].value for p in study.participants]
    region = [p.attributes["home_region"].value for p in study.participants]
    for old, new in zip(study.participants, adapted.participants):
        assert new.attributes["years_in_section"] == old.attributes["years_in_section"]  # fixed
        assert {k: a.visibility for k, a in new.attributes.items()} == {k: a.visibility for k, a in
                                                                        old.attributes.items()}
    names = [p.name for p in adapted.participants]
    tasks = {task for task, _ in sent}
    assert tasks == {"adapt", "roleplay", "observer", "judge"}
    for task, messages in sent:
        text = "\n".join(m["content"] for m in messages)
        if task == "adapt":
            continue
        me = names.index(re.search(r"Your profile \((.+?)\)", text).group(1)) if task == "roleplay" else None
        assert all(r in text for r in region), task
        for i, value in enumerate(religion):
            assert (value in text) == (i == me), (task, value)

    rows = [json.loads(line) for line in (out / "data" / "sft_train.jsonl").read_text().splitlines()]
    assert {r["view"] for r in rows} == {"dialogue", "intent"}
    for row in rows:
        system = row["messages"][0]["content"]
        assert all(r in system for r in region)
        for i, value in enumerate(religion):
            assert (value in system) == (row["perspective"] == i), row["view"]
    card = (out / "data" / "README.md").read_text()
    assert "`home_region` (public), `religion` (private), `years_in_section` (public)" in card
    page = next((out / "site" / "episodes").glob("*.html")).read_text()
    assert page.count('data-visibility="private"') == 2 and "Jodo Shinshu Buddhist" in page


def test_worked_example_is_one_valid_bash_command():
    import subprocess

    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, check=False).returncode == 0
    readme = (ROOT / "README.md").read_text()
    assert "bash docs/examples/attributes.sh" in readme


def test_persona_cards_show_attributes_with_private_ones_marked_and_the_environment_text(tmp_path, marked):
    from graphs import view

    store = Store(tmp_path / "s.db")
    scenario = marked.model_copy(update={"environment_info": "They have 1 common friends: Alvin."})
    store.put_scenario(scenario, seed_id=None)
    store.begin_episode(EpisodeRecord(id="ep-1", scenario_id=scenario.id, culture="CHN", model="puppet", seed=0,
                                      sample=0, max_turns=1, prompt_versions={}, config={}))
    store.finish_episode("ep-1", "done", prompt_corpus.transcript(scenario), [], ended_by="max_turns",
                         intent_version=None)
    view.build_site(tmp_path / "s.db", tmp_path / "site")
    page = (tmp_path / "site" / "episodes" / "ep-1.html").read_text()
    cards = re.findall(r'data-attribute="(\w+)" data-visibility="(\w+)">([^\n]+)\n(.*?)</dd>', page)
    assert [(n, v, value) for n, v, value, _ in cards] == [
        ("faith", "private", "P0-PRIVATE-FAITH"), ("home_region", "public", "P0-PUBLIC-REGION"),
        ("siblings", "public", "4242"), ("faith", "private", "P1-PRIVATE-FAITH"),
        ("home_region", "public", "P1-PUBLIC-REGION"), ("savings", "private", "9191.5")]
    assert ['>private<' in marks for *_, marks in cards] == [True, False, False, True, False, True]
    assert ['>fixed<' in marks for *_, marks in cards] == [False, False, True, False, False, True]
    assert "Shown to no participant, observer or judge (kept from the source):\n  They have 1 common friends: Alvin." \
        in page
