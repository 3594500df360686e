"""vLLM's offline engine (GPU; `pip install clca[vllm]` in its own environment).

Repetition controls: vLLM's `SamplingParams` has `repetition_penalty` and `frequency_penalty` but no DRY sampler,
so a request's DRY settings are not applied here (`repetition_controls` leaves them out, and runs record that).
"""

from __future__ import annotations

import json

from agents.models.base import Completion, GenerationParams, Message, ModelSpecError, Repetition
from agents.models.batching import BatchingBackend


class VLLMBackend(BatchingBackend):
    """One `LLM.chat` call per batch of concurrent requests, each with its own sampling params:
    seed, stop strings, banned words and structured-output schema (vLLM's `StructuredOutputsParams`)."""

    def __init__(self, model: str, max_batch: int = 64):
        super().__init__(max_batch)
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ModelSpecError("model spec 'vllm:...' needs the vllm extra on a GPU machine") from exc
        self.name = f"vllm:{model}"
        self.llm = LLM(model=model)

    @staticmethod
    def repetition_controls(repetition: Repetition) -> dict:
        """The `SamplingParams` fields that carry `repetition` (no DRY in vLLM)."""
        return repetition_fields(repetition)

    def _generate_batch(self, requests: list[tuple[list[Message], GenerationParams]]) -> list[Completion]:
        """One `chat` call per prefix mode, as continuing a partial reply is a per-call flag."""
        outs: dict[int, Completion] = {}
        for prefixed in (False, True):
            picked = [i for i, (_, p) in enumerate(requests) if bool(p.prefix) == prefixed]
            if not picked:
                continue
            conversations = [
                [*requests[i][0], {"role": "assistant", "content": requests[i][1].prefix}] if prefixed
                else requests[i][0] for i in picked
            ]
            results = self.llm.chat(conversations, [sampling_params(requests[i][1]) for i in picked], use_tqdm=False,
                                    add_generation_prompt=not prefixed, continue_final_message=prefixed)
            for i, o in zip(picked, results):
                text = (requests[i][1].prefix + o.outputs[0].text).strip()
                outs[i] = Completion(text, len(o.prompt_token_ids), len(o.outputs[0].token_ids))
        return [outs[i] for i in range(len(requests))]


def sampling_params(p: GenerationParams):
    """vLLM `SamplingParams` for one request (its structured-output field, `structured_outputs`, since 0.10)."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    return SamplingParams(
        max_tokens=p.max_new_tokens, temperature=max(p.temperature, 0.0), top_p=p.top_p if not p.greedy else 1.0,
        seed=p.seed, stop=list(p.stop) or None, bad_words=list(p.banned) or None,
        structured_outputs=StructuredOutputsParams(json=json.loads(p.schema)) if p.schema else None,
        **repetition_fields(p.repetition),
    )


def repetition_fields(r: Repetition) -> dict:
    """vLLM's own repetition fields for `r`, those that differ from vLLM's defaults (DRY has none)."""
    out = {}
    if r.repetition_penalty != 1.0:
        out["repetition_penalty"] = r.repetition_penalty
    if r.frequency_penalty:
        out["frequency_penalty"] = r.frequency_penalty
    return out
