"""Shared fixtures: tiny generated ESC-50-layout data and a trained classifier.

Everything runs the real scripts as subprocesses, the way a user runs them.
"""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import synthetic_esc50  # noqa: E402

N_CLASSES = 3
# Shrunk architecture so that every end-to-end run takes seconds on 2 CPU cores.
TINY = [
    "--emb_dim",
    "16",
    "--batch_size",
    "4",
    "--device",
    "cpu",
    "--noprogressbar",
]
TINY_PIQ = TINY + ["--K", "48", "--out_n_neurons", str(N_CLASSES)]


def tiered(cases, default):
    """``sorted(cases)`` as pytest parameters: those named in ``default`` run
    in the README's test command, the others in the slow tier (each is a
    script run to its error, ~3 s on 2 cores; the default keeps one of each
    kind, .ci/run runs them all)."""
    unknown = set(default) - set(cases)
    assert not unknown, unknown
    return [
        pytest.param(case, marks=[pytest.mark.slow] * (case not in default))
        for case in sorted(cases)
    ]


def run_script(
    script, hparams_file, *args, env=None, expect_ok=True, launcher=None
):
    """Runs ``python <script> <hparams_file> <args>`` from the recipe folder.

    Returns the CompletedProcess; fails the test with the output when the exit
    status is not the expected one."""
    command = (
        (launcher or [sys.executable])
        + [script, str(hparams_file)]
        + [str(a) for a in args]
    )
    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.run(
        command,
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if (proc.returncode == 0) != expect_ok:
        pytest.fail(
            f"{' '.join(command)} exited {proc.returncode}\n"
            f"{proc.stdout[-5000:]}\n{proc.stderr[-8000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    """Generated data in ESC-50 layout: 3 classes, 4 clips per fold."""
    folder = tmp_path_factory.mktemp("synthetic_esc50")
    synthetic_esc50.generate(str(folder), n_classes=N_CLASSES, clips_per_fold=4)
    return folder


@pytest.fixture(scope="session")
def trained_classifier(synthetic_data, tmp_path_factory):
    """A tiny conv2d classifier trained by train_classifier.py; returns its
    output folder (embedding_model.ckpt, classifier.ckpt, label_encoder.txt)."""
    out = tmp_path_factory.mktemp("classifier")
    run_script(
        "train_classifier.py",
        "hparams/classifier_conv2d.yaml",
        "--data_folder",
        synthetic_data,
        "--output_folder",
        out,
        "--out_n_neurons",
        N_CLASSES,
        "--number_of_epochs",
        2,
        *TINY,
    )
    return out


def run_piq(data, out, *args, **kwargs):
    """``train_piq.py hparams/piq.yaml`` on ``data`` into ``out``, tiny
    sizes, then ``args`` (``run_script``'s keywords pass through)."""
    return run_script(
        "train_piq.py",
        "hparams/piq.yaml",
        "--data_folder",
        data,
        "--output_folder",
        out,
        *TINY_PIQ,
        *args,
        **kwargs,
    )


def run_nmf(data, out, *args, **kwargs):
    """``train_nmf.py hparams/nmf.yaml`` on ``data`` into ``out``, small
    batches on the CPU, then ``args``."""
    return run_script(
        "train_nmf.py",
        "hparams/nmf.yaml",
        "--data_folder",
        data,
        "--output_folder",
        out,
        "--batch_size",
        4,
        "--device",
        "cpu",
        "--noprogressbar",
        *args,
        **kwargs,
    )


def classifier_args(folder):
    """Command-line overrides pointing an interpreter at a trained classifier."""
    return [
        "--embedding_model_path",
        os.path.join(folder, "embedding_model.ckpt"),
        "--classifier_model_path",
        os.path.join(folder, "classifier.ckpt"),
    ]


def tiny_piq_argv(data, classifier, out, *extra):
    """argv of a tiny piq.yaml run on ``data`` with the trained ``classifier``,
    written to ``out``, then ``extra`` (all as strings)."""
    return [
        os.path.join(ROOT, "hparams", "piq.yaml"),
        "--data_folder",
        str(data),
        "--output_folder",
        str(out),
        *classifier_args(classifier),
        *TINY_PIQ,
        *map(str, extra),
    ]


def replace_arg(args, key, value):
    """``args`` with the value of ``--key`` replaced (no duplicate keys)."""
    args = list(args)
    args[args.index(f"--{key}") + 1] = str(value)
    return args


@pytest.fixture(scope="session")
def trained_nmf(synthetic_data, tmp_path_factory):
    """An NMF dictionary trained by train_nmf.py; returns its output folder."""
    out = tmp_path_factory.mktemp("nmf")
    run_nmf(synthetic_data, out, "--number_of_epochs", 1)
    return out


@pytest.fixture(scope="session")
def wham_folder(tmp_path_factory):
    """A small WHAM!-layout noise folder (tr/*.wav at 8 kHz) for contamination."""
    import numpy as np
    import soundfile as sf

    folder = tmp_path_factory.mktemp("wham_noise")
    (folder / "tr").mkdir()
    rng = np.random.default_rng(0)
    for i, seconds in enumerate((3, 6)):
        sf.write(
            folder / "tr" / f"noise{i}.wav",
            0.1 * rng.standard_normal(8000 * seconds),
            8000,
        )
    return folder


@pytest.fixture(scope="session")
def trained_l2i(
    synthetic_data,
    trained_classifier,
    trained_nmf,
    wham_folder,
    tmp_path_factory,
):
    """An L2I run trained on WHAM!-contaminated batches (add_wham_noise); returns
    (output folder, the command-line arguments that reproduce its config)."""
    out = tmp_path_factory.mktemp("l2i")
    args = [
        "--data_folder",
        synthetic_data,
        "--output_folder",
        out,
        *classifier_args(trained_classifier),
        "--nmf_decoder_path",
        trained_nmf / "nmf_decoder.ckpt",
        "--wham_folder",
        wham_folder,
        *TINY,
        "--out_n_neurons",
        N_CLASSES,
        "--number_of_epochs",
        1,
    ]
    run_script(
        "train_l2i.py",
        "hparams/l2i_conv2d.yaml",
        *args,
        "--add_wham_noise",
        True,
    )
    return out, args
