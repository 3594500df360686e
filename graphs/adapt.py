"""Adapt seed scenarios to a culture (CLCA section 1a) and store them.

    python -m graphs.adapt --culture JPN --n 20 --model smollm2
    python -m graphs.adapt --culture DEU --n 200 --model openai:Qwen2.5-7B@http://127.0.0.1:8000/v1 --concurrency 32
    python -m graphs.adapt --culture JPN --seeds my_seeds.jsonl --model puppet

One graph per seed, fanned out by the batch graph that `langgraph dev` serves as `adapt_batch`
(`graphs/batch.py`: plan -> Send(adapt_seed) x N -> summarize; each result stored as it ends):

    START -> adapt -> validate -> (adapt | END)

`adapt` asks the model to rewrite names, occupations, setting, goals, secrets and the values of persona
attributes for the culture, in the shape `agents.answers.AdaptedScenario` (enforced by the decoder unless
`--unstructured`, where the JSON is pulled out of whatever the model wrapped it in); attributes marked
`fixed` are copied, not asked for. `validate` checks the answer against that shape, the Scenario record and
the seed (same structure, every attribute with its visibility, new names). A failed check goes back to the
model with the error, at most `max_attempts` times in all. A seed that never validates is stored as
`failed` with its reason; rerunning the command skips seeds already adapted and retries the failed ones, except
those whose request failed permanently (a prompt past the model's context, an HTTP 4xx other than 408/409/429),
which wait for `--retry-failed`. The summary lists the stored failures by reason, with a count and an example id.

`--name-pool` (on by default for the embedded model, whose names otherwise stay the seed's): the name
fields may only take names from the culture's pool of common names (`names` in its YAML file), with
different names for the two people, and the tokens that spell the seed's names are banned while decoding.
"""

from __future__ import annotations

import json
import math
import operator
import random
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from pydantic import ValidationError

from agents.answers import (
    CARRIED_FIELDS,
    AdaptedScenario,
    adapted_scenario_schema,
    answer_format,
    content_bound,
    json_schema,
    schema_node,
    validate_data,
    with_enum,
)
from agents.cultures import CultureError, load_culture
from agents.models import (
    MODEL_SPECS,
    SMOLLM2,
    UNSTRUCTURED_HELP,
    GenerationParams,
    Message,
    Model,
    ModelSpecError,
)
from agents.prompts import PromptError, Prompts
from agents.records import Attribute, Culture, Persona, Scenario, first_error
from agents.seeding import call_seed
from agents.seeds import sotopia_seeds
from graphs.batch import (
    BatchInputError,
    Failure,
    Stage,
    command_line,
    counted,
    failure_lines,
    failure_of,
    failure_report,
    graph_of,
    option,
    provenance,
    required,
    stage_model,
    store_file,
    total_usage,
    unfit_items,
)
from graphs.scenarios import ScenarioFileError, read_scenarios
from graphs.serving import shared_prompts, under_root
from graphs.store import DEFAULT_DB, Store, git_commit
from graphs.store_io import on_store

PROMPT_NAMES = ["adapt_system", "adapt_user", "adapt_retry"]
# Recorded only for seeds with attributes to adapt, so the other seeds' versions stay as they were.
ATTRIBUTE_PROMPT_NAMES = ["adapt_attributes"]
# The fields the model rewrites; id, culture and source are ours to set.
ADAPTED_FIELDS = ("setting", "relationship", "participants")


class AdaptationError(ValueError):
    """Why one answer is not a usable adaptation; one line, shown to the model on the next attempt."""


class AdaptState(TypedDict, total=False):
    raw: str  # the latest answer
    attempts: Annotated[list[dict], operator.add]  # {"raw": str, "error": str | None}, one per answer
    scenario: dict | None  # the validated adaptation


