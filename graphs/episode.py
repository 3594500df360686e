"""The episode graph: two persona agents take turns, an observer labels every turn's intent.

    START -> inquirer -> observer -> (responder | inquirer | END)
             responder -> observer -> ...

Whatever is fixed for an episode (scenario, culture, model, prompts) is the run context; the state
holds only what the episode has produced, so a checkpoint is small and resumable.
"""

from __future__ import annotations

import hashlib
import operator
import re
from dataclasses import dataclass, replace
from typing import Annotated, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from agents.models import GenerationParams, Message, Model
from agents.prompts import Prompts
from agents.records import Action, Culture, Intent, Scenario, Turn

SPEAKERS = ("inquirer", "responder")
PROMPT_NAMES = ["roleplay_system", "roleplay_turn", "observer_system", "observer_turn"]


class EpisodeState(TypedDict, total=False):
    turns: Annotated[list[dict], operator.add]  # Turn records as dicts (checkpoint-friendly)
    intents: Annotated[list[dict], operator.add]
    ended_by: str | None  # "leave" | "max_turns" | "invalid"


@dataclass(frozen=True)
class EpisodeContext:
    scenario: Scenario
    culture: Culture
    model: Model
    prompts: Prompts
    max_turns: int = 10  # rounds: one utterance from each participant, as in the paper
    seed: int = 0
    # Both answers are one short block: a blank line ends them (small models ramble on after it).
    speaker_params: GenerationParams = GenerationParams(max_new_tokens=160, prefix="ACTION:", stop=("\n\n",))
    observer_params: GenerationParams = GenerationParams(max_new_tokens=80, temperature=0.0, prefix="INTENT:",
                                                         stop=("\n\n",))
    # The personas' system template; training.dataset swaps in the one without culture grounding.
    system_template: str = "roleplay_system"


# ------------------------------------------------------------------ parsing

_ACTION_RE = re.compile(r"ACTION\s*:\s*\**\s*([A-Za-z -]+?)\s*\**\s*(?:\n|$|OUTPUT)", re.IGNORECASE)
_OUTPUT_RE = re.compile(r"OUTPUT\s*:\s*(.*)", re.IGNORECASE | re.DOTALL)
_ACTION_WORDS = {
    "none": Action.NONE, "do nothing": Action.NONE, "nothing": Action.NONE,
    "non-verbal": Action.NON_VERBAL, "non verbal": Action.NON_VERBAL, "nonverbal": Action.NON_VERBAL,
    "non-verbal communication": Action.NON_VERBAL, "action": Action.NON_VERBAL,
    "speak": Action.SPEAK, "speaking": Action.SPEAK, "say": Action.SPEAK,
    "leave": Action.LEAVE,
}


def parse_turn(raw: str, index: int, speaker: int, name: str) -> Turn:
    """ACTION/OUTPUT text -> Turn. Anything else is kept verbatim with valid=False, never coerced."""
    action_match, output_match = _ACTION_RE.search(raw), _OUTPUT_RE.search(raw)
    action = _ACTION_WORDS.get(action_match.group(1).strip().lower()) if action_match else None
    text = output_match.group(1).strip() if output_match else ""
    text = re.split(r"\n\s*ACTION\s*:", text, flags=re.IGNORECASE)[0].strip()  # one turn only
    if action is None or (action is Action.SPEAK and not _has_words(text)):
        return Turn(index=index, speaker=speaker, name=name, action=None, text=raw.strip(), raw=raw, valid=False)
    if text.upper() == "NONE":
        text = ""
    return Turn(index=index, speaker=speaker, name=name, action=action, text=text, raw=raw)


def _has_words(text: str) -> bool:
    """False for empty text and for the format's placeholder dots echoed back."""
    return bool(re.search(r"\w", text))


def _field(raw: str, key: str) -> str | None:
    match = re.search(rf"{key}\s*:\s*(.+)", raw, re.IGNORECASE)
    return match.group(1).strip().strip("*").strip() if match else None


def parse_intent(raw: str, turn_index: int) -> Intent:
    """INTENT/REASON/CULTURAL text -> Intent; without an INTENT line the label is invalid."""
    intent = _field(raw, "INTENT")
    if not intent or not _has_words(intent):
        return Intent(turn_index=turn_index, intent="", raw=raw, valid=False)
    cultural = (_field(raw, "CULTURAL") or "").lower().startswith("yes")
    return Intent(turn_index=turn_index, intent=intent, reason=_field(raw, "REASON") or "", cultural=cultural, raw=raw)


