#!/usr/bin/env python3
"""Speed, memory and precision benchmark of a trained interpreter, run through
the recipe's own entry point, ``experiment.run_interpreter``.

Measures, for one Brain class (``--brain module:Class``) and YAML at one
precision on one device: seconds per training epoch (the first, warm-up, on its
own; the median of the later ones), per training batch (median, min) and per
validation pass; test clips per second (without the time spent writing
interpretations to disk); peak memory of ``fit`` and of ``evaluate`` (CPU: peak
RSS, VmHWM reset through /proc/self/clear_refs, else getrusage; CUDA:
``torch.cuda.max_memory_allocated``); the test metrics (``test_metrics.json``).
The Brain is a subclass of the selected class that only adds timers. It only
measures and prints; it asserts nothing.

Run (from the recipe folder):

    .venv/bin/python benchmarks/benchmark.py --hparams hparams/piq.yaml \\
        --compare fp32,bf16 --n_classes 3 --clips_per_fold 2 \\
        --use_pretrained False --out_n_neurons 3 --batch_size 2 \\
        --number_of_epochs 2 --emb_dim 16 --K 12 --save_interpretations False

``--compare`` runs each precision in its own process (its own peak memory);
runs with the same YAML seed start from the same weights (the report prints a
hash of them). ``--precision bf16`` runs one precision; ``--profile`` runs
SpeechBrain's profiler over a few training batches (``--profile_warmup 1
--profile_steps 2`` unless given) and prints its table. Any other ``--key
value`` is a YAML override. Without ``--data_folder`` data are generated
(``synthetic_esc50``); without ``--output_folder`` a temporary folder is used
and removed (``--keep`` keeps it). ``--json FILE`` writes the measurements.

Authors: the ESC-50 interpretability recipe developers.
"""

import argparse
import hashlib
import importlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

RECIPE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, RECIPE_ROOT)

import torch  # noqa: E402

import speechbrain as sb  # noqa: E402
from speechbrain.utils.logger import get_logger  # noqa: E402

logger = get_logger(__name__)
PRECISIONS = ("fp32", "bf16", "fp16")


def machine_info():
    """CPU model, CPU capability, native bf16, torch threads, GPU, versions."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # private API: may be missing
        bf16 = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_native_bf16": bf16, "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "torch": torch.__version__, "speechbrain": sb.__version__}


def reset_peak(cuda):
    """Starts a memory phase; returns what ``read_peak`` will measure."""
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return "torch.cuda.max_memory_allocated"
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (Linux >= 4.0)
        return "peak RSS (VmHWM)"
    except OSError:
        return "peak RSS since process start (getrusage)"


def read_peak(cuda, kind):
    """Peak memory (MiB) since ``reset_peak`` returned ``kind``."""
    if cuda:
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    if kind.endswith("(VmHWM)"):
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) / 1024 for ln in f if ln.startswith("VmHWM:"))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


class Timed:
    """Mixin placed first in the MRO of the selected Brain class: records the
    times of stages, training batches and ``save_interpretations``, the peak
    memory of ``fit`` and ``evaluate``, and a hash of the initial weights."""

    instance = None

    def __init__(self, *args, **kwargs):
        """Builds the Brain, then hashes its trainable modules' initial state."""
        super().__init__(*args, **kwargs)
        Timed.instance = self
        self.cuda = str(self.device).startswith("cuda")
        self.times = {"train": [], "batch": [], "valid": [], "test": [], "save": 0.0}
        self.memory, self.n_test = {}, 0
        digest = hashlib.sha256()
        for name, tensor in self.modules.state_dict().items():
            digest.update(name.encode())
            data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
            digest.update(data.numpy().tobytes())
        self.init_hash = digest.hexdigest()[:12]

    def _now(self):
        """time.perf_counter, after the GPU has finished its work."""
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

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
        """Times one training batch (forward, backward, step)."""
        start = self._now()
        loss = super().fit_batch(batch)
        self.times["batch"].append(self._now() - start)
        return loss

    def evaluate_batch(self, batch, stage):
        """Counts the test clips."""
        if stage == sb.Stage.TEST:
            self.n_test += len(batch.id)
        return super().evaluate_batch(batch, stage)

    def _phase(self, name, method, *args, **kwargs):
        """Runs ``fit`` or ``evaluate``, recording its wall time and peak memory."""
        kind, start = reset_peak(self.cuda), self._now()
        try:
            return method(*args, **kwargs)
        finally:  # also when the profiler ends training with SystemExit
            self.times[name + "_total"] = self._now() - start
            self.memory[name] = (read_peak(self.cuda, kind), kind)

    def fit(self, *args, **kwargs):
        """Timed ``fit``; refuses to resume from an earlier run's checkpoints."""
        if not self.test_only and self.checkpointer.find_checkpoint() is not None:
            raise RuntimeError(f"{self.checkpointer.checkpoints_dir} holds checkpoints of an earlier "
                               "run: nothing would be trained. Give a fresh --output_folder.")
        return self._phase("fit", super().fit, *args, **kwargs)

    def evaluate(self, *args, **kwargs):
        """Timed ``evaluate``."""
        return self._phase("test", super().evaluate, *args, **kwargs)

    def save_interpretations(self, *args, **kwargs):
        """Times the writing of interpretations (excluded from clips/s)."""
        start = self._now()
        out = super().save_interpretations(*args, **kwargs)
        self.times["save"] += self._now() - start
        return out


