"""Experiment plumbing shared by the recipe scripts: command line and YAML,
output folder, ESC-50 manifests, datasets, and the train-then-test routine.

A script's ``main`` reads: ``setup_experiment`` -> ``prepare_manifests`` ->
label mapping (``pretrained.load_classifier`` for an interpreter,
``pretrained.label_encoder_from_manifest`` for a model being trained) ->
``make_datasets`` -> Brain -> ``fit_and_test``. ``run_interpreter`` is that
sequence for every trained interpreter, ``run_without_training`` its
counterpart for the interpreters that train nothing (AMT, gradients,
references).

Authors: the ESC-50 interpretability recipe developers.
"""

import atexit
import dataclasses
import difflib
import gc
import os
import re
import shutil
import sys
import traceback

import numpy as np
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from ruamel.yaml import YAML, YAMLError
from ruamel.yaml.constructor import SafeConstructor
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.distributed import if_main_process, run_on_main
from speechbrain.utils.logger import get_logger
from speechbrain.utils.run_opts import RunOptions

from checkpoint_policy import require_checkpoint
from contamination import MODES, interferer_pipeline
from esc50_prepare import check_folds, prepare_esc50
from pretrained import (
    check_local_checkpoints,
    checkpoint_keys,
    load_classifier,
)

logger = get_logger(__name__)


class _PlainConstructor(SafeConstructor):
    """Reads a hyperpyyaml file as plain YAML: every tagged node (``!new:``,
    ``!ref``, ``!PLACEHOLDER``, ...) becomes None; nothing is built."""


_PlainConstructor.add_multi_constructor("!", lambda *args: None)


def read_plain_yaml(source):
    """A hyperpyyaml text or stream as a plain dict (``_PlainConstructor``:
    tagged values are None), e.g. to read a key without building anything."""
    plain = YAML(typ="safe", pure=True)
    plain.Constructor = _PlainConstructor
    return plain.load(source) or {}


# type of a YAML value -> what a command-line value for its key must be
_EXPECTED = (
    (bool, "True or False", (bool,)),
    (int, "an integer", (int,)),
    (float, "a number", (int, float)),
    (list, "a list, e.g. [1, 2]", (list,)),
)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# what a value must be, beyond its type: (words for the message, test,
# what is wrong when the test fails, if the words do not say it)
_POSITIVE_INT = ("an integer >= 1", lambda v: _is_int(v) and v >= 1, "")
_COUNT = ("an integer >= 0", lambda v: _is_int(v) and v >= 0, "")
_POSITIVE = ("a number > 0", lambda v: _is_number(v) and v > 0, "")
_NON_NEGATIVE = ("a number >= 0", lambda v: _is_number(v) and v >= 0, "")
_FRACTION = (
    "a number in [0, 1]",
    lambda v: _is_number(v) and 0 <= v <= 1,
    "",
)
_FILE = (
    "an existing file, or null",
    lambda v: os.path.isfile(str(v)),
    "no such file",
)
_FOLDER = (
    "an existing folder, or null",
    lambda v: os.path.isdir(str(v)),
    "no such folder",
)
_NOT_A_FILE = (
    "a folder",
    lambda v: not os.path.isfile(str(v)),
    "this is a file",
)

# key -> rule, for the keys the recipe's YAMLs share; checked on the value
# a run will use (the command line's, else the YAML's) unless it is null or
# built by the YAML (!ref, !new: ...)
RULES = {
    "sample_rate": _POSITIVE_INT,
    "batch_size": _POSITIVE_INT,
    "out_n_neurons": _POSITIVE_INT,
    "emb_dim": _POSITIVE_INT,
    "K": _POSITIVE_INT,
    "n_comp": _POSITIVE_INT,
    "n_fft": _POSITIVE_INT,
    "n_steps": _POSITIVE_INT,
    "nt_samples": _POSITIVE_INT,
    "copies_per_pass": _POSITIVE_INT,
    "number_of_epochs": _COUNT,
    "num_workers": _COUNT,
    "curve_steps": _COUNT,
    "decoder_piece": _COUNT,
    "shared_keys": _COUNT,
    "signal_length_s": _POSITIVE,
    "win_length_ms": _POSITIVE,
    "hop_length_ms": _POSITIVE,
    "lr": _POSITIVE,
    "weight_decay": _NON_NEGATIVE,
    "mask_th": _FRACTION,
    "quantile": _FRACTION,
    "eval_contamination": (
        f"one of {', '.join(MODES)}",
        MODES.__contains__,
        "",
    ),
    "classifier_labels": _FILE,
    "speech_folder": _FOLDER,
    "data_folder": _NOT_A_FILE,
    "output_folder": _NOT_A_FILE,
}
FOLD_KEYS = ("train_fold_nums", "valid_fold_nums", "test_fold_nums")


