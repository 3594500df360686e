"""Fuzzing every input loader: culture YAML, scenario JSON Lines (and their import into a store), prompt
templates, training configs and WVS respondent files. Any file either loads into valid records or stops
with the project's own one-line error; an import that fails stores nothing. Each case hypothesis found is
also a plain test with its expected value.
"""

import csv
import io
import json
import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.cultures import BUILTIN_DIR as CULTURES_DIR
from agents.cultures import CultureError, load_culture_file
from agents.prompts import PromptError, Prompts
from agents.records import Culture
from agents.seeds import sotopia_seeds
from eval.wvs.items import WVSError, all_items
from eval.wvs.respondents import RespondentFile
from graphs.scenarios import ScenarioFileError, import_scenarios, read_numbered
from graphs.store import Store

FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
ANY_TEXT = st.text(st.characters(codec=None), max_size=300)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
HUGE_NUMBER = st.integers(4301, 5000).map(lambda n: "9" * n)


def one_line(exc: BaseException) -> bool:
    return bool(str(exc)) and "\n" not in str(exc)


def mutated(data: dict, draw) -> dict:
    """A copy of a valid record's dict with a few fields (at any depth) replaced, dropped or added."""
    out = json.loads(json.dumps(data))
    for _ in range(draw(st.integers(1, 3))):
        node = out
        while isinstance(node, dict) and node and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(node)))
            if not isinstance(node[key], dict):
                break
            node = node[key]
        if not isinstance(node, dict) or not node:
            continue
        key = draw(st.sampled_from(sorted(node) + ["extra_field"]))
        action = draw(st.sampled_from(["replace", "drop"]))
        if action == "drop":
            node.pop(key, None)
        else:
            node[key] = draw(JSON_VALUES)
    return out


# ------------------------------------------------------------------ cultures


JPN = yaml.safe_load((CULTURES_DIR / "jpn.yaml").read_text())
YAML_TRICKS = st.sampled_from([
    "!!python/object/apply:os.system ['echo hacked']", "!!binary 'not base64!'", "!!timestamp 2020-13-45",
    "!!int '0x'", "!!float 'x'", "&a [*a]", "? [a, b]\n: c", "{a: 1, a: 2}", "!!set {a, b}", "'\\ud800'",
    '"\\ud800"', "[" * 2000, "- " * 500 + "x", "\t", "%YAML 9.9\n---\nx",
])


@FUZZ
@given(data=st.data())
def test_any_culture_file_loads_or_is_a_culture_error(tmp_path, data):
    kind = data.draw(st.sampled_from(["mutated", "text", "trick"]))
    if kind == "mutated":
        text = yaml.safe_dump(mutated(JPN, data.draw), allow_unicode=True)
    elif kind == "text":
        text = data.draw(ANY_TEXT.filter(lambda t: "\x00" not in t))
    else:
        text = "code: JPN\nname: " + data.draw(YAML_TRICKS)
    path = tmp_path / "jpn.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        assert isinstance(load_culture_file(path), Culture)
    except CultureError as exc:
        assert one_line(exc)


@pytest.mark.parametrize("value,message", [
    ("!!python/object/apply:os.system ['echo hacked']", "could not determine a constructor"),
    ("!!timestamp 2020-13-45", "invalid YAML"),
    ("!!binary 'not base64!'", "invalid YAML"),
    ("[" * 2000, "invalid YAML"),
    ('"\\ud800"', "field name"),
])
def test_found_culture_cases(tmp_path, value, message):
    path = tmp_path / "jpn.yaml"
    path.write_text((CULTURES_DIR / "jpn.yaml").read_text().replace("name: Japan", f"name: {value}", 1))
    with pytest.raises(CultureError, match=message) as exc:
        load_culture_file(path)
    assert one_line(exc.value) and str(exc.value).startswith(str(path))


def test_a_culture_file_that_is_not_utf8_is_a_culture_error(tmp_path):
    path = tmp_path / "jpn.yaml"
    path.write_bytes((CULTURES_DIR / "jpn.yaml").read_bytes().replace(b"Japan", b"Jap\xe1n", 1))
    with pytest.raises(CultureError, match="cannot read"):
        load_culture_file(path)


# ------------------------------------------------------------------ scenarios


SEED = json.loads(sotopia_seeds()[0].to_json())


def scenario_lines(draw) -> list[str]:
    lines = []
    for k in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["valid", "mutated", "mutated", "text", "huge", "deep"]))
        if kind == "valid":
            lines.append(json.dumps({**SEED, "id": f"s{k}"}))
        elif kind == "mutated":
            lines.append(json.dumps(mutated({**SEED, "id": f"s{k}"}, draw)))
        elif kind == "text":
            lines.append(draw(ANY_TEXT).replace("\n", " ").replace("\r", " "))
        elif kind == "huge":
            lines.append(json.dumps({**SEED, "id": f"s{k}"}).replace('"id"', '"n": ' + draw(HUGE_NUMBER) + ', "id"'))
        else:
            lines.append('{"a": ' * draw(st.integers(990, 3000)))
    return lines


