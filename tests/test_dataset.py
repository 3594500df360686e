"""training.dataset: exact rows from a hand-written episode, DPO pairs, stats, split, and simulation -> training."""

import json
from collections import Counter

import pytest

from agents.models import Model, ScriptedBackend
from agents.prompts import Prompts
from agents.records import Action, Intent, Turn
from graphs.judge import Verdict
from graphs.store import EpisodeRecord
from training.dataset import (
    Episode,
    dialogue_messages,
    intent_messages,
    judged_pairs,
    main,
    table9,
    validation_scenarios,
)

KEPT = Verdict(kept=True, judged=True)
DROPPED = Verdict(kept=False, judged=True, reasons=("quality=bad@very confident",))


def turn(i, text, action=Action.SPEAK):
    names = ("Li Wei", "Chen Jing")
    return Turn(index=i, speaker=i % 2, name=names[i % 2], action=action, text=text, raw=text)


def episode(scenario, turns, intents=(), verdict=KEPT, ep_id="ep-1", config=None):
    row = EpisodeRecord(id=ep_id, scenario_id=scenario.id, culture="CHN", model="m", seed=0, sample=0,
                        prompt_versions={}, config=config or {})
    return Episode(ep_id, row, scenario, tuple(turns), {i.turn_index: i for i in intents}, verdict)


@pytest.fixture
def teahouse(scenario):
    turns = [
        turn(0, "Good evening, Xiao Chen."),
        turn(1, "bows slightly", Action.NON_VERBAL),
        turn(2, "Could I borrow your ladder?"),
        turn(3, "", Action.NONE),
        turn(4, "Just for one afternoon."),
        turn(5, "Of course, uncle Li."),
        turn(6, "Thank you, I will bring it back.", Action.LEAVE),
    ]
    intents = [
        Intent(turn_index=0, intent="Greeting politely.", reason="Elders greet first in the lane.", cultural=True),
        Intent(turn_index=1, intent="Showing respect.", cultural=True),
        Intent(turn_index=2, intent="Asking a favour."),
        Intent(turn_index=3, intent="Waiting."),
        Intent(turn_index=4, intent="", valid=False),
        Intent(turn_index=5, intent="Agreeing.", reason="Refusing an elder is rude.", cultural=True),
    ]
    return episode(scenario, turns, intents)


SYSTEM_LI = (
    "Scenario: Two neighbours meet in a Suzhou teahouse.\nParticipants: Li Wei and Chen Jing\n"
    "Your profile: Li Wei, retired teacher. Has lived in the lane for forty years.\n"
    "Imagine you are Li Wei. Act and speak like Li Wei, a member of the Chinese culture."
)
SYSTEM_CHEN = (
    "Scenario: Two neighbours meet in a Suzhou teahouse.\nParticipants: Li Wei and Chen Jing\n"
    "Your profile: Chen Jing, nurse. Moved in last spring.\n"
    "Imagine you are Chen Jing. Act and speak like Chen Jing, a member of the Chinese culture."
)


def test_dialogue_rows_from_both_perspectives(teahouse, culture):
    prompts = Prompts()
    assert dialogue_messages(prompts, teahouse, culture, 0) == [
        {"role": "system", "content": SYSTEM_LI},
        {"role": "assistant", "content": "Good evening, Xiao Chen."},
        {"role": "user", "content": "bows slightly"},
        # Chen Jing's silent turn is skipped, so Li Wei's two lines join
        {"role": "assistant", "content": "Could I borrow your ladder?\nJust for one afternoon."},
        {"role": "user", "content": "Of course, uncle Li."},
        {"role": "assistant", "content": "Thank you, I will bring it back."},
    ]
    assert dialogue_messages(prompts, teahouse, culture, 1) == [
        {"role": "system", "content": SYSTEM_CHEN},
        {"role": "user", "content": "Good evening, Xiao Chen."},
        {"role": "assistant", "content": "bows slightly"},
        {"role": "user", "content": "Could I borrow your ladder?\nJust for one afternoon."},
        {"role": "assistant", "content": "Of course, uncle Li."},
        # Li Wei's closing line is dropped: it ends the row on a user turn that no loss would use
    ]


