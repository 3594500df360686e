"""Writing an evaluation's results: JSON, per-item CSV, answers JSONL, PNG plots, a console table."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from eval.wvs.metrics import METRICS

SUMMARY_METRICS = ["js", "anchored_score", "kl", "paper_kl", "emd", "map_distance", "accuracy", "invalid_rate",
                   "off_option_mass"]


def write_outputs(results: dict, out: str | Path, plots: bool = True) -> list[Path]:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.with_suffix("")
    paths = [out, stem.with_suffix(".items.csv"), stem.with_suffix(".answers.jsonl")]
    out.write_text(json.dumps({k: v for k, v in results.items() if k != "answers"}, indent=1))
    _write_items_csv(results["items"], paths[1])
    with paths[2].open("w") as fh:
        for rec in results["answers"]:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    if plots:
        paths.append(_plot_metrics(results, stem.with_suffix(".metrics.png")))
        first = results["provenance"].get("formats", ["default"])[0]  # per-item plots: the first format's answers
        for country in results["summary"]["countries"]:
            items = [r for r in results["items"] if r["country"] == country and r.get("format", first) == first]
            paths.append(_plot_items(items, country, stem.with_suffix(f".items.{country}.png")))
    return paths


def _write_items_csv(items: list[dict], path: Path) -> None:
    names = list(items[0]["metrics"])
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["country", "format", "qid", "scale", "units", *(f"{n}{s}" for n in names for s in ("", "_lo", "_hi")),
                         *(f"{row}_{m}" for row in ("uniform", "survey_majority") for m in METRICS),
                         "survey", "model"])
        for r in items:
            cells = [v for n in names for v in (r["metrics"][n]["value"], *r["metrics"][n]["ci"])]
            refs = [r["reference"][row][m] for row in ("uniform", "survey_majority") for m in METRICS]
            writer.writerow([r["country"], r.get("format", "default"), r["qid"], r["scale"], r["units"], *(_fmt(v) for v in cells),
                             *(_fmt(v) for v in refs), " ".join(f"{x:.4f}" for x in r["survey"]),
                             " ".join(f"{x:.4f}" for x in r["model"])])


def _plot_metrics(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    countries = results["summary"]["countries"]
    shown = [m for m in SUMMARY_METRICS if any(c["model"][m]["value"] is not None for c in countries.values())]
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.2), squeeze=False)
    names = list(countries)
    for ax, metric in zip(axes[0], shown):
        for k, row in enumerate(("model", "uniform", "survey_majority")):
            values = [countries[c][row][metric]["value"] for c in names]
            if all(v is None for v in values):
                continue
            xs = [i + (k - 1) * 0.27 for i in range(len(names))]
            ys = [v if v is not None else 0.0 for v in values]
            err = None
            if row == "model":
                cis = [countries[c][row][metric]["ci"] for c in names]
                err = [[max(y - (ci[0] if ci[0] is not None else y), 0) for y, ci in zip(ys, cis)],
                       [max((ci[1] if ci[1] is not None else y) - y, 0) for y, ci in zip(ys, cis)]]
            ax.bar(xs, ys, width=0.27, yerr=err, label=row, capsize=2)
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_title(metric, fontsize=9)
    axes[0][0].legend(fontsize=7)
    prov = results["provenance"]
    fig.suptitle(f"{prov['config']['model']} {prov['config']['adapter'] or ''} | {prov['config']['method']}, "
                 f"{prov['prompt']} prompt", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_items(items: list[dict], country: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = math.ceil(math.sqrt(len(items)))
    rows = math.ceil(len(items) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 1.7 * rows), squeeze=False)
    for ax in axes.flat[len(items):]:
        ax.axis("off")
    for ax, r in zip(axes.flat, items):
        k = len(r["survey"])
        ax.bar([x - 0.2 for x in range(k)], r["survey"], width=0.4, label="survey", color="tab:gray")
        ax.bar([x + 0.2 for x in range(k + 1)], r["model"], width=0.4, label="model", color="tab:blue")
        ax.set_xticks(range(k + 1), [str(x + 1) for x in range(k)] + ["inv"], fontsize=5)
        ax.tick_params(axis="y", labelsize=5)
        js = r["metrics"]["js"]["value"]
        ax.set_title(f"{r['qid']} JS {js:.2f}" if js is not None else r["qid"], fontsize=6)
    axes.flat[0].legend(fontsize=5)
    fig.suptitle(f"{country}: survey (grey) vs model (blue); x = option position, inv = INVALID", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def print_summary(results: dict) -> None:
    countries = results["summary"]["countries"]
    shown = [m for m in SUMMARY_METRICS if any(c["model"][m]["value"] is not None for c in countries.values())]
    print(f"{'':10}" + "".join(f"{m:>26}" for m in shown))
    rows = [(c, countries[c]) for c in countries] + [("overall", results["summary"]["overall"])]
    for name, summary in rows:
        cells = []
        for m in shown:
            cell = summary["model"][m]
            lo, hi = cell["ci"]
            cells.append(f"{_fmt(cell['value'])} [{_fmt(lo)},{_fmt(hi)}]" if cell["value"] is not None else "-")
        print(f"{name:10}" + "".join(f"{c:>26}" for c in cells))
    for ref in ("uniform", "survey_majority"):
        o = results["summary"]["overall"][ref]
        print(f"{ref:16}" + "  ".join(f"{m}={_fmt(o[m]['value'])}" for m in shown if o[m]["value"] is not None))
    formats = results["provenance"].get("formats", ["default"])
    if len(formats) > 1:
        print(f"mean over {len(formats)} formats ({', '.join(formats)}); spread across them, overall:")
        o = results["summary"]["overall"]["model"]
        print("  " + "  ".join(f"{m} sd {_fmt(o[m]['sd'])} [{_fmt(o[m]['min'])},{_fmt(o[m]['max'])}]"
                               for m in shown if o[m]["value"] is not None))


def _fmt(v) -> str:
    return "" if v is None else f"{v:.4f}"
