"""End-to-end runs of the recipe scripts on generated ESC-50-layout data.

Every interpreter goes through one contract (``METHODS``): train with
interpretations saved, evaluate with ``--test_only``, check every output file
and metric. Adding a method means adding a row to ``METHODS``.
"""

import json
import math
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
from hyperpyyaml import load_hyperpyyaml

from conftest import (
    N_CLASSES,
    ROOT,
    TINY,
    TINY_PIQ,
    classifier_args,
    replace_arg,
    run_piq,
    run_script,
)
from pretrained import strict_load

# (script, hparams file, tiny overrides, needs an NMF dictionary)
METHODS = [
    ("train_piq.py", "hparams/piq.yaml", TINY_PIQ, False),
    (
        "train_l2i.py",
        "hparams/l2i_conv2d.yaml",
        TINY + ["--out_n_neurons", N_CLASSES],
        True,
    ),
    (
        "train_lmac.py",
        "hparams/lmac_conv2d.yaml",
        TINY + ["--out_n_neurons", N_CLASSES],
        False,
    ),
]
# every metric of METHODS.md §5; each is a mean of per-clip values that lie
# in their range by definition, so only presence and finiteness are checked
METRIC_NAMES = (
    "accuracy",
    "fidelity_in",
    "faithfulness",
    "AI",
    "AD",
    "AG",
    "SPS",
    "COMP",
)
# written by speechbrain's experiment setup (train_log.txt and
# save/label_encoder.txt are read by the tests themselves)
RUN_FILES = ("log.txt", "env.log", "hyperparams.yaml")
N_TEST_CLIPS = 4  # fold 5 of the generated data


def check_test_metrics(folder, n_clips=N_TEST_CLIPS, name="test_metrics.json"):
    """test_metrics.json (or ``name``) has every metric, finite, and every
    clip counted once."""
    with open(os.path.join(folder, name)) as f:
        results = json.load(f)
    assert results["n_clips"] == n_clips
    for name in METRIC_NAMES:
        assert results[name] is not None and math.isfinite(results[name]), name
    return results


def check_interpretations(
    folder,
    n_clips=N_TEST_CLIPS,
    subfolder="interpretations",
    extra=(),
    sample_rate=16000,
):
    """Every test clip has its five files (and ``extra`` ones); clip.json
    names the clip and holds every metric; masks are float32 [431, 513] in
    [0, 1]; every wav is 5 s at ``sample_rate`` (Hz; 44100 for the CNN14
    configs) and finite."""
    clips = sorted(os.listdir(os.path.join(folder, subfolder)))
    assert len(clips) == n_clips
    expected = sorted(
        [
            "clip.json",
            "interpretation.wav",
            "mask.npy",
            "original.wav",
            "spectra.png",
            *extra,
        ]
    )
    for clip in clips:
        clip_folder = os.path.join(folder, subfolder, clip)
        assert sorted(os.listdir(clip_folder)) == expected
        with open(os.path.join(clip_folder, "clip.json")) as f:
            record = json.load(f)  # what the listening gallery shows
        assert record["id"] == clip and record["true_class"]
        assert set(METRIC_NAMES) <= set(record["metrics"])
        mask = np.load(os.path.join(clip_folder, "mask.npy"))
        assert mask.dtype == np.float32 and mask.shape == (431, 513)
        assert mask.min() >= 0 and mask.max() <= 1
        for name in [name for name in expected if name.endswith(".wav")]:
            audio, sr = sf.read(os.path.join(clip_folder, name))
            assert (
                sr == sample_rate
                and audio.shape == (5 * sample_rate,)
                and np.isfinite(audio).all()
            )


