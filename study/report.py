"""`python -m study report DIR`: report.md and results.csv from a study folder's stored evaluations.

One row per arm x student (x item set x reading when a study has several), one column per culture and their
average, for each metric (`METRICS`: JS with the anchored score, KL, the paper's KL, EMD, map distance and accuracy
where the evaluation has them). A cell is the mean over training seeds of each evaluation's summary (itself the mean
over formats); its interval is the mean over seeds of each evaluation's 95% bootstrap interval (items and units
resampled, `eval.wvs.score`), so it shows the sampling uncertainty of one adapter, not the spread between seeds
(`seed_sd` columns give that spread where there are several seeds).

Paired tests: every arm's evaluation against `base` and against `culture_free` on the same culture, student, items
and reading, one test per training seed (`eval.wvs.paired.compare`: the paired bootstrap, items and shared units
resampled), on JS; base and culture_free are compared once (culture_free against base). Their p-values are
Holm-corrected together, across every test the report shows. The verdict of an
arm against a reference: "closer than base by d (JS, mean over cultures and seeds), Holm p <= p" when every test
says closer, "further from the survey than base ..." when every one says further, "not distinguishable from base"
when none does, else "mixed: k of n tests closer, m further".

Errors: `StudyReportError` (one line) for a folder without study.json or an evaluation not run yet.
"""

from __future__ import annotations

import csv
import json
import sqlite3
from collections import defaultdict
from contextlib import closing
from pathlib import Path

import numpy as np

from agents.provenance import git_commit
from study.arms import ARMS

METRICS = ["js", "anchored_score", "kl", "paper_kl", "emd", "map_distance", "accuracy"]
TEST_METRIC = "js"
REFERENCES = ("base", "culture_free")


class StudyReportError(ValueError):
    """A study folder the report cannot be built from; one line."""


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def collect(out: Path) -> tuple[dict, dict]:
    """(study.json, {(arm, student, items, reading): {culture: [(seed, results, results path), ...]}})."""
    if not (out / "study.json").is_file():
        raise StudyReportError(f"{out}: no study.json (run `python -m study run CONFIG --out {out}` first)")
    study = _load(out / "study.json")
    rows: dict = defaultdict(lambda: defaultdict(list))
    for s in study["scored"]:
        path = out / "stages" / s["node"] / "results.json"
        if not (out / "stages" / s["node"] / "done.json").is_file():
            raise StudyReportError(f"{out}: the evaluation {s['node']} ({s['arm']}, {s['culture']}) has not run: "
                                   "rerun `python -m study run`")
        rows[(s["arm"], s["student"], s["items"], s["reading"])][s["culture"]].append((s["seed"], _load(path), path))
    return study, rows


def _cell(runs: list, metric: str) -> dict | None:
    values, lows, highs = [], [], []
    for _, results, _ in runs:
        country = next(iter(results["summary"]["countries"].values()))["model"]
        cell = country.get(metric)
        if not cell or cell.get("value") is None:
            return None
        values.append(cell["value"])
        lo, hi = cell.get("ci") or (None, None)
        lows.append(lo if lo is not None else np.nan)
        highs.append(hi if hi is not None else np.nan)
    return {"value": float(np.mean(values)), "lo": float(np.nanmean(lows)), "hi": float(np.nanmean(highs)),
            "seed_sd": float(np.std(values, ddof=1)) if len(values) > 1 else None}


def _average(cells: list[dict | None]) -> dict | None:
    if not cells or any(c is None for c in cells):
        return None
    return {k: float(np.mean([c[k] for c in cells])) if cells[0][k] is not None else None
            for k in ("value", "lo", "hi", "seed_sd")}


