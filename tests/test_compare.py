"""compare_interpreters.py end to end on tiny settings: the table, the csv,
the figure and the gallery, with the references where they must be."""

import csv
import json
import subprocess
import sys

import pytest

from conftest import N_CLASSES, ROOT, TINY

# L-MAC, PIQ, L2I have their own end-to-end tests; one trained method would
# only add its training time here
METHODS = ("saliency", "uniform", "oracle")


def test_compare_ranks_methods_with_references(
    synthetic_data, trained_classifier, tmp_path
):
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
            "--tiny",
            "--epochs",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with open(out / "comparison.csv") as f:
        rows = {row["method"]: row for row in csv.DictReader(f)}
    assert len(rows) == len(METHODS)
    oracle = rows["Oracle mask (reference)"]
    uniform = rows["Uniform mask (reference)"]
    # each run's own test_metrics.json is what the table reports
    with open(out / "runs" / "oracle" / "test_metrics.json") as f:
        oracle_run = json.load(f)
    assert (
        float(oracle["evidence_mass_ratio"])
        == oracle_run["evidence_mass_ratio"]
    )
    # oracle: all its mass on the box, ratio 1 / the box's share (the boxes
    # differ by a frame or two between clips: mean of 1/A vs 1/mean A)
    assert float(oracle["evidence_mass"]) == pytest.approx(1.0)
    assert float(oracle["evidence_mass_ratio"]) == pytest.approx(
        1 / float(oracle["evidence_area"]), rel=0.02
    )
    assert float(oracle["pointing_game"]) == 1.0
    # uniform: ratio 1, keeps everything (Fid-In 1, AD 0)
    assert float(uniform["evidence_mass_ratio"]) == pytest.approx(1.0)
    assert float(uniform["fidelity_in"]) == 1.0 and float(uniform["AD"]) == 0
    # ranked by localisation: the oracle first
    ratios = [float(row["evidence_mass_ratio"]) for row in rows.values()]
    assert ratios == sorted(ratios, reverse=True)
    assert list(rows)[0] == "Oracle mask (reference)"
    assert int(oracle_run["n_clips"]) == 4 and N_CLASSES == 3
    table = (out / "comparison.md").read_text()
    assert "evidence_mass_ratio ↑" in table and "AD ↓" in table
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    gallery = (out / "gallery" / "index.html").read_text()
    assert all(label in gallery for label in rows)
    assert not (out / "classifiers").exists()  # the given one was reused
