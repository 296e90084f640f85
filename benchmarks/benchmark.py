#!/usr/bin/env python3
"""Speed, memory and precision benchmark of an interpreter recipe.

Measures, for one interpreter config (a training script holding a
``speechbrain.Brain`` subclass plus its YAML) at one precision on one device:

* seconds per training epoch: the first epoch (warm-up: allocator, oneDNN or
  cuDNN kernel selection) on its own, then the median over the later epochs;
  also seconds per training batch (forward + backward + step; median and
  minimum), per validation pass, the process CPU time per batch and the CPU
  utilisation while training (CPU time / wall time / torch threads: well
  below 1 when other processes compete for the cores, which makes the
  wall-clock numbers pessimistic);
* test clips per second (the TEST stage of ``brain.evaluate``, without the
  time spent writing interpretations to disk, which is reported separately);
* peak memory: on CPU the peak resident set size (VmHWM of /proc/self/status,
  reset between phases through /proc/self/clear_refs where Linux allows it,
  else ``resource.getrusage``); on CUDA ``torch.cuda.max_memory_allocated``;
* the test metrics (the brain's ``test_metrics.json``).

It only measures and prints; it asserts nothing. The Brain is built in
process by the script's own ``main(argv)`` (command line, YAML and overrides,
output folder, manifests, classifier loading, datasets, Brain, then fit and
test, exactly as a user's run): the Brain class is found in the module given
by ``--script`` (the one ``speechbrain.Brain`` subclass defined there, or
``--brain_class``) and replaced, in that module, by a subclass that only adds
timers, memory probes and the shared initial weights. So every method of the
recipe can reuse this file, whatever its plumbing.

Run (from the recipe folder; the numbers of the full-size PIQ on generated
data, fp32 against bf16 on the same initial weights and data):

    .venv/bin/python benchmarks/benchmark.py --script train_piq.py \\
        --hparams hparams/piq.yaml --device cpu --compare fp32,bf16 \\
        --n_classes 4 --clips_per_fold 8 \\
        --use_pretrained False --out_n_neurons 4 --batch_size 8 --number_of_epochs 2

One precision only: ``--precision bf16`` instead of ``--compare``. Every
argument the benchmark does not know (``--emb_dim 16``, ``--K 48``,
``--save_interpretations False``, ...) is passed to the YAML as an override.
Without ``--data_folder``, data are generated with ``synthetic_esc50.generate``;
without ``--output_folder``, everything goes to a temporary folder that is
removed at the end (keep it with ``--keep``). With ``--compare``, each
precision runs in its own process (so that peak RSS is its own) on a copy of
the recipe's code taken at the start (``--no_snapshot`` runs the live files);
the first one saves the initial weights of every module of the YAML and the
others load them. The report warns when the precisions tested checkpoints of
different epochs, or ran different code (sha256 of every recipe file used).

Authors: the ESC-50 interpretability recipe developers.
"""

import argparse
import hashlib
import importlib.util
import inspect
import json
import os
import platform
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


# ---- memory --------------------------------------------------------------
def _proc_status_kb(field):
    """Value (kB) of ``field`` in /proc/self/status, None if unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def current_rss_mb():
    """Current resident set size in MiB (None where /proc is missing)."""
    kb = _proc_status_kb("VmRSS")
    return None if kb is None else kb / 1024


def process_peak_rss_mb():
    """Peak RSS of this process since it started (or since the last
    successful ``reset_peak_rss``), in MiB, from getrusage."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, kB on Linux


