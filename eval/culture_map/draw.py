"""Drawing the map: countries by cultural zone, model results, base -> adapted arrows, the target.

`draw(points, out)` writes OUT (PNG), OUT.svg and OUT.csv (every drawn coordinate) beside it and
returns the three paths. Coordinates are the published map's units: x = survival (-) to
self-expression (+), y = traditional (-) to secular-rational (+).
"""

from __future__ import annotations

import csv
import functools
import textwrap
from pathlib import Path

import numpy as np
import yaml

from agents.cultures import available_cultures
from eval.culture_map.results import Point
from eval.wvs.items import all_items
from eval.wvs.map_indicators import AXIS_LABELS, indicator_values, map_items
from eval.wvs.map_position import published_position
from eval.wvs.map_projection import load_projection
from eval.wvs.survey import COUNTRIES

ZONES_FILE = Path(__file__).parent / "data" / "zones.yaml"  # the drawing's cultural zones
RESULT_COLOURS = ["#6A3D9A", "#B2182B", "#08306B", "#000000", "#1B7837"]
CHI2_95_2DF = 5.991464547107979  # 95% quantile of chi-square with 2 degrees of freedom


@functools.lru_cache(maxsize=1)
def zones() -> dict[str, tuple[str, str]]:
    """ISO alpha-3 -> (zone name, colour), from data/zones.yaml."""
    raw = yaml.safe_load((ZONES_FILE).read_text())
    return {c: (z["name"], z["colour"]) for z in raw["zones"] for c in z["countries"]}


def country_positions() -> list[dict]:
    """Every country to draw: fit countries at their projected positions, other cultures with a
    published position (e.g. JPN, whose bundled shares lack two items) at that position, hollow."""
    proj = load_projection()
    rows = [{"country": c, "position": np.array(v["projected"]), "kind": "country"}
            for c, v in proj.info["countries"].items()]
    for c in available_cultures():
        if c not in proj.info["countries"] and (p := published_position(c)) is not None:
            rows.append({"country": c, "position": np.array(p), "kind": "country_published"})
    return rows


