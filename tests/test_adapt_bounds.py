"""Answer bounds fit the content they carry: no bundled seed loses text to a decoder that enforces `maxLength`,
and an adaptation that cuts a long field is rejected and asked again."""

import asyncio
import json

import pytest

from agents.answers import CARRIED_FIELDS, adapted_scenario_schema, content_bound, schema_node, token_budget
from agents.cultures import load_culture
from agents.models import load_model
from agents.prompts import Prompts
from agents.seeds import sotopia_seeds
from graphs.adapt import (
    KEPT_FRACTION,
    AdaptationError,
    AdaptContext,
    answer_schema,
    build_adapt_graph,
    carried_text,
    recursion_limit,
    validate_adaptation,
)

SEEDS = sotopia_seeds()
LONGEST = max(SEEDS, key=lambda s: max(len(p.goal) for p in s.participants))


def field(scenario_data: dict, path: tuple) -> str:
    for key in path:
        scenario_data = scenario_data[key]
    return scenario_data


def test_bounds_grow_with_the_text_and_never_fall_below_the_shape():
    assert content_bound("", 300) == 300
    assert content_bound("x" * 1584, 300) >= 1584
    schema = adapted_scenario_schema(carried={("participants", 0, "goal"): "y" * 1000})
    assert schema_node(schema, ("participants", 0, "goal"))["maxLength"] == content_bound("y" * 1000, 300)
    assert schema_node(schema, ("participants", 1, "goal"))["maxLength"] == 300
    assert token_budget(schema) > token_budget(adapted_scenario_schema())


def test_no_bundled_seed_loses_text_to_the_bounds_of_its_own_schema():
    """The puppet copies the seed's text and cuts each string at its schema's bound, as a decoder that enforces
    `maxLength` must: every carried field of all 450 seeds comes back whole, renamed, and validates."""
    culture = load_culture("JPN")
    model = load_model("puppet")
    graph = build_adapt_graph()
    assert len(SEEDS) == 450
    longer_than_the_old_bounds = 0

    async def adapt_all():
        out = []
        for seed in SEEDS:
            ctx = AdaptContext(seed=seed, culture=culture, model=model, prompts=Prompts(), max_attempts=1)
            state = await graph.ainvoke({}, context=ctx, config={"recursion_limit": recursion_limit(1)})
            out.append((seed, state))
        return out

    for seed, state in asyncio.run(adapt_all()):
        assert state.get("scenario"), (seed.id, state["attempts"][-1]["error"])
        adapted = state["scenario"]
        for path, text in carried_text(seed).items():
            longer_than_the_old_bounds += len(text) > schema_node(adapted_scenario_schema(), path)["maxLength"]
            # renamed, so compare lengths: a copy keeps within a few characters per name
            assert len(field(adapted, path)) >= len(text) - 40, (seed.id, path)
    assert longer_than_the_old_bounds >= 200  # 214 fields of the seeds were cut by the old fixed bounds


def test_an_adaptation_that_cuts_a_long_field_is_rejected_with_the_field_named():
    culture = load_culture("JPN")
    seed = LONGEST
    ctx = AdaptContext(seed=seed, culture=culture, model=load_model("puppet"), prompts=Prompts())
    answer = json.loads(asyncio.run(ctx.model.achat(
        [{"role": "user", "content": json.dumps(seed.model_dump(mode="json", include={"setting", "relationship",
                                                                                       "participants"}))}],
        task="adapt", params=ctx.params.constrained(answer_schema(ctx)))))
    validate_adaptation(json.dumps(answer), seed, culture)  # whole: accepted
    which = max((0, 1), key=lambda i: len(seed.participants[i].goal))
    goal = answer["participants"][which]["goal"]
    answer["participants"][which]["goal"] = goal[: int(len(goal) * KEPT_FRACTION) - 10]
    with pytest.raises(AdaptationError, match=rf"field participants\.{which}\.goal: \d+ characters where"):
        validate_adaptation(json.dumps(answer), seed, culture)
    answer["participants"][which]["goal"] = goal * 3  # past the bound: a free-text answer has no decoder to stop it
    with pytest.raises(AdaptationError, match=rf"field participants\.{which}\.goal: \d+ characters, at most"):
        validate_adaptation(json.dumps(answer), seed, culture)


def test_every_carried_field_has_a_bound_in_the_schema():
    schema = answer_schema(AdaptContext(seed=LONGEST, culture=load_culture("DEU"), model=load_model("puppet"),
                                        prompts=Prompts()))
    for path in CARRIED_FIELDS:
        assert schema_node(schema, path)["maxLength"] >= len(field(LONGEST.model_dump(), path))


def test_max_goal_chars_draws_the_choice_among_seeds_with_short_goals(tmp_path):
    """A small model drops what it cannot carry; --max-goal-chars adapts only seeds it can, --n drawn among them."""
    from graphs import adapt
    from graphs.store import Store

    db = str(tmp_path / "s.db")
    adapt.main(["--culture", "JPN", "--n", "5", "--max-goal-chars", "150", "--model", "puppet", "--db", db,
                "--no-progress"])
    seeds = {s.id: s for s in SEEDS}
    adapted = Store(db).scenarios(culture="JPN")
    assert len(adapted) == 5
    assert all(len(p.goal) <= 150 for s in adapted for p in seeds[s.source.removeprefix("adapted:")].participants)
    with pytest.raises(SystemExit, match=r"^error: max_goal_chars 5: no seed has goals that short$"):
        adapt.main(["--culture", "JPN", "--max-goal-chars", "5", "--model", "puppet", "--db", db])
