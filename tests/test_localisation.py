"""Localisation against planted evidence (metrics.evidence_boxes and
metrics.localisation_metrics): analytic cases, the means over the clips
where each key is defined, and the keys of real runs (with deletion and
insertion curves: --curve_steps).

A box covering a share A of the T x F bins: a mask equal to the box (the
oracle) puts all its mass there, ratio 1 / A; a uniform mask puts A of its
mass there, ratio 1; a mask entirely outside scores 0.
"""

import json
import math

import pytest
import torch

import metrics
from conftest import N_CLASSES, TINY, classifier_args, run_script
from synthetic_esc50 import evidence_records, read_evidence

SR, HOP, N_FFT = 16000, 186, 1024
T, F = 40, 30


def record(t0, t1, f0, f1):
    """The evidence record whose box is frames t0..t1, bins f0..f1 (closed)."""
    return {
        "start_s": t0 * HOP / SR,
        "end_s": t1 * HOP / SR,
        "low_hz": f0 * SR / N_FFT,
        "high_hz": f1 * SR / N_FFT,
    }


def boxes(*records):
    return metrics.evidence_boxes(records, (T, F), SR, HOP, N_FFT)


def test_box_from_seconds_and_hertz():
    box = boxes(record(10, 19, 5, 9), record(0, 0, 29, 29))
    expected = torch.zeros(2, T, F, dtype=torch.bool)
    expected[0, 10:20, 5:10] = True
    expected[1, 0, 29] = True
    assert torch.equal(box, expected)


def test_oracle_uniform_outside_and_empty_masks():
    box = boxes(*[record(10, 19, 5, 9)] * 4)  # 10 x 5 bins of 40 x 30
    area = 50 / (T * F)
    oracle = box.float()
    uniform = torch.full((T, F), 0.3)
    outside = (~box[0]).float() * 0.7
    masks = torch.stack([oracle[0], uniform, outside, torch.zeros(T, F)])
    out = metrics.localisation_metrics(masks, box)
    torch.testing.assert_close(
        out["evidence_mass"][:3], torch.tensor([1.0, area, 0.0]).double()
    )
    torch.testing.assert_close(
        out["evidence_mass_ratio"][:3],
        torch.tensor([1 / area, 1.0, 0.0]).double(),
    )
    # ties: the oracle's maxima are all in the box, the uniform mask's
    # maxima are everywhere (a share A inside), the outside mask's nowhere
    torch.testing.assert_close(
        out["pointing_game"][:3], torch.tensor([1.0, area, 0.0]).double()
    )
    torch.testing.assert_close(
        out["evidence_area"], torch.full((4,), area).double()
    )
    for name in ("evidence_mass", "evidence_mass_ratio", "pointing_game"):
        assert math.isnan(out[name][3]), name  # an all-zero mask points nowhere
        assert name in metrics.UNDEFINED_FOR_EMPTY_MASK
    # rank metrics: the oracle ranks the box first, the outside mask last;
    # the uniform and the all-zero masks are constant: chance, and defined
    k, n = 50, T * F
    chance = {"roc_auc": 0.5, "topk_iou": k / (2 * n - k), "topk_f1": k / n}
    for name, at_chance in chance.items():
        expected = torch.tensor([1.0, at_chance, 0.0, at_chance]).double()
        torch.testing.assert_close(out[name], expected, msg=name)
        assert name not in metrics.UNDEFINED_FOR_EMPTY_MASK
        assert name in metrics.UNDEFINED_FOR_TRIVIAL_TRUTH


def test_pointing_game_single_peak_and_hand_computed_mass():
    box = boxes(record(10, 19, 5, 9), record(10, 19, 5, 9))
    masks = torch.zeros(2, T, F)
    masks[0, 12, 7] = 1.0  # peak in the box
    masks[0, 30, 20] = 0.5
    masks[1, 12, 7] = 0.5
    masks[1, 30, 20] = 1.0  # peak outside
    out = metrics.localisation_metrics(masks, box)
    torch.testing.assert_close(
        out["pointing_game"], torch.tensor([1.0, 0.0]).double()
    )
    torch.testing.assert_close(
        out["evidence_mass"], torch.tensor([1 / 1.5, 0.5 / 1.5]).double()
    )


def test_means_leave_empty_masks_out():
    box = boxes(*[record(0, 19, 0, 14)] * 2)  # a quarter of the bins
    masks = torch.stack([torch.ones(T, F), torch.zeros(T, F)])
    values = metrics.localisation_metrics(masks, box)
    stats = metrics.means_from_sums(metrics.batch_sums(values, ["a", "b"]))
    assert stats["n_empty_masks"] == 1
    assert stats["evidence_mass"] == pytest.approx(0.25)
    assert stats["evidence_mass_ratio"] == pytest.approx(1.0)
    assert stats["evidence_area"] == pytest.approx(0.25)  # over both clips


