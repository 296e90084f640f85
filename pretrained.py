"""The frozen classifier an interpreter explains: its weights, loaded
strictly, and its label mapping.

* ``load_classifier``: the checkpoint files through speechbrain's Pretrainer
  (a Hugging Face hub id or a local path), every tensor checked
  (``strict_load``), and the mapping class index -> class name that the
  classifier was trained with.
* ``label_encoder_from_manifest``: the mapping the public checkpoints were
  trained with (classes in their order of first appearance in the training
  manifest); also the mapping ``train_classifier.py`` and ``train_nmf.py``
  build for the data they train on.

Authors: the ESC-50 interpretability recipe developers.
"""

import json
import os

import torch
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.utils.distributed import if_main_process, run_on_main
from speechbrain.utils.logger import get_logger

logger = get_logger(__name__)


def label_encoder_from_manifest(manifest):
    """The public recipe's label mapping: class k is the k-th category met
    while reading the training manifest (rows of meta/esc50.csv in order)."""
    encoder = CategoricalEncoder()
    with open(manifest) as f:
        entries = json.load(f)
    encoder.update_from_iterable(
        entry["category"] for entry in entries.values()
    )
    return encoder


def strict_load(module, path):
    """Loads a state dict into ``module`` and fails unless every parameter and
    buffer of the module is covered and every stored tensor is used (unlike
    the Pretrainer's default, which only warns and keeps random weights)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise RuntimeError(
            f"Checkpoint {path} does not match {type(module).__name__}: {err}\n"
            "Check the *_model_path keys and the architecture keys (e.g. emb_dim, out_n_neurons) "
            "of the YAML: they must describe the model that wrote this file."
        ) from None


def load_classifier(hparams):
    """Loads the frozen classifier (if ``use_pretrained``) and returns its
    label mapping, also stored as ``hparams["label_encoder"]`` and written
    to ``<save_folder>/label_encoder.txt``.

    The weights come through ``hparams["pretrainer"]`` (hub id or local path)
    and are loaded strictly. The mapping is ``label_encoder.txt`` beside the
    classifier checkpoint if there is one (written by train_classifier.py),
    else the order of the training manifest (how the public checkpoints were
    trained). It must have exactly ``out_n_neurons`` classes.
    """
    source = None
    if hparams["use_pretrained"]:
        pretrainer = hparams["pretrainer"]
        run_on_main(pretrainer.collect_files)
        paths = pretrainer.collect_files()
        for name, path in paths.items():
            strict_load(pretrainer.loadables[name], path)
        beside = os.path.join(
            os.path.dirname(os.path.realpath(paths["classifier"])),
            "label_encoder.txt",
        )
        source = beside if os.path.isfile(beside) else None
    if source is not None:
        encoder = CategoricalEncoder()
        encoder.load(source)
    else:
        source = hparams["train_annotation"]
        encoder = label_encoder_from_manifest(source)
    if len(encoder) != hparams["out_n_neurons"]:
        raise ValueError(
            f"The classifier has out_n_neurons={hparams['out_n_neurons']} outputs but its label "
            f"mapping ({source}) has {len(encoder)} classes. Set --out_n_neurons {len(encoder)}."
        )
    encoder.expect_len(len(encoder))
    logger.info(
        f"Classifier label mapping from {source}: {len(encoder)} classes"
    )
    if if_main_process():
        encoder.save(os.path.join(hparams["save_folder"], "label_encoder.txt"))
    hparams["label_encoder"] = encoder
    return encoder