@FUZZ
@given(data=st.data())
def test_any_scenario_file_imports_whole_or_not_at_all(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("scenarios")
    path = folder / "s.jsonl"
    lines = scenario_lines(data.draw)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    store = Store(folder / "s.db")
    try:
        stored, same = import_scenarios(store, path)
    except ScenarioFileError as exc:
        assert one_line(exc) and str(exc).startswith(str(path))
        assert store.scenario_records() == []  # nothing from a failed file
    else:
        assert stored + same == len([line for line in lines if line.strip()])
        assert {s.id for s in store.scenarios()} == {s.id for _, s in read_numbered(path)}


@pytest.mark.parametrize("line,message", [
    ('{"n": ' + "9" * 5000 + "}", "line 1: invalid JSON (a number too long or nesting too deep)"),
    ('{"a": ' * 5000, "line 1: invalid JSON (a number too long or nesting too deep)"),
    (json.dumps({**SEED, "setting": "caf\ud800"}), "line 1: field setting: Input should be a valid string"),
    ("\udcff", "cannot read"),
])
def test_found_scenario_cases(tmp_path, line, message):
    """Found by fuzzing: json's ValueError (digit limit) and RecursionError escaped the reader."""
    path = tmp_path / "s.jsonl"
    path.write_text(line + "\n", encoding="utf-8", errors="surrogateescape")
    with pytest.raises(ScenarioFileError, match=message.replace("(", r"\(").replace(")", r"\)")) as exc:
        read_numbered(path)
    assert one_line(exc.value)


# ------------------------------------------------------------------ prompt templates


TEMPLATE_PIECES = st.sampled_from([
    "{{ culture.name }}", "{{ nope }}", "{% for x in range(3) %}{{ x }}{% endfor %}", "{{ 1/0 }}", "{{ 'a' + 1 }}",
    "{{ range(10**9)|list|length }}", "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "{% include 'x.j2' %}",
    "{{ culture.__class__.__mro__ }}", "{{ ''.__class__.__subclasses__() }}", "{{ [].append(1) }}",
    "{{ lipsum.__globals__ }}", "{% if %}", "{{", "}}", "{% endfor %}", "{{ x|nofilter }}", "{# c #}", "{{ 'a' * 3 }}",
    "{{ '%s' % 1 }}", "{{ {'a': 1}.a }}", "{{ '{0.__class__}'.format(1) }}", "{% set a = a %}{{ a }}", "plain text",
    "{{ self.__init__ }}", "{% extends 'x.j2' %}", "{{ cycler.__init__.__globals__ }}",
])


@FUZZ
@given(pieces=st.lists(TEMPLATE_PIECES | st.text(string.printable, max_size=20), max_size=6),
       variables=st.dictionaries(st.sampled_from(["culture", "x", "a"]), JSON_VALUES, max_size=3))
def test_any_user_template_renders_or_is_a_prompt_error(tmp_path_factory, pieces, variables):
    folder = tmp_path_factory.mktemp("prompts")
    (folder / "x.j2").write_text("".join(pieces))
    try:
        rendered = Prompts(folder).render("x", **variables)
    except PromptError as exc:
        assert one_line(exc)
    else:
        assert isinstance(rendered.text, str)


@pytest.mark.parametrize("template,message", [
    ("{{ 1/0 }}", "x.j2: ZeroDivisionError: division by zero"),
    ("{{ range(10**9)|list }}", "x.j2: OverflowError: Range too big."),
    ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "x.j2: a macro or include calls itself without end"),
    ("{% include 'x.j2' %}", "x.j2: a macro or include calls itself without end"),
    ("{{ 'a' + 1 }}", "x.j2: TypeError: can only concatenate str"),
])
def test_found_template_cases(tmp_path, template, message):
    """Found by fuzzing: a template's own runtime errors escaped `render` as plain Python exceptions."""
    (tmp_path / "x.j2").write_text(template)
    with pytest.raises(PromptError) as exc:
        Prompts(tmp_path).render("x")
    assert message in str(exc.value) and one_line(exc.value)


def test_a_template_that_is_not_utf8_is_a_prompt_error(tmp_path):
    (tmp_path / "x.j2").write_bytes(b"caf\xe9 {{ x }}")
    with pytest.raises(PromptError, match=r"^prompt 'x': cannot read x.j2 \('utf-8' codec can't decode"):
        Prompts(tmp_path).render("x", x=1)


# ------------------------------------------------------------------ training configs


