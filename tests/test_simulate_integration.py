"""Two short episodes on the real SmolLM2: the whole engine, with a model that does not follow orders."""


import pytest

from agents.models import load_model
from agents.seeds import sotopia_seeds
from graphs import simulate
from graphs.batch import run
from graphs.simulate import SimulateRequest, plan_episodes
from graphs.store import Store


@pytest.mark.integration
def test_two_smollm2_episodes_are_stored_with_intents(tmp_path, culture):
    store, model = Store(tmp_path / "s.db"), load_model("smollm2")
    plan = plan_episodes(list(sotopia_seeds()), culture.code, "smollm2", seed=0, episodes=2, samples=1)
    request = SimulateRequest(culture=culture.code, episodes=2, model="smollm2", db=str(store.path), max_turns=2,
                              concurrency=2, use_seeds=True)
    counts = run(simulate.STAGE, request, model=model)["summary"]["this_run"]

    assert counts["done"] + counts["invalid"] == 2 and counts["failed"] == 0
    for p in plan:
        row, turns = store.episode(p.id), store.turns(p.id)
        assert row.status in ("done", "invalid") and row.n_turns == len(turns) >= 1
        assert row.prompt_versions.keys() >= {"roleplay_system", "roleplay_turn", "observer_turn"}
        assert [t.speaker for t in turns] == [i % 2 for i in range(len(turns))]
        valid = [t for t in turns if t.valid]
        intents = {i.turn_index: i for i in store.intents(p.id)}
        assert set(intents) == {t.index for t in valid}  # the observer labels every parsed turn
        assert all(t.raw for t in turns)  # what the model said is kept, parsed or not
    assert model.usage.calls["roleplay"] >= 2 and model.usage.completion_tokens["observer"] > 0
