import asyncio
import importlib
import json
import re
from dataclasses import replace

import pytest

from agents.models import GenerationParams, Model, ModelSpecError, ScriptedBackend, batch_seed, cut_at_stop, load_model
from agents.models.prefix_cache import PrefixCache


def test_hf_backend_batches_concurrent_requests(tiny_model_dir):
    model = load_model(tiny_model_dir)
    sizes = []
    original = model.backend._generate_batch
    model.backend._generate_batch = lambda requests: sizes.append(len(requests)) or original(requests)
    msgs = [{"role": "user", "content": "Hello"}]
    sampled = [GenerationParams(max_new_tokens=5, seed=k) for k in range(4)]  # each turn has its own seed
    greedy = [GenerationParams(max_new_tokens=7, temperature=0.0, prefix="INTENT:") for _ in range(2)]

    async def run():  # speaker turns and observer labels alike: one batch, whatever their params
        return await asyncio.gather(*(model.achat(msgs, task="t", params=p) for p in sampled + greedy))

    outs = asyncio.run(run())
    assert len(outs) == 6 and all(o.startswith("INTENT:") for o in outs[4:])
    assert sizes == [6], sizes
    assert model.usage.calls["t"] == 6 and model.usage.prompt_tokens["t"] > 0


def test_requests_a_few_milliseconds_apart_still_share_a_batch(tiny_model_dir):
    model = load_model(tiny_model_dir, max_batch=4)
    sizes = []
    original = model.backend._generate_batch
    model.backend._generate_batch = lambda requests: sizes.append(len(requests)) or original(requests)

    async def run():  # as episodes do after a batch returns: each asks again once its graph step is done
        calls = []
        for k in range(4):
            calls.append(asyncio.create_task(model.achat([{"role": "user", "content": f"Hi {k}"}], task="t",
                                                         params=GenerationParams(max_new_tokens=3))))
            await asyncio.sleep(0.01)
        return await asyncio.gather(*calls)

    assert len(asyncio.run(run())) == 4 and sizes == [4], sizes


def test_each_request_in_a_batch_keeps_its_own_token_limit(tiny_model_dir):
    model = load_model(tiny_model_dir)
    requests = [([{"role": "user", "content": f"Hello {k}"}], GenerationParams(max_new_tokens=n, temperature=0.0))
                for k, n in enumerate([2, 9])]
    short, long = model.backend._generate_batch(requests)
    assert short.completion_tokens <= 2 < long.completion_tokens <= 9


def test_next_turn_reuses_the_cached_prompt_and_reply(tiny_model_dir):
    """A prompt that repeats an earlier prompt + reply prefills only its new tokens, with the same result."""
    model = load_model(tiny_model_dir)
    greedy = GenerationParams(max_new_tokens=6, temperature=0.0)
    first = [{"role": "system", "content": "You are Li Wei."}, {"role": "user", "content": "Good morning."}]
    [reply] = model.chat_many([first], task="t", params=greedy)
    second = [*first, {"role": "assistant", "content": reply}, {"role": "user", "content": "And then?"}]
    fed = []
    hook = model.backend.model.register_forward_pre_hook(
        lambda _, args, kwargs: fed.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    [warm] = model.chat_many([second], task="t", params=greedy)
    hook.remove()
    cold = load_model(tiny_model_dir)
    cold.backend.prefix_cache = PrefixCache(max_bytes=0)  # keeps only the latest sequence: no reuse here
    [expected] = cold.chat_many([second], task="t", params=greedy)
    assert warm == expected
    second_len = cold.usage.prompt_tokens["t"]
    first_len = model.usage.prompt_tokens["t"] - second_len
    # the first forward pass prefills less than the new messages: the reply itself came from the cache
    assert fed[0] < second_len - first_len, (fed, first_len, second_len)


def test_models_without_reusable_caches_generate_the_same_without_reuse(tiny_model_dir):
    """Sliding-window or linear-attention caches get no prefix reuse; the plain path gives the same text."""
    greedy = GenerationParams(max_new_tokens=6, temperature=0.0)
    requests = [([{"role": "user", "content": text}], greedy) for text in ("Good morning.", "A longer hello there.")]
    reused = load_model(tiny_model_dir)
    plain = load_model(tiny_model_dir)
    plain.backend.prefix_cache = None
    assert [c.text for c in plain.backend._generate_batch(requests)] == [
        c.text for c in reused.backend._generate_batch(requests)]


def test_row_sampling_keeps_argmax_for_greedy_rows_and_the_nucleus_for_sampled_ones():
    import torch

    from agents.models.hf import _RowSampling

    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05]]))
    out = _RowSampling([GenerationParams(temperature=0.0), GenerationParams(temperature=1.0, top_p=0.7)])(
        None, scores)
    assert torch.isfinite(out).tolist() == [[True, False, False, False], [True, True, False, False]]
    assert torch.allclose(out[1, :2], scores[1, :2])


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


