"""A model's position on the map from an evaluation's answers, with the evaluator's bootstrap.

The model's distribution over each item's options (INVALID dropped, the rest renormalised, as for a
respondent's missing answer) gives the indicator values, which the stored projection maps to a
position. With persona prompts the distribution is the mean over personas, so each run (one prompt
condition) gives one point per country. The target is the country's own position from the same
survey shares the run compares against, projected the same way; `map_distance` is the Euclidean
distance between the two, in the published map's units. Bootstrap replicates reuse the unit
(persona or sample) resampling weights of `eval.wvs.score`; items are not resampled, since the
position needs all ten indicators. With one unit (logprob and a country prompt) the replicates are
all equal and the ellipse is a point: there is no unit-level uncertainty to show.
"""

from __future__ import annotations

import numpy as np

from eval.culture_map.indicators import indicator_values, keys, map_items
from eval.culture_map.projection import load_projection


def country_position(qids: list[str], survey: list[np.ndarray], rows: list[np.ndarray],
                     weights: np.ndarray) -> tuple[dict, dict] | None:
    """Map position of one country's answers, or None when a map item is absent.

    qids: the items scored for the country; survey: per item, shares [options]; rows: per item, the
    unit distributions [units, options + 1] (last column INVALID); weights: [n_boot, units] unit
    resampling weights (each row sums to 1).
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
    reps = proj.project(indicator_values({q: (weights @ r)[:, :-1] for q, r in pick(rows).items()}))
    references = {
        "uniform": proj.project(indicator_values({q: np.ones(len(s)) for q, s in pick(survey).items()})),
        "survey_majority": proj.project(indicator_values(
            {q: np.eye(len(s))[int(np.argmax(s))] for q, s in pick(survey).items()})),
    }
    n_boot = len(weights)
    distances = {"model": (_dist(model, target), np.linalg.norm(reps - target, axis=-1))}
    distances |= {row: (_dist(p, target), np.full(n_boot, _dist(p, target))) for row, p in references.items()}
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