@dataclass(frozen=True)
class AdaptContext:
    seed: Scenario
    culture: Culture
    model: Model
    prompts: Prompts
    max_attempts: int = 3
    sample_seed: int = 0
    # Free text: an adapted SOTOPIA scenario is about 450 tokens of JSON; "{" makes small models start the
    # object. Structured answers take their token limit from the shape.
    params: GenerationParams = GenerationParams(max_new_tokens=640, prefix="{")  # noqa: RUF009 - frozen
    name_pool: bool = False  # names only from culture.names, the seed's names banned (structured only)


def adapted_id(culture: str, seed_id: str) -> str:
    """One adaptation per (culture, seed): the id a rerun looks for."""
    return f"{culture.lower()}-{seed_id}"


def adaptable(person: Persona) -> dict[str, Attribute]:
    """The persona's attributes the model rewrites: all but the `fixed` ones, which are copied."""
    return {k: a for k, a in person.attributes.items() if not a.fixed}


def prompt_names(seed: Scenario) -> list[str]:
    """The templates the adaptation of `seed` renders."""
    return PROMPT_NAMES + (ATTRIBUTE_PROMPT_NAMES if any(adaptable(p) for p in seed.participants) else [])


# ------------------------------------------------------------------ extraction and validation


def seed_json(seed: Scenario) -> str:
    """The seed's adaptable fields as one line of JSON: the shape the answer must have.

    One line, because models mirror the layout they are shown and indentation costs answer tokens.
    """
    data = seed.model_dump(mode="json", include=set(ADAPTED_FIELDS))
    for person, persona in zip(data["participants"], seed.participants):
        person.pop("attributes", None)
        if values := {k: a.value for k, a in adaptable(persona).items()}:
            person["attributes"] = values  # the answer's shape: name -> value
    return json.dumps(data, ensure_ascii=False)


def extract_json(raw: str) -> dict[str, Any]:
    """The first JSON object in an answer, whatever prose or code fences surround it."""
    decoder = json.JSONDecoder(strict=False)
    first_error = None
    for match in re.finditer(r"\{", raw):
        try:
            value, _ = decoder.raw_decode(raw, match.start())
        except json.JSONDecodeError as exc:
            first_error = first_error or exc
            continue
        except (ValueError, RecursionError):  # a number past Python's digit limit, nesting past the stack
            raise AdaptationError("the answer is not valid JSON (a number too long or nesting too deep)") from None
        if isinstance(value, dict):
            return value
    if first_error is None:
        raise AdaptationError("the answer contains no JSON object")
    raise AdaptationError(f"the answer is not valid JSON ({first_error.msg} at character {first_error.pos})")


def validate_adaptation(raw: str, seed: Scenario, culture: Culture) -> Scenario:
    """A model answer -> the adapted Scenario, or AdaptationError naming the first problem.

    The answer must have the `AdaptedScenario` shape, make a valid Scenario, keep the seed's structure (every
    attribute with its visibility; fixed ones are copied from the seed) and name neither of the seed's people
    anywhere."""
    data = extract_json(raw)
    for key in ("id", "culture", "source"):
        data.pop(key, None)  # ours to set; a model echoing them is harmless
    adapted, error = validate_data(data, AdaptedScenario)
    if adapted is None:
        raise AdaptationError(error)
    _check_content_fits(adapted, seed)
    answer = adapted.model_dump()
    for i, (person, old) in enumerate(zip(answer["participants"], seed.participants)):
        person["attributes"] = _adapted_attributes(i, person["attributes"], old)
    try:
        scenario = Scenario.model_validate({**answer, "id": adapted_id(culture.code, seed.id),
                                            "culture": culture.code, "source": f"adapted:{seed.id}"})
    except ValidationError as exc:
        raise AdaptationError(first_error(exc, more=False)) from None
    _check_same_structure(scenario, seed)
    _check_names_changed(scenario, seed)
    return scenario


def carried_text(seed: Scenario) -> dict[tuple[str | int, ...], str]:
    """The seed's text in each field an adaptation rewrites (`agents.answers.CARRIED_FIELDS`), by schema path."""
    data = seed.model_dump(mode="json")
    return {path: str(_value_at(data, path) or "") for path in CARRIED_FIELDS}