def test_release_swap_pairs_each_persona_with_the_other_lines(teahouse, culture):
    prompts = Prompts()
    swapped = dialogue_messages(prompts, teahouse, culture, 0, swap_like_release=True)
    assert swapped[0]["content"] == SYSTEM_LI  # Li Wei's persona ...
    assert [m["content"] for m in swapped[1:] if m["role"] == "assistant"] == ["bows slightly", "Of course, uncle Li."]
    aligned = dialogue_messages(prompts, teahouse, culture, 1)
    assert swapped[1:] == aligned[1:]  # ... speaking Chen Jing's lines


def test_intent_row_stops_at_the_first_invalid_intent(teahouse, culture):
    messages, truncated = intent_messages(Prompts(), teahouse, culture)
    assert truncated
    assert messages[0] == {"role": "system", "content": (
        "Scenario: Two neighbours meet in a Suzhou teahouse.\n"
        "The two participants are Li Wei (retired teacher) and Chen Jing (nurse).\n"
        "For each line of the conversation, predict the speaker's intent in the context of the social or cultural "
        "expectations of Chinese culture, in one short sentence.")}
    assert messages[1:] == [
        {"role": "user", "content": "Li Wei: Good evening, Xiao Chen."},
        {"role": "assistant", "content": "Intent: Greeting politely.\nReason: Elders greet first in the lane."},
        {"role": "user", "content": "Chen Jing [non-verbal]: bows slightly"},
        {"role": "assistant", "content": "Intent: Showing respect."},
        {"role": "user", "content": "Li Wei: Could I borrow your ladder?"},
        {"role": "assistant", "content": "Intent: Asking a favour."},
        # turn 3 has no words and is skipped; turn 4's intent is invalid, so the row ends before it
    ]


def test_judged_pair_keeps_the_shared_multi_turn_context(scenario, culture):
    shared = [turn(0, "Good evening."), turn(1, "Good evening, uncle.")]
    good = episode(scenario, [*shared, turn(2, "May I borrow your ladder?")], ep_id="ep-good")
    bad = episode(scenario, [*shared, turn(2, "Ladder ladder ladder.")], verdict=DROPPED, ep_id="ep-bad")
    unjudged = episode(scenario, [turn(0, "Hi.")], verdict=Verdict(kept=False, judged=False), ep_id="ep-x")
    pairs = judged_pairs(Prompts(), [good, bad, unjudged], culture)
    assert len(pairs) == 1  # from Chen Jing's side the two episodes never part on her line
    pair = pairs[0]
    assert pair["prompt"] == [
        {"role": "system", "content": SYSTEM_LI},
        {"role": "assistant", "content": "Good evening."},
        {"role": "user", "content": "Good evening, uncle."},
    ]
    assert pair["chosen"] == [{"role": "assistant", "content": "May I borrow your ladder?"}]
    assert pair["rejected"] == [{"role": "assistant", "content": "Ladder ladder ladder."}]
    assert (pair["kind"], pair["episode_id"], pair["rejected_episode_id"], pair["perspective"]) == (
        "judged", "ep-good", "ep-bad", 0)


def test_table9_counts_kept_conversations_only(teahouse, scenario):
    dropped = episode(scenario, [turn(0, "one two three"), turn(1, "four")], verdict=DROPPED, ep_id="ep-2")
    assert table9([teahouse, dropped]) == {
        "conversations": 1, "avg_turns": 4.0, "avg_words_per_turn": 6.5, "cultural_intent_pct": 60.0,
        "avg_lines": 7.0, "avg_words_per_line": 3.71, "intents": 6, "intents_valid": 5,
    }


