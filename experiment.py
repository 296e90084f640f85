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
import gc
import os
import shutil
import sys

import numpy as np
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from ruamel.yaml import YAML
from ruamel.yaml.constructor import SafeConstructor
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.distributed import if_main_process, run_on_main
from speechbrain.utils.logger import get_logger

from checkpoint_policy import require_checkpoint
from contamination import interferer_pipeline
from esc50_prepare import prepare_esc50
from pretrained import load_classifier

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


def check_overrides(hparams_file, overrides):
    """Raises ValueError, before anything is built, when a command-line value
    does not fit the type of its key's value in the YAML (``--number_of_epochs
    many``). Keys whose YAML value is a string, null or an object take any.

    Arguments
    ---------
    hparams_file : str
        The YAML file.
    overrides : str
        The command-line overrides as YAML (``sb.parse_arguments``).
    """
    with open(hparams_file, encoding="utf-8") as f:
        defaults = read_plain_yaml(f)
    for key, value in read_plain_yaml(overrides or "").items():
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
    """Parses the command line, loads the YAML with its overrides, starts DDP
    if launched by torchrun and creates the output folder (with
    hyperparams.yaml, env.log, log.txt and a copy of the calling script).

    Returns
    -------
    (hparams dict, run_opts dict)
    """
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    check_overrides(hparams_file, overrides)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    run_opts = fit_precision(run_opts, hparams)
    sb.utils.distributed.ddp_init_group(run_opts)
    if torch.distributed.is_initialized():
        atexit.register(_close_process_group)
    sb.create_experiment_directory(
        hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
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