@pytest.mark.parametrize(
    "script,hparams_file,tiny,nmf", METHODS, ids=[m[1] for m in METHODS]
)
def test_method_contract(
    script,
    hparams_file,
    tiny,
    nmf,
    synthetic_data,
    trained_classifier,
    request,
    tmp_path,
):
    """Train (2 epochs) then --test_only: all outputs, metrics and interpretations."""
    out = tmp_path / "run"
    common = [
        "--data_folder",
        synthetic_data,
        "--output_folder",
        out,
        *classifier_args(trained_classifier),
        *tiny,
    ]
    if nmf:
        common += [
            "--nmf_decoder_path",
            request.getfixturevalue("trained_nmf") / "nmf_decoder.ckpt",
        ]
    run_script(
        script,
        hparams_file,
        *common,
        "--number_of_epochs",
        2,
        "--save_interpretations",
        False,
    )
    for name in RUN_FILES + (script,):
        assert (out / name).is_file(), name
    assert not (out / "interpretations").exists()
    train_log = (out / "train_log.txt").read_text()
    assert "epoch: 2" in train_log and "valid fidelity_in" in train_log
    trained = check_test_metrics(out)

    proc = run_script(
        script, hparams_file, *common, "--number_of_epochs", 2, "--test_only"
    )
    assert "Going into epoch" not in proc.stdout + proc.stderr
    check_interpretations(out)
    # --test_only loads the same best checkpoint: same numbers
    retested = check_test_metrics(out)
    for name in METRIC_NAMES:
        assert retested[name] == pytest.approx(trained[name], abs=1e-5), name
    # the classifier's own mapping is used and saved
    assert (out / "save" / "label_encoder.txt").read_text() == (
        trained_classifier / "label_encoder.txt"
    ).read_text()


def test_classifier_export(trained_classifier):
    """train_classifier.py leaves the files the interpreter configs load."""
    for name in (
        "embedding_model.ckpt",
        "classifier.ckpt",
        "label_encoder.txt",
    ):
        assert (trained_classifier / name).is_file(), name
    assert (
        "test error_rate" in (trained_classifier / "train_log.txt").read_text()
    )


def test_test_only_without_checkpoint_fails_clearly(
    synthetic_data, trained_classifier, tmp_path
):
    proc = run_script(
        "train_piq.py",
        "hparams/piq.yaml",
        "--data_folder",
        synthetic_data,
        "--output_folder",
        tmp_path / "empty",
        *classifier_args(trained_classifier),
        *TINY_PIQ,
        "--test_only",
        expect_ok=False,
    )
    assert "--test_only: no checkpoint" in proc.stdout + proc.stderr
    assert not (tmp_path / "empty" / "test_metrics.json").exists()


@pytest.mark.slow  # a second launch of a run
def test_resume_after_interrupted_training(
    synthetic_data, trained_classifier, tmp_path
):
    """A run stopped after epoch 1 resumes at epoch 2 instead of starting over."""
    common = [
        "--data_folder",
        synthetic_data,
        "--output_folder",
        tmp_path,
        *classifier_args(trained_classifier),
        *TINY_PIQ,
        "--save_interpretations",
        False,
    ]
    run_script(
        "train_piq.py", "hparams/piq.yaml", *common, "--number_of_epochs", 1
    )
    proc = run_script(
        "train_piq.py", "hparams/piq.yaml", *common, "--number_of_epochs", 2
    )
    log = proc.stdout + proc.stderr
    assert (
        "Loading a checkpoint" in log
        and "Going into epoch 2" in log
        and "Going into epoch 1" not in log
    )
    train_log = (tmp_path / "train_log.txt").read_text()
    assert (
        train_log.count("epoch: 1,") == 1 and train_log.count("epoch: 2,") == 1
    )


@pytest.mark.slow  # precision options: the GPU tier runs them too
def test_bf16_and_channels_last_off(
    synthetic_data, trained_classifier, tmp_path
):
    """SpeechBrain's bf16 autocast goes through the whole step, metrics included."""
    run_piq(
        synthetic_data,
        tmp_path,
        *classifier_args(trained_classifier),
        "--number_of_epochs",
        1,
        "--precision",
        "bf16",
        "--eval_precision",
        "bf16",
        "--force_precision",  # bf16 even where the CPU emulates it
        True,
        "--channels_last",
        False,
    )
    bf16 = check_test_metrics(tmp_path)
    check_interpretations(tmp_path)
    # the same checkpoint evaluated in fp32: the metrics agree within bf16's resolution
    # (AI may flip one of the 4 clips when p_in_c and p_c are within rounding)
    run_piq(
        synthetic_data,
        tmp_path,
        *classifier_args(trained_classifier),
        "--number_of_epochs",
        1,
        "--test_only",
        "--eval_precision",
        "fp32",
        "--channels_last",
        False,
        "--save_interpretations",
        False,
    )
    fp32 = check_test_metrics(tmp_path)
    tolerance = {
        "faithfulness": 1e-3,
        "AI": 25.0,
        "AD": 1.0,
        "AG": 1.0,
        "SPS": 1e-3,
        "COMP": 1e-2,
        "accuracy": 0,
    }
    for name, tol in tolerance.items():
        assert abs(bf16[name] - fp32[name]) <= tol, (
            name,
            bf16[name],
            fp32[name],
        )


