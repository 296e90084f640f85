#!/usr/bin/env python3
"""Ranks interpreters against ground truth, with the answers that need no
classifier beside them: one command, one table, several seeds.

Run:
    python compare_interpreters.py
    python compare_interpreters.py --methods piq,lmac,saliency,energy,oracle,uniform
    python compare_interpreters.py --data_folder /data/ESC50 --eval_contamination mixtures

The default run is 72 script runs: 21 minutes on 2 CPU cores (an Intel
Xeon with AVX-512, no GPU), most of it the trained interpreters at full
resolution and the start of each script.

By default, for each seed (``--seeds``, 3) it generates 4-class ESC-50-layout
data (``synthetic_esc50.py``: class evidence in a recorded box among louder
class-irrelevant distractors), trains the small classifiers the methods
explain (conv2d; FocalNet and ViT for AMT), trains or runs every interpreter
on them as a user would run its script, with the same budget for every
trained interpreter (``--epochs``, ``--batch_size``, ``--lr``; nothing tuned
per method), and tests all of them on the same clips. On a data folder of
your own (real ESC-50) the ground truth comes from mixtures instead:
``--eval_contamination mixtures`` (or white_noise, wham, speech) scores every
mask against the target's ideal binary mask. Written to the output folder:

* ``comparison.md``, ``.csv``, ``.json``: one row per method, every metric as
  mean and 95% interval over the seeds, ranked by ``topk_iou`` (the IoU of
  the mask's k strongest bins with the ground truth's k bins: loud
  distractors draw an energy mask's top bins away from the evidence, where
  ``roc_auc``, dominated by the many quiet bins, still credits loudness),
  references apart, AMT (other classifiers) in a table of its own;
* ``comparison.png``: localisation and the randomisation check with their
  intervals;
* ``gallery/index.html``: every method's interpretations of the first seed's
  test clips, to listen to side by side (``make_gallery.py``).

References bracket the table (``interpret_reference.py``): the oracle (the
ground truth itself), uniform and random masks (chance), and two energy
masks that need no classifier (``energy``: X / max X; ``energy_threshold``:
PIQ's target X > 0.35 max X). A method that does not beat the energy masks
explains loudness. The sanity check (``sanity.py``, Adebayo et al. 2018):
on the first seed every method is run again on the classifier with its
weights randomised, and ``randomisation_rank_corr`` is the rank correlation
of its masks with the first run's (an explanation of the classifier must
change: near 1 means it explains the input, not the classifier). Runs
resume from their checkpoints if the output folder already holds them;
every script runs on ``--device`` (default ``cuda:0`` when CUDA is
available, else ``cpu``).

Authors: the ESC-50 interpretability recipe developers.
"""

import argparse
import csv
import json
import logging
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import torch
from speechbrain.utils.logger import get_logger
from tqdm import tqdm

import synthetic_esc50
from comparison_report import plot_comparison, summarise, write_tables
from sanity import mask_rank_correlation, randomise_classifier

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
        f"{label} (reference)",
        "interpret_reference.py",
        "hparams/reference_conv2d.yaml",
        args=("--reference", kind),
    )