def test_split_is_seeded_and_holds_out_at_least_one_scenario():
    ids = {f"s{i}" for i in range(20)}
    held = validation_scenarios(ids, 0.1, seed=0)
    assert len(held) == 2 and held == validation_scenarios(ids, 0.1, seed=0)
    assert held != validation_scenarios(ids, 0.1, seed=1)
    assert len(validation_scenarios({"a", "b"}, 0.1, 0)) == 1
    assert validation_scenarios({"a"}, 0.1, 0) == set() and validation_scenarios(ids, 0.0, 0) == set()


# ------------------------------------------------------------------ simulation -> judge -> export -> training


@pytest.fixture
def judged_store(tmp_path, culture):
    """Four scripted episodes (two scenarios x two samples), judged; the very first episode is judged bad."""
    from agents.seeds import sotopia_seeds
    from graphs import judge as judge_stage
    from graphs import simulate
    from graphs.batch import run
    from graphs.simulate import plan_episodes
    from graphs.store import Store

    store = Store(tmp_path / "s.db")
    plan = plan_episodes(list(sotopia_seeds()), "CHN", "scripted", 0, 4, 2)
    for p in plan:
        store.put_scenario(p.scenario)
    line = iter(range(1000))

    def actor(messages, task):
        if task == "roleplay":
            return f"ACTION: speak\nOUTPUT: Line {next(line)} of this talk."
        return "INTENT: Keeping face.\nREASON: Harmony matters.\nCULTURAL: yes"

    run(simulate.STAGE, simulate.SimulateRequest(culture="CHN", episodes=4, samples=2, model="scripted",
                                                 db=str(store.path), max_turns=2, concurrency=1, use_seeds=True),
        model=Model(ScriptedBackend(actor), "scripted", structured=False))

    def judge(messages, task):
        bad = "Line 0 of this talk" in messages[0]["content"]
        question = messages[-1]["content"]
        if "\nALIGNMENT:" in question:
            return "ALIGNMENT: aligned\nCONFIDENCE: confident"
        if "\nCRITIQUE:" in question:
            return "CRITIQUE: ok\nLABEL: good\nCONFIDENCE: confident"
        return f"QUALITY: {'bad' if bad else 'good'}\nCONFIDENCE: very confident"

    run(judge_stage.STAGE, judge_stage.JudgeRequest(culture="CHN", model="judge-m", db=str(store.path)),
        model=Model(ScriptedBackend(judge), "judge-m", structured=False))
    return store, plan