def _yaml_problem(err):
    """ruamel's error in a few words, with its line, e.g. "expected ',' or
    ']' (line 2)"."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    return f"{problem} (line {mark.line + 1})" if mark else problem


def _read_hparams_file(hparams_file):
    """The YAML's text and its plain values; one-line errors naming it."""
    advice = (
        "Give a YAML of the recipe as the first argument, e.g. "
        "hparams/piq.yaml (see hparams/)."
    )
    if not os.path.isfile(hparams_file):
        what = "is a folder" if os.path.isdir(hparams_file) else "not found"
        raise FileNotFoundError(
            f"hparams file {hparams_file}: {what}. {advice}"
        )
    with open(hparams_file, encoding="utf-8") as f:
        text = f.read()
    try:
        return text, read_plain_yaml(text)
    except YAMLError as err:
        raise ValueError(
            f"hparams file {hparams_file} is not valid YAML: "
            f"{_yaml_problem(err)}. Fix it, or {advice[0].lower()}{advice[1:]}"
        ) from None


def _read_overrides(overrides):
    """The command-line overrides as a dict; one-line errors naming the key
    given twice or the value that is not YAML."""
    overrides = overrides or ""
    keys = re.findall(r"^([^\s:]+):", overrides, re.M)
    twice = [k for k in dict.fromkeys(keys) if keys.count(k) > 1]
    if twice:
        raise ValueError(
            f"--{twice[0]} is given {keys.count(twice[0])} times on the "
            "command line: give it once."
        )
    try:
        return read_plain_yaml(overrides)
    except YAMLError:
        pass
    for line in overrides.splitlines():  # which one is it?
        try:
            read_plain_yaml(line)
        except YAMLError as err:
            key, _, value = line.partition(":")
            raise ValueError(
                f"--{key} {value.strip()}: not a value the YAML can read "
                f"({_yaml_problem(err).split(' (line')[0]}). Write a list as "
                "[1, 2] and quote text holding : [ ] { } or #."
            ) from None
    raise ValueError(f"The command-line values are not valid YAML: {overrides}")


def check_overrides(hparams_file, overrides):
    """Checks the command line against the YAML before anything is built,
    raising an error of one line that names the key, the value given and
    what to give instead:

    * the YAML file exists and is YAML; every key given is one of its keys
      (with the closest name suggested) and is given once; every
      ``!PLACEHOLDER`` key is given;
    * a value fits the type of its key's value in the YAML
      (``--number_of_epochs many``); keys whose YAML value is a string,
      null or an object take any type;
    * the value a run will use (the command line's, else the YAML's) obeys
      its key's rule in ``RULES`` (``--batch_size 0``, ``--sample_rate -1``,
      ``--eval_contamination noise``, a ``--classifier_labels`` file that
      does not exist, ...), and the fold lists are disjoint non-empty lists
      of folds 1..5 (``esc50_prepare.check_folds``).

    Arguments
    ---------
    hparams_file : str
        The YAML file.
    overrides : str
        The command-line overrides as YAML (``sb.parse_arguments``).
    """
    text, defaults = _read_hparams_file(hparams_file)
    given = _read_overrides(overrides)
    for key, value in given.items():
        if key not in defaults:
            known = list(defaults) + list(RunOptions().as_dict())
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean --{close[0]}?)" if close else ""
            raise ValueError(
                f"--{key}: {hparams_file} has no key {key}{hint}. Check its "
                "spelling: the keys are the YAML's top-level names."
            )
        default = defaults.get(key)
        for kind, words, accepted in _EXPECTED:
            if not isinstance(default, kind):
                continue
            fits = isinstance(value, accepted)
            if kind is bool:  # the public recipe's commands give 0 / 1
                fits = fits or value in (0, 1)
            elif isinstance(value, bool):
                fits = False
            if not fits:
                raise ValueError(
                    f"--{key} {value!r}: {hparams_file} expects {words} for "
                    f"{key} (its value there is {default!r}). Give e.g. "
                    f"--{key} {default!r}."
                )
            break
    for key in re.findall(r"^([^\s:#]+):\s*!PLACEHOLDER", text, re.M):
        if key not in given:
            raise ValueError(
                f"--{key} is required: {hparams_file} has no value for it "
                f"(!PLACEHOLDER). Give --{key} <value>."
            )
    values = {**defaults, **given}
    for key, (words, test, problem) in RULES.items():
        value = values.get(key)
        if value is None or test(value):
            continue
        if key in given:
            where = f"--{key} {value!r}"
        else:
            where = f"{key}: {value!r} in {hparams_file}"
        default = defaults.get(key)
        example = (
            f" (e.g. --{key} {default!r})"
            if default is not None and test(default)
            else ""
        )
        problem = f"{problem}; " if problem else ""
        raise ValueError(f"{where}: {problem}give {words}{example}.")
    if all(key in values for key in FOLD_KEYS):
        check_folds(*(values[key] for key in FOLD_KEYS))


