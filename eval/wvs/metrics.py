"""Distances between a survey distribution S and a model distribution M for one item.

Both are vectors over the item's options plus a last INVALID bin (the paper's "safeguard" bucket;
always 0 for the survey), and every function works on stacked vectors (leading axes broadcast), so
the bootstrap scores thousands of replicates in one call. All logs are natural.

- `js`: Jensen-Shannon distance, the square root of the JS divergence; equals
  `scipy.spatial.distance.jensenshannon(S, M)` (the paper's Table 15 metric). Lies in [0, sqrt(ln 2)].
- `kl`: KL(S || M), survey relative to model, so a model that gives no mass to answers people do
  give is penalised. M is smoothed additively, M' = (M + 1e-6) / (1 + n * 1e-6), to keep it finite.
- `paper_kl`: the CLCA release's formula, reproduced exactly and labelled as such:
  `torch.nn.functional.kl_div(log_softmax(M), S, reduction="batchmean")` on one row, which is
  sum_k S_k (log S_k - log softmax(M)_k). It is what the paper's Table 2 reports. It is not a
  divergence between S and M: the softmax is applied to a probability vector, so it is not zero at
  M = S and rewards peaked M.
- `emd`: earth mover's distance over the options only (INVALID dropped, both renormalised) with
  unit spacing between adjacent options, divided by (options - 1) so it lies in [0, 1]; equals
  `scipy.stats.wasserstein_distance` on positions 0..K-1 over K-1. Ordinal items only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

KL_SMOOTHING = 1e-6


def _kl_sum(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """sum p log(p/q) with 0 log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return terms.sum(axis=-1)


def js_distance(s: np.ndarray, m: np.ndarray) -> np.ndarray:
    mid = (s + m) / 2
    return np.sqrt(np.maximum((_kl_sum(s, mid) + _kl_sum(m, mid)) / 2, 0.0))


def kl_divergence(s: np.ndarray, m: np.ndarray) -> np.ndarray:
    n = m.shape[-1]
    return _kl_sum(s, (m + KL_SMOOTHING) / (1 + n * KL_SMOOTHING))


def paper_kl(s: np.ndarray, m: np.ndarray) -> np.ndarray:
    shifted = m - m.max(axis=-1, keepdims=True)
    log_softmax_m = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(s > 0, s * (np.log(s) - log_softmax_m), 0.0)
    return terms.sum(axis=-1)


def emd(s: np.ndarray, m: np.ndarray) -> np.ndarray:
    """NaN where the model put no mass on any option (all INVALID)."""
    s_opt, m_opt = s[..., :-1], m[..., :-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        s_opt = s_opt / s_opt.sum(axis=-1, keepdims=True)
        m_opt = m_opt / m_opt.sum(axis=-1, keepdims=True)
        k = s_opt.shape[-1]
        return np.abs(np.cumsum(s_opt - m_opt, axis=-1)[..., :-1]).sum(axis=-1) / (k - 1)


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray]
    ordinal_only: bool
    description: str


METRICS = {
    m.name: m
    for m in [
        Metric("js", js_distance, False, "Jensen-Shannon distance (scipy jensenshannon, natural log)"),
        Metric("kl", kl_divergence, False, f"KL(survey || model), model smoothed by {KL_SMOOTHING}"),
        Metric("paper_kl", paper_kl, False,
               "CLCA release formula kl_div(log_softmax(M), S): what the paper reports; not a true divergence"),
        Metric("emd", emd, True, "earth mover's distance over ordered options / (options - 1)"),
    ]
}


def answered_as_surveyed(model_codes: np.ndarray, true_codes: np.ndarray) -> np.ndarray:
    """Whether each model answer is the respondent's own survey answer (individual accuracy's hits).

    Arrays of codes, same shape (e.g. [respondents] for one item); INVALID model answers and missing
    survey answers (negative codes) count as wrong, as in the paper. Returns a bool array of that shape.
    """
    return (model_codes == true_codes) & (true_codes >= 0)