def run_one(args, overrides, precision):
    """Runs ``experiment.run_interpreter`` with the timed Brain at
    ``precision``; returns a dict of measurements."""
    import experiment

    module_name, class_name = args.brain.split(":")
    base = getattr(importlib.import_module(module_name), class_name)
    folder = os.path.join(args.output_folder, precision)
    argv = [args.hparams, "--data_folder", args.data_folder, "--output_folder", folder,
            "--device", args.device, "--precision", precision, "--eval_precision", precision,
            "--noprogressbar"]
    if args.profile:  # store_true run options; user-given warmup/steps come later and win
        argv += ["--profile_training", "--profile_warmup", "1", "--profile_steps", "2"]
    try:
        experiment.run_interpreter(type(f"Timed{class_name}", (Timed, base), {}), argv + overrides)
    except SystemExit:  # Brain.fit calls quit() once the profiler has its steps
        if not args.profile:
            raise
    brain, table = Timed.instance, None
    t, hparams = brain.times, brain.hparams
    if brain.profiler is not None:
        table = brain.profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    metrics_file = os.path.join(folder, "test_metrics.json")
    metrics = None
    if t["test"] and os.path.isfile(metrics_file):
        with open(metrics_file) as f:
            metrics = json.load(f)
    compute = t["test"][-1] - t["save"] if t["test"] else None
    peak = lambda name: brain.memory.get(name, (None, None))  # noqa: E731
    return {
        "brain": args.brain, "hparams": args.hparams, "precision": precision,
        "device": str(brain.device), "initial_weights_sha256": brain.init_hash,
        "batch_size": getattr(hparams, "batch_size", None), "train_epoch_s": t["train"],
        "first_epoch_s": t["train"][0] if t["train"] else None,
        "median_later_epoch_s": statistics.median(t["train"][1:]) if t["train"][1:] else None,
        "batch_s": t["batch"], "median_batch_s": statistics.median(t["batch"]) if t["batch"] else None,
        "min_batch_s": min(t["batch"], default=None), "valid_s": t["valid"],
        "test_stage_s": t["test"][-1] if t["test"] else None, "save_interpretations_s": t["save"],
        "n_test_clips": brain.n_test,
        "test_clips_per_s": brain.n_test / compute if compute else None,
        "peak_fit_mib": peak("fit")[0], "peak_test_mib": peak("test")[0],
        "peak_memory_kind": peak("fit")[1] or peak("test")[1],
        "epoch_loaded": hparams.epoch_counter.current if t["test"] else None,
        "test_metrics": metrics, "profile": table, "machine": machine_info(),
    }