def reset_peak_rss():
    """Resets the kernel's peak-RSS mark of this process (Linux >= 4.0).
    Returns True on success: ``peak_rss_mb`` then gives the peak since now."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb():
    """Peak RSS (MiB): VmHWM where available, else getrusage."""
    kb = _proc_status_kb("VmHWM")
    return process_peak_rss_mb() if kb is None else kb / 1024


class MemoryMeter:
    """Peak memory of a phase: CUDA allocator peak on a GPU, peak RSS on CPU."""

    def __init__(self, device):
        self.cuda = str(device).startswith("cuda")
        self.resettable = True

    def start(self):
        """Starts a phase (resets the peak marks)."""
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.resettable = reset_peak_rss()

    def peak(self):
        """Peak of the phase in MiB, and what it measures."""
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20, "torch.cuda.max_memory_allocated"
        if self.resettable:
            return peak_rss_mb(), "peak RSS of the phase (VmHWM)"
        return process_peak_rss_mb(), "peak RSS since process start (getrusage; phases not separable)"


# ---- finding and timing the Brain ------------------------------------------
def resolve(path):
    """``path`` as given if it exists, else relative to the recipe folder."""
    if os.path.exists(path):
        return os.path.abspath(path)
    candidate = os.path.join(RECIPE_ROOT, path)
    if os.path.exists(candidate):
        return candidate
    raise FileNotFoundError(f"{path} (looked in {os.getcwd()} and {RECIPE_ROOT})")


def load_script_module(script):
    """Imports the training script as a module (its folder on sys.path)."""
    folder = os.path.dirname(script)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    name = os.path.splitext(os.path.basename(script))[0]
    spec = importlib.util.spec_from_file_location(name, script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def find_brain_class(module, name=None):
    """The ``sb.Brain`` subclass defined in ``module``: the one named ``name``,
    else the only one that no other class of the module derives from."""
    classes = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, sb.Brain) and obj.__module__ == module.__name__
    ]
    if name is not None:
        for cls in classes:
            if cls.__name__ == name:
                return cls
        raise ValueError(f"No Brain class {name} in {module.__file__}; found {[c.__name__ for c in classes]}")
    leaves = [c for c in classes if not any(o is not c and issubclass(o, c) for o in classes)]
    if len(leaves) != 1:
        raise ValueError(
            f"{module.__file__} defines Brain classes {[c.__name__ for c in leaves]}: choose one with --brain_class"
        )
    return leaves[0]


def timed_brain_class(base, init_state=None):
    """A subclass of ``base`` that records wall-clock times of every stage,
    training batch, ``fit``, ``evaluate`` and ``save_interpretations``
    (time.perf_counter, after a CUDA synchronisation on a GPU), the peak
    memory of ``fit`` and of ``evaluate``, and the clips seen per stage.
    With ``init_state``, the initial weights are saved there or loaded from
    there (``share_initial_state``). Every instance is appended to
    ``TimedBrain.instances``."""

    class TimedBrain(base):
        instances = []

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            TimedBrain.instances.append(self)
            self._timings()
            self.meter = MemoryMeter(self.device)
            self.memory = {}
            self.clips = {}
            if init_state is not None:
                share_initial_state(self, init_state)
            self.rss_before_fit = current_rss_mb()
            self.peak_rss_setup = process_peak_rss_mb()

        def _now(self):
            if str(self.device).startswith("cuda"):
                torch.cuda.synchronize()
            return time.perf_counter()

        def _timings(self):
            if not hasattr(self, "timings"):
                self.timings = {"train": [], "train_cpu": [], "valid": [], "test": [], "batch": [], "batch_cpu": [],
                                "save": 0.0}
            return self.timings

        def on_stage_start(self, stage, epoch=None):
            self._timings()
            self._stage_start = self._now()
            self._stage_cpu_start = time.process_time()
            self._save_at_start = self.timings["save"]
            return super().on_stage_start(stage, epoch)

        def on_stage_end(self, stage, stage_loss, epoch=None):
            # Train: before the base hook (only bookkeeping). Valid/test:
            # after it (checkpointing and test_metrics.json are part of the cost).
            if stage == sb.Stage.TRAIN:
                self.timings["train"].append(self._now() - self._stage_start)
                self.timings["train_cpu"].append(time.process_time() - self._stage_cpu_start)
                return super().on_stage_end(stage, stage_loss, epoch)
            out = super().on_stage_end(stage, stage_loss, epoch)
            elapsed = self._now() - self._stage_start
            saving = self.timings["save"] - self._save_at_start
            key = "valid" if stage == sb.Stage.VALID else "test"
            self.timings[key].append({"total": elapsed, "saving": saving})
            return out

        def _count(self, stage, batch):
            n = len(batch.id) if hasattr(batch, "id") else 1
            self.clips[stage.name.lower()] = self.clips.get(stage.name.lower(), 0) + n

        def fit_batch(self, batch):
            start, cpu_start = self._now(), time.process_time()
            loss = super().fit_batch(batch)
            self._timings()["batch"].append(self._now() - start)
            self.timings["batch_cpu"].append(time.process_time() - cpu_start)
            if self.timings["train"] == []:  # count one epoch only
                self._count(sb.Stage.TRAIN, batch)
            return loss

        def evaluate_batch(self, batch, stage):
            if stage == sb.Stage.TEST or not self.timings["valid"]:  # one valid pass only
                self._count(stage, batch)
            return super().evaluate_batch(batch, stage)

        def fit(self, *args, **kwargs):
            if not self.test_only:
                check_fresh(self)
            self.meter.start()
            start = self._now()
            out = super().fit(*args, **kwargs)
            self._timings()["fit_total"] = self._now() - start
            self.memory["fit"] = self.meter.peak()
            return out

        def evaluate(self, *args, **kwargs):
            self.meter.start()
            start = self._now()
            out = super().evaluate(*args, **kwargs)
            self._timings()["evaluate_total"] = self._now() - start
            self.memory["test"] = self.meter.peak()
            return out

        if hasattr(base, "save_interpretations"):

            def save_interpretations(self, *args, **kwargs):
                start = self._now()
                out = super().save_interpretations(*args, **kwargs)
                self._timings()["save"] += self._now() - start
                return out

    TimedBrain.__name__ = TimedBrain.__qualname__ = f"Timed{base.__name__}"
    return TimedBrain


def check_fresh(brain):
    """Refuses to 'benchmark' a run that would resume from the checkpoints of
    an earlier one (nothing would be trained); removes a stale test_metrics.json."""
    folder = getattr(brain.checkpointer, "checkpoints_dir", None)
    if folder is not None and os.path.isdir(folder) and any(n.startswith("CKPT") for n in os.listdir(folder)):
        raise RuntimeError(
            f"{folder} holds checkpoints of an earlier run: training would resume from them and nothing "
            "would be measured. Give a fresh --output_folder (or add --test_only)."
        )
    stale = os.path.join(brain.hparams.output_folder, "test_metrics.json")
    if os.path.isfile(stale):
        os.remove(stale)


def recipe_fingerprint(code_root, *extra_files):
    """sha256 (12 hex digits) of every module under ``code_root`` this
    process imported and of ``extra_files``: runs to be compared must have
    used the same code (the recipe may be edited while a long benchmark runs)."""
    code_root = os.path.abspath(code_root)
    files = {os.path.abspath(f) for f in extra_files}
    for module in list(sys.modules.values()):
        # vars(), not getattr: speechbrain's lazy modules would import on attribute access
        path = vars(module).get("__file__") if hasattr(type(module), "__dict__") else None
        if path and os.path.abspath(path).startswith(code_root + os.sep) and ".venv" not in path:
            files.add(os.path.abspath(path))
    fingerprint = {}
    for path in sorted(files):
        with open(path, "rb") as f:
            fingerprint[os.path.relpath(path, code_root)] = hashlib.sha256(f.read()).hexdigest()[:12]
    return fingerprint


def snapshot_recipe(script, hparams_file, folder):
    """Copies the recipe's code (the ``*.py`` beside the script, and the
    folder of the YAML) into ``folder``, so that every precision of
    ``--compare`` runs the same code even if the recipe is edited meanwhile.
    Returns the script and YAML paths inside the snapshot."""
    code_root = os.path.dirname(script)
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(code_root):
        if name.endswith(".py") and os.path.isfile(os.path.join(code_root, name)):
            shutil.copy2(os.path.join(code_root, name), folder)
    yaml_dir = os.path.dirname(hparams_file)
    rel_yaml_dir = os.path.relpath(yaml_dir, code_root)
    if rel_yaml_dir.startswith(".."):  # YAML outside the recipe: copy the file alone
        shutil.copy2(hparams_file, folder)
        new_yaml = os.path.join(folder, os.path.basename(hparams_file))
    else:
        shutil.copytree(yaml_dir, os.path.join(folder, rel_yaml_dir), dirs_exist_ok=True)
        new_yaml = os.path.join(folder, os.path.relpath(hparams_file, code_root))
    return os.path.join(folder, os.path.basename(script)), new_yaml


# ---- initial weights shared between precisions ------------------------------
def yaml_modules(brain):
    """name -> nn.Module for every module of the Brain's ``modules`` and of
    the YAML's top level (frozen classifier included)."""
    found = {f"modules.{k}": m for k, m in brain.modules.items()}
    for key, value in vars(brain.hparams).items():
        if isinstance(value, torch.nn.Module):
            found.setdefault(key, value)
    return found


