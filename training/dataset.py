"""Export judged episodes as TRL datasets: SFT conversations and DPO preference pairs (CLCA section 2).

    python -m training.dataset --culture CHN --out runs/CHN-data
    python -m graphs.contrast --culture CHN --model smollm2 && \
        python -m training.dataset --culture CHN --out runs/CHN-data --contrastive-model smollm2
    python -m training.dataset --culture CHN --out runs/CHN-paper --views dialogue,intent --swap-perspectives-like-release

Episodes pass the judge's filter (`graphs.filter`, the paper's rule by default); each kept episode
becomes SFT rows in TRL's conversational format (`{"messages": [...]}`):

- `dialogue`, once per participant: the system turn is that participant's persona and the assistant turns are
  that participant's lines. The paper's release pairs each persona with the other participant's lines;
  `--swap-perspectives-like-release` reproduces that for exact replication.
- `intent`: the observer's intents, one assistant turn after each line, in the culture's context.

DPO rows (`prompt`, `chosen`, `rejected`, conversational) are not in the paper; `kind` says which:

- `judged`: two episodes of the same scenario, one kept and one dropped, from the same persona's side; the
  prompt is what both share and the replies are where they part.
- `contrastive` (only with `--contrastive-model M`): for each line of a kept episode, the prompt is the whole
  conversation before it, chosen is the culture-grounded persona's line, rejected is what M said for the same
  persona and history when its system prompt left the culture out, as `graphs.contrast` stored it.

The exporter reads the store and writes files: it calls no model and plays no role-play.

Rows are split into train and validation by scenario (seeded, deterministic), every row is checked with TRL's
`is_conversational`, and every file is read back with `datasets.load_dataset("json", ...)`. `stats.json` holds
the paper's Table 9 columns and counts before and after filtering; `README.md` is the dataset card.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from agents import cli
from agents.cultures import CultureError, load_culture
from agents.prompts import PromptError, Prompts, Rendered
from agents.records import Action, Culture, Message, Turn
from graphs.filter import FilterRule, FilterRuleError, add_filter_arguments, aspect_summary, left_out_text
from graphs.judged import Episode, JudgedError, judged_episodes, sole_judge
from graphs.store import DEFAULT_DB, ContrastOutcome, ContrastRecord, Store, git_commit, now

VIEWS = ("dialogue", "intent")
PROMPT_NAMES = ["sft_dialogue_system", "sft_intent_system"]
FILES = ("sft_train.jsonl", "sft_validation.jsonl", "dpo_train.jsonl", "dpo_validation.jsonl", "stats.json",
         "README.md")
CARD_TEMPLATE = Path(__file__).with_name("templates") / "dataset_card.md.j2"


class DatasetError(ValueError):
    """Bad input to the exporter (nothing to export, unknown judge, bad option), reported as one line."""


# ------------------------------------------------------------------ SFT rows


def render_dialogue(system: str, turns: list[Turn] | tuple[Turn, ...], assistant_speaker: int) -> list[Message]:
    """System turn, then each line with text as assistant (that speaker) or user (the other one).

    Only the words are kept, as in the paper (the action type is dropped); a turn without words (action
    none, a silent leave) is skipped and lines that then follow each other from one side are joined.
    """
    messages: list[Message] = [{"role": "system", "content": system}]
    for t in turns:
        if not t.text:
            continue
        role = "assistant" if t.speaker == assistant_speaker else "user"
        if messages[-1]["role"] == role:
            messages[-1] = {"role": role, "content": messages[-1]["content"] + "\n" + t.text}
        else:
            messages.append({"role": role, "content": t.text})
    return messages


def dialogue_system(prompts: Prompts, ep: Episode, culture: Culture, persona: int) -> Rendered:
    """A persona's system turn; its attributes follow the role-play's visibility (its own all, the partner's public)."""
    me, partner = ep.scenario.participants[persona], ep.scenario.participants[1 - persona]
    system = prompts.render("sft_dialogue_system", scenario=ep.scenario, culture=culture, me=me)
    return prompts.with_attributes(system, "sft_dialogue", [(me, True), (partner, False)])


def dialogue_messages(prompts: Prompts, ep: Episode, culture: Culture, persona: int,
                      swap_like_release: bool = False) -> list[Message]:
    """One participant's side of the conversation, ending on its last line (trailing partner lines carry no loss)."""
    assistant = 1 - persona if swap_like_release else persona
    messages = render_dialogue(dialogue_system(prompts, ep, culture, persona).text, ep.turns, assistant)
    while messages[-1]["role"] == "user":
        messages.pop()
    return messages


def intent_messages(prompts: Prompts, ep: Episode, culture: Culture) -> tuple[list[Message], bool]:
    """(messages, truncated): each line as `Name: text`, answered by `Intent: ...` from the observer.

    The row stops before the first line without a valid intent (the paper's labeller stopped there too);
    no intent is ever filled in.
    """
    system = prompts.render("sft_intent_system", scenario=ep.scenario, culture=culture)
    system = prompts.with_attributes(system, "sft_intent", [(p, False) for p in ep.scenario.participants])
    messages: list[Message] = [{"role": "system", "content": system.text}]
    for t in ep.turns:
        if not t.text:
            continue
        intent = ep.intents.get(t.index)
        if intent is None or not intent.valid:
            return messages, True
        mark = f" [{t.action.value}]" if t.action is not Action.SPEAK else ""
        answer = f"Intent: {intent.intent}" + (f"\nReason: {intent.reason}" if intent.reason else "")
        messages += [{"role": "user", "content": f"{t.name}{mark}: {t.text}"},
                     {"role": "assistant", "content": answer}]
    return messages, False


def sft_rows(prompts: Prompts, ep: Episode, culture: Culture, views: tuple[str, ...], swap_like_release: bool,
             counts: Counter) -> list[dict]:
    rows = []
    base = {"episode_id": ep.id, "scenario_id": ep.scenario.id, "culture": culture.code}
    if "dialogue" in views:
        for persona in (0, 1):
            messages = dialogue_messages(prompts, ep, culture, persona, swap_like_release)
            if any(m["role"] == "assistant" for m in messages):
                rows.append({"messages": messages, "view": "dialogue", "perspective": persona, **base})
            else:
                counts["dialogue rows without an assistant line"] += 1
    if "intent" in views:
        messages, truncated = intent_messages(prompts, ep, culture)
        counts["intent rows cut at a missing or invalid intent"] += truncated
        if len(messages) > 1:
            rows.append({"messages": messages, "view": "intent", "perspective": None, **base})
        else:
            counts["intent rows without any valid intent"] += 1
    return rows


# ------------------------------------------------------------------ DPO rows


def pair_row(prompt: list[Message], chosen: str, rejected: str, kind: str, ep: Episode, culture: Culture,
             persona: int, rejected_episode: str | None) -> dict:
    return {
        "prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}], "kind": kind, "episode_id": ep.id,
        # "" rather than None: a column that is all null in one split cannot be cast to text in the other
        "rejected_episode_id": rejected_episode or "", "scenario_id": ep.scenario.id, "perspective": persona,
        "culture": culture.code,
    }


def judged_pairs(prompts: Prompts, episodes: list[Episode], culture: Culture) -> list[dict]:
    """Kept against dropped episodes of one scenario, from each persona's side, where their replies part."""
    rows = []
    by_scenario: dict[str, list[Episode]] = {}
    for ep in episodes:
        by_scenario.setdefault(ep.scenario.id, []).append(ep)
    for group in by_scenario.values():
        kept = [e for e in group if e.verdict.kept]
        dropped = [e for e in group if e.verdict.judged and not e.verdict.kept]
        for good in kept:
            for bad in dropped:
                for persona in (0, 1):
                    system = dialogue_system(prompts, good, culture, persona).text
                    a = render_dialogue(system, good.turns, persona)
                    b = render_dialogue(system, bad.turns, persona)
                    n = 0
                    while n < min(len(a), len(b)) and a[n] == b[n]:
                        n += 1
                    if n < min(len(a), len(b)) and a[n]["role"] == b[n]["role"] == "assistant":
                        rows.append(pair_row(a[:n], a[n]["content"], b[n]["content"], "judged", good, culture,
                                             persona, bad.id))
    return rows


def contrastive_pairs(prompts: Prompts, episodes: list[Episode], culture: Culture, replies: list[ContrastRecord],
                      counts: Counter) -> list[dict]:
    """For every spoken line of a kept episode with a stored ungrounded reply that makes a pair (`graphs.contrast`):
    the conversation before the line, the grounded line (chosen) and the reply (rejected). Where a line has several
    stored replies (other seeds, template versions), the latest is used; lines without one are counted."""
    latest = {(r.episode_id, r.turn_index): r for r in replies}  # `Store.contrasts` orders by time stored
    counts["contrastive replies superseded by a later one"] += len(replies) - len(latest)
    rows = []
    for ep in episodes:
        if not ep.verdict.kept:
            continue
        for i, turn in enumerate(ep.turns):
            if turn.action is not Action.SPEAK or not turn.text:
                continue
            reply = latest.get((ep.id, turn.index))
            if reply is None:
                counts["contrastive lines without a stored reply"] += 1
                continue
            if reply.outcome is not ContrastOutcome.PAIR:
                counts[f"contrastive replies {reply.outcome.value} (no pair)"] += 1
                continue
            prompt = render_dialogue(dialogue_system(prompts, ep, culture, turn.speaker).text, ep.turns[:i],
                                     turn.speaker)
            rows.append(pair_row(prompt, turn.text, reply.text, "contrastive", ep, culture, turn.speaker, None))
    return rows


def contrastive_replies(store: Store, episodes: list[Episode], model: str) -> list[ContrastRecord]:
    """`model`'s stored replies to the kept episodes' lines; DatasetError (one line, with the command that makes
    them) when there is none."""
    kept = [e for e in episodes if e.verdict.kept]
    replies = store.contrasts([e.id for e in kept], model)
    if not replies:
        culture = kept[0].row.culture if kept else "?"
        raise DatasetError(f"{store.path}: no contrastive replies by {model} to the kept {culture} episodes: run "
                           f"`python -m graphs.contrast --culture {culture} --db {store.path} --model {model}` "
                           "first (with the same --judge-model and --filter)")
    return replies


# ------------------------------------------------------------------ split, stats, files


def validation_scenarios(scenario_ids: set[str], fraction: float, seed: int) -> set[str]:
    """A seeded share of the scenarios (at least one when there are two or more and fraction > 0)."""
    ranked = sorted(scenario_ids, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())
    n = round(fraction * len(ranked))
    if fraction > 0 and len(ranked) >= 2:
        n = min(max(n, 1), len(ranked) - 1)
    return set(ranked[:n])


def table9(episodes: list[Episode]) -> dict:
    """The paper's Table 9 columns over kept episodes. A turn is a round of one line from each participant,
    as in the paper's episode loop; per-line figures are given as well."""
    kept = [e for e in episodes if e.verdict.kept]
    lines = [t for e in kept for t in e.turns]
    rounds = sum((len(e.turns) + 1) // 2 for e in kept)
    words = sum(len(t.text.split()) for t in lines)
    intents = [e.intents[t.index] for e in kept for t in e.turns if t.index in e.intents]
    valid = [i for i in intents if i.valid]
    return {
        "conversations": len(kept),
        "avg_turns": round(rounds / len(kept), 2) if kept else None,
        "avg_words_per_turn": round(words / rounds, 2) if rounds else None,
        "cultural_intent_pct": round(100 * sum(i.cultural for i in valid) / len(valid), 2) if valid else None,
        "avg_lines": round(len(lines) / len(kept), 2) if kept else None,
        "avg_words_per_line": round(words / len(lines), 2) if lines else None,
        "intents": len(intents), "intents_valid": len(valid),
    }


def attribute_names(episodes: list[Episode]) -> dict[str, str]:
    """Persona attribute name -> its visibility (public, private, or "public or private" where scenarios differ)
    over the episodes' scenarios, sorted by name: what the dataset card lists."""
    seen: dict[str, set[str]] = {}
    for ep in episodes:
        for p in ep.scenario.participants:
            for name, a in p.attributes.items():
                seen.setdefault(name, set()).add(a.visibility.value)
    return {name: " or ".join(sorted(v)) for name, v in sorted(seen.items())}


def check_rows(rows: list[dict], name: str) -> None:
    """Every row is conversational in TRL's sense (a bug in this module otherwise, so fail loudly)."""
    from trl.data_utils import is_conversational

    for n, row in enumerate(rows, 1):
        if not is_conversational(row):
            raise AssertionError(f"{name} row {n} is not conversational: {json.dumps(row)[:200]}")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def read_back(out: Path, names: list[str]) -> dict[str, int]:
    """Rows per file as training reads them: `datasets.load_dataset("json", ...)` with both splits of a kind at
    once, so columns must agree between the splits."""
    import datasets

    datasets.disable_progress_bars()
    rows = {}
    for kind in ("sft", "dpo"):
        files = {n.removeprefix(f"{kind}_").removesuffix(".jsonl"): str(out / n) for n in names
                 if n.startswith(f"{kind}_")}
        if files:
            splits = datasets.load_dataset("json", data_files=files)
            rows.update({f"{kind}_{split}.jsonl": d.num_rows for split, d in splits.items()})
    return rows


def export(store: Store, out: Path, *, culture: Culture, prompts: Prompts, judge_model: str | None,
           rule: FilterRule, views: tuple[str, ...], swap_like_release: bool = False,
           validation_fraction: float = 0.1, seed: int = 0, contrastive_model: str | None = None,
           command: str = "") -> dict:
    """Write the dataset folder; returns the stats written to stats.json."""
    episodes, not_judgeable = judged_episodes(store, culture.code, judge_model, rule)
    kept = [e for e in episodes if e.verdict.kept]
    if not kept:
        left_out = left_out_text(not_judgeable, sep=", ")
        raise DatasetError(f"{store.path}: no {culture.code} episode passes the filter ({rule}, judge "
                           f"{judge_model}) out of {len(episodes)}{left_out}; nothing written to {out}")
    counts: Counter = Counter()
    sft = [row for ep in kept for row in sft_rows(prompts, ep, culture, views, swap_like_release, counts)]
    dpo = judged_pairs(prompts, episodes, culture)
    replies = contrastive_replies(store, episodes, contrastive_model) if contrastive_model else []
    dpo += contrastive_pairs(prompts, episodes, culture, replies, counts)
    if not sft and not dpo:  # checked before the folder is touched: an earlier export there stays as it was
        why = "; ".join(f"{reason}: {n}" for reason, n in counts.items() if n) or "no rows for the chosen views"
        raise DatasetError(f"{store.path}: {len(kept)} {culture.code} episodes pass the filter but give no training "
                           f"row ({why}); nothing written to {out}")
    validation = validation_scenarios({e.scenario.id for e in kept}, validation_fraction, seed)
    files = {
        "sft_train.jsonl": [r for r in sft if r["scenario_id"] not in validation],
        "sft_validation.jsonl": [r for r in sft if r["scenario_id"] in validation],
        "dpo_train.jsonl": [r for r in dpo if r["scenario_id"] not in validation],
        "dpo_validation.jsonl": [r for r in dpo if r["scenario_id"] in validation],
    }
    out.mkdir(parents=True, exist_ok=True)
    for name in FILES:  # a stale file from an earlier export must not be read as part of this one
        (out / name).unlink(missing_ok=True)
    written = [name for name, rows in files.items() if rows]  # an empty JSON-lines file does not load
    for name in written:
        check_rows(files[name], name)
        write_jsonl(out / name, files[name])
    rows_read = read_back(out, written)
    assert all(rows_read[n] == len(files[n]) for n in written), rows_read

    statuses = store.counts(culture=culture.code).statuses
    attributes = attribute_names(kept)
    used_prompts = PROMPT_NAMES + (["persona_attributes"] if attributes else [])
    stats = {
        "culture": culture.code,
        "table9": table9(episodes),
        "episodes": {
            "in_store_by_status": statuses,
            "judgeable": len(episodes),
            # finished episodes left out before judging (not judged, not in Table 9, not exported), by reason
            "not_judgeable": dict(not_judgeable),
            "judged": sum(e.verdict.judged for e in episodes),
            "kept": len(kept),
            "dropped": sum(e.verdict.judged and not e.verdict.kept for e in episodes),
            "not_judged": sum(not e.verdict.judged for e in episodes),
            "kept_despite_invalid_judgement": sum(e.verdict.kept and bool(e.verdict.invalid) for e in episodes),
            "drop_reasons": dict(Counter(r for e in episodes if e.verdict.judged for r in e.verdict.reasons)),
        },
        "judgements": aspect_summary(j for e in episodes for j in e.judgements) if judge_model else None,
        "rows": {
            name: dict(Counter(r.get("view") or r.get("kind") for r in rows)) | {"total": len(rows)}
            for name, rows in files.items()
        },
        "notes": dict(counts),
        "attributes": attributes,
        "split": {"by": "scenario", "seed": seed, "validation_fraction": validation_fraction,
                  "validation_scenarios": sorted(validation),
                  "train_scenarios": len({e.scenario.id for e in kept} - validation)},
        "provenance": {
            "command": command, "created": now(), "git": git_commit(), "db": str(store.path),
            "judge_model": judge_model, "filter": str(rule), "views": list(views),
            "swap_perspectives_like_release": swap_like_release,
            "episode_models": sorted({e.row.model for e in kept}),
            "contrastive_model": contrastive_model,
            # what made the stored replies (graphs.contrast): its runs, seeds and template versions
            "contrastive_replies": {
                "runs": sorted({r.run_id for r in replies if r.run_id}), "seeds": sorted({r.seed for r in replies}),
                "prompt_versions": sorted({json.dumps(r.prompt_versions, sort_keys=True) for r in replies}),
            } if contrastive_model else None,
            "prompt_versions": prompts.versions(used_prompts),
            "episode_prompt_versions": sorted({json.dumps(e.row.prompt_versions, sort_keys=True)
                                               if e.row.prompt_versions is not None else "" for e in kept}),
            "judge_prompt_versions": sorted({j.prompt_version for e in kept for j in e.judgements}),
        },
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    card = Environment(loader=FileSystemLoader(CARD_TEMPLATE.parent), undefined=StrictUndefined,
                       trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    (out / "README.md").write_text(card.get_template(CARD_TEMPLATE.name).render(stats=stats, culture=culture),
                                   encoding="utf-8")
    return stats


def make_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m training.dataset", description=__doc__.split("\n\n")[0])
    p.add_argument("--culture", required=True, help="ISO-3 code of the culture to export, e.g. CHN")
    p.add_argument("--out", required=True, help="folder to write (sft_*.jsonl, dpo_*.jsonl, stats.json, README.md)")
    p.add_argument("--db", default=DEFAULT_DB, help="SQLite store with simulated and judged episodes")
    p.add_argument("--judge-model", default=None,
                   help="whose judgements filter the episodes (default: the only judge model in the store)")
    add_filter_arguments(p, "which judged episodes to export")
    p.add_argument("--views", default="dialogue,intent", help="SFT views to write: dialogue, intent or both")
    p.add_argument("--swap-perspectives-like-release", action="store_true",
                   help="pair each persona with the OTHER participant's lines, as the paper's code release does")
    p.add_argument("--validation-fraction", type=float, default=0.1, help="share of scenarios held out")
    p.add_argument("--seed", type=int, default=0, help="seeds the split")
    p.add_argument("--contrastive-model", default=None,
                   help="add contrastive DPO pairs from this model's replies stored by `python -m graphs.contrast` "
                        "(default: no contrastive pairs)")
    p.add_argument("--concurrency", type=int, default=None,
                   help="no effect: contrastive replies are generated by graphs.contrast (kept so old commands run)")
    p.add_argument("--unstructured", action="store_true",
                   help="no effect: contrastive replies are generated by graphs.contrast (kept so old commands run)")
    p.add_argument("--prompts", default=None, help="directory whose templates override the built-in ones")
    p.add_argument("--cultures-dir", default=None, help="directory of extra culture YAML files")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    command = "training.dataset " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        views = tuple(v.strip() for v in args.views.split(",") if v.strip())
        if not views or any(v not in VIEWS for v in views):
            raise DatasetError(f"--views {args.views!r}: expected a comma-separated subset of {', '.join(VIEWS)}")
        if not 0 <= args.validation_fraction < 1:
            raise DatasetError("--validation-fraction must be in [0, 1)")
        rule = FilterRule.parse(args.filter, args.on_invalid, args.quality_gate)
        culture = load_culture(args.culture, args.cultures_dir)
        prompts = Prompts(args.prompts)
        prompts.versions(PROMPT_NAMES)
        if not Path(args.db).is_file():
            raise DatasetError(f"--db {args.db}: no such file (run graphs.simulate and graphs.judge first)")
        if args.concurrency is not None or args.unstructured:
            print("note: --concurrency and --unstructured have no effect here: contrastive replies are generated "
                  "by python -m graphs.contrast", file=sys.stderr)
        with Store(args.db) as store:
            judge = args.judge_model or (None if rule.keep_all else sole_judge(store, culture.code))
            stats = export(store, Path(args.out), culture=culture, prompts=prompts, judge_model=judge, rule=rule,
                           views=views, swap_like_release=args.swap_perspectives_like_release,
                           validation_fraction=args.validation_fraction, seed=args.seed,
                           contrastive_model=args.contrastive_model, command=command)
    except (DatasetError, JudgedError, FilterRuleError, CultureError, PromptError) as exc:
        sys.exit(f"error: {exc}")
    t9, e, rows = stats["table9"], stats["episodes"], stats["rows"]
    print(
        f"{culture.code}: {e['judgeable']} episodes"
        + left_out_text(e["not_judgeable"])
        + f", {e['kept']} kept, {e['dropped']} dropped, {e['not_judged']} not "
        f"judged; Table 9: {t9['conversations']} conversations, {t9['avg_turns']} turns, {t9['avg_words_per_turn']} "
        f"words/turn, {t9['cultural_intent_pct']}% cultural intents; rows: "
        + ", ".join(f"{n.removesuffix('.jsonl')} {r['total']}" for n, r in rows.items())
        + f"; written to {args.out}"
    )
    return stats


if __name__ == "__main__":
    main()