def test_wrong_checkpoint_fails_loudly(
    synthetic_data, trained_classifier, tmp_path
):
    """A checkpoint that does not fit the architecture is an error, not random weights."""
    proc = run_script(
        "train_piq.py",
        "hparams/piq.yaml",
        "--data_folder",
        synthetic_data,
        "--output_folder",
        tmp_path,
        *classifier_args(trained_classifier),
        *replace_arg(TINY_PIQ, "emb_dim", 24),
        expect_ok=False,
    )
    log = proc.stdout + proc.stderr
    assert "does not match" in log and "embedding_model.ckpt" in log


def test_bad_folds_fail_before_training(synthetic_data, tmp_path):
    proc = run_script(
        "train_piq.py",
        "hparams/piq.yaml",
        "--data_folder",
        synthetic_data,
        "--output_folder",
        tmp_path,
        "--use_pretrained",
        False,
        *TINY_PIQ,
        "--valid_fold_nums",
        "[3]",
        expect_ok=False,
    )
    log = proc.stdout + proc.stderr
    assert (
        "ValueError" in log
        and "valid_fold_nums=[3]" in log
        and "share folds [3]" in log
    )


def test_hub_code_path_from_local_cache(
    synthetic_data, trained_classifier, tmp_path
):
    """piq.yaml's default hub id, resolved by huggingface_hub from a cache laid
    out as huggingface_hub writes it, offline."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--speechbrain--PIQ-ESC50"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    shutil.copy(
        trained_classifier / "embedding_model.ckpt",
        snapshot / "embedding_modelft.ckpt",
    )
    shutil.copy(
        trained_classifier / "classifier.ckpt", snapshot / "classifier.ckpt"
    )
    out = tmp_path / "run"
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    proc = run_piq(
        synthetic_data,
        out,
        "--number_of_epochs",
        1,
        "--save_interpretations",
        False,
        # a 3-class stand-in for the hub's 50-class classifier: its classes
        "--classifier_labels",
        trained_classifier / "label_encoder.txt",
        env=env,
    )
    collected = out / "save" / "pretrained" / "embedding_model.ckpt"
    assert os.path.realpath(collected).startswith(str(snapshot))
    log = proc.stdout + proc.stderr
    source = log.split("Classifier label mapping: 3 classes (")[1].split(")")[0]
    assert source == str(trained_classifier / "label_encoder.txt")
    check_test_metrics(out)


@pytest.mark.slow
def test_cnn14_classifier_then_l2i(synthetic_data, tmp_path):
    """classifier_cnn14.yaml writes checkpoints that l2i_cnn14.yaml loads
    unchanged (strictly; the L2I run itself is a row of
    test_public_table.py)."""
    run_script(
        "train_classifier.py",
        "hparams/classifier_cnn14.yaml",
        "--device",
        "cpu",
        "--noprogressbar",
        "--debug",
        "--debug_epochs",
        1,
        "--batch_size",
        2,
        "--out_n_neurons",
        3,
        "--data_folder",
        synthetic_data,
        "--output_folder",
        tmp_path / "cls",
    )
    overrides = {
        "data_folder": str(synthetic_data),
        "output_folder": str(tmp_path / "l2i"),
        "out_n_neurons": 3,
    }
    with open(os.path.join(ROOT, "hparams", "l2i_cnn14.yaml")) as f:
        hparams = load_hyperpyyaml(f, overrides)
    for name in ("embedding_model", "classifier"):
        strict_load(hparams[name], tmp_path / "cls" / f"{name}.ckpt")


@pytest.mark.parametrize(
    "native,force,expected",
    [(False, False, "fp32"), (False, True, "bf16"), (True, False, "bf16")],
)
def test_bf16_on_a_cpu_without_native_bf16(
    native, force, expected, monkeypatch, caplog
):
    """--precision bf16 on a CPU whose oneDNN reports no native bf16: a
    warning naming the capability and fp32, unless force_precision."""
    import speechbrain as sb
    import torch

    import experiment

    monkeypatch.setattr(
        torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native
    )
    argv = ["hparams/piq.yaml", "--device", "cpu", "--precision", "bf16"]
    _, run_opts, _ = sb.parse_arguments(argv + ["--eval_precision", "bf16"])
    with caplog.at_level("WARNING"):
        used = experiment.fit_precision(run_opts, {"force_precision": force})
    assert used.precision == used.eval_precision == expected
    warned = "this CPU has no native bf16 (torch CPU capability" in caplog.text
    assert warned == (expected == "fp32")