def check_device(device):
    """Raises an error of one line naming ``--device`` unless ``device``
    (a torch device string; None: speechbrain chooses) exists here."""
    if device is None:
        return
    try:
        kind = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"--device {device}: not a device. Give cpu, or cuda:N for the "
            "N-th GPU."
        ) from None
    if kind.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"--device {device}: CUDA is not available on this machine "
                f"(torch {torch.__version__}, built with CUDA "
                f"{torch.version.cuda}). Give --device cpu, or run on a "
                "machine with an NVIDIA GPU and its driver."
            )
        count = torch.cuda.device_count()
        if (kind.index or 0) >= count:
            raise RuntimeError(
                f"--device {device}: this machine has {count} CUDA "
                f"device(s), cuda:0 to cuda:{count - 1}. Give one of them."
            )
    elif kind.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(
            f"--device {device}: MPS is not available on this machine. "
            "Give --device cpu."
        )
    elif kind.type not in ("cpu", "cuda", "mps"):
        raise ValueError(
            f"--device {device}: the recipe runs on cpu or cuda:N. Give one "
            "of them."
        )


def _errors_end_on_stderr():
    """Once ``sb.create_experiment_directory`` has made speechbrain log an
    uncaught exception (traceback to stdout and log.txt), the error's own
    line ``Type: message`` is written to stderr after it, so that it stays
    the last line the user sees."""
    logged = sys.excepthook
    if logged is sys.__excepthook__ or getattr(logged, "_last_line", False):
        return

    def excepthook(exc_type, exc_value, exc_traceback):
        logged(exc_type, exc_value, exc_traceback)
        sys.stdout.flush()
        sys.stderr.write(
            "".join(traceback.format_exception_only(exc_type, exc_value))
        )
        sys.stderr.flush()

    excepthook._last_line = True
    sys.excepthook = excepthook