def share_initial_state(brain, path):
    """Saves the initial state of every module to ``path``, or loads it from
    there when it exists (so that all precisions start from the same weights)."""
    modules = yaml_modules(brain)
    if os.path.isfile(path):
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing = sorted(set(modules) ^ set(state))
        if missing:
            raise RuntimeError(f"Initial state {path} does not match the modules of this run: {missing}")
        for name, module in modules.items():
            module.load_state_dict(state[name], strict=True)
        logger.info(f"Initial weights loaded from {path}")
    else:
        state = {name: {k: v.detach().cpu().clone() for k, v in m.state_dict().items()} for name, m in modules.items()}
        torch.save(state, path)
        logger.info(f"Initial weights saved to {path}")


# ---- one run -------------------------------------------------------------------
def run_one(args, overrides, precision, output_folder, init_state=None):
    """Runs the script's ``main`` with its Brain class instrumented, at
    ``precision``; returns a dict of measurements."""
    script, hparams_file = resolve(args.script), resolve(args.hparams)
    module = load_script_module(script)
    base = find_brain_class(module, args.brain_class)
    timed = timed_brain_class(base, init_state)
    setattr(module, base.__name__, timed)  # main() builds the Brain through this module-level name
    if not callable(getattr(module, "main", None)):
        raise RuntimeError(f"{script} has no main(argv) to run")
    argv = [
        hparams_file,
        "--data_folder", args.data_folder,
        "--output_folder", output_folder,
        "--device", args.device,
        "--precision", precision,
        "--eval_precision", precision,
        "--noprogressbar",
    ] + list(overrides)
    module.main(argv)
    if not timed.instances:
        raise RuntimeError(
            f"{script}'s main() did not build a {base.__name__} through its module-level name; "
            "the benchmark cannot instrument it."
        )
    brain = timed.instances[-1]
    hparams = brain.hparams
    fingerprint = recipe_fingerprint(os.path.dirname(script), hparams_file)

    t = brain.timings
    metrics_path = os.path.join(hparams.output_folder, "test_metrics.json")
    test_metrics = None
    if os.path.isfile(metrics_path):
        with open(metrics_path) as f:
            test_metrics = json.load(f)
    test = t["test"][-1] if t["test"] else {"total": float("nan"), "saving": 0.0}
    n_test = brain.clips.get("test", 0)
    compute = test["total"] - test["saving"]
    later = t["train"][1:]
    fit_peak = brain.memory.get("fit", (None, None))
    test_peak = brain.memory.get("test", (None, None))
    return {
        "script": script,
        "brain_class": base.__name__,
        "hparams": hparams_file,
        "precision": precision,
        "device": str(brain.device),
        "torch_threads": torch.get_num_threads(),
        "n_clips": dict(brain.clips),
        "batch_size": getattr(hparams, "batch_size", None),
        "epochs": len(t["train"]),
        "train_epoch_s": t["train"],
        "first_epoch_s": t["train"][0] if t["train"] else None,
        "median_later_epoch_s": statistics.median(later) if later else None,
        "batch_s": t["batch"],
        "median_batch_s": statistics.median(t["batch"]) if t["batch"] else None,
        "min_batch_s": min(t["batch"]) if t["batch"] else None,
        "batch_cpu_s": t["batch_cpu"],
        "median_batch_cpu_s": statistics.median(t["batch_cpu"]) if t["batch_cpu"] else None,
        "train_epoch_cpu_s": t["train_cpu"],
        # share of the torch threads' capacity this process got while training:
        # well below 1 means other processes competed for the cores
        "train_cpu_utilisation": (
            sum(t["train_cpu"]) / sum(t["train"]) / torch.get_num_threads() if t["train"] and sum(t["train"]) else None
        ),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "valid_s": [v["total"] for v in t["valid"]],
        "fit_total_s": t.get("fit_total"),
        "test_stage_s": test["total"],
        "test_save_interpretations_s": test["saving"],
        "test_clips_per_s": n_test / compute if n_test and compute > 0 else None,
        "evaluate_total_s": t.get("evaluate_total"),
        "rss_before_fit_mb": brain.rss_before_fit,
        "peak_rss_setup_mb": brain.peak_rss_setup if not brain.meter.cuda else None,
        "peak_fit_mb": fit_peak[0],
        "peak_test_mb": test_peak[0],
        "peak_memory_kind": fit_peak[1] or test_peak[1],
        "process_peak_rss_mb": process_peak_rss_mb(),
        "epoch_loaded": getattr(getattr(hparams, "epoch_counter", None), "current", None),
        "test_metrics": test_metrics,
        "recipe_files": fingerprint,
        "output_folder": hparams.output_folder,
    }


