"""Localisation against planted evidence (metrics.evidence_boxes and
metrics.localisation_metrics): analytic cases, and the keys of a real run.

A box covering a share A of the T x F bins: a mask equal to the box (the
oracle) puts all its mass there, ratio 1 / A; a uniform mask puts A of its
mass there, ratio 1; a mask entirely outside scores 0.
"""

import json
import math

import pytest
import torch

import metrics
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
    # the synthetic boxes (1 s of 5, 400 Hz of 8 kHz) cover about 1% of the bins
    assert 0.005 < results["evidence_area"] < 0.015
