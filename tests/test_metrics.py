"""Tests of metrics.py (METHODS.md §5): analytic cases, hand-computed values,
per-clip shapes, and a cross-check of SPS / COMP against Quantus 0.6.0."""

import math
import warnings

import numpy as np
import pytest
import torch

import metrics

# --------------------------------------------------------------------------
# A small hand-computed example (2 clips, 3 classes)
# --------------------------------------------------------------------------
#   p     = [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]]   -> c = argmax p = [0, 1]
#   p_in  = [[0.3, 0.5, 0.2], [0.1, 0.8, 0.1]]   -> p_in_c  = [0.3, 0.8]
#   p_out = [[0.5, 0.4, 0.1], [0.3, 0.3, 0.4]]   -> p_out_c = [0.5, 0.3]
#   labels = [0, 2]
# accuracy = [argmax p == label]                  = [1, 0]
# Fid-In   = [argmax p_in == c] = [1==0, 1==1]    = [0, 1]
# FF       = p_c - p_out_c = [0.6-0.5, 0.5-0.3]   = [0.1, 0.2]
# AI       = 100 [p_in_c > p_c]                   = [0, 100]
# AD       = 100 max(0, p_c - p_in_c) / p_c       = [100*0.3/0.6, 0] = [50, 0]
# AG       = 100 max(0, p_in_c - p_c) / (1 - p_c) = [0, 100*0.3/0.5] = [0, 60]

P = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]], dtype=torch.float64)
P_IN = torch.tensor([[0.3, 0.5, 0.2], [0.1, 0.8, 0.1]], dtype=torch.float64)
P_OUT = torch.tensor([[0.5, 0.4, 0.1], [0.3, 0.3, 0.4]], dtype=torch.float64)
LABELS = torch.tensor([0, 2])
C = torch.tensor([0, 1])


def _close(actual, expected, atol=1e-9):
    expected = torch.as_tensor(expected, dtype=torch.float64)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual.double(), expected, atol=atol, rtol=0)


def test_hand_computed_accuracy():
    _close(metrics.accuracy(P, LABELS), [1.0, 0.0])


def test_hand_computed_input_fidelity():
    _close(metrics.input_fidelity(P_IN, C), [0.0, 1.0])


def test_hand_computed_faithfulness():
    _close(metrics.faithfulness(P, P_OUT, C), [0.1, 0.2])


def test_hand_computed_average_increase():
    _close(metrics.average_increase(P, P_IN, C), [0.0, 100.0])


def test_hand_computed_average_drop():
    _close(metrics.average_drop(P, P_IN, C), [50.0, 0.0])


def test_hand_computed_average_gain():
    _close(metrics.average_gain(P, P_IN, C), [0.0, 60.0])


def test_per_clip_metrics_hand_computed_and_uses_predicted_class():
    """per_clip_metrics reads everything at c = argmax p, not at the label
    (clip 2 has label 2 but c = 1)."""
    mask = torch.ones(2, 4, 5)
    out = metrics.per_clip_metrics(P, P_IN, P_OUT, mask, LABELS)
    _close(out["accuracy"], [1.0, 0.0])
    _close(out["fidelity_in"], [0.0, 1.0])
    _close(out["faithfulness"], [0.1, 0.2])
    _close(out["AI"], [0.0, 100.0])
    _close(out["AD"], [50.0, 0.0])
    _close(out["AG"], [0.0, 60.0])
    _close(out["SPS"], [0.0, 0.0])
    _close(out["COMP"], [math.log(20)] * 2)


def test_identical_inputs_give_neutral_values():
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(6, 10), dim=1)
    c = p.argmax(1)
    _close(metrics.average_drop(p, p, c), [0.0] * 6)
    _close(metrics.faithfulness(p, p, c), [0.0] * 6)
    _close(metrics.average_increase(p, p, c), [0.0] * 6)
    _close(metrics.average_gain(p, p, c), [0.0] * 6)
    _close(metrics.input_fidelity(p, c), [1.0] * 6)
    out = metrics.per_clip_metrics(p, p, p, torch.rand(6, 7, 9), c)
    for key in ("AD", "faithfulness", "AI", "AG"):
        _close(out[key], [0.0] * 6)
    for key in ("fidelity_in", "accuracy"):
        _close(out[key], [1.0] * 6)


def test_certain_prediction_gives_finite_ag_and_ad():
    """p_c = 1 makes 1 - p_c = 0 in AG's denominator: the clip has nothing to
    gain, AG must be 0, not NaN/inf."""
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p_in = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    c = p.argmax(1)
    _close(metrics.average_gain(p, p_in, c), [0.0, 0.0])
    _close(metrics.average_drop(p, p_in, c), [0.0, 50.0], atol=1e-6)