def draw(points: list[Point], out: str | Path, title: str | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Ellipse, FancyArrowPatch

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".png"), out.with_suffix(".svg"), out.with_suffix(".csv")]
    countries = country_positions()
    fig, ax = plt.subplots(figsize=(11, 8.8))
    fig.subplots_adjust(left=0.07, right=0.98, top=0.95, bottom=0.16)  # before any pixel measurement
    ax.axhline(0, color="#DDDDDD", lw=0.8, zorder=0)
    ax.axvline(0, color="#DDDDDD", lw=0.8, zorder=0)

    labels = []  # (x, y, text, style) placed after all markers, so they avoid them
    seen_zones = {}
    targets = {c: next(p.target for p in points if p.country == c) for c in sorted({p.country for p in points})}
    for row in countries:
        zone, colour = zones().get(row["country"], ("zone unknown", "#BBBBBB"))
        x, y = row["position"]
        hollow = row["kind"] == "country_published"
        ax.scatter(x, y, s=55, facecolor="white" if hollow else colour, edgecolor=colour if hollow else "#333333",
                   linewidth=1.6 if hollow else 0.5, zorder=3)
        seen_zones.setdefault(zone, colour)
        if row["country"] in targets and np.linalg.norm(targets[row["country"]] - row["position"]) < 0.05:
            continue  # labelled as the target below
        labels.append((x, y, _name(row["country"]) + ("*" if hollow else ""), {"fontsize": 8.5, "color": "#333333"}))

    for alpha3, target in targets.items():
        ax.scatter(*target, s=420, facecolor="none", edgecolor="#000000", linewidth=2.2, zorder=4)
        labels.append((*target, f"{_name(alpha3)} (target)", {"fontsize": 10, "color": "#000000", "weight": "bold"}))
    uniform = uniform_position()
    ax.scatter(*uniform, s=70, marker="x", color="#777777", linewidth=1.5, zorder=3)
    labels.append((*uniform, "uniform answers", {"fontsize": 8, "color": "#777777", "style": "italic"}))

    colour_of = {}
    for p in points:
        key = (p.path, p.model, p.adapter, p.prompt, p.method)
        colour = colour_of.setdefault(key, RESULT_COLOURS[len(colour_of) % len(RESULT_COLOURS)])
        ax.plot(*np.stack([p.position, p.target]).T, ls=":", color=colour, lw=1.2, zorder=2)
        if p.cov is not None and np.all(np.isfinite(p.cov)) and np.trace(p.cov) > 0:
            vals, vecs = np.linalg.eigh(p.cov)
            width, height = 2 * np.sqrt(CHI2_95_2DF * np.clip(vals[::-1], 0, None))
            angle = np.degrees(np.arctan2(vecs[1, -1], vecs[0, -1]))
            ax.add_patch(Ellipse(tuple(p.position), width, height, angle=angle, facecolor=colour, alpha=0.15,
                                 edgecolor=colour, lw=0.8, zorder=2))
        who = "adapted" if p.adapter else "base"
        ax.scatter(*p.position, s=170, marker="*" if p.adapter else "o", facecolor=colour,
                   edgecolor="white", linewidth=1.2, zorder=6,
                   label=f"{who}: {p.label}, {p.country}: distance {p.distance:.2f}")
        labels.append((*p.position, f"{who} ({p.country})" if len({q.country for q in points}) > 1 else who,
                       {"fontsize": 10, "color": colour, "weight": "bold"}))

    _frame(ax, [r["position"] for r in countries] + [p.position for p in points] + [p.target for p in points]
           + [uniform])
    for base, adapted in _arrows(points):
        start, end = ax.transData.transform([base.position, adapted.position])
        if np.linalg.norm(end - start) < 30:  # pixels: too short for an arrow head to be read; the markers say it
            continue
        key = (adapted.path, adapted.model, adapted.adapter, adapted.prompt, adapted.method)
        ax.add_patch(FancyArrowPatch(tuple(base.position), tuple(adapted.position), arrowstyle="-|>",
                                     mutation_scale=16, color=colour_of[key], lw=1.8, shrinkA=6, shrinkB=8, zorder=7))
    _place_labels(fig, ax, labels)
    for zone, colour in seen_zones.items():
        ax.scatter([], [], s=55, facecolor=colour, edgecolor="#333333", linewidth=0.5, label=zone)
    ax.legend(loc="best", fontsize=8, framealpha=0.92, title="models (distance to target) and cultural zones",
              title_fontsize=8)
    x_low, x_high = AXIS_LABELS["survival_self_expression"]
    y_low, y_high = AXIS_LABELS["traditional_secular"]
    ax.set_xlabel(f"\u2190 {x_low}          {x_high} \u2192", fontsize=11)
    ax.set_ylabel(f"\u2190 {y_low}          {y_high} \u2192", fontsize=11)
    ax.set_title(title or _title(points), fontsize=12)
    fig.text(0.01, 0.01, _caption(any(r["kind"] == "country_published" for r in countries)), fontsize=7.8,
             color="#444444", va="bottom", ha="left")
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1])
    plt.close(fig)
    _write_csv(paths[2], countries, points)
    return paths


def uniform_position() -> np.ndarray:
    """[2] where a model lands that spreads its answers evenly over every item's options."""
    items = all_items()
    return load_projection().project(indicator_values({q: np.ones(len(items[q].options)) for q in map_items()}))


def _arrows(points: list[Point]) -> list[tuple[Point, Point]]:
    """Base (no adapter) -> adapted, for the same model spec, prompt condition, method and country."""
    pairs = []
    for a in points:
        if a.adapter:
            pairs += [(b, a) for b in points if not b.adapter and (b.model, b.prompt, b.method, b.country)
                      == (a.model, a.prompt, a.method, a.country)]
    return pairs