# name -> method, each with its YAML's settings: the trained ones share the
# budget of the command line (--epochs, --batch_size, --lr), nothing else
METHODS = {
    "piq": Method("PIQ", "train_piq.py", "hparams/piq.yaml", trains=True),
    "l2i": Method(
        "L2I", "train_l2i.py", "hparams/l2i_conv2d.yaml", trains=True, nmf=True
    ),
    "lmac": Method(
        "L-MAC", "train_lmac.py", "hparams/lmac_conv2d.yaml", trains=True
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
    "energy": reference("Energy X / max X", "energy"),
    "energy_threshold": reference("Energy X > 0.35 max X", "energy_threshold"),
    "random": reference("Random mask", "random"),
    "uniform": reference("Uniform mask", "uniform"),
    "oracle": reference("Oracle mask", "oracle"),
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


def parse_args(argv):
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--output_folder", default=os.path.join(ROOT, "results", "compare")
    )
    parser.add_argument(
        "--data_folder",
        help="an ESC-50-layout folder (every seed uses it); default: "
        "generated into <output_folder>/seed<k>/data with planted evidence",
    )
    parser.add_argument(
        "--eval_contamination",
        default="none",
        help="test inputs (none | mixtures | white_noise | wham | speech): "
        "masks then scored against the target's ideal binary mask; needed "
        "for a ground truth on data without planted evidence",
    )
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated, from: {', '.join(METHODS)}",
    )
    parser.add_argument(
        "--seeds",
        default="1,2,3",
        help="comma-separated: each seed draws the data, the classifiers "
        "and the interpreters anew",
    )
    parser.add_argument("--classifier_epochs", type=int, default=15)
    parser.add_argument(
        "--epochs", type=int, default=6, help="of every trained interpreter"
    )
    parser.add_argument(
        "--batch_size", type=int, default=4, help="of every trained interpreter"
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=0.001,
        help="of every trained interpreter (their YAMLs' rates are for "
        "100-200 epochs on ESC-50)",
    )
    parser.add_argument(
        "--curve_steps",
        type=int,
        default=8,
        help="steps of the deletion and insertion curves (0: none)",
    )
    parser.add_argument(
        "--no_randomisation",
        action="store_true",
        help="skip the model-randomisation sanity check",
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
        "same architecture settings) instead of training one per seed, e.g. "
        "conv2d=results/compare/seed1/classifiers/conv2d",
    )
    parser.add_argument("--no_gallery", action="store_true")
    parser.add_argument(
        "--device",
        default="cuda:0" if torch.cuda.is_available() else "cpu",
        help="of every script (default: cuda:0 if CUDA is available, else cpu)",
    )
    args = parser.parse_args(argv)
    args.methods = args.methods.split(",")
    args.seeds = [int(seed) for seed in args.seeds.split(",")]
    args.classifier = dict(item.split("=", 1) for item in args.classifier)
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(
            f"--methods: unknown {unknown}; choose from {list(METHODS)}"
        )
    return args


def class_count(data):
    """Number of classes in ``data``'s meta/esc50.csv."""
    with open(os.path.join(data, "meta", "esc50.csv")) as f:
        return len({row["category"] for row in csv.DictReader(f)})


def run_methods(run, args, names, folders, classifiers, nmf, progress):
    """Runs the methods ``names`` into ``folders[name]`` against the
    ``classifiers`` (backbone -> folder); returns name -> (test_metrics
    dict, seconds), leaving out (and logging) the methods that failed."""
    architectures = TINY if args.tiny else ARCHITECTURES
    results = {}
    for name in names:
        method = METHODS[name]
        progress.set_postfix_str(os.path.relpath(folders[name], args.out))
        extra = [*method.args, *architectures[method.backbone]]
        extra += classifier_args(classifiers[method.backbone])
        extra += ["--out_n_neurons", args.n_classes]
        extra += ["--eval_contamination", args.eval_contamination]
        extra += ["--curve_steps", args.curve_steps]
        if method.trains:
            extra += ["--number_of_epochs", args.epochs]
            extra += ["--batch_size", args.batch_size, "--lr", args.lr]
        else:
            extra += ["--batch_size", 8]
        if method.nmf:
            extra += [
                "--nmf_decoder_path",
                os.path.join(nmf, "nmf_decoder.ckpt"),
            ]
        try:
            seconds = run(method.script, method.hparams, folders[name], *extra)
        except RuntimeError as error:
            logger.error("%s", error)
            continue
        finally:
            progress.update()
        with open(
            os.path.join(folders[name], f"test_metrics{args.suffix}.json")
        ) as f:
            results[name] = (json.load(f), seconds)
    return results


