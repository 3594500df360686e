"""Paired bootstrap of the difference between two evaluations of the same protocol (base and adapted).

Each replicate draws one resample and scores both runs on it, so what the two runs share (the
items, the respondents) cancels out of the difference instead of widening its interval:

- items are always resampled (with replacement, the same draw for both runs);
- personas are resampled too where both runs asked the same respondents (persona prompts: the
  answers records carry each unit's own survey code and the unit ids match); with country prompts
  the units are independent samples of each run, not shared, so the model distribution of each run
  is its mean over its own units and only items are resampled (`Paired.resampled` says which);
- `map_distance` resamples the ten map indicators within each map dimension (the same draw for both
  runs and their target, `eval.wvs.map_position.indicator_resample`), besides units.

A format sweep is compared on the formats both runs asked: each replicate's value is the mean over
those formats, every format scored on the same resample.

For each country and metric: the point difference (adapted - base, full data), its 95% percentile
interval, the two-sided bootstrap p-value p = min(1, 2 min(#(d <= 0) + 1, #(d >= 0) + 1) / (B + 1)),
Holm's step-down correction across every country x metric shown, and a verdict: `closer` (to the
survey: lower distance, higher accuracy or anchored score) or `further` where the Holm-corrected p is
below 0.05, else `no detectable change`.

Inputs are the results JSON and the NAME.answers.jsonl written beside it by `python -m eval.wvs`.
Errors: `PairedError` (one line) for a missing answers file or runs that share no country or format.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eval.wvs.items import all_items
from eval.wvs.map_indicators import map_items
from eval.wvs.map_position import country_position, indicator_resample
from eval.wvs.metrics import METRICS, answered_as_surveyed

HIGHER_IS_BETTER = {"accuracy", "anchored_score"}
PAIRED_METRICS = ["js", "anchored_score", "kl", "paper_kl", "emd", "map_distance", "accuracy", "invalid_rate"]
ALPHA = 0.05


class PairedError(ValueError):
    pass


@dataclass
class CountryAnswers:
    """One run's answers in one country."""

    survey: dict[str, np.ndarray]  # qid -> survey shares [options]
    scale: dict[str, str]  # qid -> ordinal | nominal
    rows: dict[tuple[str, str], dict[str, np.ndarray]]  # (format, qid) -> unit -> [options + 1], INVALID last
    codes: dict[tuple[str, str], dict[str, int]]  # (format, qid) -> unit -> the unit's single answer
    truth: dict[str, dict[str, int]]  # qid -> unit -> the respondent's own code (persona runs only)


@dataclass
class Row:
    country: str
    metric: str
    base: float
    adapted: float
    delta: float
    ci: tuple[float, float]
    p: float
    p_holm: float = 1.0
    verdict: str = "no detectable change"


@dataclass
class Paired:
    rows: list[Row]
    resampled: dict[str, str]  # country -> "personas and items" | "items"
    formats: list[str]
    n_boot: int
    notes: list[str]


def answers_path(results_path: str | Path) -> Path:
    return Path(results_path).with_suffix("").with_suffix(".answers.jsonl")


def load_answers(results: dict, results_path: str | Path) -> dict[str, CountryAnswers]:
    """country -> CountryAnswers from a results dict and the answers JSONL beside its file."""
    path = answers_path(results_path)
    if not path.exists():
        raise PairedError(f"{path}: no answers file beside {results_path} (paired differences need every unit's answer)")
    out: dict[str, CountryAnswers] = {}
    for r in results["items"]:
        c = out.setdefault(r["country"], CountryAnswers({}, {}, defaultdict(dict), defaultdict(dict), defaultdict(dict)))
        c.survey[r["qid"]], c.scale[r["qid"]] = np.array(r["survey"], dtype=float), r["scale"]
    with path.open() as fh:
        for n, line in enumerate(fh, 1):
            try:
                a = json.loads(line)
                c = out[a["country"]]
                if a["qid"] not in c.survey:
                    raise KeyError(a["qid"])
            except (json.JSONDecodeError, KeyError) as exc:
                raise PairedError(f"{path}: line {n}: not an answer record of this results file ({exc})") from None
            key = (a.get("format", "default"), a["qid"])
            c.rows[key][a["unit"]] = _row(a, all_items()[a["qid"]].codes)
            c.codes[key][a["unit"]] = int(a["code"])
            if "survey_code" in a:
                c.truth[a["qid"]][a["unit"]] = int(a["survey_code"])
    return out


