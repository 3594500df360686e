import json
import shutil
from pathlib import Path

import pytest

from agents.models import Model, ScriptedBackend, load_model
from agents.prompts import BUILTIN_DIR, PromptError, Prompts
from graphs import adapt, scenarios, simulate
from graphs.adapt import AdaptRequest, adapted_id
from graphs.batch import run
from graphs.episode import EpisodeContext, speaker_view
from graphs.store import Store
from tests.site_data import seeds_file

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"


def override(tmp_path, name, text):
    folder = tmp_path / "my-prompts"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.j2").write_text(text, encoding="utf-8")
    return folder


def test_override_changes_what_the_model_receives_and_the_stored_version(tmp_path, scenario, culture):
    builtin = (BUILTIN_DIR / "adapt_user.j2").read_text()
    folder = override(tmp_path, "adapt_user",
                      builtin + "\nSet the scenario in {{ culture.name }}'s countryside, far from any city.")
    prompts = Prompts(folder)
    assert prompts.version("adapt_user") != Prompts().version("adapt_user")
    assert prompts.version("adapt_system") == Prompts().version("adapt_system")  # the others stay built in

    backend = ScriptedBackend(["no JSON here"])
    store = Store(tmp_path / "s.db")
    run(adapt.STAGE, AdaptRequest(culture="CHN", seeds=str(seeds_file(tmp_path, [scenario])), model="m",
                                  db=str(store.path), prompts=str(folder), max_attempts=1, concurrency=1),
        model=Model(backend, "m"))
    [(_, messages)] = backend.requests
    assert messages[1]["content"].endswith("Set the scenario in China's countryside, far from any city.")
    row = store.scenario_record(adapted_id("CHN", scenario.id))
    assert json.loads(row.prompt_version)["adapt_user"] == prompts.version("adapt_user")


def test_override_reaches_the_role_play_through_the_cli(tmp_path):
    builtin = (BUILTIN_DIR / "roleplay_system.j2").read_text()
    folder = override(tmp_path, "roleplay_system", builtin + "\nSpeak briefly.")
    db = str(tmp_path / "s.db")
    scenarios.main(["import", str(EXAMPLES / "jpn_scenarios.jsonl"), "--db", db])
    simulate.main(["--culture", "JPN", "--episodes", "1", "--max-turns", "1", "--model", "puppet", "--db", db,
                   "--prompts", str(folder), "--no-progress"])
    [episode] = Store(db).episodes(culture="JPN")
    versions = episode.prompt_versions
    assert versions["roleplay_system"] == Prompts(folder).version("roleplay_system")
    assert versions["roleplay_system"] != Prompts().version("roleplay_system")
    assert versions["roleplay_turn"] == Prompts().version("roleplay_turn")
    # the example's personas have attributes: the template that shows them is recorded too
    assert versions["persona_attributes"] == Prompts().version("persona_attributes")


def test_a_study_template_can_place_attributes_itself(tmp_path, culture):
    """docs/extending.md: read `me.attributes` in your own roleplay_system.j2 and blank persona_attributes.j2."""
    from graphs.scenarios import read_scenarios

    [study] = read_scenarios(EXAMPLES / "jpn_scenarios.jsonl")
    builtin = (BUILTIN_DIR / "roleplay_system.j2").read_text()
    folder = override(tmp_path, "roleplay_system", builtin.replace(
        '- Your secret: {{ me.secret or "none" }}',
        '- Your secret: {{ me.secret or "none" }}\n- Your religion: {{ me.attributes.religion.value }}'))
    override(tmp_path, "persona_attributes", "")
    ctx = EpisodeContext(scenario=study, culture=culture, model=load_model("puppet"), prompts=Prompts(folder))
    system = speaker_view(ctx, 1, [])[0]["content"]
    assert "- Your religion: not religious; visits a Shinto shrine at New Year" in system
    assert "home region" not in system and "Jodo Shinshu" not in system


def test_missing_variable_is_an_error_naming_the_template(tmp_path, scenario, culture):
    folder = override(tmp_path, "adapt_system", "Adapt to {{ culture.name }}, region {{ region }}.")
    with pytest.raises(PromptError, match=r"my-prompts/adapt_system\.j2: UndefinedError: 'region' is undefined"):
        Prompts(folder).render("adapt_system", culture=culture)
    folder = override(tmp_path, "roleplay_system", "You are {{ me.name }}, a {{ me.religion }}.")
    with pytest.raises(PromptError, match=r"roleplay_system\.j2: UndefinedError: .*religion"):
        Prompts(folder).render("roleplay_system", me=scenario.participants[0])
    with pytest.raises(PromptError, match=r"no template nope\.j2"):
        Prompts(folder).render("nope")


def test_cli_with_a_broken_template_fails_in_one_line_before_storing(tmp_path):
    folder = override(tmp_path, "adapt_retry", "Wrong: {{ mistake }}")
    db = tmp_path / "s.db"
    with pytest.raises(SystemExit) as caught:
        adapt.main(["--culture", "JPN", "--n", "1", "--model", "puppet", "--db", str(db), "--prompts", str(folder)])
    message = str(caught.value.code)
    assert message.startswith("error: ") and "adapt_retry.j2: UndefinedError: 'mistake' is undefined" in message
    assert "\n" not in message and not db.exists()
    with pytest.raises(SystemExit, match=r"^error: --prompts .*nowhere: not a directory$"):
        adapt.main(["--culture", "JPN", "--model", "puppet", "--db", str(db), "--prompts", str(tmp_path / "nowhere")])


@pytest.mark.parametrize("attack", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ culture.__class__.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'].system('echo owned') }}",
    "{{ culture.model_config.update({'frozen': False}) }}",
    "{% set names = [] %}{{ names.append('x') }}",
    "{{ culture.descriptors.__func__.__code__ }}",
])
def test_user_template_cannot_run_code(tmp_path, culture, attack):
    folder = override(tmp_path, "adapt_system", attack)
    with pytest.raises(PromptError, match=r"adapt_system\.j2: (SecurityError|UndefinedError)"):
        Prompts(folder).render("adapt_system", culture=culture)
    assert culture.model_config["frozen"] is True


def test_user_template_cannot_read_files_outside_the_prompt_folders(tmp_path, culture):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not show")
    for include in (str(secret), "../secret.txt"):
        folder = override(tmp_path, "adapt_system", f"{{% include '{include}' %}}")
        with pytest.raises(PromptError, match="TemplateNotFound"):
            Prompts(folder).render("adapt_system", culture=culture)


def test_every_builtin_template_is_documented_in_extending_md():
    doc = (EXAMPLES.parent / "extending.md").read_text()
    for template in sorted(BUILTIN_DIR.glob("*.j2")):
        assert f"`{template.name}`" in doc, f"docs/extending.md does not list {template.name}"


def test_copying_every_builtin_into_an_override_folder_changes_no_version(tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(BUILTIN_DIR, folder, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    names = [p.stem for p in BUILTIN_DIR.glob("*.j2")]
    assert Prompts(folder).versions(names) == Prompts().versions(names)