def run_seed(args, seed, methods, progress):
    """Data, classifiers, NMF dictionary and every method for one seed;
    with the randomisation check, every method again on the randomised
    classifiers. Returns (name -> figures, name -> run folder)."""
    out = os.path.join(args.out, f"seed{seed}")
    data = args.data_folder or os.path.join(out, "data")
    if not os.path.isfile(os.path.join(data, "meta", "esc50.csv")):
        synthetic_esc50.generate(
            data,
            n_classes=N_CLASSES,
            clips_per_fold=args.clips_per_fold,
            seed=seed,
        )
    args.n_classes = class_count(data)
    run = Runner(
        ["--data_folder", data, "--device", args.device, "--noprogressbar"]
        + ["--seed", seed]
    )
    architectures = TINY if args.tiny else ARCHITECTURES
    classifiers = {k: os.path.abspath(v) for k, v in args.classifier.items()}
    for backbone in sorted(
        {METHODS[m].backbone for m in methods} - set(classifiers)
    ):
        progress.set_postfix_str(f"seed {seed}: classifier {backbone}")
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
            args.n_classes,
            *architectures[backbone],
        )
        progress.update()
    nmf = os.path.join(out, "nmf")
    if any(METHODS[m].nmf for m in methods):  # independent of the classifier
        progress.set_postfix_str(f"seed {seed}: NMF dictionary")
        run("train_nmf.py", "hparams/nmf.yaml", nmf, "--number_of_epochs", 2)
        progress.update()
    folders = {m: os.path.join(out, "runs", m) for m in methods}
    done = run_methods(run, args, methods, folders, classifiers, nmf, progress)
    figures = {}
    for name, (results, seconds) in done.items():
        figures[name] = {
            k: v for k, v in results.items() if isinstance(v, (int, float))
        }
        figures[name]["seconds"] = seconds
    if args.randomise and seed == args.seeds[0]:
        randomised = {
            backbone: randomise_classifier(
                folder,
                os.path.join(out, "randomised", "classifiers", backbone),
                seed=seed,
            )
            for backbone, folder in classifiers.items()
        }
        again = {m: os.path.join(out, "randomised", "runs", m) for m in done}
        run_methods(run, args, list(done), again, randomised, nmf, progress)
        subfolder = f"interpretations{args.suffix}"
        for name in done:
            try:
                corr = mask_rank_correlation(
                    folders[name], again[name], subfolder
                )
            except FileNotFoundError as error:  # its randomised run failed
                logger.error("%s", error)
                continue
            values = [v for v in corr.values() if not math.isnan(v)]
            figures[name]["randomisation_rank_corr"] = (
                sum(values) / len(values) if values else None
            )
    return figures, folders


def main(argv=None):
    """For every seed: data, classifiers, every method (and the
    randomisation check on the first); then the tables, the figure and the
    gallery of the first seed."""
    args = parse_args(argv)
    args.out = os.path.abspath(args.output_folder)
    args.randomise = not args.no_randomisation
    # what a contaminated test's files are named after, as InputContamination
    mode = args.eval_contamination
    args.suffix = "" if mode == "none" else f"_{mode}"
    data = args.data_folder
    has_truth = args.eval_contamination != "none" or data is None
    if data and args.eval_contamination == "none":
        has_truth = synthetic_esc50.read_evidence(data) is not None
    methods = [m for m in args.methods if has_truth or m != "oracle"]
    if len(methods) < len(args.methods):
        logger.warning(
            "No ground truth in %s (no meta/evidence.json, no "
            "--eval_contamination): no oracle, no localisation columns.",
            data,
        )
    backbones = {METHODS[m].backbone for m in methods} - set(args.classifier)
    per_seed = len(backbones) + len(methods)
    per_seed += any(METHODS[m].nmf for m in methods)
    # the randomisation check runs every method again on the first seed only
    total = per_seed * len(args.seeds) + len(methods) * args.randomise
    progress = tqdm(total=total, desc="compare", unit="run")
    figures, first_folders = {m: [] for m in methods}, {}
    for seed in args.seeds:
        found, folders = run_seed(args, seed, methods, progress)
        for name, values in found.items():
            figures[name].append(values)
        first_folders = first_folders or {m: folders[m] for m in found}
    progress.close()
    runs = [
        {
            "method": METHODS[m].label,
            "explains": METHODS[m].backbone,
            "reference": METHODS[m].script == "interpret_reference.py",
            "seeds": figures[m],
        }
        for m in methods
        if figures[m]
    ]
    rows = summarise(runs)
    rank = "topk_iou" if has_truth else "faithfulness"
    table = write_tables(rows, runs, args.out, rank)
    if has_truth:
        plot_comparison(
            rows, os.path.join(args.out, "comparison.png"), localisation=rank
        )
    if first_folders and not args.no_gallery:
        subprocess.run(
            [sys.executable, "make_gallery.py", *first_folders.values()]
            + ["--output", os.path.join(args.out, "gallery"), "--names"]
            + [METHODS[m].label for m in first_folders]
            + ["--table", os.path.join(args.out, "comparison.csv")],
            cwd=ROOT,
            check=True,
        )
    logger.info(
        "Comparison (%s):\n%s", os.path.join(args.out, "comparison.md"), table
    )
    failed = [m for m in methods if len(figures[m]) < len(args.seeds)]
    if failed:
        raise SystemExit(
            f"Methods that failed on some seed (see their .log): {failed}"
        )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
