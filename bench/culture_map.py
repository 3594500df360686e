"""Validation of the culture-map projection: leave-one-country-out figures, a table and a figure.

    .venv/bin/python bench/culture_map.py [--figure docs/img/culture-map-validation.png]

Refits the projection on the bundled WVS-7 shares of the fit countries (see eval/culture_map/fit.py),
holds out each country in turn (the whole fit is redone without it: standardisation, components,
rotation, scale, centre), projects it, and compares with its published position. Prints markdown:
the agreement of both methods (the one clca uses, per-dimension components; and two principal
components of all ten indicators, the simplest alternative) in-sample and leave-one-out, then the
per-country leave-one-out positions. Draws the figure used in docs/culture-map.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would shadow the `eval` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np

from eval.culture_map.fit import fit_table
from eval.wvs.map_projection import agreement, fit, fit_pca, leave_one_out

METHODS = {"per-dimension components (used)": fit, "two principal components of all ten": fit_pca}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figure", default="docs/img/culture-map-validation.png")
    args = parser.parse_args()
    countries, values, published, left_out = fit_table()
    print(f"fit countries ({len(countries)}): {' '.join(countries)}")
    print(f"left out: {len(left_out)} bundled countries, e.g. JPN: {left_out.get('JPN')}\n")
    print("| method | fit | r self-expression | r secular | mean distance | max distance |")
    print("|---|---|---|---|---|---|")
    loo = {}
    for name, method in METHODS.items():
        loo[name] = leave_one_out(values, published, method)
        for kind, projected in (("in-sample", method(values, published).project(values)),
                                ("leave-one-out", loo[name])):
            a = agreement(projected, published)
            print(f"| {name} | {kind} | {a['r_self_expression']:.3f} | {a['r_secular']:.3f} | "
                  f"{a['mean_distance']:.3f} | {a['max_distance']:.3f} |")
    used = loo[next(iter(METHODS))]
    print("\n| country | published (x, y) | leave-one-out (x, y) | distance |")
    print("|---|---|---|---|")
    for c, p, q in sorted(zip(countries, published, used), key=lambda r: -np.linalg.norm(r[1] - r[2])):
        print(f"| {c} | ({p[0]:+.2f}, {p[1]:+.2f}) | ({q[0]:+.2f}, {q[1]:+.2f}) | {np.linalg.norm(p - q):.2f} |")
    draw(countries, published, used, args.figure)
    print(f"\nwrote {args.figure}")


def draw(countries, published, projected, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from eval.culture_map.draw import zones

    a = agreement(projected, published)
    colours = [zones().get(c, ("", "#BBBBBB"))[1] for c in countries]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.4), gridspec_kw={"width_ratios": [1, 1, 1.5]})
    for k, (ax, name, r) in enumerate(zip(axes, ("self-expression (x)", "secular-rational (y)"),
                                          (a["r_self_expression"], a["r_secular"]))):
        ax.scatter(published[:, k], projected[:, k], c=colours, edgecolor="#333333", linewidth=0.5, s=45, zorder=3)
        for c, x, y in zip(countries, published[:, k], projected[:, k]):
            ax.annotate(c, (x, y), xytext=(4, 2), textcoords="offset points", fontsize=7, color="#333333")
        low, high = min(published[:, k].min(), projected[:, k].min()), max(published[:, k].max(), projected[:, k].max())
        ax.plot([low, high], [low, high], color="#999999", lw=0.8, ls="--", zorder=1)
        ax.set_xlabel(f"published position, {name}")
        ax.set_ylabel(f"leave-one-out projected, {name}")
        ax.set_title(f"{name}: r = {r:.2f}", fontsize=10)
    ax = axes[2]
    for c, p, q, colour in zip(countries, published, projected, colours):
        ax.annotate("", q, p, arrowprops={"arrowstyle": "->", "color": "#555555", "lw": 0.9})
        ax.scatter(*p, s=40, color=colour, edgecolor="#333333", linewidth=0.5, zorder=3)
        ax.annotate(c, p, xytext=(-4, 4), textcoords="offset points", fontsize=7, ha="right")
    ax.axhline(0, color="#DDDDDD", lw=0.8, zorder=0)
    ax.axvline(0, color="#DDDDDD", lw=0.8, zorder=0)
    ax.set_xlabel("\u2190 survival          self-expression \u2192")
    ax.set_ylabel("\u2190 traditional          secular-rational \u2192")
    ax.set_title(f"published position (dot) \u2192 leave-one-out projection (arrow head); "
                 f"mean distance {a['mean_distance']:.2f}", fontsize=10)
    fig.suptitle(f"Culture-map projection, leave-one-country-out on {len(countries)} countries "
                 "(each country placed by a map fitted without it)", fontsize=11)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    main()
