#!/usr/bin/env python3
"""Ranks interpreters against planted ground truth: one command, one table.

Run:
    python compare_interpreters.py
    python compare_interpreters.py --methods piq,lmac,saliency,oracle,uniform
    python compare_interpreters.py --data_folder /data/ESC50 --methods piq,gradcam

By default it generates 4-class ESC-50-layout data whose class evidence (two
tones) lies in a recorded time-frequency box (``synthetic_esc50.py``), trains
the small classifiers the methods explain once (conv2d; FocalNet and ViT for
AMT), trains or runs every interpreter on them exactly as a user would run
its script, and evaluates all of them on the same test clips. Each method's
metrics come from its own ``test_metrics.json``; written to the output folder:

* ``comparison.csv`` and ``comparison.md``: one row per method, best
  localisation (``evidence_mass_ratio``) first, and the direction of every
  column;
* ``comparison.png``: localisation against faithfulness, one point per method;
* ``gallery/index.html``: every method's interpretations of the same clips,
  to listen to side by side (``make_gallery.py``).

References bracket the table: ``oracle`` (the evidence box itself:
``evidence_mass_ratio`` = 1 / the box's share of the spectrogram) and
``uniform`` (M = 1 everywhere: ratio 1.0). On a data folder without
``meta/evidence.json`` (real ESC-50) the localisation columns and the oracle
are left out. Architectures are shrunk so that the default run takes minutes
on 2 CPU cores (README, "Which interpreter to trust"); the scripts resume from
their checkpoints if the output folder already holds them. Every script runs
on ``--device`` (default ``cuda:0`` when CUDA is available, else ``cpu``).

Authors: the ESC-50 interpretability recipe developers.
"""

import argparse
import csv
import io
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import torch
from speechbrain.utils.logger import get_logger
from tqdm import tqdm

import synthetic_esc50
from fileio import write_atomically
from metrics import HIGHER_IS_BETTER

logger = get_logger(__name__)
ROOT = os.path.dirname(os.path.abspath(__file__))
N_CLASSES = 4


@dataclass(frozen=True)
class Method:
    """How to run one interpreter: its script, YAML, the classifier it
    explains, its own overrides, whether it trains (``epochs`` then apply)
    and whether it needs an NMF dictionary."""

    label: str
    script: str
    hparams: str
    backbone: str = "conv2d"
    args: tuple = ()
    trains: bool = False
    nmf: bool = False


def gradient(label, attribution):
    """A gradient baseline of ``interpret_gradients.py`` on conv2d."""
    return Method(
        label,
        "interpret_gradients.py",
        "hparams/gradients_conv2d.yaml",
        args=("--attribution", attribution),
    )


def reference(label, kind):
    """A reference mask of ``interpret_reference.py`` on conv2d."""
    return Method(
        label,
        "interpret_reference.py",
        "hparams/reference_conv2d.yaml",
        args=("--reference", kind),
    )


# name -> method; the settings train in a few epochs on the generated data
# (small batches give the decoders enough steps)
METHODS = {
    "piq": Method(
        "PIQ",
        "train_piq.py",
        "hparams/piq.yaml",
        args=("--K", 128, "--lr", 0.001, "--rec_loss_coef", 10),
        trains=True,
    ),
    "l2i": Method(
        "L2I",
        "train_l2i.py",
        "hparams/l2i_conv2d.yaml",
        args=("--lr", 0.001),
        trains=True,
        nmf=True,
    ),
    # The small conv2d's cosine scores give flat probabilities, so with the
    # public mask-size weight 0.4 the cross-entropy terms favour a broad mask
    # (measured: evidence_mass_ratio 0.9 to 1.1, its maximum on the evidence
    # in 96% of clips); 2.0 makes the mask small (ratio 4.6, Fid-In 1.0).
    "lmac": Method(
        "L-MAC",
        "train_lmac.py",
        "hparams/lmac_conv2d.yaml",
        args=("--lr", 0.001, "--reg_w_l1", 2.0),
        trains=True,
    ),
    "amt_focalnet": Method(
        "AMT-FocalNet",
        "interpret_amt.py",
        "hparams/amt_focalnet.yaml",
        backbone="focalnet",
    ),
    "amt_vit": Method(
        "AMT-ViT", "interpret_amt.py", "hparams/amt_vit.yaml", backbone="vit"
    ),
    "saliency": gradient("Saliency", "saliency"),
    "integrated_gradients": gradient(
        "Integrated gradients", "integrated_gradients"
    ),
    "smoothgrad": gradient("SmoothGrad", "smoothgrad"),
    "gradcam": gradient("Grad-CAM", "gradcam"),
    "uniform": reference("Uniform mask (reference)", "uniform"),
    "oracle": reference("Oracle mask (reference)", "oracle"),
}
# Shrunk classifiers: each trains in seconds on 2 CPU cores. The keys are
# shared by a backbone's classifier YAML and its interpreters' YAMLs.
ARCHITECTURES = {
    "conv2d": ("--emb_dim", 32),
    "focalnet": (
        "--embed_dim",
        8,
        "--depths",
        "[1, 1, 1, 1]",
        "--image_size",
        64,
    ),
    "vit": (
        "--emb_dim",
        32,
        "--num_hidden_layers",
        2,
        "--num_attention_heads",
        2,
        "--intermediate_size",
        64,
        "--image_size",
        64,
        "--patch_size",
        8,
    ),
}
# --tiny (tests): seconds per script
TINY = {
    "conv2d": ("--emb_dim", 16),
    "focalnet": (
        "--embed_dim",
        4,
        "--depths",
        "[1, 1, 1, 1]",
        "--image_size",
        64,
    ),
    "vit": (
        "--emb_dim",
        16,
        "--num_hidden_layers",
        1,
        "--num_attention_heads",
        2,
        "--intermediate_size",
        32,
        "--image_size",
        32,
        "--patch_size",
        8,
    ),
}
# table columns: the metrics (METHODS.md §5 and localisation), then time
COLUMNS = list(HIGHER_IS_BETTER) + ["evidence_area"]


