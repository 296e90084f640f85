#!/usr/bin/env python3
"""Full-size training speed and peak GPU memory of the recipe's main
configurations, beside the figures of the seed recipe to beat. Run:

    .venv/bin/python benchmarks/gpu_benchmark.py            # all five
    .venv/bin/python benchmarks/gpu_benchmark.py --configs piq,nmf --steps 8

Each configuration (PIQ hparams/piq.yaml, L2I CNN14 hparams/l2i_cnn14.yaml,
NMF hparams/nmf.yaml, PIQ-FocalNet hparams/piq_focalnet.yaml, PIQ-ViT
hparams/piq_vit.yaml) runs at full size and at its YAML's batch size, one
epoch of --steps batches of the largest of those batch sizes (so more
steps for a smaller batch), then validation and test, through its own
script's ``main`` in a fresh process (its own CUDA context and peak memory),
on generated data (synthetic_esc50.py) with random classifier weights
(--use_pretrained False: the hub is not needed; the heads keep their 50
outputs, the data's classes first). The Brain is timed by
benchmarks/benchmark.py's ``Timed`` (CUDA synchronised around each step).

Seconds per epoch are extrapolated, not measured: the median training step
(the first, which warms cuDNN and the allocator up, left out) times the
steps of an ESC-50 training epoch, folds 1-3 = 1200 clips, at the config's
batch size; "with validation" adds the measured validation pass scaled to
fold 4 (400 clips); beside them, the measured training stage (data loading
and the warm-up step included) scaled to 1200 clips. Peak memory is
torch.cuda.max_memory_allocated during the training stage (and the
validation stage). TF32 is as speechbrain leaves it (on for matmul and cuDNN
at import; SB_DISABLE_QUIRKS=allow_tf32 turns matmul's off); the table's
header says which. Without a CUDA device the command exits with status 2
and a one-line message ("no CUDA device: ...").

Options: --configs (comma-separated, from CONFIGS), --steps, --precision
(fp32, fp16, bf16), --device (a CUDA device), --json FILE, --output_folder
(kept; default a temporary folder, removed). Any other --key value is a YAML
override given to every configuration (e.g. --batch_size 8: the figures are
then not those of the default batch size).

Authors: the ESC-50 interpretability recipe developers.
"""

import argparse
import json
import math
import multiprocessing
import os
import sys
import tempfile
import traceback
from concurrent.futures import ProcessPoolExecutor
from statistics import median

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
RECIPE_ROOT = os.path.dirname(HERE)
sys.path[:0] = [RECIPE_ROOT, HERE]  # the recipe's modules, benchmark.py
# the ESC-50 splits the recipe trains and validates on (400 clips a fold)
TRAIN_CLIPS, VALID_CLIPS = 1200, 400
N_CLASSES = 4  # of the generated data (the heads keep their 50 outputs)
# name -> (label, module:Brain, YAML, seed's seconds per epoch, its GPU)
CONFIGS = {
    "piq": ("PIQ", "train_piq:PIQBrain", "hparams/piq.yaml", 70, "RTX 3090"),
    "l2i_cnn14": (
        "L2I CNN14",
        "train_l2i:L2IBrain",
        "hparams/l2i_cnn14.yaml",
        25,
        "RTX 3090",
    ),
    "nmf": ("NMF", "train_nmf:NMFBrain", "hparams/nmf.yaml", 45, "RTX 3090"),
    "piq_focalnet": (
        "PIQ-FocalNet",
        "train_piq:PIQBrain",
        "hparams/piq_focalnet.yaml",
        8 * 60,
        "V100",
    ),
    "piq_vit": (
        "PIQ-ViT",
        "train_piq:PIQBrain",
        "hparams/piq_vit.yaml",
        5 * 60,
        "V100",
    ),
}


def yaml_value(hparams, key):
    """``key``'s plain value in the YAML ``hparams`` (None if absent)."""
    from experiment import read_plain_yaml

    with open(os.path.join(RECIPE_ROOT, hparams), encoding="utf-8") as f:
        return read_plain_yaml(f).get(key)


