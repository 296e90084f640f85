"""Tests of metrics.py (METHODS.md §5): analytic cases, hand-computed values,
per-clip shapes, a cross-check of SPS / COMP and of the localisation metrics
against Quantus 0.6.0 (and of roc_auc against scikit-learn), and the
deletion / insertion curves with a toy classifier whose curve is known in
closed form."""

import math
import warnings

import numpy as np
import pytest
import torch

import metrics
from metrics import (
    curve_area,
    relevance_ranks,
    roc_auc,
    top_fraction_masks,
    topk_f1,
    topk_iou,
)

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
    "roc_auc": True,  # localisation benchmark
    "topk_iou": True,
    "topk_f1": True,
    "deletion_auc": False,  # deletion and insertion curves (curve_steps)
    "insertion_auc": True,
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
    curve = torch.rand(2, 5)  # what InterpreterBrain.deletion_insertion gives
    out.update(deletion_auc=curve_area(curve), insertion_auc=curve_area(curve))
    assert set(metrics.HIGHER_IS_BETTER) == set(out)
    assert len(metrics.HIGHER_IS_BETTER) == 16
    assert (
        metrics.HIGHER_IS_BETTER == EXPECTED_DIRECTIONS
    )  # METHODS.md §5 table


# --------------------------------------------------------------------------
# Localisation benchmark: roc_auc, topk_iou, topk_f1 (analytic cases)
# --------------------------------------------------------------------------


def _truth(batch, shape, seed, share=0.3):
    """[batch, *shape] random bool truths, none empty nor full."""
    gen = torch.Generator().manual_seed(seed)
    truth = torch.rand(batch, *shape, generator=gen) < share
    truth.view(batch, -1)[:, 0] = True
    truth.view(batch, -1)[:, -1] = False
    return truth


@pytest.mark.parametrize("shape", [(20, 30), (431, 513)])
def test_perfect_inverted_and_constant_masks(shape):
    """mask = truth: AUC 1, top-k IoU and F1 1; mask = 1 - truth: AUC 0,
    top-k 0 (the truth is under half the bins); a constant mask, all-zero
    included: AUC 0.5, top-k at chance (F1 = k / n, IoU = k / (2n - k))."""
    truth = _truth(3, shape, seed=0)
    perfect, inverted = truth.float(), 1 - truth.float()
    for mask, expected in ((perfect, 1.0), (inverted, 0.0)):
        _close(roc_auc(mask, truth), [expected] * 3)
        _close(topk_iou(mask, truth), [expected] * 3)
        _close(topk_f1(mask, truth), [expected] * 3)
    n = truth[0].numel()
    k = truth.flatten(1).sum(1).double()
    for value in (0.0, 0.37):
        constant = torch.full(truth.shape, value)
        _close(roc_auc(constant, truth), [0.5] * 3)
        _close(topk_f1(constant, truth), k / n)
        _close(topk_iou(constant, truth), k / (2 * n - k))


# 2 x 3 example with ties (n_pos = n_neg = 3, k = 3):
#   mask  = [[0.9, 0.5, 0.5],     truth = [[1, 1, 0],
#            [0.5, 0.1, 0.1]]              [0, 0, 1]]
# AUC: positives score 0.9, 0.5, 0.1; negatives 0.5, 0.5, 0.1. Pairs won:
#   0.9 beats all 3; 0.5 ties two (1/2 each) and beats 0.1: 2; 0.1 ties one:
#   1/2 -> U = 5.5, AUC = 5.5 / 9 = 11/18. (Midranks of 0.1 0.1 0.5 0.5 0.5
#   0.9 are 1.5 1.5 4 4 4 6; R_pos = 6 + 4 + 1.5 = 11.5 = U + 3*4/2.)
# Top-3: 0.9 (in the truth) is above the 3rd value 0.5; 2 bins remain to
#   pick among the 3 tied at 0.5, one of them in the truth: each counts 2/3,
#   I = 1 + 2/3 = 5/3, F1 = I / k = 5/9, IoU = I / (2k - I) = 5/13.
# The second clip is the first mirrored left-right: the same values.
HAND_MASK = torch.tensor([[0.9, 0.5, 0.5], [0.5, 0.1, 0.1]])
HAND_TRUTH = torch.tensor([[True, True, False], [False, False, True]])


