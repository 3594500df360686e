"""Map positions read back from `eval.wvs` results files (`eval.wvs.map_position.map_section` writes them).

`read_points` turns a results file into one `Point` per country. The positions are
recomputed from the file's item records (the model's mean distribution and the survey shares, both
stored at full precision), so results written before the map existed also work; the covariance
comes from the `map` key when there is one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eval.wvs.map_indicators import MapError, indicator_values, map_items
from eval.wvs.map_projection import load_projection


@dataclass(frozen=True)
class Point:
    path: str
    country: str  # ISO alpha-3 of the run's country (and its target)
    model: str
    adapter: str | None
    prompt: str  # prompt condition: country, persona, cultural, none
    method: str  # logprob or generate
    position: np.ndarray  # [2] (self-expression, secular)
    target: np.ndarray  # [2] the country's position from the run's survey shares
    cov: np.ndarray | None  # [2, 2] bootstrap covariance of the position; None if unknown
    units: int

    @property
    def distance(self) -> float:
        return float(np.linalg.norm(self.position - self.target))

    @property
    def label(self) -> str:
        name = self.model + (f" + {Path(self.adapter).name}" if self.adapter else "")
        return f"{name} ({self.prompt} prompt, {self.method})"


def read_points(path: str | Path) -> list[Point]:
    """One Point per country of an `eval.wvs` results JSON; MapError (one line) if it cannot be placed."""
    try:
        results = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MapError(f"{path}: cannot read results JSON ({exc})") from exc
    if not isinstance(results, dict) or "items" not in results or "provenance" not in results:
        raise MapError(f"{path}: not a results file of python -m eval.wvs (no items/provenance)")
    prov, proj = results["provenance"], load_projection()
    stored = (results.get("map") or {}).get("countries", {})
    points = []
    first = (prov.get("formats") or ["default"])[0]  # a format sweep is placed by its first format's answers
    for country in prov.get("counts", {}) or sorted({r["country"] for r in results["items"]}):
        records = {r["qid"]: r for r in results["items"] if r["country"] == country and r.get("format", first) == first}
        lacking = [q for q in map_items() if q not in records]
        if lacking:
            asked = set(prov.get("items", []))
            hint = ("the survey has no data for them here; pass --wvs-file" if set(lacking) <= asked
                    else "run python -m eval.wvs with --items iw10")
            raise MapError(f"{path}: {country} lacks the culture map's items {', '.join(lacking)} ({hint})")
        model = proj.project(indicator_values({q: np.array(records[q]["model"][:-1]) for q in map_items()}))
        target = proj.project(indicator_values({q: np.array(records[q]["survey"]) for q in map_items()}))
        if np.isnan(model).any():
            raise MapError(f"{path}: {country}: the model gave no valid answer to some map item (all INVALID)")
        cov = (stored.get(country) or {}).get("model", {}).get("cov")
        cfg = prov["config"]
        points.append(Point(str(path), country, cfg["model"], cfg.get("adapter"), prov.get("prompt", "?"),
                            cfg.get("method", "?"), model, target, np.array(cov) if cov is not None else None,
                            int(records[map_items()[0]]["units"])))
    return points
