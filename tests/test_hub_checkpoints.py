"""Every default config builds exactly what the hub files it names hold.

The hub cannot be reached from here, so each config's frozen models are
built from the YAML as a user's run builds them and compared with
``hub_checkpoints.yaml``, the record of the hub's listings: serialized size
within 3% of the listed size (the listing rounds to 3 digits; a different
head or width is off by far more: a Linear(2048, 50) head is 0.41 MB where
the hub file is 1.65 MB), parameter and buffer names and shapes equal to the
recorded architecture built on its own, and the front end (sample rate,
mel scale) the hub model was trained with.
"""

import glob
import io
import os

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml

from conftest import ROOT
from experiment import read_plain_yaml

with open(os.path.join(ROOT, "hub_checkpoints.yaml")) as f:
    HUB = load_hyperpyyaml(f)


def hub_files(path):
    """(loadable name, hub file) of every ``*_path`` key of the YAML at
    ``path`` whose default names a file of the record."""
    with open(path) as f:
        plain = read_plain_yaml(f)
    names = {
        "embedding_model_path": "embedding_model",
        "classifier_model_path": "classifier",
        "nmf_decoder_path": "nmf_decoder",
    }
    return [
        (name, plain[key])
        for key, name in names.items()
        if plain.get(key) in HUB
    ]


CONFIGS = [
    path
    for path in sorted(glob.glob(os.path.join(ROOT, "hparams", "*.yaml")))
    if hub_files(path)
]


def serialized_size(module):
    """Bytes of ``torch.save(module.state_dict())``, as a checkpoint file."""
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.tell()


def shapes(module):
    """name -> shape of every parameter and buffer in the state_dict."""
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_the_record_covers_every_hub_file_of_the_defaults():
    """Each hub file a default config names is in the record, and the
    record's sizes are plausible (a state_dict of the recorded architecture
    is within 3% of the listing: the record itself is consistent)."""
    named = {file for path in CONFIGS for _, file in hub_files(path)}
    assert named == set(HUB), set(HUB) ^ named
    for file, entry in HUB.items():
        if entry["size"] is not None:
            size = serialized_size(entry["architecture"]())
            assert size == pytest.approx(entry["size"], rel=0.03), file


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_default_config_builds_what_the_hub_holds(path, tmp_path):
    """The config's frozen models, as its run builds them, against the
    record: size, names and shapes, front end."""
    with open(path) as f:
        hparams = load_hyperpyyaml(
            f,
            {
                "data_folder": str(tmp_path),
                "output_folder": str(tmp_path / "out"),
            },
        )
    loadables = hparams["pretrainer"].loadables
    for name, file in hub_files(path):
        entry = HUB[file]
        module = loadables[name]
        where = f"{os.path.basename(path)}: {name} ({file})"
        if entry["size"] is not None:
            size = serialized_size(module)
            assert size == pytest.approx(entry["size"], rel=0.03), (
                f"{where}: {size / 1e6:.3f} MB serialized, the hub file is "
                f"{entry['size'] / 1e6:.3f} MB"
            )
        assert shapes(module) == shapes(entry["architecture"]()), where
        if "sample_rate" in entry:
            assert hparams["sample_rate"] == entry["sample_rate"], where
        if entry.get("mel") == "dB":  # Filterbank(log_mel=True), no log1p
            assert hparams["compute_fbank"].log_mel, where
            assert not hparams["backbone"].log1p, where
    del hparams, loadables
