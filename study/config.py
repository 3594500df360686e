"""A study's configuration: one YAML file read into frozen dataclasses, checked before anything runs.

    name: demo
    cultures: [CHN]
    roleplay: {model: smollm2, concurrency: 8}
    judge: {model: smollm2}                  # default: the role-play model
    students: [smollm2]                      # or {name: s, model: smollm2, eval_model: smollm2-inprocess}
    arms: [base, cultural_prompt, clca, culture_free]
    seeds: [42]                              # training seeds: one adapter per trained arm, student and seed
    training: {preset: configs/sft_demo.yaml, overrides: {max_steps: 20}}
    sizes: {seeds: 10, episodes: 16, samples: 2, rounds: 3}
    evaluation: {items: [clca44:test], readings: [logprob], formats: [default, reversed], bootstrap: 200}

`load_study(path)` returns a `Study` or raises `StudyConfigError`, one line naming the file, the line and the key:
an unknown key (with the nearest known one), a value of the wrong type, an unknown arm, culture, item set, reading
or format, a training preset that is not there.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


class StudyConfigError(ValueError):
    """A study config that cannot run; one line: file, line, key, what is wrong."""


@dataclass(frozen=True)
class RoleModel:
    """A model that plays a part in the pipeline (role-play, observer, judge): a clca model spec."""

    model: str  # agents.models spec: smollm2, puppet, openai:M@URL, vllm:M, a hub id or folder
    concurrency: int = 8  # items in flight (and in-process batch size)
    unstructured: bool = False  # free text with tolerant parsers, for servers that ignore JSON schemas


@dataclass(frozen=True)
class Student:
    """A model that is trained and evaluated."""

    model: str  # what training.sft loads (--model_name_or_path)
    name: str = ""  # the report's label (default: the model spec)
    eval_model: str = ""  # what eval.wvs loads, adapter or not (default: `model`), so base and adapted share an engine

    @property
    def label(self) -> str:
        return self.name or self.model

    @property
    def evaluated(self) -> str:
        return self.eval_model or self.model


@dataclass(frozen=True)
class Training:
    """How every trained arm trains: a TRL preset (configs/*.yaml) and flags that override it."""

    preset: str  # a training.sft YAML (configs/sft_demo.yaml, configs/sft_paper.yaml), relative to the study file
    overrides: dict = field(default_factory=dict)  # training.sft flag -> value, e.g. {max_steps: 2}
    dpo_preset: str | None = None  # the dpo arm's training.dpo YAML (configs/dpo_demo.yaml); needed by that arm
    dpo_overrides: dict = field(default_factory=dict)  # training.dpo flag -> value


@dataclass(frozen=True)
class Sizes:
    """The pipeline's sizes (paper: 200-ish seeds, 2 samples, 10 rounds)."""

    seeds: int = 10  # SOTOPIA seeds adapted per culture (graphs.adapt --n)
    episodes: int = 16  # episodes simulated per culture and pipeline (graphs.simulate --episodes)
    samples: int = 2  # episodes per scenario
    rounds: int = 3  # rounds per episode, one utterance from each participant (--max-turns)
    survey_rows: int = 20  # survey_sft: answers drawn per train item and format (training.survey_rows)
    max_goal_chars: int | None = None  # adapt only seeds whose goals are this short (graphs.adapt --max-goal-chars)


@dataclass(frozen=True)
class Evaluation:
    """How every arm is scored (eval.wvs); every arm is scored on every item set, reading and format."""

    items: tuple[str, ...] = ("clca44:test",)  # item sets: clca44, clca44:test, clca44:train, iw10, ids
    readings: tuple[str, ...] = ("logprob",)  # eval.wvs --method: logprob, generate, distribution
    formats: tuple[str, ...] = ("default",)  # eval.wvs --formats (docs/evaluation.md), or [all]
    bootstrap: int = 200  # bootstrap replicates of each evaluation and of each paired test
    batch_size: int = 16  # prompts per forward pass
    samples: int = 1  # generate: answers per prompt
    wvs_file: str | None = None  # the WVS-7 respondent CSV (persona prompts); default: the bundled shares
    personas: int = 1000  # respondents sampled per country with wvs_file (the paper: 1000)


@dataclass(frozen=True)
class Study:
    """A whole study: which arms, on which cultures and students, with which models, sizes and evaluation."""

    cultures: tuple[str, ...]
    roleplay: RoleModel
    students: tuple[Student, ...]
    arms: tuple[str, ...]
    training: Training
    name: str = "study"
    judge: RoleModel | None = None  # default: the role-play model
    seeds: tuple[int, ...] = (42,)  # training seeds
    sizes: Sizes = field(default_factory=Sizes)
    evaluation: Evaluation = field(default_factory=Evaluation)
    source: str = ""  # the file it was read from (set by load_study)

    @property
    def judge_model(self) -> RoleModel:
        return self.judge or self.roleplay


READINGS = ("logprob", "generate", "distribution")


def load_study(path: str | Path) -> Study:
    """Read and check a study YAML (see the module docstring); StudyConfigError (one line) when it is bad."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StudyConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise StudyConfigError(f"{path}{where}: not YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(node, yaml.MappingNode):
        raise StudyConfigError(f"{path}: a study is a mapping of keys (cultures, arms, ...)")
    study = _build(Study, node, path, "")
    study = _replace(study, source=str(path))
    _check(study, node, path)
    return study


def _replace(obj, **changes):
    from dataclasses import replace

    return replace(obj, **changes)


def _where(path: Path, node: yaml.Node, key: str) -> str:
    return f"{path}:{node.start_mark.line + 1}: {key}"


def _build(cls: type, node: yaml.Node, path: Path, prefix: str):
    """A dataclass from a YAML mapping node, checking keys and types; errors name file, line and key."""
    if not isinstance(node, yaml.MappingNode):
        raise StudyConfigError(f"{_where(path, node, prefix.rstrip('.') or 'study')}: expected a mapping")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if f.name != "source"}
    values: dict[str, Any] = {}
    for key_node, value_node in node.value:
        key = key_node.value
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else f" (known: {', '.join(known)})"
            raise StudyConfigError(f"{_where(path, key_node, prefix + key)}: unknown key{hint}")
        values[key] = _value(hints[key], value_node, path, prefix + key)
    for name, f in known.items():
        if name not in values and f.default is MISSING and f.default_factory is MISSING:
            raise StudyConfigError(f"{_where(path, node, prefix + name)}: required key missing")
    return cls(**values)


def _value(hint, node: yaml.Node, path: Path, key: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
            return None
        hint = next(a for a in args if a is not type(None))
        return _value(hint, node, path, key)
    if isinstance(hint, type) and hasattr(hint, "__dataclass_fields__"):
        if hint is Student and isinstance(node, yaml.ScalarNode):
            return Student(model=_scalar(str, node, path, key))
        return _build(hint, node, path, key + ".")
    if origin is tuple:
        if isinstance(node, yaml.ScalarNode):  # a single value stands for a list of one
            return (_value(args[0], node, path, key),)
        if not isinstance(node, yaml.SequenceNode):
            raise StudyConfigError(f"{_where(path, node, key)}: expected a list")
        return tuple(_value(args[0], item, path, f"{key}[{i}]") for i, item in enumerate(node.value))
    if hint is dict:
        if not isinstance(node, yaml.MappingNode):
            raise StudyConfigError(f"{_where(path, node, key)}: expected a mapping")
        return yaml.safe_load(yaml.serialize(node))
    return _scalar(hint, node, path, key)


def _scalar(hint: type, node: yaml.Node, path: Path, key: str):
    value = yaml.safe_load(yaml.serialize(node)) if isinstance(node, yaml.ScalarNode) else None
    ok = isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        value, ok = str(value), True  # a bare number as a name (seed ids, model tags)
    if not ok:
        shown = node.value if isinstance(node, yaml.ScalarNode) else type(yaml.safe_load(yaml.serialize(node))).__name__
        raise StudyConfigError(f"{_where(path, node, key)}: expected {_TYPE_NAMES.get(hint, hint.__name__)}, "
                               f"got {shown!r}")
    return value


_TYPE_NAMES = {int: "an integer", str: "a string", bool: "true or false", float: "a number"}


def _line_of(node: yaml.MappingNode, *keys: str) -> int:
    """The line of a nested key (the nearest one found) in the composed document, 1-based."""
    line = node.start_mark.line + 1
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            break
        match = next(((k, v) for k, v in node.value if k.value == key), None)
        if match is None:
            break
        line, node = match[0].start_mark.line + 1, match[1]
    return line


def _check(study: Study, root: yaml.MappingNode, path: Path) -> None:
    """What the types cannot say: known arms, cultures, items, readings and formats; sizes; the preset."""
    from study.arms import ARMS

    def fail(message: str, *keys: str) -> None:
        raise StudyConfigError(f"{path}:{_line_of(root, *keys)}: {message}")

    for name in ("cultures", "students", "arms", "seeds"):
        if not getattr(study, name):
            fail(f"{name}: at least one is needed", name)
    for arm in study.arms:
        if arm not in ARMS:
            near = difflib.get_close_matches(arm, ARMS, n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"known: {', '.join(ARMS)}"
            fail(f"arms: unknown arm {arm!r} ({hint})", "arms")
    for key in ("cultures", "arms", "seeds"):
        values = getattr(study, key)
        if twice := sorted({str(v) for v in values if values.count(v) > 1}):
            fail(f"{key}: {', '.join(twice)} given twice", key)
    labels = [s.label for s in study.students]
    if twice := sorted({x for x in labels if labels.count(x) > 1}):
        fail(f"students: {', '.join(twice)} given twice (give each a name)", "students")
    from agents.cultures import CultureError, load_culture

    for code in study.cultures:
        try:
            load_culture(code)
        except CultureError as exc:
            fail(f"cultures: {exc}", "cultures")
    s = study.sizes
    for name in ("seeds", "episodes", "samples", "rounds", "survey_rows"):
        if getattr(s, name) < 1:
            fail(f"sizes.{name}: must be at least 1", "sizes", name)
    for role in ("roleplay", "judge"):
        model = getattr(study, role)
        if model is not None and model.concurrency < 1:
            fail(f"{role}.concurrency: must be at least 1", role, "concurrency")
    from eval.wvs.formats import parse_formats
    from eval.wvs.items import WVSError, select_items

    e = study.evaluation
    for spec in e.items:
        try:
            select_items(spec)
        except WVSError as exc:
            fail(f"evaluation.items: {str(exc).removeprefix('--items: ')}", "evaluation", "items")
    for reading in e.readings:
        if reading not in READINGS:
            fail(f"evaluation.readings: unknown reading {reading!r} (known: {', '.join(READINGS)})",
                 "evaluation", "readings")
    try:
        parse_formats(",".join(e.formats))
    except (WVSError, ValueError) as exc:
        fail(f"evaluation.formats: {exc}", "evaluation", "formats")
    for name in ("bootstrap", "batch_size", "samples"):
        if getattr(e, name) < 1:
            fail(f"evaluation.{name}: must be at least 1", "evaluation", name)
    if not preset_path(study).is_file():
        fail(f"training.preset: {study.training.preset}: no such file", "training", "preset")
    if "dpo" in study.arms:
        if not study.training.dpo_preset:
            fail("training.dpo_preset: the dpo arm needs a training.dpo preset (configs/dpo_demo.yaml)", "training")
        if not preset_path(study, study.training.dpo_preset).is_file():
            fail(f"training.dpo_preset: {study.training.dpo_preset}: no such file", "training", "dpo_preset")
    if "survey_sft" in study.arms:
        from eval.wvs.items import split_names

        for spec in e.items:
            name, _, part = spec.partition(":")
            if part != "test" or f"{name}:train" not in split_names():
                fail(f"evaluation.items: {spec}: the survey_sft arm trains on the train split, so every arm is "
                     f"scored on held-out items only (use a test split such as clca44:test)", "evaluation", "items")


def preset_path(study: Study, preset: str | None = None) -> Path:
    """A training preset (default: the SFT one): as given if it exists from here, else relative to the study
    file's folder and its parents (a study in configs/studies/ may name configs/sft_demo.yaml)."""
    given = Path(preset or study.training.preset)
    if given.is_absolute() or given.exists() or not study.source:
        return given
    for folder in Path(study.source).absolute().parents:
        if (folder / given).exists():
            return folder / given
    return given
