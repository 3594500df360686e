"""Fakes behind the seam: a scripted backend for tests and the `puppet` model for wiring runs.

The puppet answers every task in the shape it is asked for: JSON that satisfies the request's schema
when one is sent (structured runs), `KEY: value` lines otherwise (`--unstructured`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from typing import Any, Callable, Sequence

from agents.models.base import Completion, GenerationParams, Message


class ScriptedBackend:
    """Test double: replies come from a list (in order) or a function of (messages, task)."""

    transient_errors: tuple[type[BaseException], ...] = (ConnectionError,)

    def __init__(self, replies: Sequence[str] | Callable[[list[Message], str], str], name: str = "scripted",
                 delay_s: float = 0.0):
        self.name = name
        self.delay_s = delay_s
        self._replies = replies if callable(replies) else iter(list(replies))
        self.requests: list[tuple[str, list[Message]]] = []
        self.params: list[GenerationParams] = []

    async def agenerate(self, messages: Sequence[Message], params: GenerationParams, task: str) -> Completion:
        self.requests.append((task, list(messages)))
        self.params.append(params)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)  # stands in for a remote model's latency
        text = self._reply(list(messages), task, params)
        words = lambda s: len(s.split())  # noqa: E731 - a rough token count is all a fake needs
        return Completion(text, sum(words(m["content"]) for m in messages), words(text))

    def _reply(self, messages: list[Message], task: str, params: GenerationParams) -> str:
        return self._replies(messages, task) if callable(self._replies) else next(self._replies)


class PuppetBackend(ScriptedBackend):
    """Well-formed canned answers per task, at zero model cost (optionally slow, like a remote model)."""

    def __init__(self, delay_s: float = 0.0):
        super().__init__(lambda m, t: "", name="puppet", delay_s=delay_s)

    def _reply(self, messages: list[Message], task: str, params: GenerationParams) -> str:
        if task not in PUPPET_REPLIES:
            raise ValueError(f"the puppet model has no canned reply for task {task!r}")
        schema = json.loads(params.schema) if params.schema else None
        return PUPPET_REPLIES[task](messages, schema)


def _turn(messages: list[Message]) -> str:
    turn = re.search(r"Turn #(\d+)", messages[-1]["content"])
    return turn.group(1) if turn else "?"


def _roleplay(messages: list[Message], schema: dict | None) -> str:
    text = f"This is what I say at turn {_turn(messages)}."
    return json.dumps({"action": "speak", "text": text}) if schema else f"ACTION: speak\nOUTPUT: {text}"


def _observer(messages: list[Message], schema: dict | None) -> str:
    intent, reason = "Keeping the conversation going.", "The speaker answers politely."
    if schema:
        return json.dumps({"intent": intent, "reason": reason, "cultural": False})
    return f"INTENT: {intent}\nREASON: {reason}\nCULTURAL: no"


def _contrastive(messages: list[Message], schema: dict | None) -> str:
    """Contrastive pairs (training.dataset): a reply from the persona without cultural grounding."""
    text = f"An ungrounded reply at turn {_turn(messages)}."
    return json.dumps({"action": "speak", "text": text}) if schema else f"ACTION: speak\nOUTPUT: {text}"


def _judge(messages: list[Message], schema: dict | None) -> str:
    """A favourable, well-formed answer to whichever judge question is asked (0 lies in every SOTOPIA range)."""
    if schema:
        return json.dumps(_first_allowed(schema))
    question = messages[-1]["content"]
    if "BELIEVABILITY:" in question:
        return "\n".join(f"{key}: 0" for key in re.findall(r"^([A-Z_]+): \.\.\.$", question, re.MULTILINE))
    if "ALIGNMENT:" in question:
        return "ALIGNMENT: aligned\nCONFIDENCE: confident"
    if "LABEL:" in question:
        return "CRITIQUE: The earlier judgements fit the dialogue.\nLABEL: good\nCONFIDENCE: confident"
    return "QUALITY: good\nCONFIDENCE: confident"


def _first_allowed(schema: dict) -> Any:
    """A value the schema allows: the first option, 0 within integer bounds, a short sentence."""
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {k: _first_allowed(v) for k, v in schema["properties"].items()}
    if kind == "integer":
        return min(max(0, schema.get("minimum", 0)), schema.get("maximum", 0))
    if kind == "boolean":
        return False
    return "The earlier judgements fit the dialogue."


def _wvs(messages: list[Message], schema: dict | None) -> str:
    """WVS evaluation: always the first listed option (or the scale's low end); a stated distribution puts
    every share on it."""
    if schema and "shares" in schema["properties"]:
        labels = schema["properties"]["shares"]["required"]
        return json.dumps({"shares": {label: 100 if i == 0 else 0 for i, label in enumerate(labels)}})
    if schema:
        return json.dumps({"answer": schema["properties"]["answer"]["enum"][0]})
    text = messages[-1]["content"]
    found = re.search(r"^(\d+)\. ", text, re.M) or re.search(r"from (\d+) to", text)
    return found.group(1) if found else "1"


def _adapt(messages: list[Message], schema: dict | None) -> str:
    """Scenario adaptation: the seed JSON from the request, its two people renamed everywhere.

    A structured request that offers names (a name pool) gets the first name offered to each person;
    otherwise new names are made from syllables picked by a hash of the old name: deterministic,
    clearly not real, and different from the seed's.
    """
    request = next(m["content"] for m in messages if m["role"] == "user")
    seed, _ = json.JSONDecoder().raw_decode(request, request.index("{"))
    text = json.dumps(seed, ensure_ascii=False)
    offered = [p["properties"]["name"].get("enum") for p in schema["properties"]["participants"]["prefixItems"]] \
        if schema else [None, None]
    syllables = ["ka", "ri", "mo", "ta", "ne", "so", "lu", "vi", "ha", "do", "mi", "ze"]
    for person, names in zip(seed["participants"], offered):
        old_words = re.findall(r"\w+", person["name"])
        new_words = names[0].split() if names else [
            "".join(syllables[b % len(syllables)] for b in hashlib.sha256(w.encode()).digest()[:3]).capitalize()
            for w in old_words]
        text = text.replace(json.dumps(person["name"], ensure_ascii=False),
                            json.dumps(" ".join(new_words), ensure_ascii=False))
        for old, new in zip(old_words, new_words + new_words[-1:] * len(old_words)):
            text = re.sub(rf"\b{re.escape(old)}\b", new, text)
    return json.dumps(_fit(json.loads(text), schema), ensure_ascii=False) if schema else text


def _fit(value: Any, schema: dict) -> Any:
    """`value` with every string cut to its schema's maxLength (at a word boundary)."""
    if isinstance(value, dict) and "properties" in schema:
        return {k: _fit(v, schema["properties"][k]) for k, v in value.items() if k in schema["properties"]}
    if isinstance(value, list) and "prefixItems" in schema:
        return [_fit(v, s) for v, s in zip(value, schema["prefixItems"])]
    if isinstance(value, str) and len(value) > schema.get("maxLength", len(value)):
        return value[:schema["maxLength"]].rsplit(" ", 1)[0]
    return value


# Task name -> canned reply function (messages, schema or None).
PUPPET_REPLIES: dict[str, Callable[[list[Message], dict | None], str]] = {
    "roleplay": _roleplay, "observer": _observer, "wvs": _wvs, "adapt": _adapt, "judge": _judge,
    "contrastive": _contrastive,
}
