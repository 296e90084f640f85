"""compare_interpreters.py end to end on tiny settings (the table over seeds
with intervals, the references, the randomisation check, the figure and the
gallery), and its parts: intervals, tables, the sanity check's
randomisation and rank correlation."""

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from comparison_report import markdown, mean_interval, summarise
from conftest import ROOT, TINY
from sanity import randomise_state, rank_correlation

# L-MAC, PIQ, L2I have their own end-to-end tests; one trained method would
# only add its training time here
METHODS = ("saliency", "energy", "oracle")


def test_mean_interval_is_students_t():
    """Mean and 95% half-width t_{0.975, n-1} s / sqrt(n): for 1, 2, 3,
    s = 1 and t_{0.975, 2} = 4.3027; one value has no interval."""
    mean, ci = mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and ci == pytest.approx(4.302653 / math.sqrt(3))
    assert mean_interval([5.0, None, float("nan")]) == (5.0, None)
    assert mean_interval([]) == (None, None)


def test_table_bolds_the_best_method_not_a_reference():
    runs = [
        {
            "method": "A",
            "explains": "c",
            "reference": False,
            "seeds": [{"AD": 2.0}],
        },
        {
            "method": "B",
            "explains": "c",
            "reference": False,
            "seeds": [{"AD": 1.0}],
        },
        {
            "method": "R",
            "explains": "c",
            "reference": True,
            "seeds": [{"AD": 0.0}],
        },
    ]
    text = markdown(summarise(runs), ["AD"])
    assert "AD ↓" in text and "| B | c | 1 | **1** |" in text
    assert "| R | c | 1 | 0 |" in text and "**0**" not in text


def test_randomise_state_from_the_top_down():
    """The cascade: a share of the layers, the head first; BatchNorm
    statistics and integer buffers are kept; the same seed gives the same
    draw; tensors keep their shape, dtype and (about) their scale."""
    body = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8))
    head = torch.nn.Linear(8, 3)
    body[1].running_mean.fill_(0.5)
    states = [body.state_dict(), head.state_dict()]
    top = randomise_state(states, top_share=1 / 3, seed=0)
    assert not torch.equal(top[1]["weight"], states[1]["weight"])
    assert all(torch.equal(top[0][k], v) for k, v in states[0].items())
    full = randomise_state(states, top_share=1.0, seed=0)
    assert not torch.equal(full[0]["0.weight"], states[0]["0.weight"])
    assert torch.equal(full[0]["1.running_mean"], states[0]["1.running_mean"])
    assert torch.equal(
        full[0]["1.num_batches_tracked"], states[0]["1.num_batches_tracked"]
    )
    again = randomise_state(states, top_share=1.0, seed=0)
    assert all(torch.equal(again[0][k], v) for k, v in full[0].items())
    w, r = states[0]["0.weight"], full[0]["0.weight"]
    assert r.shape == w.shape and r.dtype == w.dtype
    assert r.std().item() == pytest.approx(w.std().item(), rel=0.5)
    with pytest.raises(ValueError, match="top_share=0"):
        randomise_state(states, top_share=0)


def test_random_reference_mask():
    """The random reference: U(0, 1) bins, the same for a clip on every run
    (seed and clip id), different between clips; its ROC AUC against any
    truth is chance."""
    from interpret_reference import random_mask
    from metrics import roc_auc

    a, b = random_mask((431, 513), 1, "1-0"), random_mask((431, 513), 1, "1-0")
    assert torch.equal(a, b) and 0 <= a.min() and a.max() < 1
    assert not torch.equal(a, random_mask((431, 513), 1, "1-1"))
    assert abs(a.mean().item() - 0.5) < 0.01
    truth = torch.zeros(1, 431, 513, dtype=torch.bool)
    truth[:, 100:150, 20:60] = True
    assert roc_auc(a[None], truth).item() == pytest.approx(0.5, abs=0.02)


def test_rank_correlation():
    a = np.arange(12.0).reshape(3, 4)
    assert rank_correlation(a, a) == 1.0
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    assert rank_correlation(a, a**3) == pytest.approx(1.0)  # ranks only
    ones = np.ones((3, 4))
    assert rank_correlation(ones, ones) == 1.0  # unchanged, though constant
    assert math.isnan(rank_correlation(ones, a))


@pytest.mark.slow
def test_compare_end_to_end(synthetic_data, trained_classifier, tmp_path):
    """Two seeds on one data folder and classifier: a row per method with
    means and intervals; the oracle scores the maximum; the randomisation
    check leaves the energy mask unchanged and changes saliency's;
    references are ranked apart. (The uniform mask's chance scores are
    checked on real clips in test_contamination.py.)"""
    out = tmp_path / "compare"
    emb_dim = TINY[TINY.index("--emb_dim") + 1]
    assert emb_dim == "16"  # what --tiny gives conv2d: the fixture's classifier
    done = subprocess.run(
        [
            sys.executable,
            "compare_interpreters.py",
            "--data_folder",
            str(synthetic_data),
            "--output_folder",
            str(out),
            "--methods",
            ",".join(METHODS),
            "--classifier",
            f"conv2d={trained_classifier}",
            "--seeds",
            "1,2",
            "--curve_steps",
            "2",
            "--tiny",
            "--device",
            "cpu",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    with open(out / "comparison.csv") as f:
        rows = {row["method"]: row for row in csv.DictReader(f)}
    assert len(rows) == len(METHODS)
    assert all(row["seeds"] == "2" for row in rows.values())
    # each run's own test_metrics.json is what the table reports (means)
    per_seed = [
        json.loads(
            (
                out / f"seed{s}" / "runs" / "oracle" / "test_metrics.json"
            ).read_text()
        )
        for s in (1, 2)
    ]
    oracle = rows["Oracle mask (reference)"]
    assert float(oracle["roc_auc"]) == pytest.approx(
        np.mean([r["roc_auc"] for r in per_seed])
    )
    for key in ("roc_auc", "topk_iou", "evidence_mass", "pointing_game"):
        assert float(oracle[key]) == pytest.approx(1.0), key
    for row in rows.values():  # every column has its interval and its count
        assert row["roc_auc_ci95"] != "" and row["n_empty_masks"] != ""
        assert 0 <= float(row["deletion_auc"]) <= 1
    # the sanity check: energy masks ignore the classifier, saliency does not
    energy = rows["Energy X / max X (reference)"]
    assert float(energy["randomisation_rank_corr"]) == 1.0
    assert float(rows["Saliency"]["randomisation_rank_corr"]) < 0.9
    # methods first (ranked by roc_auc), references after
    assert list(rows)[0] == "Saliency"
    table = (out / "comparison.md").read_text()
    assert "roc_auc ↑" in table and "randomisation_rank_corr ↓" in table
    assert "±" in table
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    gallery = (out / "gallery" / "index.html").read_text()
    assert all(label in gallery for label in rows)
    assert not (out / "seed1" / "classifiers").exists()  # the given one reused