def _close_process_group():
    """Tears the DDP process group down before the interpreter exits. Left
    to process teardown, a gloo thread that still holds a tensor of a
    finished collective may need the GIL while Python shuts down, and the
    process aborts (SIGABRT, about one run in ten): free what still refers
    to the group, wait for every process, then destroy it."""
    gc.collect()
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def native_bf16():
    """Whether this CPU computes bf16 natively (oneDNN's own check)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def fit_precision(run_opts, hparams):
    """The run options to use: ``--precision`` / ``--eval_precision`` bf16
    on a CPU without native bf16 become fp32, with a warning (oneDNN then
    emulates bf16, many times slower than fp32), unless the YAML's
    ``force_precision`` is True."""
    device = run_opts.device or sb.utils.distributed.infer_device()
    if not device.startswith("cpu") or hparams.get("force_precision"):
        return run_opts
    fields = ("precision", "eval_precision")
    asked = [f for f in fields if getattr(run_opts, f) == "bf16"]
    if not asked or native_bf16():
        return run_opts
    logger.warning(
        f"--{' and --'.join(asked)} bf16 asked, but this CPU has no native "
        f"bf16 (torch CPU capability {torch.backends.cpu.get_cpu_capability()}"
        "; oneDNN would emulate it, many times slower than fp32): running "
        "fp32. Set --force_precision True to run bf16 anyway."
    )
    return dataclasses.replace(run_opts, **{f: "fp32" for f in asked})


def setup_experiment(argv):
    """Parses the command line, checks it (``check_overrides``,
    ``check_device``, the local checkpoint files of the YAML's
    ``pretrainer``), loads the YAML with its overrides, starts DDP if
    launched by torchrun and creates the output folder (with
    hyperparams.yaml, env.log, log.txt and a copy of the calling script).
    From then on an uncaught error also ends on stderr, in one line
    (``_errors_end_on_stderr``).

    Returns
    -------
    (hparams dict, run_opts dict)
    """
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    check_overrides(hparams_file, overrides)
    check_device(run_opts.device)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    if hparams.get("use_pretrained") and "pretrainer" in hparams:
        pretrainer = hparams["pretrainer"]
        check_local_checkpoints(checkpoint_keys(hparams, pretrainer))
    run_opts = fit_precision(run_opts, hparams)
    sb.utils.distributed.ddp_init_group(run_opts)
    if torch.distributed.is_initialized():
        atexit.register(_close_process_group)
    sb.create_experiment_directory(
        hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    _errors_end_on_stderr()
    if if_main_process() and getattr(sys.modules["__main__"], "__file__", None):
        shutil.copy(
            os.path.realpath(sys.modules["__main__"].__file__),
            hparams["output_folder"],
        )
    return hparams, run_opts


def fit_and_test(brain, datasets, min_key):
    """Trains ``brain`` (unless ``--test_only``), then tests the checkpoint
    with the lowest ``min_key``, the key its validation stage stores."""
    hparams = brain.hparams
    if brain.test_only:
        require_checkpoint(brain.checkpointer, min_key)
    brain.fit(
        hparams.epoch_counter,
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs=hparams.train_dataloader_opts,
        valid_loader_kwargs=hparams.test_dataloader_opts,
    )
    brain.evaluate(
        datasets["test"],
        min_key=min_key,
        test_loader_kwargs=hparams.test_dataloader_opts,
    )


def prepare_manifests(hparams):
    """Runs ESC-50 preparation (download if needed, manifests, audio cache)
    on the main process only; the other processes wait for it."""
    run_on_main(
        prepare_esc50,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["save_folder"],
            "train_fold_nums": hparams["train_fold_nums"],
            "valid_fold_nums": hparams["valid_fold_nums"],
            "test_fold_nums": hparams["test_fold_nums"],
            "sample_rate": hparams["sample_rate"],
            "signal_length_s": hparams["signal_length_s"],
            "url": hparams["esc50_url"],
            "sha256": hparams["esc50_sha256"],
            "save_json_train": hparams["train_annotation"],
            "save_json_valid": hparams["valid_annotation"],
            "save_json_test": hparams["test_annotation"],
        },
    )


def make_datasets(hparams, label_encoder):
    """Train, valid and test datasets over the manifests, with outputs ``id``,
    ``sig`` (float32 clip at the recipe's sample rate) and ``label_encoded``
    (index in ``label_encoder``, the classifier's own mapping).

    Returns
    -------
    dict
        split -> DynamicItemDataset.
    """

    @sb.utils.data_pipeline.takes("wav", "category")
    @sb.utils.data_pipeline.provides("sig", "label_encoded")
    def pipeline(wav, category):
        yield torch.from_numpy(np.load(wav))
        if category not in label_encoder.lab2ind:
            raise KeyError(
                f"Class '{category}' of the data is not one of the classifier's classes "
                f"{list(label_encoder.lab2ind)}; check the folds and the classifier."
            )
        yield torch.LongTensor([label_encoder.encode_label(category)])

    manifests = {
        "train": hparams["train_annotation"],
        "valid": hparams["valid_annotation"],
        "test": hparams["test_annotation"],
    }
    datasets = {
        split: DynamicItemDataset.from_json(
            path,
            dynamic_items=[pipeline],
            output_keys=["id", "sig", "label_encoded"],
        )
        for split, path in manifests.items()
    }
    if hparams.get("eval_contamination") == "mixtures":
        datasets["test"].add_dynamic_item(
            interferer_pipeline(hparams["test_annotation"], hparams["seed"])
        )
        datasets["test"].set_output_keys(
            ["id", "sig", "label_encoded", "interferer_sig"]
        )
    return datasets


def make_brain(brain_class, hparams, run_opts):
    """``brain_class`` over the YAML's ``modules``, ``opt_class`` and
    ``checkpointer``."""
    return brain_class(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )


def run_interpreter(brain_class, argv):
    """``main`` of a trained interpreter: parse the command line, prepare the
    data, load the frozen classifier, build ``brain_class``, train (unless
    ``--test_only``) and test the best checkpoint. Returns the Brain."""
    hparams, run_opts = setup_experiment(argv)
    prepare_manifests(hparams)
    datasets = make_datasets(hparams, load_classifier(hparams))
    brain = make_brain(brain_class, hparams, run_opts)
    fit_and_test(brain, datasets, brain.best_key)
    return brain


def run_without_training(brain_class, argv):
    """``main`` of an interpreter that trains nothing (``interpret_amt.py``,
    ``interpret_gradients.py``): parse the command line, prepare the data,
    load the frozen classifier, evaluate the validation folds (metrics in
    train_log.txt; skipped by ``--test_only``), then the test folds
    (test_metrics.json, interpretations). There is no checkpoint to select.
    ``brain_class`` is a ``training_free.TrainingFreeBrain``. Returns the
    Brain."""
    hparams, run_opts = setup_experiment(argv)
    prepare_manifests(hparams)
    datasets = make_datasets(hparams, load_classifier(hparams))
    brain = brain_class(hparams=hparams, run_opts=run_opts)
    if not brain.test_only:
        brain.evaluate_valid(datasets["valid"])
    brain.evaluate(
        datasets["test"],
        test_loader_kwargs=dict(hparams["test_dataloader_opts"]),
    )
    return brain