# ------------------------------------------------------------------ views


def speaker_view(ctx: EpisodeContext, me: int, turns: list[Turn]) -> list[Message]:
    """The transcript as persona `me` sees it: its own turns as assistant, the partner's as user."""
    persona, partner = ctx.scenario.participants[me], ctx.scenario.participants[1 - me]
    system = ctx.prompts.render(ctx.system_template, scenario=ctx.scenario, culture=ctx.culture, me=persona,
                                partner=partner)
    messages: list[Message] = [{"role": "system", "content": system.text}]
    for t in turns:
        line = f"ACTION: {t.action.value}\nOUTPUT: {t.text or 'NONE'}"
        if t.speaker == me:
            messages.append({"role": "assistant", "content": line})
        else:
            messages.append({"role": "user", "content": f"{t.name} - {line}"})
    instruction = ctx.prompts.render("roleplay_turn", me=persona, turn=len(turns), is_first=not turns).text
    if messages[-1]["role"] == "user":
        messages[-1] = {"role": "user", "content": messages[-1]["content"] + "\n\n" + instruction}
    else:
        messages.append({"role": "user", "content": instruction})
    return messages


def observer_view(ctx: EpisodeContext, turns: list[Turn]) -> list[Message]:
    """Public transcript, scenario and culture only: the observer never sees goals or secrets."""
    system = ctx.prompts.render("observer_system", scenario=ctx.scenario, culture=ctx.culture)
    user = ctx.prompts.render("observer_turn", transcript=turns, speaker=turns[-1].name, culture=ctx.culture)
    return [{"role": "system", "content": system.text}, {"role": "user", "content": user.text}]


def turn_seed(base: int, turn: int, role: str) -> int:
    """A per-call sampling seed, stable across resumes."""
    return int(hashlib.sha256(f"{base}:{turn}:{role}".encode()).hexdigest()[:8], 16)


# ------------------------------------------------------------------ graph


def _speaker_node(me: int):
    async def speak(state: EpisodeState, runtime: Runtime[EpisodeContext]) -> dict:
        ctx = runtime.context
        turns = [Turn.model_validate(t) for t in state.get("turns", [])]
        params = ctx.speaker_params
        params = replace(params, seed=turn_seed(ctx.seed, len(turns), SPEAKERS[me]))
        raw = await ctx.model.achat(speaker_view(ctx, me, turns), task="roleplay", params=params)
        turn = parse_turn(raw, len(turns), me, ctx.scenario.participants[me].name)
        update: dict = {"turns": [turn.model_dump(mode="json")]}
        if not turn.valid:
            update["ended_by"] = "invalid"
        elif turn.action is Action.LEAVE:
            update["ended_by"] = "leave"
        elif len(turns) + 1 >= 2 * ctx.max_turns:
            update["ended_by"] = "max_turns"
        return update

    speak.__name__ = SPEAKERS[me]
    return speak


async def observe(state: EpisodeState, runtime: Runtime[EpisodeContext]) -> dict:
    ctx = runtime.context
    turns = [Turn.model_validate(t) for t in state["turns"]]
    if not turns[-1].valid:  # nothing to interpret in an unparseable turn
        return {}
    raw = await ctx.model.achat(observer_view(ctx, turns), task="observer", params=ctx.observer_params)
    return {"intents": [parse_intent(raw, turns[-1].index).model_dump(mode="json")]}


def should_continue(state: EpisodeState) -> str:
    """Route after the observer: end, or hand the floor to whoever did not speak last."""
    if state.get("ended_by"):
        return END
    return SPEAKERS[1 - state["turns"][-1]["speaker"]]


def build_episode_graph(checkpointer=None, route=should_continue):
    """Compile the episode state machine; `route` can be replaced to change when episodes end."""
    graph = StateGraph(EpisodeState, context_schema=EpisodeContext)
    graph.add_node("inquirer", _speaker_node(0))
    graph.add_node("responder", _speaker_node(1))
    graph.add_node("observer", observe)
    graph.add_edge(START, "inquirer")
    graph.add_edge("inquirer", "observer")
    graph.add_edge("responder", "observer")
    graph.add_conditional_edges("observer", route, ["inquirer", "responder", END])
    return graph.compile(checkpointer=checkpointer)


def recursion_limit(max_turns: int) -> int:
    """Each utterance costs two steps (speaker, observer); leave headroom for the start."""
    return 4 * max_turns + 5