def _value_at(data: dict, path: tuple[str | int, ...]) -> Any:
    for key in path:
        data = data[key]
    return data


# A goal or secret at least this long (characters) must come back with at least KEPT_FRACTION of its length. Goals
# and secrets are what the personas act on, and SOTOPIA puts a task's extra information and strategy hints in the
# goal (lists of friends, prices, deadlines): a rewrite renames and re-places, it does not summarise them. A model
# that stops early (a closed string, a budget run out) or drops such a list is caught here and asked again. The
# setting, relationship and backgrounds are context that a cultural rewrite may retell more briefly: on SmolLM2
# (JPN, 8 seeds) checking them too rejected 6 or 7 of 8 adaptations, most for a one-line relationship.
KEPT_FIELDS = ("goal", "secret")
KEPT_MIN_CHARS = 200
KEPT_FRACTION = 0.5


def _check_content_fits(adapted: AdaptedScenario, seed: Scenario) -> None:
    """Each carried field within its seed's bound (`content_bound`; a free-text answer has no decoder to enforce
    it) and, for a long goal or secret (`KEPT_FIELDS`), not cut to less than `KEPT_FRACTION` of it."""
    floors = json_schema(AdaptedScenario)
    answer = adapted.model_dump()
    for path, text in carried_text(seed).items():
        new = str(_value_at(answer, path))
        name = ".".join(map(str, path))
        bound = content_bound(text, schema_node(floors, path)["maxLength"])
        if len(new) > bound:
            raise AdaptationError(f"field {name}: {len(new)} characters, at most {bound} for this scenario")
        if path[-1] in KEPT_FIELDS and len(text) >= KEPT_MIN_CHARS and len(new) < KEPT_FRACTION * len(text):
            raise AdaptationError(f"field {name}: {len(new)} characters where the scenario has {len(text)}: rewrite "
                                  f"all of it, keeping every detail (at least {math.ceil(KEPT_FRACTION * len(text))})")


def _adapted_attributes(i: int, answered: dict, old: Persona) -> dict[str, dict]:
    """The adapted persona's attributes: the seed's, in its order, with the answer's new values for those
    not fixed. A missing or unknown name is an error (a free-text answer can have either)."""
    wanted = adaptable(old)
    for name in answered:
        if name not in wanted:
            why = ("is fixed: it keeps the seed's value" if name in old.attributes
                   else "is not an attribute of this person")
            raise AdaptationError(f"field participants.{i}.attributes.{name}: {why}")
    attributes = {}
    for name, attribute in old.attributes.items():
        if name in wanted and name not in answered:
            raise AdaptationError(f"field participants.{i}.attributes.{name}: missing, but the scenario has it")
        value = answered[name] if name in wanted else attribute.value
        attributes[name] = {**attribute.model_dump(mode="json"), "value": value}
    return attributes


def _check_same_structure(scenario: Scenario, seed: Scenario) -> None:
    """Every field the seed fills must be filled in the adaptation too, and every attribute is still there with
    its visibility, the fixed ones with their value."""
    if seed.relationship and not scenario.relationship.strip():
        raise AdaptationError("field relationship: empty, but the scenario has one")
    for i, (new, old) in enumerate(zip(scenario.participants, seed.participants)):
        for name, value in old.model_dump(exclude={"attributes"}).items():
            if value not in (None, "") and new.model_dump()[name] in (None, ""):
                raise AdaptationError(f"field participants.{i}.{name}: empty, but the scenario has one")
        for name, attribute in old.attributes.items():
            kept = new.attributes.get(name)
            if kept is None or kept.visibility is not attribute.visibility or kept.fixed != attribute.fixed \
                    or (attribute.fixed and kept.value != attribute.value):
                raise AdaptationError(f"field participants.{i}.attributes.{name}: not kept as the scenario has it")
        if set(new.attributes) != set(old.attributes):
            extra = min(set(new.attributes) - set(old.attributes))
            raise AdaptationError(f"field participants.{i}.attributes.{extra}: not an attribute of this person")