def _frame(ax, positions: list[np.ndarray]) -> None:
    xy = np.array(positions)
    low, high = xy.min(axis=0), xy.max(axis=0)
    pad = np.maximum((high - low) * 0.08, 0.3)
    ax.set_xlim(low[0] - pad[0], high[0] + pad[0] * 2.2)  # room on the right for labels
    ax.set_ylim(low[1] - pad[1], high[1] + pad[1])


def _place_labels(fig, ax, labels) -> None:
    """Greedy placement: each label takes the first of eight offsets that overlaps no marker and no label
    placed so far (the last offset if all do)."""
    from matplotlib.transforms import Bbox

    renderer = fig.canvas.get_renderer()
    taken = [Bbox.from_extents(*(xy - 5), *(xy + 5)) for xy in ax.transData.transform([(x, y) for x, y, *_ in labels])]
    offsets = [(6, 4), (6, -12), (-6, 4), (-6, -12), (0, 9), (0, -16), (10, 14), (10, -22)]
    for x, y, text, style in labels:
        for k, (dx, dy) in enumerate(offsets):
            t = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points",
                            ha="left" if dx >= 0 else "right", zorder=7, **style)
            box = t.get_window_extent(renderer).expanded(1.05, 1.1)
            if not any(box.overlaps(b) for b in taken) or k == len(offsets) - 1:
                taken.append(box)
                break
            t.remove()


def _title(points: list[Point]) -> str:
    targets = sorted({p.country for p in points})
    return ("Inglehart-Welzel cultural map: where the model's survey answers place it"
            + (f", target {', '.join(_name(c) for c in targets)}" if targets else ""))


def _caption(with_published: bool) -> str:
    info = load_projection().info
    loo = info["validation"]["leave_one_out"]
    text = (
        f"Countries (dots, coloured by the 2023 map's cultural zones): placed by their WVS-7 answers to the map's ten "
        f"survey items, through the same linear projection as the models; it is fitted to the published 2023 map "
        f"positions of {len(info['fit_countries'])} countries (leave-one-country-out r = "
        f"{loo['r_self_expression']:.2f} across, {loo['r_secular']:.2f} up; mean error {loo['mean_distance']:.2f}), "
        f"not the official factor analysis."
        + (" * hollow: published position only (the bundled survey shares lack two map items)." if with_published
           else "")
        + " Model markers: the expected answer to each item under the model's answer distribution (circle: base "
          "model, star: adapted; arrow: base to adapted). Shaded: 95% bootstrap region over personas or samples "
          "(none with a single prompt). Dotted line: distance to the target country (map_distance). x: a model that "
          "spreads its answers evenly over every item's options."
    )
    return "\n".join(textwrap.wrap(text, 190))


def _name(alpha3: str) -> str:
    name = COUNTRIES[alpha3].name if alpha3 in COUNTRIES else alpha3
    return name.removeprefix("the ").replace("United States", "USA")


def _write_csv(path: Path, countries: list[dict], points: list[Point]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["kind", "label", "country", "self_expression", "secular", "zone", "distance_to_target",
                         "source"])
        for row in countries:
            x, y = row["position"]
            source = ("projected from bundled WVS-7 shares" if row["kind"] == "country"
                      else "published position (agents/cultures)")
            writer.writerow([row["kind"], _name(row["country"]), row["country"], f"{x:.4f}", f"{y:.4f}",
                             zones().get(row["country"], ("", ""))[0], "", source])
        for alpha3 in sorted({p.country for p in points}):
            x, y = next(p.target for p in points if p.country == alpha3)
            writer.writerow(["target", _name(alpha3), alpha3, f"{x:.4f}", f"{y:.4f}",
                             zones().get(alpha3, ("", ""))[0], "0", "projected from the run's survey shares"])
        x, y = uniform_position()
        writer.writerow(["reference", "uniform answers", "", f"{x:.4f}", f"{y:.4f}", "", "",
                         "every option of every item equally likely"])
        for p in points:
            writer.writerow(["model", p.label, p.country, f"{p.position[0]:.4f}", f"{p.position[1]:.4f}", "",
                             f"{p.distance:.4f}", p.path])