def paired_tests(study: dict, rows: dict, n_boot: int) -> list[dict]:
    """One test per arm row, reference, culture and training seed, Holm-corrected together."""
    from eval.wvs.paired import ALPHA, compare, holm, load_answers

    tests = []
    for (arm, student, items, reading), cultures in rows.items():
        for ref in REFERENCES:
            if arm == ref or (ref, student, items, reading) not in rows:
                continue
            if arm in REFERENCES and REFERENCES.index(arm) < REFERENCES.index(ref):
                continue  # base against culture_free is culture_free against base: one test, counted once by Holm
            for culture, runs in cultures.items():
                base_runs = rows[(ref, student, items, reading)].get(culture)
                if not base_runs:
                    continue
                for (seed, adapted, a_path), (_, base, b_path) in _pairs(runs, base_runs):
                    paired = compare(base, adapted, load_answers(base, b_path), load_answers(adapted, a_path),
                                     n_boot=n_boot, seed=0)
                    row = next((r for r in paired.rows if r.metric == TEST_METRIC), None)
                    if row is not None:
                        tests.append({"arm": arm, "student": student, "items": items, "reading": reading,
                                      "reference": ref, "culture": culture, "seed": seed, "delta": row.delta,
                                      "ci": row.ci, "p": row.p})
    for test, p_holm in zip(tests, holm([t["p"] for t in tests]) if tests else []):
        test["p_holm"] = float(p_holm)
        test["verdict"] = ("closer" if test["delta"] < 0 else "further") if p_holm < ALPHA else "no detectable change"
    return tests


def _pairs(runs: list, base_runs: list) -> list:
    """Each run with the reference run of its seed, or the reference's only run (an untrained reference)."""
    by_seed = {seed: r for r in base_runs for seed in [r[0]]}
    return [(r, by_seed.get(r[0], base_runs[0])) for r in runs]


def verdict(tests: list[dict], reference: str) -> str:
    if not tests:
        return ""
    closer = sum(t["verdict"] == "closer" for t in tests)
    further = sum(t["verdict"] == "further" for t in tests)
    delta = float(np.mean([t["delta"] for t in tests]))
    p = max(t["p_holm"] for t in tests)
    if closer == len(tests):
        return f"closer than {reference} by {-delta:.4f} JS, Holm p <= {p:.3g}"
    if further == len(tests):
        return f"further from the survey than {reference} by {delta:.4f} JS, Holm p <= {p:.3g}"
    if closer == further == 0:
        return f"not distinguishable from {reference} (JS {delta:+.4f}, smallest Holm p {min(t['p_holm'] for t in tests):.3g})"
    return f"mixed against {reference}: {closer} of {len(tests)} tests closer, {further} further"


def training_rows(out: Path, study: dict) -> dict[str, str]:
    """arm -> the SFT training rows its adapters trained on (the count of the export, matched draw or survey rows
    an SFT node read; several counts when its runs differ)."""
    nodes, counts = study["nodes"], {}
    for scored in study.get("scored", []):
        sft = next((i for i in nodes[scored["node"]]["inputs"] if nodes[i]["kind"] in ("sft", "dpo")), None)
        while sft is not None and nodes[sft]["kind"] == "dpo":  # dpo: the SFT run it continues
            sft = next((i for i in nodes[sft]["inputs"] if nodes[i]["kind"] == "sft"), None)
        if sft is None:
            continue
        data = out / "stages" / nodes[sft]["inputs"][0] / "done.json"
        if data.is_file():
            rows = _load(data).get("rows", {}).get("sft_train.jsonl")
            if rows is not None:
                counts.setdefault(scored["arm"], set()).add(rows)
    return {arm: ", ".join(map(str, sorted(n))) for arm, n in counts.items()}