def name_forms(name: str) -> set[str]:
    """The ways a person's name can appear in text: whole, its parts, and its parts written together.

    Parts in Latin script shorter than three letters ("Li", "Al") are left out, as they occur inside
    ordinary words; in scripts written without spaces (Chinese, Japanese, Thai, ...) two characters are
    a name (Chinese and Korean given names, many Japanese family names)."""
    parts = re.findall(r"[^\W_]+", name)
    forms = {name.strip(), "".join(parts)} if len(parts) > 1 else {name.strip()}
    forms |= {p for p in parts if len(p) >= (3 if p.isascii() else 2)}
    return {f for f in forms if f}


def mentions(text: str, form: str) -> bool:
    """Whether `text` names `form`: a Latin-script name as a word of its own (next to any other script
    too, e.g. "Mia" in "我是Mia"); a name in a script without word boundaries anywhere in the text."""
    if form.isascii():
        return re.search(rf"(?<![A-Za-z0-9]){re.escape(form)}(?![A-Za-z0-9])", text) is not None
    return form in text


def _check_names_changed(scenario: Scenario, seed: Scenario) -> None:
    """New names for both people, and no trace of the old ones anywhere in the text."""
    old_forms = {f for p in seed.participants for f in name_forms(p.name)}
    for i, p in enumerate(scenario.participants):
        if p.name.strip().lower() in {s.name.strip().lower() for s in seed.participants}:
            raise AdaptationError(f"field participants.{i}.name: {p.name!r} is a name from the original scenario")
    texts = {"setting": scenario.setting, "relationship": scenario.relationship}
    for i, p in enumerate(scenario.participants):
        texts.update({f"participants.{i}.{k}": str(v) for k, v in p.model_dump().items() if isinstance(v, str)})
        texts.update({f"participants.{i}.attributes.{k}": a.value for k, a in adaptable(p).items()
                      if isinstance(a.value, str)})
    for field, text in texts.items():
        for form in sorted(old_forms):
            if mentions(text, form):
                raise AdaptationError(f"field {field}: still uses the original name {form!r}")


def answer_schema(ctx: AdaptContext) -> dict[str, Any]:
    """The adaptation's JSON schema; with the name pool, each person's name field allows only its own,
    disjoint part of the culture's common names."""
    schema = adapted_scenario_schema(tuple({k: a.value for k, a in adaptable(p).items()}
                                           for p in ctx.seed.participants), carried_text(ctx.seed))
    if ctx.name_pool and ctx.culture.names:
        old = banned_names(ctx.seed)  # a pool name that shares a part with the seed's names would fail validation
        for i, person in enumerate(ctx.seed.participants):
            names = [n for n in ctx.culture.names.full_names(person.gender, i) if not any(mentions(n, f) for f in old)]
            schema = with_enum(schema, ("participants", i, "name"), names)
    return schema


def banned_names(seed: Scenario) -> tuple[str, ...]:
    """The seed's names, in every form `name_forms` knows, for the decoder to ban."""
    return tuple(sorted({f for p in seed.participants for f in name_forms(p.name)}))


# ------------------------------------------------------------------ graph


def adapt_messages(ctx: AdaptContext, attempts: list[dict]) -> list[Message]:
    """The request, then each failed answer followed by its validation error."""
    system = ctx.prompts.render("adapt_system", culture=ctx.culture)
    user = ctx.prompts.render("adapt_user", culture=ctx.culture, seed=ctx.seed, seed_json=seed_json(ctx.seed),
                              answer_format=answer_format(answer_schema(ctx))).text
    if any(adaptable(p) for p in ctx.seed.participants):
        people = [{"name": p.name, "adapt": adaptable(p),
                   "fixed": {k: a for k, a in p.attributes.items() if a.fixed}} for p in ctx.seed.participants]
        user += "\n\n" + ctx.prompts.render("adapt_attributes", culture=ctx.culture, people=people).text
    messages: list[Message] = [{"role": "system", "content": system.text}, {"role": "user", "content": user}]
    for number, attempt in enumerate(attempts, start=1):
        retry = ctx.prompts.render("adapt_retry", error=attempt["error"], culture=ctx.culture, attempt=number)
        messages += [{"role": "assistant", "content": attempt["raw"]}, {"role": "user", "content": retry.text}]
    return messages


