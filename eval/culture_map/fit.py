"""`python -m eval.culture_map.fit`: fit the map projection on the bundled WVS-7 shares and store it.

    python -m eval.culture_map.fit            # writes eval/wvs/data/projection.json
    python -m eval.culture_map.fit --check    # refits and fails if the stored file differs

Fit countries: every bundled country with shares for all 14 map items and a published map position
in its culture file (`agents/cultures/*.yaml`: inglehart_welzel.self_expression_score, secular_score).
Countries left out are listed with the reason in the file's `left_out`. The file also stores each
fit country's projected and leave-one-out position and the validation figures.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import sys

import numpy as np

from agents import cli
from agents.provenance import git_state
from eval.wvs.items import all_items
from eval.wvs.map_indicators import DATA_DIR, MapError, indicator_values, keys, map_items
from eval.wvs.map_position import published_position
from eval.wvs.map_projection import PROJECTION_FILE, agreement, fit, leave_one_out
from eval.wvs.survey import BundledShares

METHOD = ("per-dimension first principal component of the five standardised indicators of each map dimension "
          "(Inglehart & Welzel 2005 item assignment), aligned to published positions by one rotation and one "
          "scale (orthogonal Procrustes, no reflection); fitted on country means of the fit countries, "
          "not the official factor analysis of respondent-level IVS data")


def survey_values(shares, alpha3: str) -> np.ndarray | None:
    """[10] indicator values of a country from a survey source (`BundledShares` or `RespondentFile`)."""
    items = all_items()
    dists = {q: d for q in map_items() if (d := shares.distribution(alpha3, items[q])) is not None}
    try:
        return indicator_values(dists)
    except MapError:
        return None


def fit_table():
    """(fit countries, values [n, 10], published [n, 2], left_out {country: reason}) from the bundled data."""
    shares, items = BundledShares(), all_items()
    chosen, values, published, left_out = [], [], [], {}
    for alpha3 in shares.countries():
        lacking = [q for q in map_items() if shares.distribution(alpha3, items[q]) is None]
        position = published_position(alpha3)
        if lacking:
            left_out[alpha3] = f"bundled shares lack {', '.join(lacking)}"
        elif position is None:
            left_out[alpha3] = "no published map position in agents/cultures"
        else:
            chosen.append(alpha3)
            values.append(survey_values(shares, alpha3))
            published.append(position)
    return chosen, np.array(values), np.array(published), left_out


def build() -> dict:
    countries, values, published, left_out = fit_table()
    proj = fit(values, published)
    projected, loo = proj.project(values), leave_one_out(values, published)
    data_files = sorted({fname for fname, _ in BundledShares.SOURCES.values()})
    info = {
        "method": METHOD,
        "fit_countries": countries,
        "left_out": left_out,
        "validation": {"in_sample": agreement(projected, published), "leave_one_out": agreement(loo, published)},
        "countries": {c: {"values": dict(zip(keys(), v.tolist())), "published": list(p), "projected": q.tolist(),
                          "leave_one_out": lo.tolist()}
                      for c, v, p, q, lo in zip(countries, values, published, projected, loo)},
        "provenance": {
            "command": "python -m eval.culture_map.fit",
            "survey": "bundled WVS-7 shares (eval/wvs/data), renormalised over valid answers, unweighted",
            "published_positions": "agents/cultures/*.yaml inglehart_welzel.self_expression_score, secular_score "
                                    "(IVS 1981-2022 country factor scores, latest survey; see agents/cultures/README.md)",
            "data_sha256": {f: _sha256(DATA_DIR / f) for f in data_files}
            | {"iw_items.yaml": _sha256(DATA_DIR / "iw_items.yaml")},
            "git_commit": (git := git_state())["commit"], "git_dirty": git["dirty"],
            "date": datetime.date.today().isoformat(),
        },
    }
    return {**proj.to_json(), **info}


def main(argv: list[str] | None = None) -> None:
    parser = cli.ArgumentParser(prog="python -m eval.culture_map.fit", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(PROJECTION_FILE), help="where to write the projection JSON")
    parser.add_argument("--check", action="store_true", help="refit and compare with the stored file, write nothing")
    args = parser.parse_args(argv)
    data = build()
    if args.check:
        stored = json.loads(PROJECTION_FILE.read_text())
        if not _close(_core(stored), _core(data)):
            sys.exit(f"error: {PROJECTION_FILE} differs from a refit on the bundled data; rerun without --check")
        print(f"{PROJECTION_FILE}: matches a refit")
        return
    with open(args.out, "w") as fh:
        json.dump(data, fh, indent=1)
        fh.write("\n")
    print(f"fitted on {len(data['fit_countries'])} countries: {' '.join(data['fit_countries'])}")
    for kind, figures in data["validation"].items():
        print(f"{kind:14} " + "  ".join(f"{k}={v:.3f}" for k, v in figures.items()))
    print(f"wrote {args.out}")


def _core(data: dict) -> dict:
    """What a refit must reproduce: the parameters and the positions, not the date or commit."""
    return {k: v for k, v in data.items() if k != "provenance"}


def _close(a, b, tol: float = 1e-9) -> bool:
    """Equal structure, numbers within tol (a refit on another BLAS may differ in the last bits)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        return abs(a - b) <= tol
    return a == b


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


if __name__ == "__main__":
    main()
