#!/usr/bin/env python3
"""Speed, memory and precision benchmark of a trained interpreter, run through
``experiment.run_interpreter`` with its Brain (--brain module:Class, default
train_piq:PIQBrain) given timers. Run:

    .venv/bin/python benchmarks/benchmark.py --hparams hparams/piq.yaml \\
        --compare fp32,bf16 --n_classes 3 --clips_per_fold 2 \\
        --use_pretrained False --out_n_neurons 3 --batch_size 2 \\
        --number_of_epochs 2 --emb_dim 16 --K 12 --save_interpretations False

Each precision of --compare (else --precision) runs in a fresh process on
--device from the same initial weights; --profile adds SpeechBrain's profiler;
--json FILE saves the figures. Data are generated (--n_classes, --clips_per_fold,
--data_seed) unless --data_folder; outputs are removed unless --output_folder
or --keep. Any other --key value is a YAML override.

Authors: the ESC-50 interpretability recipe developers.
"""

import argparse
import collections
import hashlib
import importlib
import json
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from statistics import median

RECIPE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, RECIPE_ROOT)

import speechbrain as sb  # noqa: E402
import torch  # noqa: E402
from speechbrain.utils.logger import get_logger  # noqa: E402

import experiment  # noqa: E402
import synthetic_esc50  # noqa: E402

logger = get_logger(__name__)
PROFILE = "--profile_training --profile_warmup 1 --profile_steps 2".split()


def machine_info():
    """CPU model and capability, native bf16 on CPU, threads, GPU, versions."""
    with open("/proc/cpuinfo") as f:  # Linux only, as VmHWM
        cpu = [x.split(":")[1].strip() for x in f if "model name" in x] + ["?"]
    bf16 = experiment.native_bf16()
    gpu = torch.cuda.is_available() and torch.cuda.get_device_name(0)
    return (
        f"machine: {cpu[0]}; CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"native bf16 on CPU {bf16}, torch threads {torch.get_num_threads()}, "
        f"GPU {gpu or 'none'}; torch {torch.__version__}, speechbrain {sb.__version__}"
    )


def peak_mib(cuda, reset=False):
    """Peak memory in MiB since the last ``reset``: the CUDA allocator's, else
    the process's VmHWM (reset through clear_refs, Linux >= 4.0)."""
    if reset and cuda:
        torch.cuda.reset_peak_memory_stats()
    elif reset:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    if cuda:
        return torch.cuda.max_memory_allocated() / 2**20
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) / 1024 for x in f if "VmHWM" in x)


def timed(name):
    """The Brain method ``name``, timed into ``times[name]`` (wall clock)
    and ``cpu[name]`` (process CPU time); fit_batch's losses are kept."""

    def method(self, *args, **kwargs):
        """Calls the base method."""
        start, cpu = self.now(), time.process_time()
        try:
            out = getattr(super(Timed, self), name)(*args, **kwargs)
            if name == "fit_batch":
                self.losses.append(float(out))
            return out
        finally:  # also when the profiler quits fit
            self.times[name].append(self.now() - start)
            self.cpu[name].append(time.process_time() - cpu)

    return method