def fmt(value, digits=3):
    """A number for the report: None -> '-', floats with ``digits`` decimals."""
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def print_machine(m):
    """The machine and library lines printed beside every report."""
    print(f"machine: {m['cpu']}; CPU capability {m['cpu_capability']}, native bf16 on CPU "
          f"{m['cpu_native_bf16']}, torch threads {m['torch_threads']}, GPU {m['gpu'] or 'none'}; "
          f"torch {m['torch']}, speechbrain {m['speechbrain']}")


def print_report(r):
    """Human-readable report of one run."""
    print(f"\n=== {r['brain']} {r['hparams']}, precision {r['precision']}, device {r['device']}, "
          f"batch_size {r['batch_size']}, initial weights sha256 {r['initial_weights_sha256']}")
    print_machine(r["machine"])
    print(f"train epochs (s): {', '.join(fmt(x, 2) for x in r['train_epoch_s'])} (first "
          f"{fmt(r['first_epoch_s'], 2)}, median of later {fmt(r['median_later_epoch_s'], 2)})")
    print(f"train batches: {len(r['batch_s'])}, median {fmt(r['median_batch_s'])} s, "
          f"min {fmt(r['min_batch_s'])} s")
    print(f"valid passes (s): {', '.join(fmt(x, 2) for x in r['valid_s'])}")
    print(f"test: {fmt(r['test_clips_per_s'])} clips/s ({r['n_test_clips']} clips; stage "
          f"{fmt(r['test_stage_s'], 2)} s, of which {fmt(r['save_interpretations_s'], 2)} s "
          "writing interpretations, excluded)")
    print(f"peak memory ({r['peak_memory_kind']}): fit {fmt(r['peak_fit_mib'], 0)} MiB, "
          f"test {fmt(r['peak_test_mib'], 0)} MiB")
    print(f"test metrics (checkpoint of epoch {r['epoch_loaded']}): {json.dumps(r['test_metrics'])}")
    if r["profile"]:
        print(f"torch.profiler, {len(r['batch_s'])} training batches (timed with the profiler on):")
        print(r["profile"])


def print_comparison(results):
    """Side-by-side figures and |difference| of every numeric test metric."""
    names = [r["precision"] for r in results]
    print(f"\n=== comparison {' vs '.join(names)} ({results[0]['brain']} {results[0]['hparams']})")
    print_machine(results[0]["machine"])
    rows = [("initial weights sha256", "initial_weights_sha256", 0),
            ("first epoch (s)", "first_epoch_s", 2), ("median later epoch (s)", "median_later_epoch_s", 2),
            ("median train batch (s)", "median_batch_s", 3), ("min train batch (s)", "min_batch_s", 3),
            ("test clips/s", "test_clips_per_s", 3), ("peak memory fit (MiB)", "peak_fit_mib", 0),
            ("peak memory test (MiB)", "peak_test_mib", 0), ("test checkpoint epoch", "epoch_loaded", 0)]
    print(f"{'':26s}" + "".join(f"{n:>14s}" for n in names))
    for label, key, digits in rows:
        print(f"{label:26s}" + "".join(f"{fmt(r[key], digits):>14s}" for r in results))
    print(f"{'test metric':26s}" + "".join(f"{n:>14s}" for n in names)
          + "".join(f"{'|' + n + '-' + names[0] + '|':>16s}" for n in names[1:]))
    for key in (results[0]["test_metrics"] or {}):
        values = [(r["test_metrics"] or {}).get(key) for r in results]
        numeric = [isinstance(v, (int, float)) for v in values]
        line = f"{key:26s}" + "".join(f"{fmt(v, 4) if n else str(v):>14s}" for v, n in zip(values, numeric))
        diffs = [abs(v - values[0]) if n and numeric[0] else None for v, n in zip(values[1:], numeric[1:])]
        print(line + "".join(f"{fmt(d, 4):>16s}" for d in diffs))
    if len({r["epoch_loaded"] for r in results}) > 1:
        print("NOTE: the runs tested checkpoints of different epochs: metric differences mix "
              "precision and checkpoint selection.")
    if len({r["initial_weights_sha256"] for r in results}) > 1:
        print("NOTE: the runs started from different initial weights.")


