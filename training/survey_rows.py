"""Export WVS survey answers as TRL SFT rows: the survey-fine-tuning baseline (`survey_sft` in studies).

    python -m training.survey_rows --culture CHN --items clca44:train --out runs/CHN-survey

Fine-tuning on a population's survey answer distributions is the cheap strong baseline for opinion alignment
(Suh et al. 2025, "Language Model Fine-Tuning on Scaled Survey Data for Predicting Distributions of Public
Opinions", SubPOP). Here each item of the train split is asked exactly as `eval.wvs --method logprob` asks it
(the country system prompt `wvs_country`, the question template of each format, the bare `ANSWER:`), and the
assistant turn is an option label drawn in proportion to the country's bundled survey shares
(`eval.wvs.survey.BundledShares`), `--rows-per-item` draws per item and format. The draw is seeded and the
counts per option are the largest-remainder rounding of shares x draws, so the rows' answer shares match the
survey's as closely as whole rows can; their order is then shuffled (seeded).

Writes `sft_train.jsonl` and `sft_validation.jsonl` (one item in ten held out, at least one, by item) in TRL's
conversational format, and `stats.json` with the provenance (items, shares source, prompt versions, counts).
Evaluate the result on the held-out items only (`clca44:test` when trained on `clca44:train`): the train items'
answers are what it was shown.

Errors: one line (`error: ...`, exit 1) for an unknown culture, item set or format, or a culture without shares.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from agents import cli
from agents.prompts import PromptError, Prompts
from agents.provenance import git_state
from eval.wvs.formats import parse_formats, present, render_question, template_name
from eval.wvs.items import WVSError, select_items, split_record
from eval.wvs.readers import conversation
from eval.wvs.run import PROMPT_TEMPLATES
from eval.wvs.survey import BundledShares, country

COUNTRY_PROMPT = PROMPT_TEMPLATES["country"]


def drawn_counts(shares: np.ndarray, n: int) -> np.ndarray:
    """Whole counts summing to `n` closest to `shares * n` (largest remainder; ties to the earlier option)."""
    exact = shares * n
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return counts


def survey_rows(culture: str, items_spec: str, formats: str = "default", rows_per_item: int = 20,
                seed: int = 0, prompts: Prompts | None = None) -> tuple[list[dict], dict]:
    """(rows, provenance): one SFT row per drawn answer, `{"messages": [...], "item", "format", "code"}`.

    Raises WVSError for an unknown culture, item set or format, or a culture without bundled shares."""
    if rows_per_item < 1:
        raise WVSError("--rows-per-item must be at least 1")
    prompts = prompts or Prompts()
    c = country(culture)
    survey = BundledShares()
    source = survey.source(c.alpha3)
    items = select_items(items_spec)
    fmts = parse_formats(formats)
    system = prompts.render(COUNTRY_PROMPT, country=c.name).text
    rng = np.random.default_rng(seed)
    rows, asked, missing = [], [], []
    for item in items:
        shares = survey.distribution(c.alpha3, item)
        if shares is None:
            missing.append(item.qid)
            continue
        asked.append(item.qid)
        for fmt in fmts:
            shown = present(item, fmt)
            question = render_question(prompts, "logprob", fmt, shown, "", c.name)
            for code, k in zip(item.codes, drawn_counts(shares, rows_per_item)):
                label = shown.shown_labels[shown.codes.index(code)]
                rows += [{"messages": [*conversation(system, question), {"role": "assistant", "content": label}],
                          "item": item.qid, "format": fmt.name, "code": code}] * int(k)
    if not rows:
        raise WVSError(f"{items_spec}: none of its items has survey shares for {c.alpha3}")
    order = rng.permutation(len(rows))
    provenance = {"culture": c.alpha3, "items": items_spec, "item_split": split_record(items_spec),
                  "asked": asked, "missing": missing, "formats": [f.name for f in fmts],
                  "rows_per_item": rows_per_item, "seed": seed, "shares": source,
                  "prompt_versions": prompts.versions([COUNTRY_PROMPT] + [template_name("logprob", f) for f in fmts]),
                  "git": git_state()}
    return [rows[i] for i in order], provenance


def export(out: Path, culture: str, items_spec: str, *, formats: str, rows_per_item: int, seed: int,
           prompts: Prompts | None = None) -> dict:
    """Write the rows (validation: every tenth item, at least one, when there are two or more) and stats.json."""
    rows, provenance = survey_rows(culture, items_spec, formats, rows_per_item, seed, prompts)
    qids = provenance["asked"]
    held = set(qids[::10]) if len(qids) > 1 else set()
    out.mkdir(parents=True, exist_ok=True)
    splits = {"sft_train.jsonl": [r for r in rows if r["item"] not in held],
              "sft_validation.jsonl": [r for r in rows if r["item"] in held]}
    for name, part in splits.items():
        (out / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part), encoding="utf-8")
    stats = {"kind": "survey_sft", "rows": {name: {"total": len(part)} for name, part in splits.items()},
             "validation_items": sorted(held), **provenance}
    (out / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    return stats


def make_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m training.survey_rows", description=__doc__.split("\n\n")[0])
    p.add_argument("--culture", required=True, help="ISO-3 code whose survey shares are the answers, e.g. CHN")
    p.add_argument("--out", required=True, help="folder to write (sft_train.jsonl, sft_validation.jsonl, stats.json)")
    p.add_argument("--items", default="clca44:train", help="eval.wvs item set to train on (its train split)")
    p.add_argument("--formats", default="default", help="eval.wvs question formats to ask each item in, or all")
    p.add_argument("--rows-per-item", type=int, default=20, help="answers drawn per item and format")
    p.add_argument("--seed", type=int, default=0, help="seeds the row order")
    p.add_argument("--prompts", default=None, help="directory whose templates override the built-in ones")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    try:
        stats = export(Path(args.out), args.culture, args.items, formats=args.formats,
                       rows_per_item=args.rows_per_item, seed=args.seed, prompts=Prompts(args.prompts))
    except (WVSError, PromptError) as exc:
        sys.exit(f"error: {exc}")
    rows = stats["rows"]
    print(f"{stats['culture']}: {len(stats['asked'])} items of {args.items} in {len(stats['formats'])} format(s); "
          f"rows: sft_train {rows['sft_train.jsonl']['total']}, sft_validation {rows['sft_validation.jsonl']['total']}"
          f"; written to {args.out}")
    return stats


if __name__ == "__main__":
    main()
