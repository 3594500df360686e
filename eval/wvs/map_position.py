"""A model's position on the map from an evaluation's answers, with the evaluator's bootstrap.

The model's distribution over each item's options (INVALID dropped, the rest renormalised, as for a
respondent's missing answer) gives the indicator values, which the stored projection maps to a
position. With persona prompts the distribution is the mean over personas, so each run (one prompt
condition) gives one point per country. The target is the country's own position from the same
survey shares the run compares against, projected the same way; `map_distance` is the Euclidean
distance between the two, in the published map's units.

Bootstrap. The position's replicates (its covariance, the ellipse drawn) reuse the unit (persona or
sample) resampling weights of `eval.wvs.score`; with one unit (logprob and a country prompt) they are
all equal and the ellipse is a point. `map_distance`'s replicates also resample the map's ten
indicators (its items), with replacement within each map dimension (`indicator_resample`), and
project the model and the target with the same draw: a position is linear in its indicators, so a
drawn indicator counts as often as it was drawn. The distance so has a real interval even with a
single unit; it is zero-width only where model and target agree on every indicator.

`map_section` is the results JSON's `map` key: per country, the model's position with its bootstrap covariance,
the target, the published position where a culture file has one, and which projection produced them.
"""

from __future__ import annotations

import hashlib

import numpy as np

from agents.cultures import CultureError, load_culture
from eval.wvs.map_indicators import DIMENSIONS, indicator_values, indicators, keys, map_items
from eval.wvs.map_projection import PROJECTION_FILE, load_projection


def indicator_resample(rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """[n_boot, 10] how often each indicator is drawn when each map dimension's indicators are resampled with
    replacement (each row sums to 5 per dimension)."""
    dims = np.array([DIMENSIONS.index(ind.dimension) for ind in indicators()])
    counts = np.zeros((n_boot, len(dims)))
    for d in range(len(DIMENSIONS)):
        cols = np.flatnonzero(dims == d)
        picks = cols[rng.integers(0, len(cols), size=(n_boot, len(cols)))]
        np.add.at(counts, (np.arange(n_boot)[:, None], picks), 1.0)
    return counts


def country_position(qids: list[str], survey: list[np.ndarray], rows: list[np.ndarray],
                     weights: np.ndarray, indicator_weights: np.ndarray | None = None) -> tuple[dict, dict] | None:
    """Map position of one country's answers, or None when a map item is absent.

    qids: the items scored for the country; survey: per item, shares [options]; rows: per item, the
    unit distributions [units, options + 1] (last column INVALID); weights: [n_boot, units] unit
    resampling weights (each row sums to 1); indicator_weights: [n_boot, 10] from `indicator_resample`
    for map_distance's replicates (None: units only).
    Returns (map_distance {row: (value, replicates [n_boot])} for the rows model, uniform and
    survey_majority; a JSON-ready record with positions, indicator values and the replicate
    covariance).
    """
    index = {q: i for i, q in enumerate(qids)}
    if any(q not in index for q in map_items()):
        return None
    proj = load_projection()
    pick = lambda arrays: {q: arrays[index[q]] for q in map_items()}
    target_values = indicator_values(pick(survey))
    target = proj.project(target_values)
    model_values = indicator_values({q: r.mean(axis=0)[:-1] for q, r in pick(rows).items()})
    model = proj.project(model_values)
    rep_values = indicator_values({q: (weights @ r)[:, :-1] for q, r in pick(rows).items()})
    reps = proj.project(rep_values)
    reference_values = {
        "uniform": indicator_values({q: np.ones(len(s)) for q, s in pick(survey).items()}),
        "survey_majority": indicator_values({q: np.eye(len(s))[int(np.argmax(s))] for q, s in pick(survey).items()}),
    }
    references = {row: proj.project(v) for row, v in reference_values.items()}
    target_reps = proj.project(target_values, indicator_weights)
    dist_reps = lambda values: np.linalg.norm(proj.project(values, indicator_weights) - target_reps, axis=-1)
    distances = {"model": (_dist(model, target), dist_reps(rep_values))}
    distances |= {row: (_dist(references[row], target), dist_reps(np.broadcast_to(v, rep_values.shape)))
                  for row, v in reference_values.items()}
    valid = reps[~np.isnan(reps).any(axis=1)]
    record = {
        "model": {"position": _pair(model), "values": _named(model_values),
                  "cov": np.cov(valid.T).tolist() if len(valid) > 1 else None, "replicates": len(valid)},
        "target": {"position": _pair(target), "values": _named(target_values),
                   "source": "the survey shares this run compares against, projected the same way"},
        **{row: {"position": _pair(p)} for row, p in references.items()},
    }
    return distances, record


def _dist(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b))


def _pair(p: np.ndarray) -> list[float | None]:
    return [None if np.isnan(x) else float(x) for x in p]


def _named(values: np.ndarray) -> dict[str, float | None]:
    return {k: None if np.isnan(v) else float(v) for k, v in zip(keys(), values)}


def published_position(alpha3: str) -> tuple[float, float] | None:
    """(self-expression, secular) from the culture file, or None without a file or without scores."""
    try:
        iw = load_culture(alpha3).inglehart_welzel
    except CultureError:
        return None
    if iw.self_expression_score is None or iw.secular_score is None:
        return None
    return (iw.self_expression_score, iw.secular_score)




def map_section(positions: dict[str, dict | None]) -> dict | None:
    """results["map"] from {country: record of `country_position` or None}."""
    located = {c: r for c, r in positions.items() if r is not None}
    if not located:
        return None
    proj = load_projection()
    return {
        "projection": {"file": str(PROJECTION_FILE.relative_to(PROJECTION_FILE.parents[3])),
                       "sha256": hashlib.sha256(PROJECTION_FILE.read_bytes()).hexdigest(),
                       "method": proj.info.get("method"), "fit_countries": proj.info.get("fit_countries"),
                       "leave_one_out": proj.info.get("validation", {}).get("leave_one_out")},
        "axes": ["self_expression", "secular"],
        "countries": {c: {**r, "published": (list(p) if (p := published_position(c)) else None)}
                      for c, r in located.items()},
    }