def main(argv):
    """Runs one precision in process, or each of ``--compare`` in a child
    process, and prints the report; returns the list of measurements."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False,
                                     epilog="Any other --key value is a YAML override.")
    parser.add_argument("--brain", default="train_piq:PIQBrain", help="module:BrainClass")
    parser.add_argument("--hparams", default="hparams/piq.yaml")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    parser.add_argument("--compare", default=None, help="comma-separated precisions, e.g. fp32,bf16")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--profile", action="store_true", help="run SpeechBrain's profiler")
    parser.add_argument("--data_folder", default=None, help="ESC-50 layout; generated if not given")
    parser.add_argument("--output_folder", default=None, help="temporary folder if not given")
    parser.add_argument("--keep", action="store_true", help="keep the temporary output folder")
    parser.add_argument("--n_classes", type=int, default=4, help="generated data: classes")
    parser.add_argument("--clips_per_fold", type=int, default=8, help="generated data: clips per fold")
    parser.add_argument("--data_seed", type=int, default=0, help="generated data: seed")
    parser.add_argument("--json", default=None, help="also write the measurements there")
    args, overrides = parser.parse_known_args(argv)
    precisions = args.compare.split(",") if args.compare else [args.precision]
    for p in precisions:
        if p not in PRECISIONS or (p == "fp16" and not args.device.startswith("cuda")):
            parser.error(f"precision {p}: choose from {PRECISIONS} (fp16 on cuda only)")
    if not os.path.exists(args.hparams):
        args.hparams = os.path.join(RECIPE_ROOT, args.hparams)
    temporary = args.output_folder is None
    args.output_folder = os.path.abspath(args.output_folder or tempfile.mkdtemp(prefix="benchmark_"))
    try:
        if args.data_folder is None:
            import synthetic_esc50

            args.data_folder = os.path.join(args.output_folder, "data")
            logger.info(f"Generating data in {args.data_folder}")
            synthetic_esc50.generate(args.data_folder, args.n_classes, args.clips_per_fold,
                                     seed=args.data_seed)
        args.data_folder = os.path.abspath(args.data_folder)
        if not args.compare:
            results = [run_one(args, overrides, args.precision)]
            print_report(results[0])
        else:
            results, failed = [], []
            for p in precisions:
                out_json = os.path.join(args.output_folder, f"result_{p}.json")
                command = [sys.executable, os.path.abspath(__file__), "--brain", args.brain,
                           "--hparams", args.hparams, "--precision", p, "--device", args.device,
                           "--data_folder", args.data_folder, "--output_folder", args.output_folder,
                           "--json", out_json] + (["--profile"] if args.profile else []) + overrides
                logger.info(f"Running {p}: {' '.join(command)}")
                if subprocess.run(command).returncode != 0:
                    failed.append(p)  # its traceback is on stderr; go on with the others
                    continue
                with open(out_json) as f:
                    results += json.load(f)
            if results:
                print_comparison(results)
            if failed:
                print(f"\nFAILED precisions: {', '.join(failed)} (tracebacks on stderr)")
                sys.exit(1)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
        return results
    finally:
        if temporary and not args.keep:
            shutil.rmtree(args.output_folder, ignore_errors=True)
        elif temporary:
            print(f"outputs kept in {args.output_folder}")


if __name__ == "__main__":
    main(sys.argv[1:])