def label_file(data_folder, n_outputs):
    """A class list for the random classifier's ``n_outputs`` outputs: the
    generated data's classes, then unused names (the full-size head is kept,
    and the hub's ESC-50 list, which the data's classes are not in, is not
    used); written beside the data, returned."""
    import csv

    with open(os.path.join(data_folder, "meta", "esc50.csv")) as f:
        classes = list(
            dict.fromkeys(row["category"] for row in csv.DictReader(f))
        )
    classes += [f"unused_{k}" for k in range(len(classes), int(n_outputs))]
    path = os.path.join(data_folder, f"classes_{n_outputs}.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(classes) + "\n")
    return path


def manifest_size(path):
    """How many clips a manifest (save/train.json, ...) lists."""
    with open(path, encoding="utf-8") as f:
        return len(json.load(f))


def batch_size(hparams, args):
    """The batch size a config runs at: its YAML's, or --batch_size's."""
    if "--batch_size" in args.overrides:
        return int(args.overrides[args.overrides.index("--batch_size") + 1])
    return int(yaml_value(hparams, "batch_size"))


def run_config(name, args, data_folder):
    """Runs config ``name`` through its script's ``main`` with its Brain
    timed (in a fresh process); returns its figures."""
    import importlib

    import speechbrain as sb
    from benchmark import Timed

    _, brain, hparams, _, _ = CONFIGS[name]
    module_name, class_name = brain.split(":")
    module = importlib.import_module(module_name)
    # main() looks its Brain up by name: the timed one runs instead
    setattr(
        module,
        class_name,
        type(class_name, (Timed, getattr(module, class_name)), {}),
    )
    argv = [os.path.join(RECIPE_ROOT, hparams), "--noprogressbar"]
    argv += ["--data_folder", data_folder, "--device", args.device]
    folder = os.path.join(args.output_folder, name)
    os.makedirs(folder)  # an existing run would resume, not train: error
    argv += ["--output_folder", folder]
    argv += ["--precision", args.precision, "--eval_precision", args.precision]
    argv += ["--number_of_epochs", "1", *args.overrides]  # later ones win
    if yaml_value(hparams, "use_pretrained") is not None:  # not NMF
        argv += ["--use_pretrained", "False", "--save_interpretations", "False"]
        labels = label_file(data_folder, yaml_value(hparams, "out_n_neurons"))
        argv += ["--classifier_labels", labels]
    module.main(argv)
    timed = Timed.instance
    steps = timed.times["fit_batch"]
    batch = timed.hparams.batch_size
    step_s = median(steps[1:] or steps)
    epoch_s = step_s * math.ceil(TRAIN_CLIPS / batch)
    n_train, n_valid = (
        manifest_size(timed.hparams.train_annotation),
        manifest_size(timed.hparams.valid_annotation),
    )
    valid_s = (timed.times["valid"] or [None])[0]
    return {
        "config": name,
        "hparams": hparams,
        "batch_size": batch,
        "steps_timed": len(steps),
        "step_s": steps,
        "median_step_s": step_s,
        "epoch_s_extrapolated": epoch_s,
        "measured_train_stage_s": (timed.times["train"] or [None])[0],
        "train_clips": n_train,
        "valid_pass_s": valid_s,
        "valid_clips": n_valid,
        "peak_train_mib": timed.memory.get("train"),
        "peak_valid_mib": timed.memory.get("valid"),
        "first_step_loss": (timed.losses or [None])[0],
        "gpu": torch.cuda.get_device_name(torch.device(args.device))
        if args.device.startswith("cuda")
        else args.device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "speechbrain": sb.__version__,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
    }


def minutes(seconds):
    """``70 s`` or ``8.0 min``; '-' for None."""
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def report(results, args):
    """The machine, then one markdown row per configuration."""
    first = results[0]
    tf32 = f"TF32 matmul {first['tf32_matmul']}, cuDNN {first['tf32_cudnn']}"
    lines = [
        f"GPU: {first['gpu']} ({args.device}); torch {first['torch']} "
        f"(CUDA {first['cuda']}), speechbrain {first['speechbrain']}; "
        f"{args.precision}, {tf32}",
        f"generated data, {N_CLASSES} classes, random classifier weights; "
        f"epoch = ESC-50 folds 1-3 ({TRAIN_CLIPS} clips) extrapolated from "
        "the median training step (the first left out); validation = fold 4 "
        f"({VALID_CLIPS} clips) scaled from the measured pass; measured "
        "stage = the training stage's wall time (data loading, warm-up "
        f"step) scaled to {TRAIN_CLIPS} clips",
        "",
        "| config | YAML | batch | s/step | s/epoch (train) | "
        "s/epoch (+ validation) | s/epoch (measured stage, scaled) | "
        "peak GPU MiB, train / valid | seed's s/epoch (GPU) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        label, _, _, seed_s, seed_gpu = CONFIGS[r["config"]]
        with_valid = None
        if r["valid_pass_s"] is not None and r["valid_clips"]:
            scale = VALID_CLIPS / r["valid_clips"]
            with_valid = r["epoch_s_extrapolated"] + r["valid_pass_s"] * scale
        peak = " / ".join(
            "-" if v is None else f"{v:,.0f}"
            for v in (r["peak_train_mib"], r["peak_valid_mib"])
        )
        stage = r["measured_train_stage_s"]
        if stage is not None:
            stage *= TRAIN_CLIPS / r["train_clips"]
        lines.append(
            f"| {label} | {r['hparams']} | {r['batch_size']} | "
            f"{r['median_step_s']:.3f} | {minutes(r['epoch_s_extrapolated'])} "
            f"| {minutes(with_valid)} | {minutes(stage)} | {peak} | "
            f"{minutes(seed_s)} ({seed_gpu}) |"
        )
    print("\n".join(lines))


def parse_args(argv):
    """The command line; ``--configs`` as a list."""
    parser = argparse.ArgumentParser(  # no abbreviations: --key value is YAML
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument(
        "--steps", type=int, default=6, help="training steps timed, >= 2"
    )
    parser.add_argument(
        "--precision", default="fp32", choices=("fp32", "fp16", "bf16")
    )
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--output_folder", help="kept (default: removed)")
    args, args.overrides = parser.parse_known_args(argv)
    args.configs = args.configs.split(",")
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        parser.error(
            f"--configs: unknown {unknown}; choose from {list(CONFIGS)}"
        )
    if args.steps < 2:
        parser.error("--steps: give at least 2 (the first is a warm-up)")
    if not args.device.startswith("cuda"):
        parser.error(
            f"--device {args.device}: give a CUDA device "
            "(benchmarks/benchmark.py measures CPU runs)"
        )
    return args


def main(argv=None):
    """Checks for CUDA, generates the data, runs every config, reports."""
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "no CUDA device: torch.cuda.is_available() is False (torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda}); this "
            "benchmark measures GPU runs only (CPU: benchmarks/benchmark.py)",
            file=sys.stderr,
        )
        sys.exit(2)
    import synthetic_esc50

    batch = max(batch_size(CONFIGS[c][2], args) for c in args.configs)
    # folds 1-3 train: --steps batches of the largest batch size
    clips_per_fold = math.ceil(args.steps * batch / 3)
    spawn, results = multiprocessing.get_context("spawn"), []
    with tempfile.TemporaryDirectory(prefix="gpu_bench_") as tmp:
        args.output_folder = os.path.abspath(args.output_folder or tmp)
        data = os.path.join(args.output_folder, "data")
        if not os.path.isfile(os.path.join(data, "meta", "esc50.csv")):
            synthetic_esc50.generate(data, N_CLASSES, clips_per_fold)
        for name in args.configs:
            with ProcessPoolExecutor(1, mp_context=spawn) as pool:
                try:
                    results.append(
                        pool.submit(run_config, name, args, data).result()
                    )
                except Exception as error:  # go on with the others
                    text = "".join(traceback.format_exception(error))
                    print(f"{name} failed:\n{text}", file=sys.stderr)
    if results:
        report(results, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    if len(results) < len(args.configs):
        sys.exit("Some configurations failed: see the errors above.")


if __name__ == "__main__":
    main(sys.argv[1:])
