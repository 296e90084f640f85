#!/usr/bin/env python3
"""Speed, memory and precision benchmark of a trained interpreter, run through
``experiment.run_interpreter`` with a subclass of the Brain (``--brain
module:Class``, default train_piq:PIQBrain) that only adds timers. It prints
(``--json FILE`` saves): seconds per training epoch (first apart, median of the
later ones), per training batch (median, min) and per validation pass; test
clips/s (without writing interpretations); peak memory of fit and test (CPU:
VmHWM reset through /proc/self/clear_refs, else getrusage; CUDA:
torch.cuda.max_memory_allocated); the test metrics (test_metrics.json). Run:

    .venv/bin/python benchmarks/benchmark.py --hparams hparams/piq.yaml \\
        --compare fp32,bf16 --n_classes 3 --clips_per_fold 2 \\
        --use_pretrained False --out_n_neurons 3 --batch_size 2 \\
        --number_of_epochs 2 --emb_dim 16 --K 12 --save_interpretations False

--compare (or --precision fp32|bf16|fp16; fp16 on cuda only) runs each precision
in its own process on --device (cpu), from the same initial weights (same YAML
seed; hash printed). --profile: SpeechBrain's profiler (--profile_warmup 1
--profile_steps 2). Data are generated (--n_classes, --clips_per_fold,
--data_seed) unless --data_folder; outputs go to a temporary folder unless
--output_folder or --keep. Any other --key value is a YAML override.

Authors: the ESC-50 interpretability recipe developers.
"""

import argparse
import hashlib
import importlib
import json
import multiprocessing
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

RECIPE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, RECIPE_ROOT)

import speechbrain as sb  # noqa: E402
import torch  # noqa: E402
from speechbrain.utils.logger import get_logger  # noqa: E402

import experiment  # noqa: E402
import synthetic_esc50  # noqa: E402

logger = get_logger(__name__)


def machine_info():
    """CPU model and capability, native bf16 on CPU, threads, GPU, versions."""
    cpu, bf16 = "?", None
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((x.split(":", 1)[1].strip() for x in f if x.startswith("model name")), cpu)
    try:
        bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # private API
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"machine: {cpu}; CPU capability {torch.backends.cpu.get_cpu_capability()}, native "
            f"bf16 on CPU {bf16}, torch threads {torch.get_num_threads()}, GPU {gpu}; "
            f"torch {torch.__version__}, speechbrain {sb.__version__}")