async def adapt(state: AdaptState, runtime: Runtime[AdaptContext]) -> dict:
    ctx = runtime.context
    attempts = state.get("attempts", [])
    params = replace(ctx.params, seed=call_seed(ctx.sample_seed, ctx.seed.id, len(attempts)))
    if ctx.model.structured:
        params = params.constrained(answer_schema(ctx))
        if ctx.name_pool:
            params = replace(params, banned=banned_names(ctx.seed))
    raw = await ctx.model.achat(adapt_messages(ctx, attempts), task="adapt", params=params)
    return {"raw": raw}


def validate(state: AdaptState, runtime: Runtime[AdaptContext]) -> dict:
    ctx = runtime.context
    try:
        scenario = validate_adaptation(state["raw"], ctx.seed, ctx.culture)
    except AdaptationError as exc:
        return {"attempts": [{"raw": state["raw"], "error": str(exc)}]}
    return {"attempts": [{"raw": state["raw"], "error": None}], "scenario": scenario.model_dump(mode="json")}


def should_retry(state: AdaptState, runtime: Runtime[AdaptContext]) -> str:
    """End on a valid adaptation or when the attempts are spent; otherwise ask again."""
    if state.get("scenario") or len(state["attempts"]) >= runtime.context.max_attempts:
        return END
    return "adapt"


def recursion_limit(max_attempts: int) -> int:
    """Each attempt costs two steps (adapt, validate); leave headroom for the start."""
    return 2 * max_attempts + 5


def build_adapt_graph(route=should_retry):
    graph = StateGraph(AdaptState, context_schema=AdaptContext)
    graph.add_node("adapt", adapt)
    graph.add_node("validate", validate)
    graph.add_edge(START, "adapt")
    graph.add_edge("adapt", "validate")
    graph.add_conditional_edges("validate", route, ["adapt", END])
    return graph.compile()


# ------------------------------------------------------------------ running and storing


@dataclass(frozen=True)
class AdaptRequest:
    """A batch of seeds to adapt: `python -m graphs.adapt`'s flags and the served `adapt_batch` graph's input."""

    culture: str = required("ISO-3 code of a culture with a YAML file, e.g. JPN")
    n: int | None = option(None, "seeds to adapt, a seeded choice (default: all)")
    max_goal_chars: int | None = option(None, "only seeds whose goals are all at most this many characters, the --n "
                                              "choice drawn among them (SOTOPIA's run to 1,584 with lists and hints "
                                              "inline; a small model drops what it cannot carry and is refused)")
    seeds: str | None = option(None, "JSON Lines file of your own seed scenarios (default: SOTOPIA; served: under the "
                                     "serving root)")
    model: str = option("smollm2", f"model spec: {MODEL_SPECS}")
    db: str = option(DEFAULT_DB, "SQLite store (served: under the serving root)")
    max_attempts: int = option(3, "answers per seed, the first included")
    concurrency: int = option(8, "seeds in flight (and in-process batch size)")
    seed: int = option(0, "seeds the choice of seeds (--n) and the sampling", aliases=["--sample_seed",
                                                                                        "--sample-seed"])
    prompts: str | None = option(None, "directory whose templates override the built-in ones (served: under the "
                                       "serving root)", aliases=["--prompts_dir", "--prompts-dir"])
    cultures_dir: str | None = option(None, "directory of extra culture YAML files (served: under the serving root)")
    temperature: float = option(0.7, "sampling temperature")
    top_p: float = option(0.7, "nucleus sampling: keep the top tokens whose probabilities sum to this")
    max_new_tokens: int = option(AdaptContext.params.max_new_tokens, "free text only (--unstructured); a structured "
                                 "answer's limit comes from its shape")
    name_pool: Literal["auto", "on", "off"] = option(
        "auto", "names only from the culture's pool of common names, the seed's names banned while decoding (auto: "
        "on for the embedded model, which otherwise keeps the seed's names)")
    unstructured: bool = option(False, UNSTRUCTURED_HELP)
    retry_failed: bool = option(False, "adapt again seeds whose request failed permanently (a prompt past the "
                                       "model's context, an HTTP 4xx other than 408/409/429); other failures are "
                                       "always retried")