def test_hand_computed_with_ties():
    mask = torch.stack([HAND_MASK, HAND_MASK.flip(1)])
    truth = torch.stack([HAND_TRUTH, HAND_TRUTH.flip(1)])
    _close(roc_auc(mask, truth), [11 / 18] * 2)
    _close(topk_f1(mask, truth), [5 / 9] * 2)
    _close(topk_iou(mask, truth), [5 / 13] * 2)


def test_tie_rule_is_the_expectation_over_tie_orders():
    """F1 with fractional ties = the mean F1 over the 3 equally likely ways
    to pick 2 of the 3 tied bins; IoU = the IoU of the soft selection w
    (1 above, 2/3 on the tie, sum w = k) with the truth,
    sum min(w, truth) / sum max(w, truth), not the mean IoU."""
    flat_mask, flat_truth = HAND_MASK.flatten(), HAND_TRUTH.flatten()
    tied = (flat_mask == 0.5).nonzero().flatten().tolist()
    f1s = []
    for drop in tied:  # every choice of 2 of the 3 tied bins
        chosen = torch.zeros(6, dtype=torch.bool)
        chosen[flat_mask > 0.5] = True
        chosen[[i for i in tied if i != drop]] = True
        f1s.append(float((chosen & flat_truth).sum()) / 3)
    f1 = topk_f1(HAND_MASK[None], HAND_TRUTH[None])
    _close(f1, [sum(f1s) / len(f1s)])
    w = torch.where(flat_mask > 0.5, 1.0, 0.0).double()
    w[tied] = 2 / 3
    t = flat_truth.double()
    soft_iou = torch.minimum(w, t).sum() / torch.maximum(w, t).sum()
    _close(topk_iou(HAND_MASK[None], HAND_TRUTH[None]), [soft_iou])


def test_localisation_ranks_ignore_scale_and_run_on_the_mask_device():
    """AUC and top-k depend only on the order of the values: a monotone
    transform changes nothing. Results are on the mask's device (meta: no
    data, device only)."""
    torch.manual_seed(3)
    mask, truth = torch.rand(4, 20, 30), _truth(4, (20, 30), seed=3)
    for fn in (roc_auc, topk_iou, topk_f1):
        _close(fn(mask**3 * 7, truth), fn(mask, truth))
        assert fn(mask.to("meta"), truth.to("meta")).device.type == "meta"


def test_trivial_truth_is_undefined():
    """No truth bin: no AUC, no top-k (NaN); every bin: no AUC, top-k 1."""
    mask = torch.rand(2, 4, 5)
    truth = torch.zeros(2, 4, 5, dtype=torch.bool)
    truth[1] = True
    auc = roc_auc(mask, truth)
    assert torch.isnan(auc).all()
    assert torch.isnan(topk_iou(mask, truth)[0])
    assert torch.isnan(topk_f1(mask, truth)[0])
    _close(topk_iou(mask, truth)[1:], [1.0])
    _close(topk_f1(mask, truth)[1:], [1.0])


# --------------------------------------------------------------------------
# Localisation metrics against Quantus 0.6.0 and scikit-learn
# --------------------------------------------------------------------------
# Quantus' defaults (normalise=True: divided by the clip's max |a|; abs=False)
# are used: every metric below is invariant to that positive scaling. The
# recipe computes the same rationals in float64 through another route
# (midranks vs sklearn's roc_curve + trapezoid; counts vs argsort), so the
# agreement is to float64 rounding of sums of at most 600 terms: atol 1e-12.
# AttributionLocalisation divides by sum + 1e-9: atol 1e-8 there.
LOC_ATOL = 1e-12