def _row(a: dict, codes: tuple[int, ...]) -> np.ndarray:
    """A unit's answer as a distribution over the options plus INVALID: its probabilities (logprob) or stated
    shares (distribution), renormalised after rounding, else its code (generate)."""
    dist = a.get("probs", a.get("shares"))
    row = np.zeros(len(codes) + 1)
    if dist is not None and sum(dist) > 0:
        row[:-1] = np.array(dist, dtype=float) / sum(dist)
    elif dist is None and a["code"] in codes:
        row[codes.index(a["code"])] = 1.0
    else:
        row[-1] = 1.0
    return row


def compare(base: dict, adapted: dict, base_answers: dict[str, CountryAnswers],
            adapted_answers: dict[str, CountryAnswers], n_boot: int = 2000, seed: int = 0) -> Paired:
    """Paired differences for every shared country and metric, Holm-corrected together."""
    formats = [f for f in base["provenance"].get("formats", ["default"])
               if f in adapted["provenance"].get("formats", ["default"])]
    if not formats:
        raise PairedError("the two runs share no question format")
    countries = [c for c in base_answers if c in adapted_answers]
    if not countries:
        raise PairedError("the two runs share no country")
    rng = np.random.default_rng(seed)
    rows, resampled, notes = [], {}, []
    for country in countries:
        b, a = base_answers[country], adapted_answers[country]
        qids = [q for q in b.survey if q in a.survey and all((f, q) in b.rows and (f, q) in a.rows for f in formats)]
        if differ := [q for q in qids if not np.allclose(b.survey[q], a.survey[q])]:
            notes.append(f"{country}: the runs' survey shares differ on {', '.join(differ)}; both are scored "
                         "against the base run's")
        units = _shared_personas(b, a, qids, formats)
        resampled[country] = "personas and items" if units else "items"
        n_units = len(units) if units else 1
        unit_idx = rng.integers(0, n_units, size=(n_boot, n_units))
        weights = np.zeros((n_boot, n_units))
        np.add.at(weights, (np.arange(n_boot)[:, None], unit_idx), 1.0 / n_units)
        item_idx = rng.integers(0, len(qids), size=(n_boot, len(qids)))
        indicator_weights = indicator_resample(rng, n_boot)
        scored = [_score_run(run, b, qids, formats, units, weights, item_idx, indicator_weights) for run in (b, a)]
        for metric in PAIRED_METRICS:
            (pb, rb), (pa, ra) = scored[0].get(metric, (None, None)), scored[1].get(metric, (None, None))
            if pb is None or pa is None:
                continue
            d = ra - rb
            d = d[~np.isnan(d)]
            if d.size == 0:
                continue
            lo, hi = np.percentile(d, [2.5, 97.5])
            p = min(1.0, 2 * min((d <= 0).sum() + 1, (d >= 0).sum() + 1) / (d.size + 1))
            rows.append(Row(country, metric, pb, pa, pa - pb, (float(lo), float(hi)), float(p)))
    for row, p_holm in zip(rows, holm([r.p for r in rows])):
        row.p_holm = p_holm
        if p_holm < ALPHA:
            better = row.delta > 0 if row.metric in HIGHER_IS_BETTER else row.delta < 0
            row.verdict = "closer" if better else "further"
    return Paired(rows, resampled, formats, n_boot, notes)