def write_report(out: str | Path) -> dict[str, Path]:
    """Write DIR/report.md and DIR/results.csv; returns their paths."""
    out = Path(out)
    study, rows = collect(out)
    config = study["config"]
    cultures = list(config["cultures"])
    tests = paired_tests(study, rows, config["evaluation"]["bootstrap"])
    several = len(config["evaluation"]["items"]) > 1 or len(config["evaluation"]["readings"]) > 1
    header = ["arm", "student", "items", "reading", "seeds"]
    for metric in METRICS:
        for c in [*cultures, "average"]:
            header += [f"{metric}_{c}", f"{metric}_{c}_lo", f"{metric}_{c}_hi", f"{metric}_{c}_seed_sd"]
    header += [f"{x}_{ref}" for ref in REFERENCES for x in ("verdict", "delta_js", "p_holm_max")] + ["evaluations"]
    table, verdicts = [], []
    for key in rows:
        arm, student, items, reading = key
        cultures_runs = rows[key]
        seeds = sorted({s for runs in cultures_runs.values() for s, _, _ in runs if s is not None})
        line = {"arm": arm, "student": student, "items": items, "reading": reading,
                "seeds": " ".join(map(str, seeds)),
                "evaluations": " ".join(sorted(p.parent.name for runs in cultures_runs.values() for _, _, p in runs))}
        for metric in METRICS:
            cells = [_cell(cultures_runs[c], metric) if c in cultures_runs else None for c in cultures]
            for c, cell in zip([*cultures, "average"], [*cells, _average(cells)]):
                for k in ("value", "lo", "hi", "seed_sd"):
                    name = f"{metric}_{c}" + ("" if k == "value" else f"_{k}")
                    line[name] = "" if cell is None or cell[k] is None else round(cell[k], 6)
        label = f"{arm} / {student}" + (f" / {items} / {reading}" if several else "")
        for ref in REFERENCES:
            mine = [t for t in tests if (t["arm"], t["student"], t["items"], t["reading"]) == key
                    and t["reference"] == ref]
            line[f"verdict_{ref}"] = verdict(mine, ref)
            line[f"delta_js_{ref}"] = round(float(np.mean([t["delta"] for t in mine])), 6) if mine else ""
            line[f"p_holm_max_{ref}"] = round(max(t["p_holm"] for t in mine), 6) if mine else ""
        verdicts.append((label, line["verdict_base"], line["verdict_culture_free"]))
        table.append(line)
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows(table)  # `evaluations`: the stored evaluations a row's numbers are from
    record = provenance(out, study)
    (out / "provenance.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    parts = sections(config, cultures, table, verdicts, tests, several, training_rows(out, study))
    (out / "report.md").write_text(_markdown(config, parts, record))
    from study.report_html import write_html

    html = write_html(out, config, cultures, table, parts, rows, record)
    return {"md": out / "report.md", "csv": out / "results.csv", "html": html, "provenance": out / "provenance.json"}


def sections(config: dict, cultures: list[str], table: list[dict], verdicts: list, tests: list,
             several: bool, trained: dict[str, str]) -> list[dict]:
    """The report's tables, for every renderer (markdown here, HTML in `study.report_html`): each
    {"title", "note" (a sentence or ""), "header" [str], "rows" [[str]]}."""
    note = (f"Paired bootstrap on JS, one test per culture and training seed, {len(tests)} tests Holm-corrected "
            "together (eval.wvs.paired). ΔJS is the arm's JS minus the reference's: negative is closer to the survey. "
            "An arm closer than base but not distinguishable from culture_free moved as any role-play fine-tuning "
            "does, not through the culture; cultural learning shows as closer than both.")
    out = [{"title": "Verdicts", "note": note,
            "header": ["arm", "against base", "against culture_free"],
            "rows": [[label, vb or "-", vc or "-"] for label, vb, vc in verdicts]},
           {"title": "Arms", "note": "What each arm is (study.arms) and the SFT rows its adapter trained on.",
            "header": ["arm", "recipe", "training rows"],
            "rows": [[name, ARMS[name].doc, trained.get(name, "-")] for name in config["arms"]]}]
    for metric in METRICS:
        if not any(line.get(f"{metric}_{c}", "") != "" for line in table for c in [*cultures, "average"]):
            continue
        better = "higher" if metric in ("accuracy", "anchored_score") else "lower"
        rows = []
        for line in table:
            cells = []
            for c in [*cultures, "average"]:
                v = line.get(f"{metric}_{c}", "")
                cells.append("-" if v == "" else f"{v:.4f} [{line[f'{metric}_{c}_lo']:.4f}, "
                                                 f"{line[f'{metric}_{c}_hi']:.4f}]")
            rows.append([line["arm"], line["student"], *([line["items"], line["reading"]] if several else []), *cells])
        out.append({"title": f"{metric} ({better} is better; mean over seeds and formats [95% interval])", "note": "",
                    "header": ["arm", "student", *(["items", "reading"] if several else []), *cultures, "average"],
                    "rows": rows})
    out.append({"title": "Paired tests", "note": "Each interval is the bootstrap's own (95%, not corrected); the "
                "verdict reads the Holm p (eval.wvs.paired: 'no detectable change' where Holm p >= 0.05).",
                "header": ["arm", "student", "items", "reading", "reference", "culture", "seed", "ΔJS", "95% interval",
                           "p", "Holm p", "verdict"],
                "rows": [[t["arm"], t["student"], t["items"], t["reading"], t["reference"], t["culture"],
                          str(t["seed"]) if t["seed"] is not None else "-",
                          f"{t['delta']:+.4f}", f"[{t['ci'][0]:+.4f}, {t['ci'][1]:+.4f}]", f"{t['p']:.3g}",
                          f"{t['p_holm']:.3g}", t["verdict"]] for t in tests]})
    return out


def summary_line(config: dict) -> str:
    e = config["evaluation"]
    return (f"Cultures {', '.join(config['cultures'])}; arms {', '.join(config['arms'])}; training seeds "
            f"{', '.join(map(str, config['seeds']))}; items {', '.join(e['items'])}; readings "
            f"{', '.join(e['readings'])}; formats {', '.join(e['formats'])}; role-play {config['roleplay']['model']}.")


def _markdown(config: dict, parts: list[dict], record: dict) -> str:
    lines = [f"# Study {config['name']}", "", summary_line(config), ""]
    for part in parts:
        lines += [f"## {part['title']}", ""]
        lines += [part["note"], ""] if part["note"] else []
        lines += ["| " + " | ".join(part["header"]) + " |", "|" + "---|" * len(part["header"])]
        lines += ["| " + " | ".join(row) + " |" for row in part["rows"]]
        lines.append("")
    lines += ["## Provenance", "", provenance_text(record), ""]
    return "\n".join(lines)


def provenance(out: Path, study: dict) -> dict:
    """Where every number came from: git commits, model specs, each stage's request and time, the prompt versions
    of the exports and evaluations, and the content hash of every adapter (sha256 of adapter_model.safetensors)."""
    import hashlib

    config, stages = study["config"], {}
    commits, prompts = set(), {}
    for node_id, node in study["nodes"].items():
        folder = out / "stages" / node_id
        done = _load(folder / "done.json") if (folder / "done.json").is_file() else {}
        entry = {"kind": node["kind"], "culture": node["culture"], "params": node["params"],
                 "inputs": node["inputs"], "seconds": done.get("seconds")}
        weights = folder / "adapter" / "adapter_model.safetensors"
        if weights.is_file():
            with weights.open("rb") as fh:
                entry["adapter_sha256"] = hashlib.file_digest(fh, "sha256").hexdigest()
        if (folder / "results.json").is_file():
            prov = _load(folder / "results.json")["provenance"]
            commits.add(prov.get("git_commit") or "")
            prompts.update(prov.get("prompt_versions") or {})
        if node["kind"] == "dataset" and (folder / "data" / "stats.json").is_file():
            stats = _load(folder / "data" / "stats.json")
            where = Path(node["params"]["db"]).stem  # the pipeline: the control's rows have their own templates
            versions = (stats.get("provenance") or stats).get("prompt_versions") or {}
            prompts.update({f"{name} ({where})": v for name, v in versions.items()})
        stages[node_id] = entry
    for db in sorted((out / "stores").glob("*.db")):  # what each pipeline played, observed and judged with
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            for (text,) in conn.execute("select distinct prompt_versions from episodes"):  # JSON {name: version}
                prompts.update({f"{name} ({db.stem})": v for name, v in (json.loads(text) if text else {}).items()})
            for (text,) in conn.execute("select distinct prompt_version from judgements"):  # "name:version,..."
                prompts.update({f"{name} ({db.stem})": v for name, _, v in
                                (part.partition(":") for part in (text or "").split(",") if part)})
    models = {"roleplay": config["roleplay"]["model"], "judge": (config.get("judge") or config["roleplay"])["model"],
              "students": [s["model"] for s in config["students"]],
              "evaluated": [s.get("eval_model") or s["model"] for s in config["students"]]}
    return {"git_commits": sorted(c for c in commits if c), "report_git_commit": git_commit(), "models": models,
            "prompt_versions": dict(sorted(prompts.items())), "stages": stages}


def provenance_text(record: dict) -> str:
    adapters = {i: s["adapter_sha256"][:16] for i, s in record["stages"].items() if "adapter_sha256" in s}
    return (f"git {', '.join(c[:12] for c in record['git_commits']) or 'unknown'} (report built at "
            f"{(record.get('report_git_commit') or 'unknown')[:12]}); role-play "
            f"{record['models']['roleplay']}, judge {record['models']['judge']}, students "
            f"{', '.join(record['models']['students'])} (evaluated as {', '.join(record['models']['evaluated'])})"
            f"; prompt versions "
            + ", ".join(f"{k} {v}" for k, v in record["prompt_versions"].items())
            + "; adapters (sha256) " + (", ".join(f"{i} {h}" for i, h in adapters.items()) or "none")
            + f"; every stage's request and seconds in provenance.json ({len(record['stages'])} stages).")