def _quantus_localisation(metric, masks, truths):
    """Quantus ``metric`` on masks [B, T, F] and truths [B, T, F] (as
    [B, 1, T, F]); returns [B] float64."""
    a = masks[:, None].astype(np.float64)
    s = truths[:, None].astype(np.float64)
    x = np.random.default_rng(0).random(a.shape)
    y = np.zeros(a.shape[0], dtype=int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = metric(model=None, x_batch=x, y_batch=y, a_batch=a, s_batch=s)
    return np.asarray(scores, dtype=np.float64)


def _loc_masks(kind, seed):
    """[5, 20, 30] masks and truths (random boxes of random sizes)."""
    rng = np.random.default_rng(seed)
    masks = rng.random((5, 20, 30))
    if kind == "tied":  # 5 levels: many ties, roc_auc must count them half
        masks = np.round(masks * 4) / 4 + 0.25
    if kind == "binary":  # thresholded masks, like AMT's
        masks = (masks > 0.8).astype(np.float64)
        masks[:, 0, 0] = 1.0
    truths = np.zeros(masks.shape, dtype=bool)
    for b in range(len(masks)):
        t0, f0 = rng.integers(0, 15), rng.integers(0, 20)
        truths[
            b, t0 : t0 + rng.integers(2, 6), f0 : f0 + rng.integers(3, 10)
        ] = True
    if kind != "uniform":  # part of the mask on the truth
        masks = np.where(truths & (rng.random(masks.shape) < 0.5), 1.0, masks)
    return masks, truths


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", ["uniform", "tied", "binary"])
def test_roc_auc_matches_quantus_and_sklearn(kind, seed):
    import quantus
    from sklearn.metrics import roc_auc_score

    masks, truths = _loc_masks(kind, seed)
    ours = roc_auc(torch.from_numpy(masks), torch.from_numpy(truths)).numpy()
    q_auc = _quantus_localisation(
        quantus.AUC(disable_warnings=True), masks, truths
    )
    sk = [roc_auc_score(t.ravel(), m.ravel()) for m, t in zip(masks, truths)]
    np.testing.assert_allclose(ours, q_auc, rtol=0, atol=LOC_ATOL)
    np.testing.assert_allclose(ours, sk, rtol=0, atol=LOC_ATOL)


def test_roc_auc_matches_sklearn_on_a_recipe_sized_float32_mask():
    """[2, 431, 513] float32 masks quantised to 256 levels (ties in every
    clip) and boxes of ~1% of the bins, like the generated evidence."""
    from sklearn.metrics import roc_auc_score

    gen = torch.Generator().manual_seed(5)
    mask = (torch.rand(2, 431, 513, generator=gen) * 255).round() / 255
    truth = torch.zeros(2, 431, 513, dtype=torch.bool)
    truth[0, 100:160, 30:60], truth[1, 300:331, 200:250] = True, True
    mask[truth] = mask[truth] ** 0.5  # higher on the truth
    sk = [roc_auc_score(t.ravel(), m.ravel()) for m, t in zip(mask, truth)]
    np.testing.assert_allclose(roc_auc(mask, truth), sk, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_topk_matches_quantus_without_ties(seed):
    """With k = |truth| and no tie: topk_f1 = Quantus RelevanceRankAccuracy
    = TopKIntersection(k) (|top-k & truth| / k), topk_iou = tki / (2 - tki).
    With ties Quantus takes np.argsort's order of the tied bins (its
    implementation's, arbitrary); ours shares them (expected overlap)."""
    import quantus

    masks, truths = _loc_masks("uniform", seed)
    assert all(len(np.unique(m)) == m.size for m in masks)  # no tie
    f1 = topk_f1(torch.from_numpy(masks), torch.from_numpy(truths)).numpy()
    iou = topk_iou(torch.from_numpy(masks), torch.from_numpy(truths)).numpy()
    rra = _quantus_localisation(
        quantus.RelevanceRankAccuracy(disable_warnings=True), masks, truths
    )
    tki = np.concatenate(
        [
            _quantus_localisation(
                quantus.TopKIntersection(k=int(t.sum()), disable_warnings=True),
                m[None],
                t[None],
            )
            for m, t in zip(masks, truths)
        ]
    )
    np.testing.assert_allclose(f1, rra, rtol=0, atol=LOC_ATOL)
    np.testing.assert_allclose(f1, tki, rtol=0, atol=LOC_ATOL)
    np.testing.assert_allclose(iou, tki / (2 - tki), rtol=0, atol=LOC_ATOL)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mass_and_pointing_game_match_quantus(seed):
    """evidence_mass = RelevanceMassAccuracy (and AttributionLocalisation,
    up to its + 1e-9); pointing_game = PointingGame when the maximum is
    unique (with tied maxima Quantus scores a hit if any lies in the truth,
    ours the share that does)."""
    import quantus

    masks, truths = _loc_masks("uniform", seed)
    masks[0, 3, 4] = 2.0  # a clip whose peak is surely in / out of the truth
    out = metrics.localisation_metrics(
        torch.from_numpy(masks), torch.from_numpy(truths)
    )
    rma = _quantus_localisation(
        quantus.RelevanceMassAccuracy(disable_warnings=True), masks, truths
    )
    al = _quantus_localisation(
        quantus.AttributionLocalisation(disable_warnings=True), masks, truths
    )
    pg = _quantus_localisation(
        quantus.PointingGame(disable_warnings=True), masks, truths
    )
    np.testing.assert_allclose(out["evidence_mass"], rma, atol=LOC_ATOL)
    np.testing.assert_allclose(out["evidence_mass"], al, atol=1e-8)
    np.testing.assert_allclose(out["pointing_game"], pg, atol=0)


# --------------------------------------------------------------------------
# Deletion and insertion curves
# --------------------------------------------------------------------------


def test_curve_area():
    """Trapezoid over q in [0, 1]: a constant curve gives the constant, the
    ramp p = q gives 1/2 exactly, p = q^2 gives 1/3 + 1/(6 S^2)."""
    _close(curve_area(torch.full((2, 5), 0.3, dtype=torch.float64)), [0.3] * 2)
    for steps in (1, 4, 10):
        q = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
        _close(curve_area(q[None]), [0.5])
        _close(curve_area(q[None] ** 2), [1 / 3 + 1 / (6 * steps**2)])
    with pytest.raises(ValueError, match="2 points"):
        curve_area(torch.ones(2, 1))


def test_relevance_ranks_and_top_fraction_masks():
    """Most relevant first, ties in flat-index order; step s keeps the
    floor(s n / S) most relevant bins: nested, empty at 0, full at S."""
    mask = torch.tensor([[[0.5, 1.0, 0.5], [0.2, 1.0, 0.0]]])  # n = 6
    assert relevance_ranks(mask).tolist() == [[[2, 0, 3], [4, 1, 5]]]
    steps = list(top_fraction_masks(mask, 4))
    assert [int(s.sum()) for s in steps] == [0, 1, 3, 4, 6]  # 6s // 4
    assert steps[1].tolist() == [[[False, True, False], [False, False, False]]]
    assert steps[2].tolist() == [[[True, True, False], [False, True, False]]]
    for before, after in zip(steps, steps[1:]):
        assert (after | ~before).all()  # nested
    torch.manual_seed(0)
    masks = torch.rand(3, 7, 11)
    ranks = relevance_ranks(masks).flatten(1)
    assert (ranks.sort(1).values == torch.arange(77)).all()
    order = masks.flatten(1).argsort(1, descending=True)
    assert (ranks.gather(1, order) == torch.arange(77)).all()
    with pytest.raises(ValueError, match="curve_steps"):
        next(top_fraction_masks(masks, 0))


class RegionShare:
    """Toy classifier: p = [share of the region R's input kept, the rest],
    so c = 0 on the full input X (ones) and p_c(X * keep) = |keep & R| / |R|.
    Logits log p: the brain's softmax gives p back. Counts its passes."""

    def __init__(self, region):
        self.region = region.float()
        self.passes = 0

    def classify(self, X):
        self.passes += 1
        kept = (X * self.region).sum((1, 2)) / self.region.sum((1, 2))
        return None, torch.stack([kept, 1 - kept], 1).log()


@pytest.mark.parametrize("steps", [4, 20])
def test_deletion_insertion_closed_form(steps):
    """R has r = 5 of the n = 20 bins. A mask ranking R first (the
    "oracle"): deletion p_c(q) = max(0, 1 - q n / r), insertion min(1, q n / r),
    piecewise linear with knots on the grid (q = r / n = 1/4 is one for S =
    4 and 20): areas r / (2n) = 1/8 and 1 - 1/8. A mask ranking R last: the
    curves mirrored, 7/8 and 1/8. A constant mask: ties in flat order, R
    being the last 5 bins, like ranking it last."""
    from interpreter_brain import InterpreterBrain

    region = torch.zeros(3, 4, 5, dtype=torch.bool)
    region[:, 3] = True  # the last 5 of the 20 bins
    oracle = region.float() * (1 + torch.rand(3, 4, 5))
    inverse = (~region).float() * (1 + torch.rand(3, 4, 5))
    constant = torch.full((3, 4, 5), 0.5)
    masks = torch.stack([oracle[0], inverse[1], constant[2]])
    toy = RegionShare(region)
    X, c = torch.ones(3, 4, 5), torch.zeros(3, dtype=torch.long)
    out = InterpreterBrain.deletion_insertion(toy, masks, X, c, steps)
    # p_c in float32, as the brain's softmax gives it: rounding ~1e-7
    _close(out["deletion_auc"], [1 / 8, 7 / 8, 7 / 8], atol=1e-6)
    _close(out["insertion_auc"], [7 / 8, 1 / 8, 1 / 8], atol=1e-6)
    assert toy.passes == 2 * (steps + 1)  # one pass per step and curve
