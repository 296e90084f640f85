"""The frozen classifier an interpreter explains: its weights, checked and
loaded strictly, and its label mapping.

* ``load_classifier``: the checkpoint files named by the YAML's ``*_path``
  keys (a local file or a Hugging Face hub id ``owner/repo/file``), fetched
  through speechbrain's Pretrainer and loaded strictly; every failure names
  the key and the path the user gave. Then the classifier's label mapping.
* The label mapping belongs to the classifier, not to the data: output k is
  class ``ind2lab[k]`` of ``classifier_labels`` if set, else of
  ``label_encoder.txt`` beside the classifier checkpoint (written by
  ``train_classifier.py``; for a run folder copied with its links followed,
  the run's own ``save/label_encoder.txt``), else of
  ``esc50_hub_classes.txt`` (the order the public hub classifiers were
  trained with). The data's classes must be among the classifier's.
* Every error is one line naming the key and the file the user gave.
* ``label_encoder_from_manifest``: classes in their order of first
  appearance in a manifest, the mapping ``train_classifier.py`` and
  ``train_nmf.py`` build for the data they train on.

Authors: the ESC-50 interpretability recipe developers.
"""

import json
import os

import torch
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.utils.distributed import if_main_process, run_on_main
from speechbrain.utils.logger import get_logger

logger = get_logger(__name__)

HUB_CLASSES = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "esc50_hub_classes.txt"
)


def label_encoder_from_manifest(*manifests):
    """Class k is the k-th category met while reading ``manifests`` in order
    (their entries follow the rows of meta/esc50.csv)."""
    encoder = CategoricalEncoder()
    for manifest in manifests:
        with open(manifest) as f:
            entries = json.load(f)
        encoder.update_from_iterable(e["category"] for e in entries.values())
    return encoder