def test_an_unknown_model_spec_lists_every_kind_of_spec():
    with pytest.raises(ModelSpecError) as caught:
        load_model("not a model")
    for kind in ("smollm2", "smollm2-inprocess", "gguf:PATH", "hub id", "folder", "openai:MODEL@URL", "vllm:MODEL",
                 "puppet"):
        assert kind in str(caught.value)


@pytest.mark.parametrize("command", ["graphs.simulate", "graphs.adapt", "graphs.judge"])
def test_every_option_of_the_batch_commands_has_help_and_model_lists_the_specs(command):
    from graphs.batch import make_parser

    parser = make_parser(importlib.import_module(command).STAGE)  # read off the stage's request dataclass
    assert [a.dest for a in parser._actions if not a.help] == []
    assert "puppet" in parser._option_string_actions["--model"].help
    assert "gguf:PATH" in parser._option_string_actions["--model"].help


def test_random_tiny_model_under_the_constraint_answers_every_shape_validly(tiny_model_dir):
    """A random model chooses tokens at random; the grammar alone gives each answer its shape, with a
    different schema per row of one batch (sampled and greedy rows together). Free-text fields are
    narrowed to 24 characters to keep the run short. The only answers allowed to fail are those that
    break a content rule no grammar states (a turn or intent without words), and they fail closed."""
    from agents.answers import (
        AlignmentAnswer,
        IntentAnswer,
        MetaAnswer,
        QualityAnswer,
        SotopiaAnswer,
        TurnAnswer,
        WVSAnswer,
        json_schema,
        wvs_schema,
    )

    def short(shape):
        schema = json_schema(shape)
        for field in schema["properties"].values():
            if field.get("type") == "string":
                field["maxLength"] = 24
                field.pop("pattern", None)
        return schema

    model = load_model(tiny_model_dir, max_batch=16)
    sizes = []
    original = model.backend._generate_batch
    model.backend._generate_batch = lambda requests: sizes.append(len(requests)) or original(requests)
    shapes = [TurnAnswer, IntentAnswer, QualityAnswer, AlignmentAnswer, MetaAnswer, SotopiaAnswer, TurnAnswer,
              WVSAnswer] * 2

    async def run():
        return await asyncio.gather(*(
            model.aanswer([{"role": "user", "content": f"Question {k}"}], shape, task="t",
                          params=GenerationParams(seed=k, temperature=0.0 if k % 2 else 1.0),
                          schema=wvs_schema([1, 2, 3, 4]) if shape is WVSAnswer else short(shape))
            for k, shape in enumerate(shapes)))

    answers = asyncio.run(run())
    assert sizes == [16]  # one batch, sixteen grammars
    for answer, shape in zip(answers, shapes):
        data = json.loads(answer.raw, strict=False)  # always JSON of the shape's fields
        assert sorted(data) == sorted(shape.model_fields), answer.raw
        assert isinstance(answer.answer, shape) or "needs words" in answer.error, (answer.raw, answer.error)
    assert sum(a.answer is not None for a in answers) >= 12
    assert {a.answer.answer for a in answers if isinstance(a.answer, WVSAnswer)} <= {1, 2, 3, 4}


def test_unconstrained_rows_beside_constrained_ones_are_left_free(tiny_model_dir):
    from agents.answers import QualityAnswer, json_schema

    model = load_model(tiny_model_dir)
    free = GenerationParams(max_new_tokens=12, temperature=0.0)
    constrained = free.constrained(json_schema(QualityAnswer))
    outs = model.backend._generate_batch([([{"role": "user", "content": "Hi"}], free),
                                          ([{"role": "user", "content": "Hi"}], constrained)])
    assert not outs[0].text.startswith('{"quality"') and outs[1].text.startswith('{"quality": ')


