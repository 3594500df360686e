"""`python -m study plan CONFIG.yaml`: every stage a study runs, each once, with its counts; no model is loaded.

Counts per stage (upper bounds where the models decide: an episode can end early, the judge drops episodes):

- adapt: scenarios = seeds adapted; model calls from seeds (all valid first time) to seeds x 3 attempts;
- simulate: episodes; turns <= episodes x rounds x 2 (one utterance from each participant per round); model calls
  <= turns x 2 (each turn and the observer's label of it);
- judge: episodes; model calls = episodes x 3 (quality, culture, meta);
- contrast: model calls <= the kept episodes' lines (each line asked again without the culture);
- dataset: training rows <= episodes x rows per kept episode (dialogue: one per participant, intent: one),
  before the validation split;
- match_rows: as many training rows as the clca export it matches;
- survey_rows: training rows = train items with survey data x formats x draws per item (before the split);
- sft: training rows, the preset's max_steps (or its epochs); dpo: the preset's steps;
- evaluate: prompts = items with survey data for the culture x formats x units (1 per country prompt with logprob
  or distribution, `samples` with generate, `personas` with a respondent file); one model call each.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import yaml

from study.config import Study, preset_path
from study.pipeline import Builder, Node, build

JUDGE_ASPECTS = 3  # graphs.judge's quality, culture and meta answers per episode
ADAPT_ATTEMPTS = 3  # graphs.adapt --max-attempts default
ROWS_PER_EPISODE = {"dialogue": 2, "intent": 1}


@dataclass(frozen=True)
class Planned:
    node: Node
    counts: dict  # name -> int (or "lo-hi" text for ranges)
    used_by: tuple[str, ...]  # arms whose rows read it


def plan(study: Study) -> tuple[Builder, list[Planned]]:
    """(the built graph, one Planned per node in run order)."""
    b = build(study)
    users = _users(b)
    rows: dict[str, int] = {}
    out = []
    for node in b.nodes.values():
        counts = _counts(study, b, node, rows)
        out.append(Planned(node, counts, tuple(sorted(users.get(node.id, ())))))
    return b, out


def _users(b: Builder) -> dict[str, set[str]]:
    """node id -> arms whose evaluations depend on it."""
    users: dict[str, set[str]] = {}

    def mark(node_id: str, arm: str) -> None:
        users.setdefault(node_id, set()).add(arm)
        for parent in b.nodes[node_id].inputs:
            mark(parent, arm)

    for s in b.scored:
        mark(s.node, s.arm)
    return users


def _counts(study: Study, b: Builder, node: Node, rows: dict[str, int]) -> dict:
    s, p = study.sizes, node.params
    if node.kind == "adapt":
        return {"scenarios": s.seeds, "model calls": f"{s.seeds}-{s.seeds * ADAPT_ATTEMPTS}"}
    if node.kind == "simulate":
        turns = s.episodes * s.rounds * 2
        return {"episodes": s.episodes, "turns": turns, "model calls": turns * 2}
    if node.kind == "judge":
        return {"episodes": s.episodes, "model calls": s.episodes * JUDGE_ASPECTS}
    if node.kind == "contrast":
        return {"model calls": s.episodes * s.rounds * 2}
    if node.kind == "survey_rows":
        rows[node.id] = len(_with_shares(node.culture, p["items"])) * len(_formats(p["formats"])) * p["rows_per_item"]
        return {"training rows": rows[node.id]}
    if node.kind == "dpo":
        return _steps(study, p["preset"], study.training.dpo_overrides)
    if node.kind == "dataset":
        rows[node.id] = s.episodes * sum(ROWS_PER_EPISODE[v] for v in p["views"].split(","))
        return {"training rows": rows[node.id]}
    if node.kind == "match_rows":
        rows[node.id] = rows[node.inputs[1]]
        return {"training rows": rows[node.id]}
    if node.kind == "sft":
        rows[node.id] = rows[node.inputs[0]]
        return {"training rows": rows[node.id], **_steps(study, study.training.preset, study.training.overrides)}
    if node.kind == "evaluate":
        n = _prompts(study, node)
        return {"evaluation prompts": n, "model calls": n}
    raise ValueError(f"unknown stage kind {node.kind!r}")


def _steps(study: Study, preset_file: str, overrides: dict) -> dict:
    preset = yaml.safe_load(preset_path(study, preset_file).read_text()) or {}
    preset.update(overrides)
    if preset.get("max_steps", -1) > 0:
        return {"steps": preset["max_steps"]}
    return {"epochs": preset.get("num_train_epochs", 3)}


def _with_shares(culture: str, items_spec: str) -> list:
    """The items of `items_spec` that the bundled survey shares have for `culture` (the ones that are asked)."""
    from eval.wvs.items import select_items
    from eval.wvs.survey import BundledShares

    shares = BundledShares()
    return [it for it in select_items(items_spec) if shares.distribution(culture, it) is not None]


def _prompts(study: Study, node: Node) -> int:
    from eval.wvs.items import select_items

    p = node.params
    if not p["wvs_file"]:
        items = _with_shares(node.culture, p["items"])
        units = p["samples"] if p["method"] == "generate" else 1
    else:
        items = select_items(p["items"])
        units = p["personas"]
    return len(items) * len(_formats(p["formats"])) * units


def _formats(formats: list[str]) -> list:
    from eval.wvs.formats import parse_formats

    return parse_formats(",".join(formats))


def totals(planned: list[Planned]) -> dict[str, Counter]:
    """kind -> summed counts (ranges summed at both ends)."""
    out: dict[str, Counter] = {}
    for p in planned:
        c = out.setdefault(p.node.kind, Counter())
        c["stages"] += 1
        for k, v in p.counts.items():
            if isinstance(v, str):
                lo, hi = (int(x) for x in v.split("-"))
                c[k + " (min)"] += lo
                c[k + " (max)"] += hi
            else:
                c[k] += v
    return out


def describe(study: Study, planned: list[Planned], b: Builder) -> str:
    """The plan as text: one line per stage, then totals per kind and the arms' evaluations."""
    lines = [(f"study {study.name}: {len(study.cultures)} culture(s) {', '.join(study.cultures)}; "
             f"{len(study.students)} student(s); arms {', '.join(study.arms)}; training seeds "
             f"{', '.join(map(str, study.seeds))}; {len(planned)} stages"), ""]
    for p in planned:
        what = ", ".join(f"{k} {v}" for k, v in p.counts.items())
        lines.append(f"{p.node.id:28} {_label(p.node):58} {what}")
        lines.append(f"{'':28}   used by: {', '.join(p.used_by) or '-'}")
    lines += ["", "totals:"]
    for kind, c in totals(planned).items():
        lines.append(f"  {kind:11} " + ", ".join(f"{k} {v}" for k, v in c.items()))
    calls = sum(v for c in totals(planned).values() for k, v in c.items() if k in ("model calls", "model calls (max)"))
    lines.append(f"  model calls in all: at most {calls}")
    lines.append(f"  report rows: {len({(s.arm, s.student, s.items, s.reading) for s in b.scored})} "
                 f"(arm x student x item set x reading), {len(b.scored)} evaluations read")
    return "\n".join(lines)


