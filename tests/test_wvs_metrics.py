"""Each WVS metric against scipy / torch / hand-computed values."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy, wasserstein_distance

from eval.wvs.metrics import KL_SMOOTHING, answered_as_surveyed, emd, js_distance, kl_divergence, paper_kl

RNG = np.random.default_rng(7)
PAIRS = [(RNG.dirichlet(np.ones(k)), RNG.dirichlet(np.ones(k))) for k in (2, 3, 5, 11) for _ in range(5)]


def with_invalid(p, invalid=0.0):
    return np.append(p * (1 - invalid), invalid)


@pytest.mark.parametrize("s,m", PAIRS)
def test_js_matches_scipy(s, m):
    s, m = with_invalid(s), with_invalid(m, 0.1)
    assert js_distance(s, m) == pytest.approx(jensenshannon(s, m), abs=1e-12)


@pytest.mark.parametrize("s,m", PAIRS)
def test_kl_is_survey_relative_to_smoothed_model(s, m):
    s, m = with_invalid(s), with_invalid(m, 0.2)
    smoothed = (m + KL_SMOOTHING) / (1 + len(m) * KL_SMOOTHING)
    assert kl_divergence(s, m) == pytest.approx(entropy(s, smoothed), rel=1e-10)


@pytest.mark.parametrize("s,m", PAIRS)
def test_paper_kl_matches_the_release_formula(s, m):
    s, m = with_invalid(s), with_invalid(m, 0.05)
    expected = torch.nn.functional.kl_div(
        torch.log_softmax(torch.tensor(m)[None], dim=1), torch.tensor(s)[None], reduction="batchmean"
    )
    assert paper_kl(s, m) == pytest.approx(float(expected), rel=1e-9)


def test_paper_kl_is_not_zero_at_the_survey_and_rewards_peaks():
    # the toy check from the method notes: a perfect model scores worse than a one-hot one
    s = np.array([0.9, 0.1, 0.0])
    assert paper_kl(s, s) == pytest.approx(0.373, abs=1e-3)
    assert paper_kl(s, np.array([1.0, 0.0, 0.0])) == pytest.approx(0.326, abs=1e-3)
    assert js_distance(s, s) == 0.0 and emd(s, s) == 0.0


@pytest.mark.parametrize("s,m", PAIRS)
def test_emd_matches_scipy_normalised(s, m):
    k = len(s)
    expected = wasserstein_distance(np.arange(k), np.arange(k), s, m) / (k - 1)
    # INVALID mass is dropped and the options renormalised
    assert emd(with_invalid(s), with_invalid(m, 0.3)) == pytest.approx(expected, abs=1e-12)


def test_emd_extremes_and_all_invalid():
    assert emd(np.array([1.0, 0, 0, 0, 0]), np.array([0, 0, 0, 1.0, 0])) == pytest.approx(1.0)
    assert np.isnan(emd(np.array([0.5, 0.5, 0.0]), np.array([0.0, 0.0, 1.0])))


def test_metrics_broadcast_over_replicates():
    s = with_invalid(PAIRS[0][0])
    ms = np.stack([with_invalid(m) for _, m in PAIRS[:4] if len(m) == len(s) - 1] or [s])
    for fn in (js_distance, kl_divergence, paper_kl, emd):
        assert np.allclose(fn(s[None], ms), [fn(s, m) for m in ms])


def test_individual_accuracy_hits_by_hand():
    model = np.array([[1, 2, -1], [3, 3, 3]])
    truth = np.array([[1, 1, -1], [3, -1, 3]])  # missing truth and INVALID answers count as wrong
    assert answered_as_surveyed(model, truth).mean(axis=-1).tolist() == pytest.approx([1 / 3, 2 / 3])
