import asyncio
import json

import pytest

from agents.answers import IntentAnswer, TurnAnswer, parse_answer
from agents.freetext import parse_labelled
from agents.models import Asked, Model, ScriptedBackend
from agents.prompts import Prompts
from agents.records import Action, Turn
from graphs.episode import (
    EpisodeContext,
    build_episode_graph,
    make_intent,
    make_turn,
    observer_view,
    recursion_limit,
    speaker_view,
)

FREE_TEXT = Model(ScriptedBackend([]), "free", structured=False)
STRUCTURED = Model(ScriptedBackend([]), "json")


def parse_turn(raw, index, speaker, name, structured=False):
    answer, error = parse_answer(raw, TurnAnswer) if structured else parse_labelled(raw, TurnAnswer)
    return make_turn(Asked(raw, answer, error), index, speaker, name)


def parse_intent(raw, index, structured=False):
    answer, error = parse_answer(raw, IntentAnswer) if structured else parse_labelled(raw, IntentAnswer)
    return make_intent(Asked(raw, answer, error), index)


def run(graph, ctx):
    config = {"recursion_limit": recursion_limit(ctx.max_turns)}
    return asyncio.run(graph.ainvoke({"turns": [], "intents": [], "ended_by": None}, config, context=ctx))


def scripted(speaker_lines, intent="INTENT: Greeting.\nREASON: Politeness to elders.\nCULTURAL: yes",
             structured=False):
    lines = iter(speaker_lines)

    def reply(messages, task):
        return next(lines) if task == "roleplay" else intent

    backend = ScriptedBackend(reply)
    return Model(backend, "scripted", structured=structured), backend


@pytest.mark.parametrize(
    "raw, action, text, valid",
    [
        ("ACTION: speak\nOUTPUT: Hello, uncle Li.", Action.SPEAK, "Hello, uncle Li.", True),
        ("action: Non-verbal\noutput: bows slightly", Action.NON_VERBAL, "bows slightly", True),
        ("ACTION: leave\nOUTPUT: Goodbye.", Action.LEAVE, "Goodbye.", True),
        ("ACTION: none\nOUTPUT: NONE", Action.NONE, "", True),
        ("**ACTION:** speak\nOUTPUT: Hi\nACTION: speak\nOUTPUT: again", Action.SPEAK, "Hi", True),
        ("Hello there, how are you?", None, "Hello there, how are you?", False),
        ("ACTION: dance\nOUTPUT: twirls", None, "ACTION: dance\nOUTPUT: twirls", False),
        ("ACTION: speak\nOUTPUT:", None, "ACTION: speak\nOUTPUT:", False),
        ("ACTION: speak\nOUTPUT: ...", None, "ACTION: speak\nOUTPUT: ...", False),  # the format echoed back
        ("**ACTION:** speak\n**OUTPUT:** Good evening.", Action.SPEAK, "Good evening.", True),  # markdown emphasis
        ("Action : **Non-Verbal**\nOutput: nods", Action.NON_VERBAL, "nods", True),  # other case and spacing
        ("ＡＣＴＩＯＮ： speak\nOUTPUT: Hi", Action.SPEAK, "Hi", True),  # full-width letters and colon
        ("ACTION: speak | leave\nOUTPUT: Hi", None, "ACTION: speak | leave\nOUTPUT: Hi", False),  # options copied
    ],
)
def test_parse_free_text_turn(raw, action, text, valid):
    turn = parse_turn(raw, 3, 1, "Chen Jing")
    assert (turn.action, turn.text, turn.valid, turn.raw) == (action, text, valid, raw)


@pytest.mark.parametrize(
    "raw, action, text, valid",
    [
        ('{"action": "speak", "text": "Hello, uncle Li."}', Action.SPEAK, "Hello, uncle Li.", True),
        ('{"action": "none", "text": ""}', Action.NONE, "", True),
        ('{"action": "speak", "text": "  "}', None, '{"action": "speak", "text": "  "}', False),  # no words
        ('{"action": "dance", "text": "twirls"}', None, '{"action": "dance", "text": "twirls"}', False),
        ('{"action": "speak", "text": "cut', None, '{"action": "speak", "text": "cut', False),  # not closed
        ("ACTION: speak\nOUTPUT: Hi", None, "ACTION: speak\nOUTPUT: Hi", False),  # free text where JSON is due
    ],
)
def test_parse_structured_turn(raw, action, text, valid):
    turn = parse_turn(raw, 3, 1, "Chen Jing", structured=True)
    assert (turn.action, turn.text, turn.valid, turn.raw) == (action, text, valid, raw)


def test_parse_intent():
    ok = parse_intent("INTENT: Offering help.\nREASON: Neighbours help each other in China.\nCULTURAL: Yes", 2)
    assert (ok.intent, ok.cultural, ok.valid, ok.turn_index) == ("Offering help.", True, True, 2)
    assert parse_intent("INTENT: Asking.\nCULTURAL: no", 0).cultural is False
    bad = parse_intent("I think she wants to leave.", 4)
    assert not bad.valid and bad.intent == "" and bad.raw == "I think she wants to leave."
    assert not parse_intent("INTENT: ...\nREASON: ...\nCULTURAL: ...", 1).valid
    assert parse_intent("INTENT: Asking.\nREASON: Curious.\nCULTURAL: **Yes**", 0).cultural is True
    structured = parse_intent('{"intent": "Offering help.", "reason": "Neighbours help.", "cultural": true}', 2, True)
    assert (structured.intent, structured.cultural, structured.valid) == ("Offering help.", True, True)
    assert not parse_intent('{"intent": "Asking.", "reason": "", "cultural": "maybe"}', 2, True).valid