def test_export_end_to_end_loads_in_training(judged_store, tmp_path, tiny_model_dir, monkeypatch):
    from trl.data_utils import is_conversational

    from training import dpo, sft
    from training.common import ScriptArguments, load_splits

    store, _ = judged_store
    from graphs import contrast
    from graphs.batch import run

    # the contrastive replies, from a scripted model standing in for the one that played the episodes
    fake = Model(ScriptedBackend(lambda m, t: '{"action": "speak", "text": "Something generic."}'), "fake")
    run(contrast.STAGE, contrast.ContrastRequest(culture="CHN", model="fake", db=str(store.path)), model=fake)
    out = tmp_path / "data"
    stats = main(["--culture", "CHN", "--out", str(out), "--db", str(store.path), "--contrastive-model", "fake",
                  "--validation-fraction", "0.5"])
    expected = {"judgeable": 4, "judged": 4, "kept": 3, "dropped": 1, "not_judged": 0,
                "drop_reasons": {"quality=bad@very confident": 1}}
    assert {k: stats["episodes"][k] for k in expected} == expected
    assert stats["table9"]["conversations"] == 3 and stats["table9"]["avg_turns"] == 2.0
    assert stats["table9"]["cultural_intent_pct"] == 100.0
    assert stats["judgements"]["quality"]["valid_share"] == 1.0
    assert stats["provenance"]["judge_model"] == "judge-m" and stats["provenance"]["contrastive_model"] == "fake"
    assert len(stats["split"]["validation_scenarios"]) == 1
    # 3 kept episodes x (2 dialogue + 1 intent) rows; 4 lines each become contrastive pairs; the dropped
    # episode's scenario gives a judged pair from the side of whoever spoke first
    sft_total = stats["rows"]["sft_train.jsonl"]["total"] + stats["rows"]["sft_validation.jsonl"]["total"]
    assert sft_total == 9
    kinds = Counter()
    for name in ("dpo_train.jsonl", "dpo_validation.jsonl"):
        kinds.update(stats["rows"][name])
    assert kinds["judged"] == 1 and kinds["contrastive"] == 12
    for name in ("sft_train.jsonl", "sft_validation.jsonl", "dpo_train.jsonl", "dpo_validation.jsonl"):
        for line in (out / name).read_text().splitlines():
            assert is_conversational(json.loads(line))
    card = (out / "README.md").read_text()
    assert "judge-m" in card and "| 3 | 2.0 |" in card
    # what training.sft / training.dpo read
    for kind, columns in (("sft", {"messages", "view"}), ("dpo", {"prompt", "chosen", "rejected", "kind"})):
        splits, source = load_splits(ScriptArguments(dataset_name=str(out)), kind)
        assert set(splits) == {"train", "validation"} and columns <= set(splits["train"].column_names)
        assert source["files"]["stats.json"]["sha256"]
    # one SFT step, then one DPO step from that adapter, on the tiny model through the unchanged entry points
    tiny = ["--max_steps", "1", "--per_device_train_batch_size", "2", "--disable_tqdm", "true",
            "--save_strategy", "no", "--report_to", "none"]
    sft.main(["--model_name_or_path", tiny_model_dir, "--dataset_name", str(out), "--output_dir",
              str(tmp_path / "adapter"), "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "q_proj",
              "v_proj", *tiny])
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    # training.dpo refuses a default pair kind that the train split lacks, so name the kinds it has
    train_kinds = ",".join(k for k in stats["rows"]["dpo_train.jsonl"] if k != "total")
    dpo.main(["--adapter", str(tmp_path / "adapter"), "--dataset_name", str(out), "--output_dir",
              str(tmp_path / "dpo"), "--pair_kinds", train_kinds, *tiny])
    assert json.loads((tmp_path / "dpo" / "provenance.json").read_text())["dataset"]["rows_used"]["train"] > 0


def test_rerun_replaces_stale_files_and_no_filter_keeps_all(judged_store, tmp_path):
    store, _ = judged_store
    out = tmp_path / "data"
    main(["--culture", "CHN", "--out", str(out), "--db", str(store.path), "--validation-fraction", "0.5"])
    assert (out / "dpo_train.jsonl").exists() or (out / "dpo_validation.jsonl").exists()
    stats = main(["--culture", "CHN", "--out", str(out), "--db", str(store.path), "--filter", "none",
                  "--views", "intent", "--validation-fraction", "0"])
    assert stats["episodes"]["kept"] == 4 and stats["provenance"]["judge_model"] is None
    assert stats["rows"]["sft_train.jsonl"] == {"intent": 4, "total": 4}
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "sft_train.jsonl", "stats.json"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--views", "dialog"], "--views 'dialog'"),
        (["--filter", "quality=meh"], "label must be one of good, bad"),
        (["--judge-model", "nobody"], "no CHN episode passes the filter"),
        (["--culture", "DEU"], "no DEU episode has been judged"),
    ],
)
def test_cli_errors_are_one_line(judged_store, tmp_path, extra, message):
    store, _ = judged_store
    with pytest.raises(SystemExit) as exc:
        main(["--culture", "CHN", "--out", str(tmp_path / "o"), "--db", str(store.path), *extra])
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_missing_store_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="no such file"):
        main(["--culture", "CHN", "--out", str(tmp_path / "o"), "--db", str(tmp_path / "none.db")])
    assert not (tmp_path / "none.db").exists()