# ---- reporting -------------------------------------------------------------------
def fmt(value, digits=3):
    """A number for the report (None -> '-'); ``digits`` decimals, or
    significant digits when ``digits`` is a string such as "4g"."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}}" if isinstance(digits, str) else f"{value:.{digits}f}"
    return str(value)


def print_report(r):
    """Human-readable report of one run."""
    code = os.path.dirname(r["script"])
    print(
        f"\n=== {os.path.basename(r['script'])} / {os.path.relpath(r['hparams'], code)} ({r['brain_class']}), "
        f"precision {r['precision']}, device {r['device']}; code in {code}"
    )
    print(f"clips: {r['n_clips']}, batch_size {r['batch_size']}, torch threads {r['torch_threads']}")
    print(f"train epochs (s): {', '.join(fmt(x, 1) for x in r['train_epoch_s'])}")
    print(f"  first epoch (warm-up): {fmt(r['first_epoch_s'], 1)} s")
    print(f"  median of later epochs: {fmt(r['median_later_epoch_s'], 1)} s")
    print(
        f"  training batches (s): {', '.join(fmt(x, 1) for x in r['batch_s'])} "
        f"(median {fmt(r['median_batch_s'], 1)}, min {fmt(r['min_batch_s'], 1)})"
    )
    print(
        f"  process CPU time per batch (s): {', '.join(fmt(x, 1) for x in r['batch_cpu_s'])} "
        f"(median {fmt(r['median_batch_cpu_s'], 1)})"
    )
    print(
        f"  CPU utilisation while training: {fmt(r['train_cpu_utilisation'], 2)} of {r['torch_threads']} threads "
        f"(load average at the end: {', '.join(fmt(x, 2) for x in r['load_average'] or [])})"
    )
    print(f"valid passes (s): {', '.join(fmt(x, 1) for x in r['valid_s'])}")
    print(
        f"test: {fmt(r['test_clips_per_s'])} clips/s (stage {fmt(r['test_stage_s'], 1)} s, of which "
        f"{fmt(r['test_save_interpretations_s'], 1)} s writing interpretations, excluded from clips/s)"
    )
    print(f"peak memory ({r['peak_memory_kind']}): fit {fmt(r['peak_fit_mb'], 0)} MiB, test {fmt(r['peak_test_mb'], 0)} MiB")
    if r["peak_rss_setup_mb"] is not None:
        print(
            f"  RSS before fit {fmt(r['rss_before_fit_mb'], 0)} MiB, peak RSS during setup "
            f"{fmt(r['peak_rss_setup_mb'], 0)} MiB, process peak RSS {fmt(r['process_peak_rss_mb'], 0)} MiB"
        )
    print(f"test metrics (checkpoint of epoch {r['epoch_loaded']}): {json.dumps(r['test_metrics'])}")


def print_comparison(results):
    """Side-by-side numbers and |difference| of every test metric."""
    names = [r["precision"] for r in results]
    rows = [
        ("first epoch (s)", "first_epoch_s", 1),
        ("median later epoch (s)", "median_later_epoch_s", 1),
        ("median train batch (s)", "median_batch_s", 1),
        ("min train batch (s)", "min_batch_s", 1),
        ("median batch CPU time (s)", "median_batch_cpu_s", 1),
        ("CPU utilisation (train)", "train_cpu_utilisation", 2),
        ("test clips/s", "test_clips_per_s", 3),
        ("peak memory fit (MiB)", "peak_fit_mb", 0),
        ("peak memory test (MiB)", "peak_test_mb", 0),
    ]
    print(f"\n=== comparison {' vs '.join(names)} (same seed, initial weights and data)")
    print(f"{'':26s}" + "".join(f"{n:>14s}" for n in names))
    for label, key, digits in rows + [("test checkpoint of epoch", "epoch_loaded", 0)]:
        print(f"{label:26s}" + "".join(f"{fmt(r[key], digits):>14s}" for r in results))
    ref = results[0]
    keys = list((ref["test_metrics"] or {}).keys())
    print(f"\ntest metric{'':15s}" + "".join(f"{n:>14s}" for n in names)
          + "".join(f"{'|' + n + '-' + names[0] + '|':>16s}" for n in names[1:]))
    for key in keys:
        values = [(r["test_metrics"] or {}).get(key) for r in results]
        line = f"{key:26s}" + "".join(f"{fmt(v, '6g'):>14s}" for v in values)
        for v in values[1:]:
            both = isinstance(v, (int, float)) and isinstance(values[0], (int, float))
            line += f"{fmt(abs(float(v) - float(values[0])) if both else None, '3g'):>16s}"
        print(line)
    if len({r["epoch_loaded"] for r in results}) > 1:
        print("WARNING: the runs tested checkpoints of different epochs (best validation checkpoint "
              "differs), so the metric differences mix precision and checkpoint selection.")
    for r in results[1:]:
        changed = sorted(k for k in set(r["recipe_files"]) | set(ref["recipe_files"])
                         if r["recipe_files"].get(k) != ref["recipe_files"].get(k))
        if changed:
            print(f"WARNING: the recipe changed between the {ref['precision']} and {r['precision']} runs "
                  f"({', '.join(changed)}): the comparison is not on the same code.")


def machine_line():
    """CPU model, cores and library versions."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (
        f"machine: {cpu}, {os.cpu_count()} cores, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"GPU {cuda}; torch {torch.__version__}, speechbrain {sb.__version__}"
    )