@dataclass(frozen=True)
class Adaptation:
    """A resolved adaptation request: the batch graph's run context."""

    request: AdaptRequest
    culture: Culture
    prompts: Prompts
    model: Model
    db: Path
    chosen: tuple[Scenario, ...]  # the seeds to adapt
    params: GenerationParams
    name_pool: bool
    config: dict
    command: str
    git: str | None = None  # the commit the run's code came from


def resolve(request: AdaptRequest, *, served: bool = False, origin: dict | None = None,
            model: Model | None = None) -> Adaptation:
    """Check a request and load what it names, the model last (`model` if given); one-line errors
    (BatchInputError, CultureError, PromptError, ModelSpecError, ScenarioFileError). Served: paths under the
    serving root."""
    r = request
    if (r.n is not None and r.n < 1) or r.max_attempts < 1 or r.concurrency < 1 \
            or (r.max_goal_chars is not None and r.max_goal_chars < 1):
        raise BatchInputError("n, max_goal_chars, max_attempts and concurrency must be at least 1")
    path = (lambda p, field: under_root(p, field)) if served else (lambda p, field: p and Path(p))
    db, prompts_dir = store_file(path(r.db, "db")), path(r.prompts, "prompts")
    cultures_dir, seeds_file = path(r.cultures_dir, "cultures_dir"), path(r.seeds, "seeds")
    culture = load_culture(r.culture, cultures_dir)
    prompts = shared_prompts(str(prompts_dir) if prompts_dir else None,
                             tuple(PROMPT_NAMES + ATTRIBUTE_PROMPT_NAMES)) if served \
        else Prompts(prompts_dir)
    seeds = read_scenarios(seeds_file) if seeds_file else list(sotopia_seeds())
    if not seeds:
        raise ScenarioFileError(f"{r.seeds}: no scenarios in the file")
    if r.max_goal_chars is not None:
        seeds = [s for s in seeds if all(len(p.goal) <= r.max_goal_chars for p in s.participants)]
        if not seeds:
            raise BatchInputError(f"max_goal_chars {r.max_goal_chars}: no seed has goals that short")
    chosen = choose_seeds(seeds, r.n, r.seed)
    name_pool = use_name_pool(r.name_pool, r.model, culture, structured=not r.unstructured)
    check_templates(prompts, culture, chosen[0])
    model = stage_model(r, db, served=served, model=model)
    config, command = provenance(r, origin, "adapt")
    params = GenerationParams(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p,
                              prefix=AdaptContext.params.prefix)
    return Adaptation(request=r, culture=culture, prompts=prompts, model=model, db=db, chosen=tuple(chosen),
                      params=params, name_pool=name_pool, config=config, command=command, git=git_commit())


FAILURES = "adapt"  # the stage's name in the store's failures


async def _plan(a: Adaptation) -> dict:
    ids = {s.id: adapted_id(a.culture.code, s.id) for s in a.chosen}

    def record(store: Store) -> tuple[str, list[Scenario], set[str]]:
        todo = [s for s in a.chosen if store.scenario_status(ids[s.id]) != "ok"]
        permanent = {f["item_id"] for f in store.failures(FAILURES, ids.values(), a.model.identity) if f["permanent"]}
        return store.start_run(a.command, a.config), todo, permanent

    run_id, waiting, permanent = await on_store(a.db, record)
    held = set() if a.request.retry_failed else {s.id for s in waiting if ids[s.id] in permanent}
    todo = [s for s in waiting if s.id not in held]
    unfit = await _unfit(a, todo, run_id)
    return {"run_id": run_id, "planned": len(a.chosen), "skipped": len(a.chosen) - len(waiting),
            "not_retried": len(held) + len(unfit), "ids": list(ids.values()),
            "todo": [s.model_dump(mode="json") for s in todo if s.id not in unfit]}