def test_localisation_keys_for_any_truth():
    """The interface: mask [B, T, F] and any bool truth [B, T, F] (a box, an
    ideal binary mask) -> name -> [B]."""
    torch.manual_seed(0)
    truth = torch.rand(3, T, F) > 0.6  # e.g. an ideal binary mask
    out = metrics.localisation_metrics(torch.rand(3, T, F), truth)
    assert set(out) == {
        "evidence_mass",
        "evidence_mass_ratio",
        "pointing_game",
        "evidence_area",
        "roc_auc",
        "topk_iou",
        "topk_f1",
    }
    for name, value in out.items():
        assert value.shape == (3,) and value.dtype == torch.float64, name
        assert torch.isfinite(value).all(), name


def test_each_mean_leaves_out_its_own_undefined_clips():
    """Clip a: empty truth (no AUC, no top-k, no ratio); b: all-zero mask
    (no mass, ratio, pointing game; AUC and top-k at chance); c: the oracle.
    Every mean is over the clips where its key is defined."""
    box = boxes(record(0, 0, 0, 0), *[record(0, 19, 0, 14)] * 2)
    box[0] = False  # a truth with no bin (a silent target, say)
    masks = torch.stack([torch.rand(T, F), torch.zeros(T, F), box[2].float()])
    values = metrics.localisation_metrics(masks, box)
    sums = metrics.batch_sums(values, ["a", "b", "c"])
    stats = metrics.means_from_sums(sums)
    assert stats["n_clips"] == 3 and stats["n_empty_masks"] == 1
    assert stats["roc_auc"] == pytest.approx((0.5 + 1.0) / 2)  # b, c
    assert stats["topk_f1"] == pytest.approx((0.25 + 1.0) / 2)  # b, c
    assert stats["topk_iou"] == pytest.approx((1 / 7 + 1.0) / 2)  # k/(2n-k)
    assert stats["evidence_mass"] == pytest.approx((0.0 + 1.0) / 2)  # a, c
    assert stats["evidence_mass_ratio"] == pytest.approx(4.0)  # c alone
    assert stats["pointing_game"] == pytest.approx((0.0 + 1.0) / 2)  # a, c
    assert stats["evidence_area"] == pytest.approx(0.5 / 3)  # every clip
    # the same means whatever the batches: sums add up
    halves = [
        metrics.batch_sums({k: v[part] for k, v in values.items()}, ids)
        for part, ids in ((slice(0, 1), ["a"]), (slice(1, 3), ["b", "c"]))
    ]
    added = {k: halves[0][k] + halves[1][k] for k in halves[0]}
    again = metrics.means_from_sums(added)
    assert again.keys() == stats.keys()
    for name, value in stats.items():
        assert float(again[name]) == pytest.approx(float(value)), name


def test_records_by_clip_id_and_missing_clip(synthetic_data, tmp_path):
    evidence = read_evidence(synthetic_data)
    with open(synthetic_data / "meta" / "evidence.json") as f:
        raw = json.load(f)
    name = sorted(raw)[0]
    clip = name[: -len(".wav")]
    assert evidence_records(evidence, [clip], synthetic_data) == [raw[name]]
    with pytest.raises(KeyError, match="nope.*evidence.json"):
        evidence_records(evidence, [clip, "nope"], synthetic_data)
    assert read_evidence(tmp_path) is None  # real ESC-50: no record


def test_run_on_generated_data_reports_localisation(trained_l2i):
    """A test run on data with planted evidence has the localisation keys,
    consistent with each other (the run of the ``trained_l2i`` fixture)."""
    out, _ = trained_l2i
    with open(out / "test_metrics.json") as f:
        results = json.load(f)
    for name in ("evidence_mass", "evidence_mass_ratio", "pointing_game"):
        assert 0 <= results[name] < math.inf, name
    for name in ("roc_auc", "topk_iou", "topk_f1"):
        assert 0 <= results[name] <= 1, name
    assert "deletion_auc" not in results  # curve_steps: 0, the default
    # the synthetic boxes (1.5 s of 5, 400 Hz of 8 kHz) cover 0.3 x 0.05 =
    # 1.5% of the bins, a frame or bin more or less at their edges
    assert 0.012 < results["evidence_area"] < 0.018


def test_oracle_run_with_curves(synthetic_data, trained_classifier, tmp_path):
    """interpret_reference.py --reference oracle --curve_steps 4 (M = the
    box): test_metrics.json holds deletion_auc and insertion_auc in [0, 1],
    and the oracle's rank metrics are perfect (roc_auc, top-k IoU and F1 1)."""
    run_script(
        "interpret_reference.py",
        "hparams/reference_conv2d.yaml",
        "--data_folder",
        synthetic_data,
        "--output_folder",
        tmp_path,
        *classifier_args(trained_classifier),
        *TINY,
        "--out_n_neurons",
        N_CLASSES,
        "--reference",
        "oracle",
        "--curve_steps",
        4,
        "--save_interpretations",
        False,
    )
    results = json.loads((tmp_path / "test_metrics.json").read_text())
    for name in ("deletion_auc", "insertion_auc"):
        assert 0 <= results[name] <= 1, name
    for name in ("roc_auc", "topk_iou", "topk_f1", "pointing_game"):
        assert results[name] == pytest.approx(1.0), name