def test_average_drop_applies_no_softmax():
    """AD uses the probabilities it is given once. Applying softmax again (the
    public recipe's defect, METHODS.md §6) would give a different number."""
    ad = metrics.average_drop(P, P_IN, C)
    _close(ad, [50.0, 0.0])

    sp, sp_in = torch.softmax(P, 1), torch.softmax(P_IN, 1)
    p_c, p_in_c = sp[0, 0], sp_in[0, 0]
    twice = float(100 * (p_c - p_in_c).clamp(min=0) / p_c)
    assert twice == pytest.approx(
        24.91, abs=0.01
    )  # what a double softmax gives
    assert abs(float(ad[0]) - twice) > 20


def test_average_drop_with_logits_is_not_silently_normalised():
    """Given numbers that do not sum to 1, AD still uses them as they are
    (no hidden softmax)."""
    p = torch.tensor([[4.0, 1.0]])
    p_in = torch.tensor([[1.0, 3.0]])
    _close(metrics.average_drop(p, p_in, torch.tensor([0])), [75.0])


# --------------------------------------------------------------------------
# SPS and COMP
# --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(20, 30), (431, 513), (7,)])
def test_sparseness_one_hot_and_constant(shape):
    n = int(np.prod(shape))
    one_hot = torch.zeros(3, *shape)
    one_hot.view(3, -1)[torch.arange(3), torch.tensor([0, n // 2, n - 1])] = 0.7
    _close(metrics.sparseness(one_hot), [1.0 - 1.0 / n] * 3)
    constant = torch.full((2, *shape), 0.37)
    _close(metrics.sparseness(constant), [0.0, 0.0], atol=1e-9)


@pytest.mark.parametrize("shape", [(20, 30), (431, 513), (7,)])
def test_complexity_constant_and_one_hot(shape):
    n = int(np.prod(shape))
    constant = torch.full((2, *shape), 0.37)
    _close(metrics.complexity(constant), [math.log(n)] * 2, atol=1e-9)
    one_hot = torch.zeros(2, *shape)
    one_hot.view(2, -1)[:, n // 3] = 1.0
    _close(metrics.complexity(one_hot), [0.0, 0.0])


def test_sparseness_hand_computed_uses_abs():
    """|M| = [0, 1, 1, 2] (n = 4): G = sum_i (2i-n-1) a_(i) / (n sum a)
    = (-3*0 - 1*1 + 1*1 + 3*2) / (4*4) = 6/16 = 0.375. The signs of M are
    dropped (|M|), so [-2, 1, 0, 1] gives the same value."""
    _close(
        metrics.sparseness(
            torch.tensor([[0.0, 1.0, 1.0, 2.0], [-2.0, 1.0, 0.0, 1.0]])
        ),
        [0.375, 0.375],
    )


def test_complexity_hand_computed():
    """|M| = [1, 1, 2] -> q = [1/4, 1/4, 1/2]; H = -(2 * 1/4 ln 1/4 + 1/2 ln 1/2)
    = 1.5 ln 2; zeros contribute nothing; signs are dropped."""
    mask = torch.tensor([[1.0, 1.0, 2.0, 0.0], [-1.0, 0.0, 1.0, -2.0]])
    _close(metrics.complexity(mask), [1.5 * math.log(2)] * 2)


def test_all_zero_mask_is_nan_for_that_clip_only():
    torch.manual_seed(0)
    mask = torch.rand(3, 20, 30)
    mask[1] = 0.0
    for fn in (metrics.sparseness, metrics.complexity):
        values = fn(mask)
        assert values.shape == (3,)
        assert torch.isnan(values[1])
        assert torch.isfinite(values[[0, 2]]).all()
    p = torch.softmax(torch.randn(3, 5), 1)
    out = metrics.per_clip_metrics(p, p, p, mask, p.argmax(1))
    for key, values in out.items():
        if key in ("SPS", "COMP"):
            assert (
                torch.isnan(values[1]) and torch.isfinite(values[[0, 2]]).all()
            ), key
        else:
            assert torch.isfinite(values).all(), key


def test_sps_and_comp_ranges_on_random_masks():
    torch.manual_seed(1)
    mask = torch.rand(8, 20, 30) ** 4
    sps, comp = metrics.sparseness(mask), metrics.complexity(mask)
    assert ((sps >= 0) & (sps < 1)).all()
    assert ((comp >= 0) & (comp <= math.log(600) + 1e-9)).all()
    # Sparser masks score higher SPS and lower COMP.
    sparser = mask**4
    assert (metrics.sparseness(sparser) > sps).all()
    assert (metrics.complexity(sparser) < comp).all()


# --------------------------------------------------------------------------
# Cross-check against Quantus 0.6.0
# --------------------------------------------------------------------------
# We call the full metric (abs=True, normalise=True -> normalise_by_max, the
# defaults) with model=None: the complexity metrics need no model. Tolerances:
# Quantus Sparseness adds 1e-7 to every attribution value before the Gini
# index, which changes G by about n * 1e-7 / sum(a) (< 1e-5 for these
# masks): SPS atol 1e-5. Quantus Complexity computes -sum q log(q + 1e-12),
# which differs from the exact entropy by < n * 1e-12: COMP atol 1e-8.
SPS_ATOL = 1e-5
COMP_ATOL = 1e-8


def _quantus_scores(masks):
    import quantus

    a = masks.astype(np.float64)
    x = np.random.default_rng(123).random(a.shape)
    y = np.zeros(a.shape[0], dtype=int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sps = quantus.Sparseness(disable_warnings=True)(
            model=None, x_batch=x, y_batch=y, a_batch=a.copy()
        )
        comp = quantus.Complexity(disable_warnings=True)(
            model=None, x_batch=x, y_batch=y, a_batch=a.copy()
        )
    return np.asarray(sps, dtype=np.float64), np.asarray(comp, dtype=np.float64)


def _masks(kind, seed):
    rng = np.random.default_rng(seed)
    shape = (5, 1, 20, 30)
    if kind == "uniform":
        return rng.random(shape)
    if kind == "peaky":
        m = rng.random(shape) ** 6
        m[0, :, :8] = 0.0  # part of a mask exactly zero
        return m
    if kind == "binary":  # thresholded masks, like AMT's
        return (rng.random(shape) > 0.9).astype(np.float64)
    raise ValueError(kind)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("kind", ["uniform", "peaky", "binary"])
def test_sps_and_comp_match_quantus(kind, seed):
    masks = _masks(kind, seed)
    q_sps, q_comp = _quantus_scores(masks)
    sps = metrics.sparseness(torch.from_numpy(masks)).numpy()
    comp = metrics.complexity(torch.from_numpy(masks)).numpy()
    assert sps.shape == q_sps.shape == (5,)
    assert comp.shape == q_comp.shape == (5,)
    np.testing.assert_allclose(sps, q_sps, rtol=0, atol=SPS_ATOL)
    np.testing.assert_allclose(comp, q_comp, rtol=0, atol=COMP_ATOL)


def test_sps_and_comp_match_quantus_for_float32_masks_of_mask_shape():
    """The recipe's masks are float32 [B, T, F]; metrics.py flattens [B, ...]
    the same way Quantus flattens [B, 1, T, F]."""
    rng = np.random.default_rng(7)
    masks = rng.random((3, 43, 51)).astype(np.float32) ** 3
    q_sps, q_comp = _quantus_scores(masks[:, None])
    np.testing.assert_allclose(
        metrics.sparseness(torch.from_numpy(masks)).numpy(),
        q_sps,
        atol=SPS_ATOL,
    )
    np.testing.assert_allclose(
        metrics.complexity(torch.from_numpy(masks)).numpy(), q_comp, atol=1e-6
    )


# --------------------------------------------------------------------------
# Shapes and the metric registry
# --------------------------------------------------------------------------

EXPECTED_DIRECTIONS = {
    "accuracy": True,
    "fidelity_in": True,
    "faithfulness": True,
    "AI": True,
    "AD": False,
    "AG": True,
    "SPS": True,
    "COMP": False,
    "evidence_mass": True,  # the localisation metrics (issue 8)
    "evidence_mass_ratio": True,
    "pointing_game": True,
}


@pytest.mark.parametrize("batch", [1, 5])
def test_every_metric_returns_one_value_per_clip(batch):
    torch.manual_seed(batch)
    p, p_in, p_out = (torch.softmax(torch.randn(batch, 7), 1) for _ in range(3))
    c = p.argmax(1)
    labels = torch.randint(0, 7, (batch,))
    mask = torch.rand(batch, 11, 13)
    singles = {
        "accuracy": metrics.accuracy(p, labels),
        "fidelity_in": metrics.input_fidelity(p_in, c),
        "faithfulness": metrics.faithfulness(p, p_out, c),
        "AI": metrics.average_increase(p, p_in, c),
        "AD": metrics.average_drop(p, p_in, c),
        "AG": metrics.average_gain(p, p_in, c),
        "SPS": metrics.sparseness(mask),
        "COMP": metrics.complexity(mask),
    }
    out = metrics.per_clip_metrics(p, p_in, p_out, mask, labels)
    assert set(out) == set(singles)
    for key, value in out.items():
        assert value.shape == (batch,), key
        assert torch.isfinite(value).all(), key
        torch.testing.assert_close(
            value.double(), singles[key].double(), msg=key
        )


def test_higher_is_better_names_exactly_the_returned_metrics():
    p = torch.softmax(torch.randn(2, 4), 1)
    mask = torch.rand(2, 3, 3)
    out = metrics.per_clip_metrics(p, p, p, mask, p.argmax(1))
    out.update(metrics.localisation_metrics(mask, mask > 0.5))
    out.pop("evidence_area")  # no direction: what the ratio is relative to
    assert set(metrics.HIGHER_IS_BETTER) == set(out)
    assert len(metrics.HIGHER_IS_BETTER) == 11
    assert (
        metrics.HIGHER_IS_BETTER == EXPECTED_DIRECTIONS
    )  # METHODS.md §5 table
