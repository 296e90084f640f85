"""The model-randomisation sanity check (Adebayo et al. 2018, "Sanity checks
for saliency maps"): an explanation of a classifier must change when the
classifier's weights are replaced by random ones. A method whose masks stay
the same explains the input (its loudness, its edges), not the classifier.

* ``randomise_state``: a state_dict with the parameters of its top layers
  (the head first, then the embedding model from its last layer down)
  re-drawn at random, the cascade of the paper cut at a share of the layers.
* ``randomise_classifier``: a classifier folder (train_classifier.py's
  ``embedding_model.ckpt``, ``classifier.ckpt``, ``label_encoder.txt``)
  copied with its weights randomised, for any interpreter to load.
* ``mask_rank_correlation``: Spearman's rank correlation between the masks
  two runs saved for the same clips (``interpretations/<clip>/mask.npy``).

Used by ``compare_interpreters.py``.

Authors: the ESC-50 interpretability recipe developers.
"""

import math
import os
import shutil

import numpy as np
import torch
from scipy.stats import spearmanr

from fileio import write_atomically


def layers_top_down(states):
    """The layers of a classifier, top first: ``states`` is a list of
    state_dicts from the bottom (embedding model) to the top (head); a layer
    is the set of tensors sharing a key prefix (``conv1.weight`` and
    ``conv1.bias``). Returns a list of (state index, prefix)."""
    layers = []
    for index, state in enumerate(states):
        for key in state:
            layer = (index, key.rpartition(".")[0])
            if layer not in layers:
                layers.append(layer)
    return layers[::-1]


def randomise_state(states, top_share=1.0, seed=0):
    """Cascading randomisation of a classifier's weights.

    The parameters (floating-point tensors but BatchNorm's running
    statistics) of the top ``ceil(top_share * L)`` of its L layers
    (``layers_top_down``) are replaced by Gaussian draws with each tensor's
    own mean and standard deviation, so activations keep their scale; every
    other tensor is kept.

    Arguments
    ---------
    states : list of dict
        state_dicts, bottom (embedding model) to top (head).
    top_share : float
        In (0, 1]: 1 randomises every layer (the end of the cascade).
    seed : int
        Of the CPU generator the draws come from.

    Returns
    -------
    list of dict
        New state_dicts, same keys, shapes and dtypes.
    """
    if not 0 < top_share <= 1:
        raise ValueError(f"top_share={top_share}: give a share in (0, 1].")
    layers = layers_top_down(states)
    chosen = set(layers[: math.ceil(top_share * len(layers))])
    generator = torch.Generator("cpu").manual_seed(seed)
    out = []
    for index, state in enumerate(states):
        new = {}
        for key, value in state.items():
            prefix, _, name = key.rpartition(".")
            statistic = (
                name.startswith("running_") or not value.is_floating_point()
            )
            if (index, prefix) in chosen and not statistic:
                std = (
                    value.float().std()
                    if value.numel() > 1
                    else value.new_tensor(0.0)
                )
                draw = torch.randn(value.shape, generator=generator)
                value = (value.float().mean() + std * draw).to(value.dtype)
            new[key] = value.clone()
        out.append(new)
    return out


def randomise_classifier(folder, output, top_share=1.0, seed=0):
    """A copy of the classifier ``folder`` (``embedding_model.ckpt``,
    ``classifier.ckpt``, ``label_encoder.txt``) in ``output`` with its
    weights randomised (``randomise_state``); returns ``output``."""
    names = ("embedding_model.ckpt", "classifier.ckpt")
    states = [
        torch.load(
            os.path.join(folder, name), map_location="cpu", weights_only=True
        )
        for name in names
    ]
    os.makedirs(output, exist_ok=True)
    for name, state in zip(names, randomise_state(states, top_share, seed)):
        write_atomically(
            os.path.join(output, name),
            lambda f, state=state: torch.save(state, f),
            mode="wb",
        )
    shutil.copyfile(
        os.path.join(folder, "label_encoder.txt"),
        os.path.join(output, "label_encoder.txt"),
    )
    return output


def rank_correlation(a, b):
    """Spearman's rank correlation of two masks of the same shape (ties get
    their average rank). Two identical masks correlate 1 even when constant
    (where Spearman's coefficient is undefined); a constant mask against a
    varying one is NaN. Higher means more alike."""
    a, b = (
        np.asarray(a, dtype=np.float64).ravel(),
        np.asarray(b, dtype=np.float64).ravel(),
    )
    if np.array_equal(a, b):
        return 1.0
    if a.min() == a.max() or b.min() == b.max():
        return float("nan")
    return float(spearmanr(a, b).statistic)


def mask_rank_correlation(run, other, subfolder="interpretations"):
    """clip id -> ``rank_correlation`` of the masks that the runs ``run``
    and ``other`` saved for the same test clips."""
    clips = sorted(os.listdir(os.path.join(run, subfolder)))
    found = {}
    for clip in clips:
        paths = [
            os.path.join(r, subfolder, clip, "mask.npy") for r in (run, other)
        ]
        if not all(os.path.isfile(p) for p in paths):
            raise FileNotFoundError(
                f"{paths[1]}: the randomised run has no mask for clip {clip} "
                "of the original run; both runs must test the same clips."
            )
        found[clip] = rank_correlation(*(np.load(p) for p in paths))
    return found