async def _unfit(a: Adaptation, seeds: list[Scenario], run_id: str) -> set[str]:
    """The seeds (ids) whose adaptation prompt cannot fit the model's context, stored failed (`unfit_items`)."""

    async def prompts(s: Scenario) -> list:
        return [adapt_messages(_context(a, s, a.model), [])]

    async def store(s: Scenario, failure: Failure) -> None:
        await on_store(a.db, _store_failure, adapted_id(a.culture.code, s.id), failure, _meta(a, s, run_id),
                       attempts=0, raw="")

    return {s.id for s in await unfit_items(a.model, seeds, prompts, store)}


def _store_failure(store: Store, sid: str, failure: Failure, meta: dict, **row) -> None:
    store.put_failed_scenario(sid, error=failure.error, **row, **meta)
    store.put_failure(FAILURES, sid, meta["model"], reason=failure.reason, error=failure.error,
                      permanent=failure.permanent, run_id=meta["run_id"])


def _context(a: Adaptation, s: Scenario, model: Model) -> AdaptContext:
    return AdaptContext(seed=s, culture=a.culture, model=model, prompts=a.prompts, max_attempts=a.request.max_attempts,
                        sample_seed=a.request.seed, params=a.params, name_pool=a.name_pool)


def _meta(a: Adaptation, s: Scenario, run_id: str) -> dict:
    return {"culture": a.culture.code, "seed_id": s.id, "model": a.model.identity,
            "prompt_version": json.dumps(a.prompts.versions(prompt_names(s)), sort_keys=True), "run_id": run_id,
            "git": a.git}


async def _adapt_one(a: Adaptation, item: dict, run_id: str, graph) -> dict:
    """Adapt one seed with the adaptation graph and store the result (adapted, or failed with why)."""
    s = Scenario.model_validate(item)
    sid = adapted_id(a.culture.code, s.id)
    meta = _meta(a, s, run_id)
    with counted(a.model) as model:
        ctx = _context(a, s, model)
        try:
            state = await graph.ainvoke({"attempts": []}, {"recursion_limit": recursion_limit(ctx.max_attempts)},
                                        context=ctx)
        except PromptError:  # a template that cannot render is the user's to fix, not this seed's failure
            raise
        except Exception as exc:  # noqa: BLE001 - a crashed model call is this seed's recorded failure
            failure = failure_of(exc)
            await on_store(a.db, _store_failure, sid, failure, meta, attempts=0, raw="")
            return {"id": sid, "status": "failed", "attempts": 0, "usage": model.usage.totals(),
                    "error": failure.error}
    attempts = state["attempts"]
    if state.get("scenario"):
        await on_store(a.db, Store.put_scenario, Scenario.model_validate(state["scenario"]), attempts=len(attempts),
                       **meta)
        await on_store(a.db, Store.clear_failure, FAILURES, sid, a.model.identity)
        status = "adapted"
    else:
        never = Failure(f"no valid answer in {len(attempts)} attempts", attempts[-1]["error"], False)
        await on_store(a.db, _store_failure, sid, never, meta, attempts=len(attempts), raw=attempts[-1]["raw"])
        status = "failed"
    return {"id": sid, "status": status, "attempts": len(attempts), "usage": model.usage.totals()}


async def _summarize(a: Adaptation, state: dict) -> dict:
    results = state.get("results", [])
    usage = total_usage(results)
    summary = {"skipped": state["skipped"], "adapted": sum(r["status"] == "adapted" for r in results),
               "failed": sum(r["status"] == "failed" for r in results),
               "errors": sum(bool(r.get("error")) for r in results),  # failed on a model error, not an answer
               "attempts": sum(r["attempts"] for r in results),
               "first_try": sum(r["status"] == "adapted" and r["attempts"] == 1 for r in results),
               "name_pool": a.name_pool, "usage": dict(usage), "wall_s": round(time.time() - state["started"], 1),
               "not_retried": state.get("not_retried", 0),
               "failures": failure_lines(await on_store(a.db, Store.failures, FAILURES, state["ids"], a.model.identity))}
    await on_store(a.db, Store.finish_run, state["run_id"], summary)
    return summary