def test_banned_names_are_banned_by_their_only_or_last_token():
    from agents.models.base import banned_token_ids

    vocab = {"Mia": [1], " Mia": [2], "Finnegan": [3, 4, 5], " Finnegan": [6, 4, 5], "Al": [7, 8], " Al": [9]}
    assert banned_token_ids(["Mia", "Finnegan", "Al"], vocab.__getitem__) == [1, 2, 5, 9]  # "Al": too short


def test_one_loader_serves_inference_and_training(tiny_model_dir):
    """`load_causal_lm` decides dtype, pad token and placement once; inference and training differ only where
    their use does: left padding and eval mode, and what happens to quantisation this machine cannot do."""
    import torch

    from agents.models import load_causal_lm

    served = load_causal_lm(tiny_model_dir)
    trained = load_causal_lm(tiny_model_dir, training=True)
    assert served.tokenizer.padding_side == "left" and not served.model.training
    assert served.tokenizer.pad_token is not None and trained.tokenizer.pad_token == served.tokenizer.pad_token
    assert served.notes["dtype"] == trained.notes["dtype"] == "float32"  # no CUDA here
    for a, b in zip(served.model.state_dict().values(), trained.model.state_dict().values()):
        assert torch.equal(a, b)
    if not torch.cuda.is_available():
        with pytest.raises(ModelSpecError, match="4bit loading is not possible here: no CUDA GPU"):
            load_causal_lm(tiny_model_dir, quantization="4bit")
        fallback = load_causal_lm(tiny_model_dir, training=True, quantization="4bit")
        assert fallback.notes["quantization"] == "requested but not used: no CUDA GPU"


def test_option_scores_equal_a_direct_forward(tiny_model_dir):
    """The seam's option scores are the sums of token log-probabilities a plain forward pass gives, with the
    shorter of two options that share a first token ("1" of "10") required to stop there."""
    import math

    import torch

    model = load_model(tiny_model_dir, max_batch=2, structured=False)
    tok, lm = model.backend.tokenizer, model.backend.model
    conversations = [[{"role": "system", "content": "You live in Japan."}, {"role": "user", "content": q}]
                     for q in ("Pick one. ANSWER:", "Pick a number from 1 to 10. ANSWER:", "Anything? ANSWER:")]
    options = ["1", "2", "10", "yes"]
    enc = lambda text: tok.encode(text, add_special_tokens=False)  # noqa: E731
    assert len(enc("10")) == 2 and enc("10")[0] == enc("1")[0]
    scores = asyncio.run(model.ascore_options([(c, options) for c in conversations], task="score"))
    model.backend.share_prefix = False
    try:
        plain = asyncio.run(model.ascore_options([(c, options) for c in conversations], task="score"))
    finally:
        model.backend.share_prefix = True
    assert model.usage.calls["score"] == 6
    for messages, got, unshared in zip(conversations, scores, plain):
        ids = list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"])

        def direct(continuation: list[int]) -> torch.Tensor:
            with torch.inference_mode():
                logits = lm(input_ids=torch.tensor([ids + continuation])).logits[0].float()
            return torch.log_softmax(logits, dim=-1)[len(ids) - 1:]  # row k: the next token after k of them

        rows = {text: direct(enc(text)) for text in ("10", "2", "yes")}
        want = {"2": float(rows["2"][0, enc("2")[0]]),
                "10": float(rows["10"][0, enc("1")[0]] + rows["10"][1, enc("0")[0]]),
                "yes": sum(float(rows["yes"][k, t]) for k, t in enumerate(enc("yes")))}
        p_one, p_zero_after = math.exp(rows["10"][0, enc("1")[0]]), math.exp(rows["10"][1, enc("0")[0]])
        want["1"] = math.log(p_one * (1 - p_zero_after))
        assert got == pytest.approx([want[o] for o in options], abs=1e-4)
        assert unshared == pytest.approx(got, abs=1e-4)
        assert sum(math.exp(s) for s in got[:3]) <= 1 + 1e-6  # "1", "2", "10" are disjoint answers


def test_a_backend_that_cannot_score_says_so_naming_the_spec():
    with pytest.raises(ModelSpecError, match="model spec 'scripted-x': cannot score options"):
        Model(ScriptedBackend(["x"]), "scripted-x").score_options([{"role": "user", "content": "hi"}], ["1"])
    for spec in ("puppet", "puppet:0.1", "vllm:org/m"):
        with pytest.raises(ModelSpecError, match=f"model spec '{re.escape(spec)}': cannot score options"):
            load_model(spec, scoring=True)