def read_label_file(path):
    """A label mapping from ``path``: a speechbrain ``label_encoder.txt``
    ("'name' => index" lines) or a list of class names, one per line in
    output order (``#`` starts a comment)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    encoder = CategoricalEncoder()
    if "=>" in text:
        encoder.load(path)
        return encoder
    names = [line.split("#")[0].strip() for line in text.splitlines()]
    encoder.update_from_iterable(name for name in names if name)
    return encoder


def looks_local(path):
    """Whether speechbrain's fetching would read ``path`` from disk: it
    exists, its folder exists, or it cannot be a hub id ``owner/repo/file``."""
    path = str(path)
    if path.startswith(("http://", "https://")):
        return False
    return (
        os.path.exists(path)
        or os.path.isdir(os.path.dirname(path) or ".")
        or os.path.isabs(path)
        or path.startswith((".", "~"))
        or path.count("/") != 2
    )


def checkpoint_keys(hparams, pretrainer):
    """loadable name -> (YAML key, path as the user gave it), e.g.
    "classifier" -> ("classifier_model_path", "speechbrain/PIQ-ESC50/...")."""
    keys = {}
    for name, path in pretrainer.paths.items():
        candidates = [
            k for k, v in hparams.items() if k.endswith("_path") and v == path
        ]
        keys[name] = (candidates[0] if candidates else name, str(path))
    return keys


def check_local_checkpoints(keys):
    """Raises FileNotFoundError naming the key and path of the first local
    checkpoint path that is not a readable file."""
    for key, path in keys.values():
        if looks_local(path) and not (
            os.path.isfile(path) and os.access(path, os.R_OK)
        ):
            raise FileNotFoundError(
                f"{key}={path}: no such readable file. Point --{key} at a "
                "checkpoint file (train_classifier.py and train_nmf.py write "
                "them into their output folder) or at a Hugging Face hub file "
                "such as speechbrain/PIQ-ESC50/classifier.ckpt."
            )


def collect_checkpoints(pretrainer, keys):
    """Fetches every checkpoint (main process first); returns name -> local
    path. A hub file that cannot be fetched is an error naming its key.

    ``collect_in`` holds links to the files the keys name; a link of an
    earlier run may point elsewhere, and a run folder copied with its links
    followed (``shutil.copytree``, ``cp -rL``) holds copies that speechbrain
    would use instead of the file the key names now: both are replaced."""
    os.makedirs(pretrainer.collect_in, exist_ok=True)
    for name, (key, path) in keys.items():
        link = os.path.join(pretrainer.collect_in, f"{name}.ckpt")
        if not if_main_process() or not os.path.lexists(link):
            continue
        if os.path.islink(link):
            os.remove(link)
        elif (
            looks_local(path)
            and os.path.isfile(path)
            and not os.path.samefile(link, path)
        ):
            logger.info(
                f"{link} is a copy (a run folder copied with its links "
                f"followed?): replaced by a link to {key}={path}."
            )
            os.remove(link)
    try:
        run_on_main(pretrainer.collect_files)
        return pretrainer.collect_files()
    except Exception as err:
        given = ", ".join(f"{key}={path}" for key, path in keys.values())
        raise RuntimeError(
            f"Cannot fetch the classifier checkpoints ({given}): "
            f"{type(err).__name__}: {_one_line(err)}. Offline, or the hub id "
            "is wrong? Point these keys at local files, or fetch the files "
            f"once with network access (they are then cached): {given}."
        ) from err


def _one_line(err, limit=200):
    """The first line of ``err``'s message, at most ``limit`` characters."""
    lines = str(err).strip().splitlines() or [""]
    text = lines[0].strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _some(keys, n=3):
    """``n`` of ``keys`` and how many more, e.g. "a, b, c and 40 more"."""
    keys = list(keys)
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def strict_load(module, path, where=None):
    """Loads a state dict into ``module`` and fails unless every parameter and
    buffer of the module is covered and every stored tensor is used (unlike
    the Pretrainer's default, which only warns and keeps random weights).
    ``where``: how the user named the file (e.g. "classifier_model_path=
    results/.../classifier.ckpt"), for the error message: one line that
    starts and ends with it, with a few of the missing, unexpected and
    misshapen keys and their counts."""
    where = where or str(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise RuntimeError(
            f"{where}: not a readable PyTorch checkpoint "
            f"({type(err).__name__}: {_one_line(err)}). Point it at a "
            f"checkpoint file written by this recipe ({where})."
        ) from None
    if not isinstance(state, dict):
        raise RuntimeError(
            f"{where}: holds a {type(state).__name__}, not a state dict. "
            f"Point it at a checkpoint file written by this recipe ({where})."
        )
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshapen = [
        f"{k} {list(state[k].shape)} vs {list(own[k].shape)}"
        for k in own
        if k in state
        and hasattr(state[k], "shape")
        and state[k].shape != own[k].shape
    ]
    problems = [
        f"{len(keys)} {what} ({_some(keys)})"
        for keys, what in (
            (missing, "missing keys"),
            (unexpected, "unexpected keys"),
            (misshapen, "keys of another shape, file vs model"),
        )
        if keys
    ]
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        found = "; ".join(problems) or _one_line(err)
        raise RuntimeError(
            f"Checkpoint {where} does not match {type(module).__name__}: "
            f"{found}. Check the *_model_path keys and the architecture keys "
            "(e.g. emb_dim, out_n_neurons) of the YAML: they must describe "
            f"the model that wrote {where}."
        ) from None


def classifier_label_encoder(hparams, beside=None, searched=()):
    """The classifier's mapping, checked against its size and the data.

    With trained weights (``use_pretrained``) the mapping must have exactly
    ``out_n_neurons`` classes. With random weights (a smoke run) a head
    that does not fit is a warning, and the data's own classes are used.
    Either way, a class of the data that the mapping lacks is an error.
    ``beside``: the label file found with the classifier (or None);
    ``searched``: where it was looked for, for the error message.
    """
    n_out = hparams["out_n_neurons"]
    given = hparams.get("classifier_labels")
    if given and not os.path.isfile(given):
        raise FileNotFoundError(
            f"classifier_labels={given}: no such file. Point "
            "--classifier_labels at the classifier's label_encoder.txt "
            "(train_classifier.py writes it beside classifier.ckpt) or at a "
            "list of its class names, one per line in output order."
        )
    source = given or beside or HUB_CLASSES
    encoder = read_label_file(source)
    manifests = [hparams[f"{s}_annotation"] for s in ("train", "valid", "test")]
    data = label_encoder_from_manifest(*manifests)
    if len(encoder) != n_out and hparams["use_pretrained"]:
        why = ""
        if source == HUB_CLASSES and searched:
            copied = any(
                os.path.dirname(f) == os.path.abspath(hparams["save_folder"])
                for f in searched
            )
            why = (
                " (the hub classifiers' classes, as there is no "
                f"{' and no '.join(searched)}"
                + (
                    "; the classifier is a copy in the run's save/pretrained,"
                    " e.g. of a run folder copied with its links followed"
                    if copied
                    else ""
                )
                + ")"
            )
        raise ValueError(
            f"classifier_model_path={hparams.get('classifier_model_path')}: "
            f"the classifier has out_n_neurons={n_out} outputs but its label "
            f"mapping {source} has {len(encoder)} classes{why}. Point "
            "--classifier_labels at the classifier's label_encoder.txt "
            "(train_classifier.py writes it beside classifier.ckpt) or at its "
            "class list (one name per line, output order), or set "
            f"--out_n_neurons {len(encoder)} if that mapping is right."
        )
    if len(encoder) != n_out:
        encoder, source = data, "the classes of the data"
        if len(encoder) != n_out:
            logger.warning(
                f"Untrained classifier (use_pretrained False) with "
                f"out_n_neurons={n_out} outputs for {len(encoder)} classes "
                "in the data: fine for a smoke run, meaningless otherwise."
            )
        for k in range(len(encoder), n_out):  # outputs with no class
            encoder.add_label(f"output_{k}")
    unknown = [c for c in data.lab2ind if c not in encoder.lab2ind]
    if unknown:
        raise ValueError(
            f"The data hold classes the classifier does not know: {unknown} "
            f"(its classes: {source}). Use folds or data of the classes it "
            "was trained on, or a classifier trained on these classes "
            "(train_classifier.py)."
        )
    encoder.expect_len(len(encoder))
    return encoder, source


def load_weights(hparams):
    """Checks, fetches and strictly loads every checkpoint of the YAML's
    ``pretrainer`` (the classifier, and e.g. an NMF dictionary); returns
    name -> local path."""
    pretrainer = hparams["pretrainer"]
    keys = checkpoint_keys(hparams, pretrainer)
    check_local_checkpoints(keys)
    paths = collect_checkpoints(pretrainer, keys)
    for name, path in paths.items():
        key, given = keys[name]
        strict_load(pretrainer.loadables[name], path, f"{key}={given}")
    return paths


def label_file_candidates(hparams, fetched):
    """Where the classifier's ``label_encoder.txt`` may be, in order: beside
    the fetched classifier file (links followed), beside the file that
    ``classifier_model_path`` names, and, when the weights are a copy in the
    run's own ``save/pretrained`` (a run folder copied with its links
    followed, or that copy named directly), the run's
    ``save/label_encoder.txt``, the mapping its first run used."""
    folders = [os.path.dirname(os.path.realpath(fetched))]
    given = str(hparams.get("classifier_model_path") or "")
    if given and looks_local(given):
        folders.append(os.path.dirname(os.path.abspath(given)))
    files = [os.path.join(f, "label_encoder.txt") for f in folders]
    collect_in = os.path.realpath(hparams["pretrainer"].collect_in)
    if folders[0] == collect_in:
        files.append(os.path.join(hparams["save_folder"], "label_encoder.txt"))
    return list(dict.fromkeys(files))


def load_classifier(hparams):
    """Loads the frozen classifier (if ``use_pretrained``) and returns its
    label mapping, also stored as ``hparams["label_encoder"]`` and written
    to ``<save_folder>/label_encoder.txt``."""
    beside, searched = None, ()
    if hparams["use_pretrained"]:
        paths = load_weights(hparams)
        searched = label_file_candidates(hparams, paths["classifier"])
        beside = next(filter(os.path.isfile, searched), None)
    encoder, source = classifier_label_encoder(hparams, beside, searched)
    logger.info(f"Classifier label mapping: {len(encoder)} classes ({source})")
    if if_main_process():
        path = os.path.join(hparams["save_folder"], "label_encoder.txt")
        tmp = f"{path}.tmp-{os.getpid()}"  # never half-written
        encoder.save(tmp)
        os.replace(tmp, path)
    hparams["label_encoder"] = encoder
    return encoder