def memory(cuda, reset=False):
    """Peak memory (MiB) since the last reset: CUDA allocator; on CPU VmHWM, else
    getrusage. With ``reset``: resets the peak and returns what is measured."""
    if cuda and reset:
        return torch.cuda.reset_peak_memory_stats() or "torch.cuda.max_memory_allocated"
    if cuda:
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        if reset:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM (Linux >= 4.0)
            return "peak RSS of the phase (VmHWM)"
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) / 1024 for ln in f if ln.startswith("VmHWM:"))
    except OSError:  # then VmHWM (if any) or getrusage: the peak since the process started
        return "peak RSS since process start" if reset else resource.getrusage(
            resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


class Timed:
    """Mixin put first in the Brain's MRO: wall times of stages, batches, fit, evaluate
    and save_interpretations; peak memory of fit and evaluate; initial weights' hash."""

    def __init__(self, *args, **kwargs):
        """Builds the Brain, then hashes the initial state of its ``modules``."""
        super().__init__(*args, **kwargs)
        Timed.instance, self.n_test, self.memory, self.memory_kind = self, 0, {}, None
        self.cuda = str(self.device).startswith("cuda")
        self.times = {k: [] for k in ("train", "valid", "test", "batch", "fit", "evaluate", "save")}
        digest = hashlib.sha256()
        for tensor in self.modules.state_dict().values():
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        self.init_hash = digest.hexdigest()[:12]

    def _now(self):
        """time.perf_counter, once the GPU has finished its work."""
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _timed(self, key, method, *args, **kwargs):
        """Calls ``method``, timing it into ``times[key]`` (fit, evaluate: and peak memory)."""
        kind, start = memory(self.cuda, True) if key in ("fit", "evaluate") else None, self._now()
        try:
            return method(*args, **kwargs)
        finally:
            self.times[key].append(self._now() - start)
            if kind:
                self.memory[key], self.memory_kind = memory(self.cuda), kind

    def on_stage_start(self, stage, epoch=None):
        """Starts the stage's clock."""
        self._stage_start = self._now()
        return super().on_stage_start(stage, epoch)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Stops it after the base hook (checkpointing, test_metrics.json)."""
        out = super().on_stage_end(stage, stage_loss, epoch)
        self.times[stage.name.lower()].append(self._now() - self._stage_start)
        return out

    def fit_batch(self, batch):
        """Timed training batch (forward, backward, step)."""
        return self._timed("batch", super().fit_batch, batch)

    def evaluate_batch(self, batch, stage):
        """Counts the test clips."""
        self.n_test += len(batch.id) if stage == sb.Stage.TEST else 0
        return super().evaluate_batch(batch, stage)

    def fit(self, *args, **kwargs):
        """Timed fit."""
        return self._timed("fit", super().fit, *args, **kwargs)

    def evaluate(self, *args, **kwargs):
        """Timed evaluate (the test stage)."""
        return self._timed("evaluate", super().evaluate, *args, **kwargs)

    def save_interpretations(self, *args, **kwargs):
        """Timed writing of interpretations (excluded from clips/s)."""
        return self._timed("save", super().save_interpretations, *args, **kwargs)


def run_one(args, overrides, precision):
    """Runs ``experiment.run_interpreter`` with the timed Brain; returns the figures."""
    module_name, class_name = args.brain.split(":")
    base = getattr(importlib.import_module(module_name), class_name)
    folder = os.path.join(args.output_folder, precision)
    os.makedirs(folder, exist_ok="--test_only" in overrides)  # else training would resume
    argv = [args.hparams, "--data_folder", args.data_folder, "--output_folder", folder,
            "--device", args.device, "--precision", precision, "--eval_precision", precision,
            "--noprogressbar"]
    if args.profile:  # store_true run option; a user's warmup/steps come later and win
        argv += ["--profile_training", "--profile_warmup", "1", "--profile_steps", "2"]
    try:
        experiment.run_interpreter(type(f"Timed{class_name}", (Timed, base), {}), argv + overrides)
    except SystemExit:  # Brain.fit calls quit() once the profiler has its steps
        if not args.profile:
            raise
    brain = Timed.instance
    if brain.profiler is not None:  # printed by the process that ran it
        table = brain.profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
        print(f"\ntorch.profiler, {precision}, {len(brain.times['batch'])} batches:\n{table}")
    t, metrics, path = brain.times, {}, os.path.join(folder, "test_metrics.json")
    if t["test"] and os.path.isfile(path):
        with open(path) as f:
            metrics = json.load(f)
    n, test_s = brain.n_test, t["test"][0] - sum(t["save"]) if t["test"] else None
    median = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
    return {
        "precision": precision, "initial_weights_sha256": brain.init_hash, "fit_s": sum(t["fit"]),
        "first_epoch_s": (t["train"] or [None])[0], "median_later_epoch_s": median(t["train"][1:]),
        "median_batch_s": median(t["batch"]), "min_batch_s": min(t["batch"], default=None),
        "train_batches": len(t["batch"]), "median_valid_pass_s": median(t["valid"]),
        "test_clips_per_s": n / test_s if test_s else None, "test_clips": n,
        "writing_interpretations_s": sum(t["save"]), "peak_fit_mib": brain.memory.get("fit"),
        "peak_test_mib": brain.memory.get("evaluate"), "memory_kind": brain.memory_kind,
        "test_checkpoint_epoch": brain.hparams.epoch_counter.current if n else None,
        **{f"metric_{k}": v for k, v in metrics.items()}, "machine": machine_info(),
        "epochs_s": t["train"], "batches_s": t["batch"], "valid_passes_s": t["valid"],
    }


def print_report(results, args):
    """One column per precision: every scalar figure."""
    print(f"\n=== {args.brain} {os.path.relpath(args.hparams, RECIPE_ROOT)}, {args.device}; "
          f"peak memory: {results[0]['memory_kind']}\n{results[0]['machine']}")
    for key, value in results[0].items():
        if key not in ("memory_kind", "machine") and not isinstance(value, list):
            cells = [format(r[key], ".5g" if isinstance(r[key], float) else "")
                     if r.get(key) is not None else "-" for r in results]
            print(f"{key:30s}" + "".join(f"{c:>14s}" for c in cells))


def main(argv):
    """Runs each precision in a fresh process (own peak memory); prints, returns figures."""
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, default in [("--brain", "train_piq:PIQBrain"), ("--hparams", "hparams/piq.yaml"),
                          ("--precision", "fp32"), ("--compare", None), ("--device", "cpu"),
                          ("--json", None), ("--data_folder", None), ("--output_folder", None),
                          ("--n_classes", 4), ("--clips_per_fold", 8), ("--data_seed", 0)]:
        parser.add_argument(flag, default=default, type=str if default is None else type(default))
    for flag in ("--profile", "--keep"):
        parser.add_argument(flag, action="store_true")
    args, overrides = parser.parse_known_args(argv)
    precisions = (args.compare or args.precision).split(",")
    if set(precisions) - {"fp32", "bf16", "fp16" if "cuda" in args.device else "fp32"}:
        parser.error("precisions: fp32, bf16, fp16 (fp16 on cuda only)")
    if not os.path.exists(args.hparams):
        args.hparams = os.path.join(RECIPE_ROOT, args.hparams)
    args.keep = args.keep or args.output_folder is not None  # never remove a given folder
    args.output_folder = os.path.abspath(args.output_folder or tempfile.mkdtemp(prefix="bench_"))
    try:
        if args.data_folder is None:
            args.data_folder = os.path.join(args.output_folder, "data")
            synthetic_esc50.generate(args.data_folder, args.n_classes, args.clips_per_fold,
                                     seed=args.data_seed)
        args.data_folder, results = os.path.abspath(args.data_folder), []
        for p in precisions:
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                try:
                    results.append(pool.submit(run_one, args, overrides, p).result())
                except Exception:  # go on with the other precisions
                    logger.exception(f"The {p} run failed")
        if results:
            print_report(results, args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
        if len(results) < len(precisions):
            sys.exit("Some precisions failed: see the tracebacks above.")
        return results
    finally:
        if not args.keep:
            shutil.rmtree(args.output_folder, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