class Runner:
    """Runs recipe scripts as a user would, each into its own folder, with
    its output in ``<folder>.log``; a failure raises with the log's tail."""

    def __init__(self, common):
        self.common = [str(arg) for arg in common]

    def __call__(self, script, hparams, folder, *args):
        """``python script hparams --output_folder folder <common> args``;
        returns the seconds it took."""
        command = [sys.executable, script, hparams, "--output_folder", folder]
        command += self.common + [str(arg) for arg in args]
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        start = time.perf_counter()
        with open(f"{folder}.log", "w") as log:
            done = subprocess.run(
                command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        if done.returncode:
            with open(f"{folder}.log") as log:
                tail = log.read()[-3000:]
            raise RuntimeError(
                f"{' '.join(command)} failed (log: {folder}.log):\n{tail}"
            )
        return time.perf_counter() - start


def classifier_args(folder):
    """Overrides that point an interpreter at a classifier of train_classifier.py."""
    return (
        "--embedding_model_path",
        os.path.join(folder, "embedding_model.ckpt"),
        "--classifier_model_path",
        os.path.join(folder, "classifier.ckpt"),
    )


def write_tables(rows, out):
    """comparison.csv and comparison.md from ``rows`` (dicts: method,
    explains, the metrics, seconds); returns the markdown text."""
    present = [c for c in COLUMNS if any(c in row for row in rows)]
    fields = ["method", "explains", *present, "seconds"]

    def write_csv(f):
        writer = csv.DictWriter(f, fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    write_atomically(os.path.join(out, "comparison.csv"), write_csv)
    arrows = {name: "↑" if up else "↓" for name, up in HIGHER_IS_BETTER.items()}
    header = [f"{name} {arrows.get(name, '')}".strip() for name in fields]
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "---|" * len(fields))
    for row in rows:
        cells = [row.get(name, "") for name in fields]
        text = [f"{c:.3g}" if isinstance(c, float) else str(c) for c in cells]
        lines.append("| " + " | ".join(text) + " |")
    table = "\n".join(lines) + "\n"
    write_atomically(
        os.path.join(out, "comparison.md"), lambda f: f.write(table)
    )
    return table


def plot_comparison(rows, path):
    """One point per method: localisation (evidence_mass_ratio, log scale)
    against faithfulness (FF); the uniform mask's ratio 1 is marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("evidence_mass_ratio")]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        reference = "reference" in row["method"]
        ax.scatter(
            row["evidence_mass_ratio"],
            row["faithfulness"],
            marker="s" if reference else "o",
            color="grey" if reference else None,
        )
        ax.annotate(
            row["method"],
            (row["evidence_mass_ratio"], row["faithfulness"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    ax.axvline(1.0, color="grey", linestyle=":", label="uniform mask")
    ax.set_xscale("log")
    ratios = [row["evidence_mass_ratio"] for row in rows] + [1.0]
    ax.set_xlim(min(ratios) / 2, max(ratios) * 8)  # room for the labels
    ax.set_xlabel(
        "evidence_mass_ratio (mask mass on the evidence / its area; ↑)"
    )
    ax.set_ylabel("faithfulness FF = p_c - p_out_c (↑)")
    ax.set_title("Where the mask points vs what removing it costs")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    write_atomically(path, lambda f: f.write(buffer.getvalue()), mode="wb")


def parse_args(argv):
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--output_folder", default=os.path.join(ROOT, "results", "compare")
    )
    parser.add_argument(
        "--data_folder",
        help="an ESC-50-layout folder; default: generated into "
        "<output_folder>/data, with planted evidence",
    )
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated, from: {', '.join(METHODS)}",
    )
    parser.add_argument("--classifier_epochs", type=int, default=15)
    parser.add_argument(
        "--epochs", type=int, default=10, help="of every trained interpreter"
    )
    parser.add_argument(
        "--batch_size", type=int, default=2, help="of the trained interpreters"
    )
    parser.add_argument(
        "--clips_per_fold", type=int, default=8, help="of generated data"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="smaller classifiers (tests)"
    )
    parser.add_argument(
        "--classifier",
        action="append",
        default=[],
        metavar="BACKBONE=FOLDER",
        help="reuse a classifier trained by train_classifier.py (with the "
        "same architecture settings) instead of training one, e.g. "
        "conv2d=results/compare/classifiers/conv2d",
    )
    parser.add_argument("--no_gallery", action="store_true")
    parser.add_argument(
        "--device",
        default="cuda:0" if torch.cuda.is_available() else "cpu",
        help="of every script (default: cuda:0 if CUDA is available, else cpu)",
    )
    args = parser.parse_args(argv)
    args.methods = args.methods.split(",")
    args.classifier = dict(item.split("=", 1) for item in args.classifier)
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(
            f"--methods: unknown {unknown}; choose from {list(METHODS)}"
        )
    return args


def main(argv=None):
    """Data, classifiers, NMF dictionary if needed, every method, tables,
    figure, gallery."""
    args = parse_args(argv)
    out = os.path.abspath(args.output_folder)
    data = args.data_folder or os.path.join(out, "data")
    if not args.data_folder and not os.path.isfile(
        os.path.join(data, "meta", "esc50.csv")
    ):
        synthetic_esc50.generate(
            data, n_classes=N_CLASSES, clips_per_fold=args.clips_per_fold
        )
    has_evidence = synthetic_esc50.read_evidence(data) is not None
    with open(os.path.join(data, "meta", "esc50.csv")) as f:
        n_classes = len({row["category"] for row in csv.DictReader(f)})
    methods = [m for m in args.methods if has_evidence or m != "oracle"]
    if len(methods) < len(args.methods):
        logger.warning("No meta/evidence.json in %s: no oracle mask.", data)
    chosen = [METHODS[m] for m in methods]
    run = Runner(
        [
            "--data_folder",
            data,
            "--device",
            args.device,
            "--noprogressbar",
        ]
    )
    architectures = TINY if args.tiny else ARCHITECTURES
    backbones = sorted({m.backbone for m in chosen} - set(args.classifier))
    steps = backbones + methods
    steps += ["nmf"] if any(m.nmf for m in chosen) else []
    progress = tqdm(total=len(steps), desc="compare", unit="run")
    classifiers = {k: os.path.abspath(v) for k, v in args.classifier.items()}
    for backbone in backbones:
        progress.set_postfix_str(f"classifier {backbone}")
        classifiers[backbone] = os.path.join(out, "classifiers", backbone)
        run(
            "train_classifier.py",
            f"hparams/classifier_{backbone}.yaml",
            classifiers[backbone],
            "--number_of_epochs",
            args.classifier_epochs,
            "--batch_size",
            8,
            "--out_n_neurons",
            n_classes,
            *architectures[backbone],
        )
        progress.update()
    nmf = os.path.join(out, "nmf")
    if any(m.nmf for m in chosen):
        progress.set_postfix_str("NMF dictionary")
        run("train_nmf.py", "hparams/nmf.yaml", nmf, "--number_of_epochs", 2)
        # (the dictionary does not depend on the classifier)
        progress.update()
    rows, failed, folders = [], [], []
    for name, method in zip(methods, chosen):
        progress.set_postfix_str(name)
        folder = os.path.join(out, "runs", name)
        extra = [*method.args, *architectures[method.backbone]]
        extra += classifier_args(classifiers[method.backbone])
        extra += ["--out_n_neurons", n_classes]
        if method.trains:
            extra += ["--number_of_epochs", args.epochs]
            extra += ["--batch_size", args.batch_size]
        else:
            extra += ["--batch_size", 8]
        if method.nmf:
            extra += [
                "--nmf_decoder_path",
                os.path.join(nmf, "nmf_decoder.ckpt"),
            ]
        try:
            seconds = run(method.script, method.hparams, folder, *extra)
        except RuntimeError as error:
            logger.error("%s", error)
            failed.append(name)
            continue
        finally:
            progress.update()
        with open(os.path.join(folder, "test_metrics.json")) as f:
            results = json.load(f)
        rows.append(
            {
                "method": method.label,
                "explains": method.backbone,
                **{k: results[k] for k in COLUMNS if k in results},
                "seconds": round(seconds, 1),
            }
        )
        folders.append((method.label, folder))
    progress.close()
    rank = "evidence_mass_ratio" if has_evidence else "faithfulness"
    rows.sort(key=lambda row: -(row.get(rank) or 0))
    table = write_tables(rows, out)
    if has_evidence:
        plot_comparison(rows, os.path.join(out, "comparison.png"))
    if folders and not args.no_gallery:
        labels, runs = zip(*folders)
        subprocess.run(
            [sys.executable, "make_gallery.py", *runs, "--output"]
            + [os.path.join(out, "gallery"), "--names", *labels],
            cwd=ROOT,
            check=True,
        )
    logger.info(
        "Comparison (%s):\n%s", os.path.join(out, "comparison.md"), table
    )
    if failed:
        raise SystemExit(f"Methods that failed (see their .log): {failed}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