def holm(p: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order."""
    order = np.argsort(p)
    adjusted = np.empty(len(p))
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def _shared_personas(b: CountryAnswers, a: CountryAnswers, qids: list[str], formats: list[str]) -> list[str]:
    """Unit ids both runs asked every item in every format, where both are persona runs; [] otherwise."""
    if not b.truth or not a.truth:
        return []
    shared = None
    for run in (b, a):
        for f in formats:
            for q in qids:
                have = set(run.rows[(f, q)])
                shared = have if shared is None else shared & have
    return sorted(shared or [])


def _score_run(run: CountryAnswers, survey_run: CountryAnswers, qids: list[str], formats: list[str],
               units: list[str], weights: np.ndarray, item_idx: np.ndarray,
               indicator_weights: np.ndarray) -> dict[str, tuple[float, np.ndarray]]:
    """metric -> (value, replicates [n_boot]) of one run, each the mean over the formats."""
    per_format = []
    for f in formats:
        rows = [_unit_rows(run, f, q, units) for q in qids]
        out = {}
        for name, metric in METRICS.items():
            point, reps = _item_metric(qids, survey_run, rows, weights, item_idx,
                                       lambda s, m, fn=metric.fn: fn(s, m),
                                       lambda q, metric=metric: metric.ordinal_only and survey_run.scale[q] != "ordinal")
            out[name] = (point, reps)
        out["invalid_rate"] = _item_metric(qids, survey_run, rows, weights, item_idx, lambda s, m: m[..., -1],
                                           lambda q: False)
        uniform = _item_metric(qids, survey_run, [np.append(np.full(len(s), 1 / len(s)), 0.0)[None]
                                                  for s in (survey_run.survey[q] for q in qids)],
                               np.ones((len(weights), 1)), item_idx, METRICS["js"].fn, lambda q: False)
        if out["js"][0] is not None and uniform[0]:
            with np.errstate(divide="ignore", invalid="ignore"):
                out["anchored_score"] = (100 * (1 - out["js"][0] / uniform[0]), 100 * (1 - out["js"][1] / uniform[1]))
        if units and all(run.truth.get(q) for q in qids):
            hits = [answered_as_surveyed(np.array([run.codes[(f, q)][u] for u in units]),
                                         np.array([run.truth[q].get(u, -1) for u in units])).astype(float)
                    for q in qids]
            point = np.mean([h.mean() for h in hits])
            reps = np.stack([weights @ h for h in hits], axis=1)
            out["accuracy"] = (float(point), np.take_along_axis(reps, item_idx, axis=1).mean(axis=1))
        if not [q for q in map_items() if q not in qids]:
            located = country_position(qids, [survey_run.survey[q] for q in qids], rows, weights, indicator_weights)
            if located is not None:
                value, reps = located[0]["model"]
                out["map_distance"] = (value, reps)
        per_format.append(out)
    names = set.intersection(*({n for n, (v, _) in o.items() if v is not None} for o in per_format))
    return {n: (float(np.mean([o[n][0] for o in per_format])), _nanmean(np.stack([o[n][1] for o in per_format])))
            for n in names}


def _unit_rows(run: CountryAnswers, fmt: str, qid: str, units: list[str]) -> np.ndarray:
    """[units, options + 1] in the shared unit order; without shared personas, [1, options + 1]: the run's mean."""
    by_unit = run.rows[(fmt, qid)]
    if units:
        return np.stack([by_unit[u] for u in units])
    return np.mean(np.stack(list(by_unit.values())), axis=0, keepdims=True)


def _item_metric(qids, survey_run, rows, weights, item_idx, fn, skip) -> tuple[float | None, np.ndarray]:
    """(country value: mean over items, replicates: mean over each replicate's resampled items)."""
    point = np.full(len(qids), np.nan)
    reps = np.full((len(weights), len(qids)), np.nan)
    for i, (q, r) in enumerate(zip(qids, rows)):
        if skip(q):
            continue
        s = np.append(survey_run.survey[q], 0.0)
        point[i] = fn(s, r.mean(axis=0))
        reps[:, i] = fn(s[None], weights @ r)
    value = _nanmean(point)
    return (None if np.isnan(value) else float(value)), _nanmean(np.take_along_axis(reps, item_idx, axis=1), axis=1)


def _nanmean(x: np.ndarray, axis=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)