def test_structured_episode_sends_each_answer_schema_and_stores_valid_turns(culture, scenario):
    model, backend = scripted(
        [json.dumps({"action": "speak", "text": "Good morning, Miss Chen."}),
         json.dumps({"action": "leave", "text": ""})],
        intent=json.dumps({"intent": "Greeting.", "reason": "Politeness to elders.", "cultural": True}),
        structured=True)
    ctx = EpisodeContext(scenario=scenario, culture=culture, model=model, prompts=Prompts(), max_turns=5)
    state = run(build_episode_graph(), ctx)
    assert [t["valid"] for t in state["turns"]] == [True, True] and state["ended_by"] == "leave"
    assert all(i["valid"] and i["cultural"] for i in state["intents"])
    schemas = [json.loads(p.schema) for p in backend.params]
    assert [sorted(s["properties"]) for s in schemas] == [["action", "text"], ["cultural", "intent", "reason"]] * 2
    assert all(p.prefix == "" and p.stop == () for p in backend.params)
    assert '{"action": "speak" | "non-verbal" | "none" | "leave", "text": "..."}' in backend.requests[0][1][-1]["content"]
    # the speaker's own earlier answer goes back verbatim, as the JSON it wrote
    assert backend.requests[2][1][-1]["content"].startswith('Li Wei - {"action": "speak"')


def test_episode_alternates_and_ends_on_leave(culture, scenario):
    model, backend = scripted([
        "ACTION: speak\nOUTPUT: Good morning, Miss Chen.",
        "ACTION: speak\nOUTPUT: Good morning, Teacher Li.",
        "ACTION: non-verbal\nOUTPUT: pours her tea first",
        "ACTION: leave\nOUTPUT: I must go to my shift.",
    ])
    ctx = EpisodeContext(scenario=scenario, culture=culture, model=model, prompts=Prompts(), max_turns=10)
    state = run(build_episode_graph(), ctx)
    turns = [Turn.model_validate(t) for t in state["turns"]]
    assert [t.speaker for t in turns] == [0, 1, 0, 1]
    assert [t.name for t in turns] == ["Li Wei", "Chen Jing", "Li Wei", "Chen Jing"]
    assert state["ended_by"] == "leave"
    assert [i["turn_index"] for i in state["intents"]] == [0, 1, 2, 3]
    assert all(i["cultural"] for i in state["intents"])
    assert [task for task, _ in backend.requests] == ["roleplay", "observer"] * 4


def test_episode_stops_at_max_turns(culture, scenario):
    model, _ = scripted(["ACTION: speak\nOUTPUT: And then?"] * 10)
    ctx = EpisodeContext(scenario=scenario, culture=culture, model=model, prompts=Prompts(), max_turns=2)
    state = run(build_episode_graph(), ctx)
    assert len(state["turns"]) == 4 and state["ended_by"] == "max_turns"


def test_unparseable_turn_is_kept_marked_and_ends_episode(culture, scenario):
    model, backend = scripted(["ACTION: speak\nOUTPUT: Hello.", "I am an AI language model."])
    ctx = EpisodeContext(scenario=scenario, culture=culture, model=model, prompts=Prompts(), max_turns=5)
    state = run(build_episode_graph(), ctx)
    last = Turn.model_validate(state["turns"][-1])
    assert state["ended_by"] == "invalid" and not last.valid and last.action is None
    assert last.text == "I am an AI language model."
    assert len(state["intents"]) == 1  # the invalid turn gets no intent label


def test_speaker_sees_own_secret_and_role_swapped_history(culture, scenario):
    ctx = EpisodeContext(scenario=scenario, culture=culture, model=FREE_TEXT, prompts=Prompts())
    turns = [Turn(index=0, speaker=0, name="Li Wei", action=Action.SPEAK, text="Good morning.")]
    view = speaker_view(ctx, 1, turns)
    assert [m["role"] for m in view] == ["system", "user"]
    assert "Keep her weekend free" in view[0]["content"] and "She is moving away" in view[0]["content"]
    assert "Borrow a ladder" not in view[0]["content"] and "broke the last ladder" not in view[0]["content"]
    assert "highly hierarchical" in view[0]["content"]
    assert view[1]["content"].startswith("Li Wei - ACTION: speak\nOUTPUT: Good morning.")
    assert "Turn #1" in view[1]["content"]
    own = speaker_view(ctx, 0, turns + [Turn(index=1, speaker=1, name="Chen Jing", action=Action.SPEAK, text="Hi")])
    assert [m["role"] for m in own] == ["system", "assistant", "user"]


def test_observer_never_sees_goals_or_secrets(culture, scenario):
    ctx = EpisodeContext(scenario=scenario, culture=culture, model=STRUCTURED, prompts=Prompts())
    turns = [Turn(index=0, speaker=0, name="Li Wei", action=Action.SPEAK, text="Good morning.")]
    text = "\n".join(m["content"] for m in observer_view(ctx, turns))
    for persona in scenario.participants:
        assert persona.goal not in text and persona.secret not in text
    assert "Li Wei: Good morning." in text and "Predict Li Wei's intent" in text


def test_graph_topology_snapshot():
    expected = open("tests/snapshots/episode_graph.mmd").read()
    assert build_episode_graph().get_graph().draw_mermaid() == expected
