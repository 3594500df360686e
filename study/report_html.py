"""report.html: the study report as one self-contained page (no file beside it, no network), for sharing.

The same tables as report.md (`study.report.sections`), a bar chart of every arm's JS with its 95% interval per
culture and on average, and the cultural map (`eval.culture_map.draw`) with every arm's position when the
evaluation asked the map's ten items (iw10); both figures are inline SVG drawn by matplotlib.
"""

from __future__ import annotations

import html
import io
from dataclasses import replace
from pathlib import Path

from study.report import provenance_text, summary_line

STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
         "table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}"
         "th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left}th{background:#f3f3f3}"
         "figure{margin:1em 0}svg{max-width:100%;height:auto}.note{color:#555}")


def write_html(out: Path, config: dict, cultures: list[str], table: list[dict], parts: list[dict], rows: dict,
               record: dict) -> Path:
    """Write DIR/report.html; returns its path."""
    body = [f"<h1>Study {html.escape(config['name'])}</h1>", f"<p>{html.escape(summary_line(config))}</p>"]
    verdicts, *rest = parts
    body.append(_table(verdicts))
    body += ["<h2>JS to the survey by arm</h2>", f"<figure>{js_chart(cultures, table)}</figure>"]
    body += ["<h2>Cultural map</h2>", map_figure(out, rows)]
    body += [_table(part) for part in rest]
    body += ["<h2>Provenance</h2>", f"<p class=note>{html.escape(provenance_text(record))}</p>"]
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>Study {html.escape(config['name'])}"
            f"</title><style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def _table(part: dict) -> str:
    note = f"<p class=note>{html.escape(part['note'])}</p>" if part["note"] else ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in part["header"])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in part["rows"])
    return f"<h2>{html.escape(part['title'])}</h2>{note}<table><tr>{head}</tr>{body}</table>"


def _svg(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # inline: no XML prolog or doctype inside the page


def js_chart(cultures: list[str], table: list[dict]) -> str:
    """Grouped bars: one group per culture and the average, one bar per report row, 95% intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    groups = [*cultures, "average"] if len(cultures) > 1 else cultures
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) * max(len(table), 1) / 2), 4))
    width = 0.8 / max(len(table), 1)
    for i, line in enumerate(table):
        values = [line.get(f"js_{g}", "") for g in groups]
        if all(v == "" for v in values):
            continue
        x = np.arange(len(groups)) + (i - (len(table) - 1) / 2) * width
        y = np.array([np.nan if v == "" else v for v in values], dtype=float)
        lo = np.array([np.nan if line.get(f"js_{g}_lo", "") == "" else line[f"js_{g}_lo"] for g in groups], dtype=float)
        hi = np.array([np.nan if line.get(f"js_{g}_hi", "") == "" else line[f"js_{g}_hi"] for g in groups], dtype=float)
        err = np.nan_to_num(np.stack([y - lo, hi - y]).clip(min=0))
        ax.bar(x, y, width, yerr=err, capsize=3, label=f"{line['arm']} / {line['student']}")
    ax.set_xticks(np.arange(len(groups)), groups)
    ax.set_ylabel("JS divergence to the survey (lower is closer)")
    ax.legend(fontsize=8, bbox_to_anchor=(1.02, 1), loc="upper left")
    return _svg(fig)


def map_figure(out: Path, rows: dict) -> str:
    """The cultural map with every arm's position (one evaluation per arm: the first seed's, first format), or a
    sentence saying why there is none."""
    from eval.culture_map.draw import draw
    from eval.culture_map.results import read_points
    from eval.wvs.map_indicators import MapError

    points = []
    for (arm, student, _items, reading), cultures in rows.items():
        for runs in cultures.values():
            seed, _, path = runs[0]
            try:
                placed = read_points(path)
            except MapError:
                continue
            # a trained arm is named by its arm (every adapter folder is called "adapter"); untrained arms differ by
            # their prompt, which the label shows; the map draws base -> trained arrows
            points += [replace(p, model=student, adapter=arm if seed is not None else None) for p in placed]
    if not points:
        return ("<p class=note>No map: the evaluation did not ask the map's ten items (add iw10 to "
                "evaluation.items to place every arm on the Inglehart-Welzel map).</p>")
    svg = draw(points, out / "map", title="Every arm on the cultural map")[1]
    text = svg.read_text()
    return f"<figure>{text[text.index('<svg'):]}</figure>"