class Timed:
    """Mixin put first in the Brain's MRO: timers and peak memory of every
    stage, losses, weights' hash."""

    fit_batch = timed("fit_batch")
    fit = timed("fit")
    evaluate = timed("evaluate")
    save_interpretations = timed("save_interpretations")

    def __init__(self, *args, **kwargs):
        """Builds the Brain, then hashes the initial state of its ``modules``."""
        super().__init__(*args, **kwargs)
        Timed.instance, self.memory, self.losses = self, {}, []
        self.times = collections.defaultdict(list)
        self.cpu = collections.defaultdict(list)
        digest = hashlib.sha256()
        for tensor in self.modules.state_dict().values():
            digest.update(tensor.cpu().flatten().view(torch.uint8).numpy())
        self.init_hash = digest.hexdigest()[:12]

    def now(self):
        """time.perf_counter, once the GPU has finished its work."""
        if self.device_type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_stage_start(self, stage, epoch=None):
        """Starts the stage's clocks and peak memory after the base hook."""
        super().on_stage_start(stage, epoch)
        peak_mib(self.device_type == "cuda", reset=True)
        self.stage_start = self.now(), time.process_time()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Stops them after the base hook (checkpointing, test_metrics.json)."""
        super().on_stage_end(stage, stage_loss, epoch)
        name, (start, cpu) = stage.name.lower(), self.stage_start
        self.times[name].append(self.now() - start)
        self.cpu[name].append(time.process_time() - cpu)
        peak = peak_mib(self.device_type == "cuda")
        self.memory[name] = max(self.memory.get(name, 0), peak)


def run_one(args, overrides, precision):
    """Runs the timed Brain at ``precision`` in a new folder; returns figures."""
    module_name, class_name = args.brain.split(":")
    base = getattr(importlib.import_module(module_name), class_name)
    folder = os.path.join(args.output_folder, precision)
    os.makedirs(folder, exist_ok="--test_only" in overrides)  # else it resumes
    argv = [args.hparams, "--noprogressbar", "--data_folder", args.data_folder]
    argv += ["--output_folder", folder, "--device", args.device]
    argv += ["--precision", precision, "--eval_precision", precision]
    argv += (PROFILE if args.profile else []) + overrides  # later ones win
    try:  # the Brain's class, with Timed first
        experiment.run_interpreter(type(class_name, (Timed, base), {}), argv)
    except SystemExit:  # Brain.fit quits once the profiler has its steps
        if not args.profile:
            raise
    brain, metrics = Timed.instance, {}
    t, path = brain.times, os.path.join(folder, "test_metrics.json")
    if brain.profiler is not None:
        averages = brain.profiler.key_averages()
        print(f"\ntorch.profiler, {precision}, {len(t['fit_batch'])} batches:")
        print(averages.table(sort_by="self_cpu_time_total", row_limit=15))
    if t["test"] and os.path.isfile(path):
        with open(path) as f:
            metrics = json.load(f)
    n = metrics.get("n_clips")
    test_s = t["test"][0] - sum(t["save_interpretations"]) if n else None
    batches = range(len(t["fit_batch"]))
    fastest = min(batches, key=t["fit_batch"].__getitem__, default=0)

    def util(name, i=0):
        """Process CPU time / wall time / torch threads of ``name``'s i-th."""
        if len(t[name]) <= i:
            return None
        return brain.cpu[name][i] / t[name][i] / torch.get_num_threads()

    return {  # [None]: the figure when there is no time
        "precision": precision,
        "initial_weights_sha256": brain.init_hash,
        "fit_s": sum(t["fit"]),
        "first_epoch_s": (t["train"] or [None])[0],
        "median_later_epoch_s": median(t["train"][1:] or [None]),
        "median_batch_s": median(t["fit_batch"] or [None]),
        "min_batch_s": min(t["fit_batch"], default=None),
        "min_batch_cpu_util": util("fit_batch", fastest),
        "first_batch_s": (t["fit_batch"] or [None])[0],  # compiles, if on
        "first_batch_loss": (brain.losses or [None])[0],
        "train_batches": len(t["fit_batch"]),
        "train_cpu_util": util("train"),
        "median_valid_pass_s": median(t["valid"] or [None]),
        "valid_cpu_util": util("valid"),
        "test_clips_per_s": n / test_s if n else None,
        "test_cpu_util": util("test"),
        "writing_interpretations_s": sum(t["save_interpretations"]),
        **{
            f"peak_{k}_mib": brain.memory.get(k)
            for k in ("train", "valid", "test")
        },
        "test_checkpoint_epoch": n and brain.hparams.epoch_counter.current,
        **{f"metric_{k}": v for k, v in metrics.items()},
        "machine": machine_info(),
        "times_s": dict(t),
        "cpu_s": dict(brain.cpu),
        "losses": brain.losses,
    }


def cell(value):
    """A table cell: floats to 5 significant digits, None as '-'."""
    text = "-" if value is None else str(value)
    return f"{value:.5g}" if isinstance(value, float) else text


def print_report(results, args):
    """Header, then one row per figure, one column per precision."""
    kind = "CUDA allocator" if "cuda" in args.device else "VmHWM of the stage"
    print(f"\n=== {args.brain} {args.hparams}, {args.device}")
    print(f"{results[0]['machine']}\npeak memory: {kind}")
    lists = ("machine", "times_s", "cpu_s", "losses")
    for key in (k for k in results[0] if k not in lists):
        cells = "".join(f"{cell(r.get(key)):>14s}" for r in results)
        print(f"{key:30s}{cells}")


def parse_args(argv):
    """The benchmark's options; the rest are YAML overrides."""
    raw = argparse.RawDescriptionHelpFormatter  # --help: the docstring as is
    parser = argparse.ArgumentParser(  # no abbreviations: --key value is YAML
        description=__doc__, formatter_class=raw, allow_abbrev=False
    )
    add = parser.add_argument
    add("--brain", default="train_piq:PIQBrain")
    add("--hparams", default="hparams/piq.yaml")
    add("--precision", default="fp32")
    add("--device", default="cpu")
    add("--n_classes", type=int, default=4)
    add("--clips_per_fold", type=int, default=8)
    add("--data_seed", type=int, default=0)
    for flag in ("--compare", "--json", "--data_folder", "--output_folder"):
        add(flag)
    for flag in ("--profile", "--keep"):
        add(flag, action="store_true")
    args, overrides = parser.parse_known_args(argv)
    args.precisions = (args.compare or args.precision).split(",")
    if args.keep and not args.output_folder:  # else a removed temporary one
        args.output_folder = tempfile.mkdtemp(prefix="bench_")
    if not os.path.exists(args.hparams):
        args.hparams = os.path.join(RECIPE_ROOT, args.hparams)
    return args, overrides


def main(argv):
    """Runs each precision in a fresh process (own peak memory), reports."""
    args, overrides = parse_args(argv)
    spawn, results = multiprocessing.get_context("spawn"), []
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        args.output_folder = os.path.abspath(args.output_folder or tmp)
        if args.data_folder is None:
            args.data_folder = os.path.join(args.output_folder, "data")
            n, clips, seed = args.n_classes, args.clips_per_fold, args.data_seed
            synthetic_esc50.generate(args.data_folder, n, clips, seed=seed)
        for p in args.precisions:
            with ProcessPoolExecutor(1, mp_context=spawn) as pool:
                job = pool.submit(run_one, args, overrides, p)
                try:
                    results.append(job.result())
                except Exception:  # go on with the other precisions
                    logger.exception(f"The {p} run failed")
    if results:
        print_report(results, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    if len(results) < len(args.precisions):
        sys.exit("Some precisions failed: see the tracebacks above.")


if __name__ == "__main__":
    main(sys.argv[1:])
