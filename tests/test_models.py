import asyncio
from dataclasses import replace

import pytest

from agents.models import GenerationParams, Model, ModelSpecError, ScriptedBackend, batch_seed, cut_at_stop, load_model


def test_hf_backend_batches_concurrent_requests(tiny_model_dir):
    model = load_model(tiny_model_dir)
    calls = []
    original = model.backend._generate_batch
    model.backend._generate_batch = lambda convs, params: calls.append((len(convs), params.seed)) or original(
        convs, params)
    msgs = [{"role": "user", "content": "Hello"}]

    async def run():  # each episode turn carries its own seed; they must still share a batch
        return await asyncio.gather(*(
            model.achat(msgs, task="t", params=GenerationParams(max_new_tokens=5, seed=k)) for k in range(6)))

    outs = asyncio.run(run())
    assert len(outs) == 6 and all(isinstance(o, str) for o in outs)
    assert max(n for n, _ in calls) > 1, calls  # at least one generate call served several episodes
    assert all(seed is not None for _, seed in calls)
    assert model.usage.calls["t"] == 6 and model.usage.prompt_tokens["t"] > 0


def test_hf_generation_ends_at_a_stop_string(tiny_model_dir):
    model = load_model(tiny_model_dir)
    msgs = [[{"role": "user", "content": "Hello"}]]
    seeded = GenerationParams(max_new_tokens=24, temperature=1.0, top_p=1.0, seed=3)  # same draws up to the stop
    [full] = model.chat_many(msgs, task="t", params=seeded)
    stop = next(full[i:i + 2] for i in range(len(full) // 2, len(full) - 1) if full[i:i + 2].isalnum())
    [cut] = model.chat_many(msgs, task="t", params=replace(seeded, stop=(stop,)))
    assert cut == cut_at_stop(full, [stop]).strip() and len(cut) < len(full)


def test_batch_seed_depends_on_the_set_of_seeds_only():
    assert batch_seed([3, 1, 2]) == batch_seed([1, 2, 3]) != batch_seed([1, 2, 4])


def test_transient_errors_are_retried_and_counted():
    attempts = iter([ConnectionError("down"), ConnectionError("down"), "fine"])

    def reply(messages, task):
        item = next(attempts)
        if isinstance(item, Exception):
            raise item
        return item

    model = Model(ScriptedBackend(reply), "scripted", backoff_s=0.001)
    assert model.chat_many([[{"role": "user", "content": "x"}]], task="t") == ["fine"]
    assert model.usage.retries == 2 and model.usage.calls["t"] == 1


def test_non_transient_errors_are_not_retried():
    def reply(messages, task):
        raise ValueError("bad request")

    model = Model(ScriptedBackend(reply), "scripted", backoff_s=0.001)
    with pytest.raises(ValueError):
        model.chat_many([[{"role": "user", "content": "x"}]], task="t")
    assert model.usage.retries == 0


@pytest.mark.parametrize("spec", ["not a model", "openai:missing-url", "./does/not/exist"])
def test_bad_model_specs_fail_clearly(spec):
    with pytest.raises(ModelSpecError, match="model spec"):
        load_model(spec)