# ---- command line ------------------------------------------------------------------
def parse_args(argv):
    """Returns (benchmark options, YAML overrides, precisions to run)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        allow_abbrev=False,
        epilog="Any other --key value is passed to the YAML as an override.",
    )
    parser.add_argument("--script", default="train_piq.py", help="training script holding the Brain subclass")
    parser.add_argument("--hparams", default="hparams/piq.yaml")
    parser.add_argument("--brain_class", default=None, help="Brain class name, if the script defines several")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS, help="--precision and --eval_precision")
    parser.add_argument("--compare", default=None, help="comma-separated precisions, e.g. fp32,bf16")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--data_folder", default=None, help="ESC-50 layout; generated if not given")
    parser.add_argument("--output_folder", default=None, help="temporary folder if not given")
    parser.add_argument("--keep", action="store_true", help="keep the temporary output folder")
    parser.add_argument("--n_classes", type=int, default=4, help="generated data: classes")
    parser.add_argument("--clips_per_fold", type=int, default=8, help="generated data: clips per fold")
    parser.add_argument("--data_seed", type=int, default=0, help="generated data: seed")
    parser.add_argument("--json", default=None, help="also write the measurements to this JSON file")
    parser.add_argument("--no_snapshot", action="store_true", help="--compare: run the live recipe files "
                        "instead of a copy taken at the start")
    parser.add_argument("--init_state", default=None, help=argparse.SUPPRESS)  # set by --compare
    args, overrides = parser.parse_known_args(argv)
    for flag in ("--data_folder", "--output_folder", "--device", "--precision", "--eval_precision"):
        if any(o == flag or o.startswith(flag + "=") for o in overrides):
            parser.error(f"{flag} is given twice")
    precisions = args.compare.split(",") if args.compare else [args.precision]
    for p in precisions:
        if p not in PRECISIONS:
            parser.error(f"unknown precision {p}; choose from {PRECISIONS}")
        if p == "fp16" and not args.device.startswith("cuda"):
            parser.error("fp16 needs --device cuda (speechbrain refuses fp16 autocast on CPU; use bf16)")
    return args, overrides, precisions


def main(argv):
    """Runs one precision in process, or each of ``--compare`` in a child
    process, and prints the report; returns the list of measurements."""
    args, overrides, precisions = parse_args(argv)
    temporary = args.output_folder is None
    root = os.path.abspath(args.output_folder or tempfile.mkdtemp(prefix="interpreter_benchmark_"))
    os.makedirs(root, exist_ok=True)
    try:
        if args.data_folder is None:
            import synthetic_esc50

            args.data_folder = os.path.join(root, "data")
            if not os.path.isfile(os.path.join(args.data_folder, "meta", "esc50.csv")):
                logger.info(f"Generating data in {args.data_folder}")
                synthetic_esc50.generate(args.data_folder, args.n_classes, args.clips_per_fold, seed=args.data_seed)
        args.data_folder = os.path.abspath(args.data_folder)
        if args.init_state is None:  # not a child of --compare
            print(machine_line(), flush=True)

        if not args.compare:
            result = run_one(args, overrides, args.precision, os.path.join(root, args.precision), args.init_state)
            print_report(result)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(result, f, indent=2)
            return [result]

        # One process per precision: each has its own peak RSS and a clean
        # CUDA allocator; all share the data, the seed, the initial weights
        # and (unless --no_snapshot) a frozen copy of the recipe's code.
        script, hparams_file = resolve(args.script), resolve(args.hparams)
        benchmark = os.path.abspath(__file__)
        if not args.no_snapshot:
            snapshot = os.path.join(root, "recipe_snapshot")
            script, hparams_file = snapshot_recipe(script, hparams_file, snapshot)
            os.makedirs(os.path.join(snapshot, "benchmarks"), exist_ok=True)
            benchmark = shutil.copy2(benchmark, os.path.join(snapshot, "benchmarks"))
            logger.info(f"Recipe code copied to {snapshot}")
        init_state = os.path.join(root, "initial_state.pt")
        if os.path.exists(init_state):
            os.remove(init_state)
        results, failed = [], []
        for precision in precisions:
            out_json = os.path.join(root, f"result_{precision}.json")
            command = [
                sys.executable, benchmark,
                "--script", script, "--hparams", hparams_file,
                "--precision", precision, "--device", args.device,
                "--data_folder", args.data_folder, "--output_folder", root,
                "--init_state", init_state, "--json", out_json,
            ]
            if args.brain_class:
                command += ["--brain_class", args.brain_class]
            command += list(overrides)
            logger.info(f"Running {precision}: {' '.join(command)}")
            returncode = subprocess.run(command).returncode
            if returncode != 0:
                # The child's traceback is on stderr above; go on with the others.
                failed.append(precision)
                logger.error(f"The {precision} run failed (exit status {returncode}); see its traceback above.")
                continue
            with open(out_json) as f:
                results.append(json.load(f))
        if results:
            print_comparison(results)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
        if failed:
            print(f"\nFAILED precisions: {', '.join(failed)} (tracebacks on stderr)")
            sys.exit(1)
        return results
    finally:
        if temporary and not args.keep and not args.init_state:
            shutil.rmtree(root, ignore_errors=True)
        elif temporary and not args.init_state:
            print(f"outputs kept in {root}")


if __name__ == "__main__":
    main(sys.argv[1:])
