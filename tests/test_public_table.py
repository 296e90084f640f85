"""The public recipe's own test table, run as written on the real sample clips.

SpeechBrain checks its ESC-50 interpretability recipe with one row per
configuration in ``tests/recipes/ESC50.csv``: a script, a YAML, debug flags
and the files the run must leave. Users arrive with these command lines, so
every row this recipe has a configuration for must pass unchanged: only the
data folder (a copy of ``tests/samples/ESC50``, so the repository stays
clean) and the output folder (a temporary one) are redirected. The rows run
the full-size default architectures with random weights (``--use_pretrained
0``), offline.
"""

import shutil

import pytest

from conftest import ROOT, run_script
from test_recipes import check_interpretations, check_test_metrics

# script, YAML, test_debug_flags (speechbrain tests/recipes/ESC50.csv)
ROW = "--data_folder tests/samples/ESC50 --debug"
RANDOM = "--use_pretrained 0"
PUBLIC_ROWS = [
    (
        "interpret_amt.py",
        "hparams/amt_focalnet.yaml",
        f"{RANDOM} --out_n_neurons 3",
    ),
    ("interpret_amt.py", "hparams/amt_vit.yaml", f"{RANDOM} --out_n_neurons 3"),
    ("train_l2i.py", "hparams/l2i_cnn14.yaml", f"{RANDOM} --out_n_neurons 3"),
    ("train_l2i.py", "hparams/l2i_conv2d.yaml", RANDOM),
    (
        "train_lmac.py",
        "hparams/lmac_cnn14.yaml",
        f"{RANDOM} --out_n_neurons 2 --number_of_epochs 2 --batch_size 2",
    ),
    ("train_nmf.py", "hparams/nmf.yaml", ""),
    (
        "train_piq.py",
        "hparams/piq.yaml",
        f"{RANDOM} --out_n_neurons 3 --number_of_epochs 1",
    ),
    (
        "train_piq.py",
        "hparams/piq_focalnet.yaml",
        f"{RANDOM} --out_n_neurons 2 --number_of_epochs 1 --K 1",
    ),
    (
        "train_piq.py",
        "hparams/piq_vit.yaml",
        f"{RANDOM} --out_n_neurons 2 --number_of_epochs 1 --K 1",
    ),
]
# The full-size rows but PIQ's and NMF's take 8-70 s each on 2 CPU cores:
# the slow tier (.ci/run runs it after the README's command).
SLOW = {
    "amt_focalnet",
    "amt_vit",
    "l2i_cnn14",
    "l2i_conv2d",
    "lmac_cnn14",
    "piq_focalnet",
    "piq_vit",
}


def row_id(row):
    """The row's YAML name, without .yaml."""
    return row[1].split("/")[-1][: -len(".yaml")]


# file_exists of every row: these and the script itself
FILES = "train_log.txt log.txt env.log hyperparams.yaml save/label_encoder.txt"


@pytest.mark.parametrize(
    "script,hparams_file,flags",
    [
        pytest.param(*row, marks=[pytest.mark.slow] * (row_id(row) in SLOW))
        for row in PUBLIC_ROWS
    ],
    ids=[row_id(row) for row in PUBLIC_ROWS],
)
def test_public_row_as_written(script, hparams_file, flags, tmp_path):
    """The row's flags, unchanged but for the data and output folders."""
    data = tmp_path / "ESC50"
    shutil.copytree(f"{ROOT}/tests/samples/ESC50", data)
    args = f"{ROW} {flags}".replace("tests/samples/ESC50", str(data)).split()
    out = tmp_path / "run"
    run_script(script, hparams_file, *args, "--output_folder", out)
    for name in FILES.split() + [script]:
        assert (out / name).is_file(), name
    if script == "train_nmf.py":
        assert (out / "nmf_decoder.ckpt").is_file()
        return
    # one test clip (fold 5), its metrics and its interpretation files
    check_test_metrics(out, n_clips=1)
    rate = 44100 if "cnn14" in hparams_file else 16000  # the hub's rates
    check_interpretations(out, n_clips=1, sample_rate=rate)
    # the figures were drawn without matplotlib's DEBUG records in the log
    assert " - matplotlib" not in (out / "log.txt").read_text()
