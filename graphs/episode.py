"""The episode graph: two persona agents take turns, an observer labels every turn's intent.

    START -> inquirer -> observer -> (responder | inquirer | END)
             responder -> observer -> ...

Whatever is fixed for an episode (scenario, culture, model, prompts) is the run context; the state
holds only what the episode has produced, so a checkpoint is small and resumable.
"""

from __future__ import annotations

import json
import operator
from dataclasses import dataclass, replace
from typing import Annotated, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from agents.answers import Answer, IntentAnswer, TurnAnswer, answer_format, json_schema
from agents.models import Asked, GenerationParams, Message, Model
from agents.prompts import Prompts
from agents.records import Action, Culture, Intent, Scenario, Turn
from agents.seeding import call_seed

SPEAKERS = ("inquirer", "responder")
PROMPT_NAMES = ["roleplay_system", "roleplay_turn", "observer_system", "observer_turn"]
# Recorded with an episode only when its scenario has attributes, so other episodes' versions stay as they were.
ATTRIBUTE_PROMPT_NAMES = ["persona_attributes"]


def prompt_names(scenario: Scenario) -> list[str]:
    """The templates an episode of `scenario` renders."""
    return PROMPT_NAMES + (ATTRIBUTE_PROMPT_NAMES if any(p.attributes for p in scenario.participants) else [])


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
    # Free text (--unstructured): both answers are one short block, so a blank line ends them (small
    # models ramble on after it). Structured answers drop prefix and stop: the schema bounds them.
    speaker_params: GenerationParams = GenerationParams(max_new_tokens=160, prefix="ACTION:", stop=("\n\n",))
    observer_params: GenerationParams = GenerationParams(max_new_tokens=80, temperature=0.0, prefix="INTENT:",
                                                         stop=("\n\n",))
    # The personas' system template; training.dataset swaps in the one without culture grounding.
    system_template: str = "roleplay_system"


# ------------------------------------------------------------------ answers


def make_turn(asked: Asked, index: int, speaker: int, name: str) -> Turn:
    """A speaker's answer -> Turn. One that did not validate keeps its raw text with valid=False."""
    answer = asked.answer
    if answer is None:
        return Turn(index=index, speaker=speaker, name=name, action=None, text=asked.raw.strip(), raw=asked.raw,
                    valid=False)
    return Turn(index=index, speaker=speaker, name=name, action=answer.action, text=answer.text.strip(),
                raw=asked.raw)


def make_intent(asked: Asked, turn_index: int) -> Intent:
    """The observer's answer -> Intent; an answer that did not validate is an invalid label."""
    answer = asked.answer
    if answer is None:
        return Intent(turn_index=turn_index, intent="", raw=asked.raw, valid=False)
    return Intent(turn_index=turn_index, intent=answer.intent.strip(), reason=answer.reason.strip(),
                  cultural=answer.cultural, raw=asked.raw)


def answer_format_for(model: Model, shape: type[Answer]) -> str:
    """The answer format a prompt shows: the shape's JSON skeleton, or "" for free text (--unstructured),
    where the template shows its own labelled lines."""
    return answer_format(json_schema(shape)) if model.structured else ""


def turn_line(turn: Turn, structured: bool) -> str:
    """A turn as its speaker answered it, for the next prompts: the JSON it wrote (verbatim, so an
    engine's prompt cache still matches), or the labelled lines of the free-text format."""
    if structured:
        written = turn.raw.strip()  # a turn from a free-text run has no JSON to show: it is rebuilt
        return written if written.startswith("{") else json.dumps({"action": turn.action.value, "text": turn.text})
    return f"ACTION: {turn.action.value}\nOUTPUT: {turn.text or 'NONE'}"


# ------------------------------------------------------------------ views


def speaker_view(ctx: EpisodeContext, me: int, turns: list[Turn]) -> list[Message]:
    """The transcript as persona `me` sees it: its own turns as assistant, the partner's as user."""
    persona, partner = ctx.scenario.participants[me], ctx.scenario.participants[1 - me]
    system = ctx.prompts.render(ctx.system_template, scenario=ctx.scenario, culture=ctx.culture, me=persona,
                                partner=partner)
    system = ctx.prompts.with_attributes(system, "roleplay", [(persona, True), (partner, False)])
    messages: list[Message] = [{"role": "system", "content": system.text}]
    for t in turns:
        line = turn_line(t, ctx.model.structured)
        if t.speaker == me:
            messages.append({"role": "assistant", "content": line})
        else:
            messages.append({"role": "user", "content": f"{t.name} - {line}"})
    instruction = ctx.prompts.render("roleplay_turn", me=persona, turn=len(turns), is_first=not turns,
                                     answer_format=answer_format_for(ctx.model, TurnAnswer)).text
    if messages[-1]["role"] == "user":
        messages[-1] = {"role": "user", "content": messages[-1]["content"] + "\n\n" + instruction}
    else:
        messages.append({"role": "user", "content": instruction})
    return messages


def observer_view(ctx: EpisodeContext, turns: list[Turn]) -> list[Message]:
    """Public transcript, scenario, culture and public attributes only: the observer never sees goals, secrets or
    private attributes."""
    system = ctx.prompts.render("observer_system", scenario=ctx.scenario, culture=ctx.culture)
    system = ctx.prompts.with_attributes(system, "observer", [(p, False) for p in ctx.scenario.participants])
    user = ctx.prompts.render("observer_turn", transcript=turns, speaker=turns[-1].name, culture=ctx.culture,
                              answer_format=answer_format_for(ctx.model, IntentAnswer))
    return [{"role": "system", "content": system.text}, {"role": "user", "content": user.text}]


# ------------------------------------------------------------------ graph


def _speaker_node(me: int):
    async def speak(state: EpisodeState, runtime: Runtime[EpisodeContext]) -> dict:
        ctx = runtime.context
        turns = [Turn.model_validate(t) for t in state.get("turns", [])]
        params = ctx.speaker_params
        params = replace(params, seed=call_seed(ctx.seed, len(turns), SPEAKERS[me]),
                         cache_key=f"{ctx.seed}:{SPEAKERS[me]}", session=str(ctx.seed))
        asked = await ctx.model.aanswer(speaker_view(ctx, me, turns), TurnAnswer, task="roleplay", params=params)
        turn = make_turn(asked, len(turns), me, ctx.scenario.participants[me].name)
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
    asked = await ctx.model.aanswer(observer_view(ctx, turns), IntentAnswer, task="observer",
                                    params=replace(ctx.observer_params, cache_key=f"{ctx.seed}:observer",
                                                   session=str(ctx.seed)))
    return {"intents": [make_intent(asked, turns[-1].index).model_dump(mode="json")]}


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