def _label(node: Node) -> str:
    p = node.params
    if node.kind in ("adapt", "simulate", "judge"):
        where = "the adapted scenarios' seeds, ungrounded" if p.get("use_seeds") else "adapted"
        return f"{node.kind} {node.culture} {p['model']} ({where if node.kind == 'simulate' else p['db']})"
    if node.kind == "dataset":
        pairs = " + contrastive pairs" if p.get("contrastive_model") else ""
        return f"dataset {node.culture} {p['db']} views={p['views']} filter={p['filter']}{pairs}"
    if node.kind == "match_rows":
        return f"match_rows {node.culture} {node.inputs[0]} to {node.inputs[1]}"
    if node.kind == "contrast":
        return f"contrast {node.culture} {p['model']} ({p['db']})"
    if node.kind == "survey_rows":
        return f"survey_rows {node.culture} {p['items']} x{p['rows_per_item']}"
    if node.kind == "dpo":
        return f"dpo {node.culture} {p['model']} seed {p['seed']} from {node.inputs[0]} on {node.inputs[1]}"
    if node.kind == "sft":
        return f"sft {node.culture} {p['model']} seed {p['seed']} on {node.inputs[0]}"
    adapter = f" + {node.inputs[0]}" if node.inputs else ""
    return f"evaluate {node.culture} {p['model']}{adapter} {p['items']} {p['method']} prompt={p['prompt']}"
