"""A linear map from the ten indicator values to a position on the Inglehart-Welzel map.

The fit, on countries with both survey shares for all ten indicators and a published map position:

1. orient each indicator by its polarity and standardise it over the fit countries (mean, SD);
2. per map dimension, the first principal component of its own five indicators (the item-to-
   dimension assignment of Inglehart & Welzel 2005, Table 2.1, where each indicator loads on one
   dimension), its sign chosen so that the weights sum to a positive number;
3. the two component scores aligned to the published positions (centred) by one rotation (no
   reflection) and one scale factor, least squares (orthogonal Procrustes), plus the published
   centroid.

So position = centre + scale * (((values - mean) / sd * toward) @ weights) @ rotation, in the
published map's units (x = self-expression, y = secular-rational). Only the rotation angle, the
scale and the centre are fitted to the published positions; the weights come from the survey values.
This is not the official map, which is a factor analysis of respondent-level IVS data; it is a
small country-level stand-in, validated by leave-one-country-out (`leave_one_out`).

`fit_pca` is the alternative the validation compares it with: the first two principal components of
all ten indicators, aligned the same way (with reflection allowed, since their signs are arbitrary).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eval.wvs.map_indicators import DATA_DIR, DIMENSIONS, MapError, indicators, keys

PROJECTION_FILE = DATA_DIR / "projection.json"


@dataclass(frozen=True)
class Projection:
    keys: tuple[str, ...]  # indicator order of every vector below
    mean: np.ndarray  # [10] fit countries' mean of each indicator (its own scale)
    sd: np.ndarray  # [10] their standard deviation (ddof 0)
    toward: np.ndarray  # [10] polarity, +1 or -1
    weights: np.ndarray  # [10, 2] component weights (columns: self-expression, secular)
    rotation: np.ndarray  # [2, 2]
    scale: float
    centre: np.ndarray  # [2] published centroid of the fit countries
    info: dict = field(default_factory=dict, compare=False)  # provenance, validation, country positions

    @property
    def matrix(self) -> np.ndarray:
        """[10, 2] A such that position = values @ A + offset."""
        return ((self.toward / self.sd)[:, None] * self.weights) @ self.rotation * self.scale

    @property
    def offset(self) -> np.ndarray:
        return self.centre - self.mean @ self.matrix

    def project(self, values: np.ndarray, indicator_weights: np.ndarray | None = None) -> np.ndarray:
        """[..., 10] indicator values -> [..., 2] positions (self-expression, secular); NaN stays NaN.

        indicator_weights: [..., 10] multiplies each standardised indicator (a bootstrap over indicators,
        `position.indicator_resample`, gives each its count in the replicate); None: all 1."""
        z = (np.asarray(values, dtype=float) - self.mean) / self.sd * self.toward
        if indicator_weights is not None:
            z = z * indicator_weights
        return self.centre + self.scale * (z @ self.weights) @ self.rotation

    def to_json(self) -> dict:
        return {"keys": list(self.keys), "mean": self.mean.tolist(), "sd": self.sd.tolist(),
                "toward": self.toward.tolist(), "weights": self.weights.tolist(),
                "rotation": self.rotation.tolist(), "scale": self.scale, "centre": self.centre.tolist(),
                **self.info}

    @classmethod
    def from_json(cls, data: dict) -> Projection:
        core = ("keys", "mean", "sd", "toward", "weights", "rotation", "scale", "centre")
        arrays = {k: np.array(data[k], dtype=float) for k in core if k not in ("keys", "scale")}
        return cls(keys=tuple(data["keys"]), scale=float(data["scale"]), **arrays,
                   info={k: v for k, v in data.items() if k not in core})


def fit(values: np.ndarray, published: np.ndarray) -> Projection:
    """values [n, 10] (indicator order of `keys()`), published [n, 2] -> the per-dimension projection."""
    mean, sd, toward, z = _standardise(values)
    dims = np.array([DIMENSIONS.index(ind.dimension) for ind in indicators()])
    weights = np.zeros((len(mean), 2))
    for d in range(2):
        cols = np.flatnonzero(dims == d)
        w = np.linalg.svd(z[:, cols], full_matrices=False)[2][0]
        weights[cols, d] = w if w.sum() > 0 else -w
    return _align(mean, sd, toward, weights, z, published, reflection=False)


def fit_pca(values: np.ndarray, published: np.ndarray) -> Projection:
    """The comparison method: two principal components of all ten standardised indicators."""
    mean, sd, toward, z = _standardise(values)
    weights = np.linalg.svd(z, full_matrices=False)[2][:2].T
    return _align(mean, sd, toward, weights, z, published, reflection=True)


def leave_one_out(values: np.ndarray, published: np.ndarray, method=fit) -> np.ndarray:
    """[n, 2]: each country projected by a map fitted without it (weights, rotation, scale, centre)."""
    n = len(values)
    return np.array([method(np.delete(values, i, 0), np.delete(published, i, 0)).project(values[i])
                     for i in range(n)])


def agreement(projected: np.ndarray, published: np.ndarray) -> dict:
    """Pearson r per axis, mean and largest Euclidean distance (map units) between two position sets."""
    dist = np.linalg.norm(projected - published, axis=1)
    return {"r_self_expression": float(np.corrcoef(projected[:, 0], published[:, 0])[0, 1]),
            "r_secular": float(np.corrcoef(projected[:, 1], published[:, 1])[0, 1]),
            "mean_distance": float(dist.mean()), "max_distance": float(dist.max())}


@functools.lru_cache(maxsize=1)
def load_projection(path: str | None = None) -> Projection:
    """The projection stored with the package (written by `python -m eval.culture_map.fit`)."""
    p = Path(path) if path else PROJECTION_FILE
    if not p.exists():
        raise MapError(f"{p}: no fitted projection (run python -m eval.culture_map.fit)")
    proj = Projection.from_json(json.loads(p.read_text()))
    if list(proj.keys) != keys():
        raise MapError(f"{p}: fitted for indicators {list(proj.keys)}, not {keys()}; refit it")
    return proj


def _standardise(values: np.ndarray):
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape[1] != len(keys()) or np.isnan(values).any():
        raise MapError(f"fit needs a complete [countries, {len(keys())}] table of indicator values")
    toward = np.array([ind.toward for ind in indicators()], dtype=float)
    mean, sd = values.mean(axis=0), values.std(axis=0)
    return mean, sd, toward, (values - mean) / sd * toward


def _align(mean, sd, toward, weights, z, published, reflection: bool) -> Projection:
    """Least-squares rotation R and scale s with s * T R ~ published - centroid (T centred)."""
    scores = z @ weights
    centre = published.mean(axis=0)
    u, sing, vt = np.linalg.svd(scores.T @ (published - centre))
    flip = np.eye(2)
    if not reflection and np.linalg.det(u @ vt) < 0:
        flip[1, 1] = -1.0
    rotation = u @ flip @ vt
    scale = float((sing * np.diag(flip)).sum() / (scores ** 2).sum())
    return Projection(tuple(keys()), mean, sd, toward, weights, rotation, scale, centre)
