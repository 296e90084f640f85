#!/usr/bin/env python3
"""The recipe end to end on generated data: no download, a few minutes.

Run (README command 1 sets up the venv first):
    python demo.py

1. generates 4-class ESC-50-layout data whose class evidence (two tones)
   sits at recorded times and frequencies (synthetic_esc50.py);
2. trains the conv2d classifier on it (train_classifier.py);
3. trains PIQ on that frozen classifier (train_piq.py);
4. evaluates the best PIQ checkpoint with --test_only, saving interpretations;
5. reports the test metrics and how much of each mask lies on the evidence;
6. writes the listening gallery of the PIQ run (make_gallery.py) to
   <output_folder>/gallery/index.html.

Architectures are shrunk (emb_dim 32, K 128) and PIQ is trained with batches of
2, lr 0.001 and rec_loss_coef 10 so that it converges in 10 epochs on 2 CPU cores;
every script is run exactly as a user would run it, on ``--device`` (default
``cuda:0`` when CUDA is available, else ``cpu``).
"""

import argparse
import json
import logging
import os
import pathlib
import subprocess
import sys

import torch
from speechbrain.utils.logger import get_logger

import synthetic_esc50

logger = get_logger(__name__)
ROOT = os.path.dirname(os.path.abspath(__file__))


def run(*command):
    """Runs one recipe script from the recipe folder; stops the demo if it fails."""
    logger.info("$ python " + " ".join(map(str, command)))
    subprocess.run([sys.executable, *map(str, command)], cwd=ROOT, check=True)


def main():
    """Generate, train the classifier, train PIQ, test, report, gallery."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--output_folder", default=os.path.join(ROOT, "results", "demo")
    )
    parser.add_argument("--classifier_epochs", type=int, default=15)
    parser.add_argument("--piq_epochs", type=int, default=10)
    parser.add_argument(
        "--device",
        default="cuda:0" if torch.cuda.is_available() else "cpu",
        help="of every script (default: cuda:0 if CUDA is available, else cpu)",
    )
    args = parser.parse_args()
    out = os.path.abspath(args.output_folder)
    data, classifier, piq = (
        os.path.join(out, name) for name in ("data", "classifier", "piq")
    )
    n_classes = 4
    if not os.path.isfile(os.path.join(data, "meta", "esc50.csv")):
        synthetic_esc50.generate(data, n_classes=n_classes, clips_per_fold=8)
    small = [
        "--emb_dim",
        32,
        "--out_n_neurons",
        n_classes,
        "--device",
        args.device,
        "--noprogressbar",
    ]
    run(
        "train_classifier.py",
        "hparams/classifier_conv2d.yaml",
        "--data_folder",
        data,
        "--output_folder",
        classifier,
        "--number_of_epochs",
        args.classifier_epochs,
        "--batch_size",
        8,
        *small,
    )
    # PIQ: small batches give the decoder enough steps; the mask BCE weighs more than the VQ terms
    piq_args = [
        "hparams/piq.yaml",
        "--data_folder",
        data,
        "--output_folder",
        piq,
        "--K",
        128,
        "--lr",
        0.001,
        "--rec_loss_coef",
        10,
        "--embedding_model_path",
        os.path.join(classifier, "embedding_model.ckpt"),
        "--classifier_model_path",
        os.path.join(classifier, "classifier.ckpt"),
        "--batch_size",
        2,
        *small,
    ]
    run(
        "train_piq.py",
        *piq_args,
        "--number_of_epochs",
        args.piq_epochs,
        "--save_interpretations",
        False,
    )
    run(
        "train_piq.py",
        *piq_args,
        "--number_of_epochs",
        args.piq_epochs,
        "--test_only",
    )

    with open(os.path.join(piq, "test_metrics.json")) as f:
        test_metrics = json.load(f)
    report = {
        "test_metrics": test_metrics,
        "mask_mass_on_evidence": test_metrics["evidence_mass"],
        "evidence_area_share": test_metrics["evidence_area"],
        "interpretations": os.path.join(piq, "interpretations"),
    }
    with open(os.path.join(out, "demo_report.json"), "w") as f:
        json.dump(report, f, indent=2)
    lines = [
        f"  {k}: {v:.4g}" if isinstance(v, float) else f"  {k}: {v}"
        for k, v in test_metrics.items()
    ]
    logger.info(
        "Demo finished.\nTest metrics (%s):\n%s\nMask mass on the planted evidence: %.1f%% "
        "(the evidence covers %.1f%% of the spectrogram)\nListen and look: %s/<clip>/"
        "{original.wav,interpretation.wav,spectra.png,mask.npy}\nReport: %s",
        os.path.join(piq, "test_metrics.json"),
        "\n".join(lines),
        100 * report["mask_mass_on_evidence"],
        100 * report["evidence_area_share"],
        report["interpretations"],
        os.path.join(out, "demo_report.json"),
    )
    gallery = os.path.join(out, "gallery")
    run("make_gallery.py", piq, "--output", gallery, "--names", "PIQ")
    logger.info(
        "Listening gallery (open in a browser): %s",
        pathlib.Path(gallery, "index.html").as_uri(),
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