SFT_DEMO = yaml.safe_load((Path(__file__).resolve().parent.parent / "configs" / "sft_demo.yaml").read_text())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_training_config_parses_or_exits_with_one_line(tmp_path_factory, data):
    from training.common import parse
    from training.sft import make_parser

    kind = data.draw(st.sampled_from(["mutated", "mutated", "text", "value"]))
    if kind == "mutated":
        text = yaml.safe_dump(mutated(SFT_DEMO, data.draw))
    elif kind == "text":
        text = data.draw(ANY_TEXT.filter(lambda t: "\x00" not in t))
    else:
        text = yaml.safe_dump(data.draw(JSON_VALUES))
    path = tmp_path_factory.mktemp("config") / "c.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        parsed = parse(make_parser(), ["--config", str(path), "--output_dir", str(path.parent / "out")])
    except SystemExit as exc:
        assert isinstance(exc.code, str) and exc.code.startswith("error: ") and "\n" not in exc.code
    else:
        assert len(parsed) == 3


@pytest.mark.parametrize("text,message", [
    ("- a\n- b\n", "error: Config file .* must contain a YAML mapping"),
    ("env: [1]\n", "error: `env` field should be a dict"),
    ("1: 2\n", "error: .*keywords must be strings"),
    # found by fuzzing: a value of the wrong type was taken as it was, to fail at some later step of training
    ("learning_rate: [1]\n", r"^error: config learning_rate: expected a single value, got \[1\]$"),
    ("learning_rate: fast\n", r"^error: config learning_rate: 'fast' is not a valid float$"),
    ("output_dir: {a: 1}\n", r"^error: config output_dir: expected a single value, got \{'a': 1\}$"),
    ("lr_scheduler_type: sideways\n", r"^error: config lr_scheduler_type: 'sideways' is not one of linear, "),
    ("max_steps: 2.5\n", r"^error: config max_steps: '2.5' is not a valid int$"),
    ("[[[[" * 300 + "\n", r"^error: config is not valid YAML"),
])
def test_found_config_cases(tmp_path, text, message):
    """Each stops before training with one line."""
    from training.common import parse
    from training.sft import make_parser

    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit, match=message) as exc:
        parse(make_parser(), ["--config", str(path), "--output_dir", str(tmp_path / "out")])
    assert "\n" not in exc.value.code


# ------------------------------------------------------------------ WVS respondent files


Q1, Q2 = all_items()["Q1"], all_items()["Q2"]
CELLS = st.sampled_from(["1", "2", "4", "5", "0", "-1", "-5", "2.0", "2.5", "", " 3 ", "x", "nan", "1e999", "١"])
COUNTRY = st.sampled_from(["392", "484", "999", "", "JPN"])


@FUZZ
@given(rows=st.lists(st.tuples(COUNTRY, st.integers(1, 6), st.sampled_from(["1", "0.5", "-1", "", "w"]), CELLS,
                               CELLS), max_size=12),
       repeat=st.lists(st.integers(0, 11), max_size=3), delimiter=st.sampled_from([",", ";"]),
       ragged=st.booleans())
def test_any_respondent_file_reads_without_double_counts_or_is_a_wvs_error(tmp_path_factory, rows, repeat, delimiter,
                                                                           ragged):
    rows = [list(r) for r in rows] + [list(rows[i]) for i in repeat if i < len(rows)]  # exact repeats
    if ragged and rows:
        rows[-1] = rows[-1][:-1]
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    writer.writerow(["B_COUNTRY", "D_INTERVIEW", "W_WEIGHT", "Q1", "Q2"])
    writer.writerows(rows)
    path = tmp_path_factory.mktemp("wvs") / "wvs.csv"
    path.write_text(buffer.getvalue())
    try:
        data = RespondentFile(path, [Q1, Q2])
    except WVSError as exc:
        assert one_line(exc) and str(exc).startswith(f"{path}: line ")
        return
    read = [(c, r.interview) for c in data.countries() for r in data.respondents(c)]
    assert len(read) == len(set(read))  # nobody twice
    repeated = sum(e.count for e in data.exclusions if e.column == "D_INTERVIEW")
    assert len(read) + repeated == len([r for r in rows if any(cell.strip() for cell in r)])
    for c in data.countries():
        for r in data.respondents(c):
            assert r.answers.get("Q1", 1) in Q1.codes and r.answers.get("Q2", 1) in Q2.codes and r.weight >= 0



def test_config_values_are_read_as_the_command_line_reads_them(tmp_path):
    from training.common import parse
    from training.sft import make_parser

    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 1e-4\nmax_steps: '3'\nbf16: false\nlora_target_modules: [q_proj, v_proj]\n"
                    "lr_scheduler_kwargs: {min_lr: 0.0}\nreport_to: [none]\noutput_dir: 7\n")
    _script, training, model = parse(make_parser(), ["--config", str(path)])
    assert training.learning_rate == 1e-4 and training.max_steps == 3 and training.output_dir == "7"
    assert model.lora_target_modules == ["q_proj", "v_proj"] and training.lr_scheduler_kwargs == {"min_lr": 0.0}
