"""Metrics per item, per country and overall, with seeded bootstrap confidence intervals.

Bootstrap design: each replicate resamples the units (personas or samples) of a country with
replacement, which moves every item's model distribution, and resamples the country's items with
replacement, which moves the country mean. Item CIs show unit (persona) uncertainty only; country
CIs show both; the overall value is the mean over countries and its CI the mean of the country
replicates. CIs are 2.5/97.5 percentiles. The survey side is treated as fixed.

`map_distance` (see `eval.wvs.map_position`) is a country-level value, not an item mean: the
distance on the Inglehart-Welzel map between the model's position and the country's, from the ten
map indicators; its replicates use the same unit resampling and resample the ten indicators (the
map's items) within each map dimension. It is None where the run lacks a map item.

`anchored_score` = 100 * (1 - JS_model / JS_uniform), from the country's mean JS of the model and of
the uniform answerer over the same items (and, per replicate, the same item resample): 0 is the
uniform answerer, 100 the survey itself, negative worse than uniform.

Reference rows use the same items and item resamples: `uniform` answers every option equally often,
`survey_majority` always gives the survey's most common answer. Their accuracy is the expected
accuracy against the same respondents (1/options for uniform).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from eval.wvs.items import Item
from eval.wvs.map_position import country_position, indicator_resample
from eval.wvs.metrics import METRICS, answered_as_surveyed
from eval.wvs.readers import ItemAnswers

ROWS = ("model", "uniform", "survey_majority")


@dataclass
class CountryInput:
    items: list[Item]  # items with survey data in this country
    survey: list[np.ndarray]  # per item, shares over options (no INVALID bin)
    answers: list[ItemAnswers]
    truth: np.ndarray | None  # [units, items] respondents' own codes (-1 missing); None if unknown


def score_country(data: CountryInput, n_boot: int, rng: np.random.Generator) -> tuple[dict, list[dict], dict | None]:
    """(summary {row: {metric: {value, ci}}}, one record per item, map record or None without the map's items)."""
    n_units, n_items = data.answers[0].rows.shape[0], len(data.items)
    unit_idx = rng.integers(0, n_units, size=(n_boot, n_units))
    counts = np.zeros((n_boot, n_units))
    np.add.at(counts, (np.arange(n_boot)[:, None], unit_idx), 1.0)
    weights = counts / n_units  # replicate b's model distribution is weights[b] @ rows
    item_idx = rng.integers(0, n_items, size=(n_boot, n_items))
    indicator_weights = indicator_resample(rng, n_boot)

    names = [*METRICS, "invalid_rate", "off_option_mass", "accuracy"]
    point = {row: {m: np.full(n_items, np.nan) for m in names} for row in ROWS}
    reps = {row: {m: np.full((n_boot, n_items), np.nan) for m in names} for row in ROWS}
    records = []
    for i, (item, shares, ans) in enumerate(zip(data.items, data.survey, data.answers)):
        s = np.append(shares, 0.0)
        k = len(item.codes)
        references = {
            "model": (ans.rows.mean(axis=0), weights @ ans.rows),
            "uniform": (np.append(np.full(k, 1.0 / k), 0.0), None),
            "survey_majority": (np.eye(k + 1)[int(np.argmax(shares))], None),
        }
        for row, (m, m_reps) in references.items():
            for name, metric in METRICS.items():
                if metric.ordinal_only and item.scale != "ordinal":
                    continue
                point[row][name][i] = metric.fn(s, m)
                reps[row][name][:, i] = metric.fn(s[None], m_reps) if m_reps is not None else point[row][name][i]
            point[row]["invalid_rate"][i] = m[-1]
            reps[row]["invalid_rate"][:, i] = m_reps[:, -1] if m_reps is not None else m[-1]
        if ans.off_option_mass is not None:
            point["model"]["off_option_mass"][i] = ans.off_option_mass.mean()
            reps["model"]["off_option_mass"][:, i] = weights @ ans.off_option_mass
        if data.truth is not None:
            truth = data.truth[:, i]
            mode = item.codes[int(np.argmax(shares))]
            per_unit = {
                "model": answered_as_surveyed(ans.codes, truth),
                "uniform": np.where(truth >= 0, 1.0 / k, 0.0),
                "survey_majority": answered_as_surveyed(np.full_like(truth, mode), truth),
            }
            for row, correct in per_unit.items():
                point[row]["accuracy"][i] = correct.mean()
                reps[row]["accuracy"][:, i] = weights @ correct.astype(float)
        records.append(_item_record(item, shares, ans, point, reps, i))

    summary = {}
    for row in ROWS:
        summary[row] = {}
        for name in names:
            value = _nanmean(point[row][name])
            per_rep = _nanmean(np.take_along_axis(reps[row][name], item_idx, axis=1), axis=1)
            summary[row][name] = {"value": value, "ci": _ci(per_rep), "_reps": per_rep}
    for row in ROWS:
        summary[row]["anchored_score"] = anchored(summary[row]["js"], summary["uniform"]["js"])
    located = country_position([it.qid for it in data.items], data.survey, [a.rows for a in data.answers], weights,
                               indicator_weights)
    distances, map_record = located if located else ({}, None)
    for row in ROWS:
        value, per_rep = distances.get(row, (np.nan, np.full(n_boot, np.nan)))
        summary[row]["map_distance"] = {"value": _float(value), "ci": _ci(per_rep), "_reps": per_rep}
    return summary, records, map_record


def anchored(js: dict, js_uniform: dict) -> dict:
    """anchored_score cell {value, ci, _reps} from the JS cells {value, _reps} of a row and of the uniform row."""
    if js["value"] is None or not js_uniform["value"]:
        return {"value": None, "ci": [None, None], "_reps": np.full(len(js["_reps"]), np.nan)}
    with np.errstate(divide="ignore", invalid="ignore"):
        per_rep = 100.0 * (1.0 - js["_reps"] / js_uniform["_reps"])
    return {"value": 100.0 * (1.0 - js["value"] / js_uniform["value"]), "ci": _ci(per_rep), "_reps": per_rep}


def overall(countries: dict[str, dict]) -> dict:
    """Mean over countries of each country's value; its CI from the mean of country replicates."""
    out = {}
    for row in ROWS:
        out[row] = {}
        for name in next(iter(countries.values()))[row]:
            values = np.array([c[row][name]["value"] for c in countries.values()], dtype=float)
            per_rep = _nanmean(np.stack([c[row][name]["_reps"] for c in countries.values()]), axis=0)
            out[row][name] = {"value": _nanmean(values), "ci": _ci(per_rep)}
    return out


def headline(per_format: list[dict[str, dict]]) -> dict[str, dict]:
    """The mean over formats, per country: from one {country: summary with replicates} per format (all scored
    with the same resamples, so replicate b of every format used the same units and items) to {country:
    {row: {metric: {value, ci, sd, min, max, _reps}}}}: value the mean over formats, ci from the mean of the
    formats' replicates, sd/min/max the spread across formats (`spread`)."""
    out = {}
    for country, first in per_format[0].items():
        out[country] = {}
        for row, metrics in first.items():
            out[country][row] = {}
            for name in metrics:
                cells = [pf[country][row][name] for pf in per_format]
                reps = _nanmean(np.stack([c["_reps"] for c in cells]), axis=0)
                out[country][row][name] = {**spread([c["value"] for c in cells]), "ci": _ci(reps), "_reps": reps}
    return out


def with_spread(overall_cells: dict, per_format_overall: list[dict]) -> dict:
    """`overall(...)` of the headline with each cell's spread across the formats' own overall values."""
    return {row: {name: {**cell, **{k: v for k, v in spread([o[row][name]["value"] for o in per_format_overall]).items()
                                    if k != "value"}}
                  for name, cell in metrics.items()} for row, metrics in overall_cells.items()}


def spread(values: list[float | None]) -> dict:
    """Mean over formats and the spread across them: {value, sd (ddof 1; None for one format), min, max};
    all None where a format has no value."""
    if not values or any(v is None for v in values):
        return {"value": None, "sd": None, "min": None, "max": None}
    x = np.array(values, dtype=float)
    return {"value": float(x.mean()), "sd": float(x.std(ddof=1)) if len(x) > 1 else None,
            "min": float(x.min()), "max": float(x.max())}


def strip_replicates(summary: dict) -> dict:
    return {row: {name: {k: v for k, v in cell.items() if k != "_reps"} for name, cell in metrics.items()}
            for row, metrics in summary.items()}


def _item_record(item: Item, shares: np.ndarray, ans: ItemAnswers, point: dict, reps: dict, i: int) -> dict:
    return {
        "qid": item.qid,
        "scale": item.scale,
        "units": int(ans.rows.shape[0]),
        "survey": [float(x) for x in shares],
        "model": [float(x) for x in ans.rows.mean(axis=0)],  # options then INVALID
        "metrics": {
            name: {"value": _float(point["model"][name][i]), "ci": _ci(reps["model"][name][:, i])}
            for name in point["model"]
        },
        "reference": {row: {name: _float(point[row][name][i]) for name in METRICS} for row in ROWS[1:]},
    }


def _nanmean(x: np.ndarray, axis=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = np.nanmean(x, axis=axis)
    return _float(result) if axis is None else result


def _ci(values: np.ndarray) -> list[float | None]:
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return [None, None]
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


def _float(x) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x
