"""A small store with every kind of episode the site must show, written through the Store API."""

from pathlib import Path

from agents.records import Action, Intent, Persona, Scenario, Turn
from graphs.store import EpisodeRecord, Judgement, Store


def _scenario(sid: str, culture: str, names: tuple[str, str]) -> Scenario:
    return Scenario(
        id=sid, culture=culture, setting=f"A market stall in {culture}; a <b>bold</b> haggle begins.",
        participants=(Persona(name=names[0], age=40, occupation="vendor", goal="Sell the teapot",
                              secret="It is chipped"),
                      Persona(name=names[1], age=25, occupation="student", goal="Buy a gift cheaply")),
        relationship="strangers", source=f"adapted:seed-{sid}",
    )


def _turn(i: int, speaker: int, name: str, action: Action | None, text: str) -> Turn:
    if action is None:
        return Turn(index=i, speaker=speaker, name=name, action=None, text=text, raw=text, valid=False)
    raw = f"ACTION: {action.value}\nOUTPUT: {text}"
    return Turn(index=i, speaker=speaker, name=name, action=action, text=text, raw=raw)


# (id, culture, model, status, ended_by, turns as (speaker, action, text), intents as (intent, cultural, valid))
EPISODES = [
    ("ep-chn-leave", "CHN", "smollm2", "done", "leave",
     [(0, Action.SPEAK, "Good morning, young lady. This teapot is from Yixing."),
      (1, Action.NON_VERBAL, "bows slightly and smiles"),
      (0, Action.SPEAK, "For you, a special price: <script>alert(1)</script>"),
      (1, Action.LEAVE, "Thank you, I will think about it.")],
     [("Greeting with respect", True, True), ("Showing politeness", True, True), ("Offering a discount", False, True),
      ("Leaving without losing face", True, True)]),
    ("ep-chn-maxturns", "CHN", "puppet", "done", "max_turns",
     [(0, Action.SPEAK, "Hello."), (1, Action.SPEAK, "Hi."), (0, Action.SPEAK, "Nice day."), (1, Action.SPEAK, "Yes.")],
     [("Greeting", False, True), ("Greeting back", False, True), ("", False, False), ("Agreeing", False, True)]),
    ("ep-jpn-invalid", "JPN", "smollm2", "invalid", "invalid",
     [(0, Action.SPEAK, "Irasshaimase."), (1, None, "I am an AI and cannot role-play.")],
     [("Welcoming a customer", True, True)]),
    ("ep-jpn-done", "JPN", "puppet", "done", "max_turns",
     [(0, Action.SPEAK, "Welcome."), (1, Action.SPEAK, "How much is this?")],
     [("Welcoming", False, True), ("Asking the price", False, True)]),
]

NAMES = {"CHN": ("Wang Fang", "Li Na"), "JPN": ("Sato Ken", "Ito Yui")}

# Judge answers by episode, in graphs.judge's vocabulary: the first is kept under the paper's rule,
# the second dropped (quality bad, very confident) with one unparseable answer; the rest are unjudged.
def _judgement(aspect, label, confidence, critique=""):
    valid = label is not None
    return {"aspect": aspect, "label": label, "confidence": confidence, "critique": critique,
            "raw": f"{aspect.upper()}: {label}" if valid else "I cannot judge this.", "valid": int(valid),
            "prompt_version": f"judge_{aspect}:abc123", "run_id": "judge-run"}


JUDGEMENTS = {
    "ep-chn-leave": [_judgement("quality", "good", "confident", "Natural."),
                     _judgement("culture", "aligned", "confident", "Face saving."),
                     _judgement("meta", "good", "very confident", "Both judgements hold.")],
    "ep-chn-maxturns": [_judgement("quality", "bad", "very confident", "Empty small talk."),
                        _judgement("culture", None, None),
                        _judgement("meta", "bad", "confident", "Agree: nothing happens.")],
}


def make_store(path) -> Store:
    store = Store(path)
    run_id = store.start_run("graphs.simulate --culture CHN", {"culture": "CHN", "max_turns": 2})
    for ep_id, culture, model, status, ended_by, turns, intents in EPISODES:
        scenario = _scenario(f"sc-{ep_id}", culture, NAMES[culture])
        store.put_scenario(scenario, seed_id=f"seed-{ep_id}")
        store.begin_episode(EpisodeRecord(id=ep_id, scenario_id=scenario.id, culture=culture, model=model, seed=7,
                                          sample=0, max_turns=2, run_id=run_id, git="0123abcd",
                                          prompt_versions={"roleplay_system": "feedbeef0001"},
                                          config={"culture": culture, "max_turns": 2}))
        records = [_turn(i, s, NAMES[culture][s], a, text) for i, (s, a, text) in enumerate(turns)]
        labels = [Intent(turn_index=i, intent=label, cultural=cultural, valid=valid,
                         reason="Harmony matters in the culture." if cultural else "",
                         raw=f"INTENT: {label}" if valid else "no idea")
                  for i, (label, cultural, valid) in enumerate(intents)]
        store.finish_episode(ep_id, status, records, labels, ended_by=ended_by, intent_version="obs0001",
                             usage={"calls": 2 * len(records)})
    for ep_id, rows in JUDGEMENTS.items():
        store.put_judgements(ep_id, "judge-model", [Judgement(**row) for row in rows])
    return store


def seeds_file(folder, seeds) -> Path:
    """`seeds` as a JSON Lines seeds file (what `graphs.adapt --seeds` reads) in `folder`."""
    path = Path(folder) / "seeds.jsonl"
    path.write_text("".join(seed.to_json() + "\n" for seed in seeds), encoding="utf-8")
    return path