def report(a: Adaptation, counts: dict) -> tuple[str, int]:
    """The command's closing lines (the stored failures by reason among them); exit status 1 when a seed failed on a
    model error (a rerun retries it) or is left out after failing permanently; answers that never validated are
    results, not errors."""
    chosen = a.chosen
    tried = counts["adapted"] + counts["failed"]
    rate = f"{counts['adapted']}/{tried} valid ({counts['first_try']} on the first attempt)" if tried else "none tried"
    u = counts["usage"]
    errors = f", {counts['errors']} on a model error" if counts["errors"] else ""
    held = counts.get("not_retried", 0)
    held = f", {held} failed permanently before and not retried (--retry-failed sends them again)" if held else ""
    text = (
        f"\n{len(chosen)} seed{'' if len(chosen) == 1 else 's'} for {a.culture.name}: {counts['adapted']} adapted, "
        f"{counts['failed']} failed (never validated{errors}), {counts['skipped']} already adapted{held}; {rate}; "
        f"{counts['attempts']} answers, {u.get('prompt_tokens', 0)} prompt + {u.get('completion_tokens', 0)} "
        f"completion tokens; {counts['wall_s']} s{failure_report(counts.get('failures', []))}\n"
        f"Look at them:  python -m graphs.scenarios list --culture {a.culture.code} --db {a.request.db}"
    )
    return text, 1 if counts["errors"] or counts.get("not_retried") else 0


ADAPT = build_adapt_graph()  # run as a subgraph, once per seed
STAGE = Stage(name="adapt_seed", module="graphs.adapt", request=AdaptRequest, context=Adaptation, resolve=resolve,
              plan=_plan, work=_adapt_one, summarize=_summarize, report=report,
              errors=(BatchInputError, CultureError, PromptError, ModelSpecError, ScenarioFileError), subgraph=ADAPT,
              unit="scenario")
BATCH = graph_of(STAGE)


def check_templates(prompts: Prompts, culture: Culture, seed: Scenario) -> None:
    """Render every adaptation prompt once, so a broken user template fails before a model is loaded."""
    probe = AdaptContext(seed=seed, culture=culture, model=None, prompts=prompts)  # type: ignore[arg-type]
    adapt_messages(probe, [{"raw": "{}", "error": "an example error"}])
    prompts.versions(ATTRIBUTE_PROMPT_NAMES)  # present, though only seeds with attributes render it


def choose_seeds(seeds: list[Scenario], n: int | None, seed: int) -> list[Scenario]:
    """A seeded choice of n seeds (all of them when n is None), stable across reruns."""
    order = list(seeds)
    random.Random(seed).shuffle(order)
    return order if n is None else order[:n]


def use_name_pool(choice: str, spec: str, culture: Culture, structured: bool) -> bool:
    """Whether this run constrains names to the culture's pool; CultureError when asked for and impossible."""
    if choice == "off" or (choice == "auto" and not (structured and is_embedded(spec) and culture.names)):
        return False
    if not structured:
        raise CultureError("--name-pool on needs structured decoding (drop --unstructured)")
    if not culture.names:
        raise CultureError(f"--name-pool on: culture {culture.code} has no `names` pool in its YAML file")
    return True


def is_embedded(spec: str) -> bool:
    """The embedded small model (on llama-server or in process), or a GGUF file on a managed server."""
    return spec in (SMOLLM2, f"{SMOLLM2}-inprocess") or spec.startswith("gguf:")


def main(argv: list[str] | None = None) -> None:
    """`python -m graphs.adapt` (the module docstring has examples; `--help` lists the flags)."""
    command_line(STAGE, argv)


if __name__ == "__main__":
    main()
