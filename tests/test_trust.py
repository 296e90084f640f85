"""Can the recipe's numbers be trusted? Checks that fail when they are wrong.

* the PIQ and L2I losses against arithmetic written out by hand;
* the metrics through the brain's own accumulation, with a mask whose
  values are known (M = 1), and a NaN metric that must stop the run;
* the checkpoint tested is the best on validation loss, not the last, and
  a --debug run keeps one checkpoint on disk at a time;
* torchrun with 2 CPU processes: every clip evaluated once, for every method;
* WHAM! noise really reaches the training batches (and only them);
* ``train_nmf.py --test_only`` re-tests without training;
* the exported checkpoints load strictly into the interpreter configs.
"""

import glob
import json
import math
import os
import re
import shutil
import sys

import numpy as np
import pytest
import soundfile as sf
import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.utils.checkpoints import Checkpointer

import metrics
from conftest import (
    N_CLASSES,
    ROOT,
    TINY,
    TINY_PIQ,
    classifier_args,
    run_nmf,
    run_script,
    tiny_piq_argv,
)
from experiment import (
    make_brain,
    make_datasets,
    prepare_manifests,
    run_interpreter,
    setup_experiment,
)
from front_end import log_spectrogram
from interpreter_brain import Interpretation, InterpreterBrain
from pretrained import load_classifier, strict_load
from test_hf_backbones import QUICK, TINY_ARCH, load_yaml
from test_recipes import check_interpretations, check_test_metrics
from train_l2i import l2i_loss
from train_piq import PIQBrain, piq_loss

# --------------------------------------------------------------------------
# Losses against hand arithmetic


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_piq_loss_matches_hand_arithmetic():
    """coef * BCE(logits, X > 0.35 max X per clip) + 2 * mean((z_q - h)^2),
    with the stop-gradients on the right side of each VQ term."""
    # two clips of 2 x 3 bins; the second is ten times quieter, so a global
    # (not per-clip) maximum would give it an all-zero target
    X = [
        [[0.0, 1.0, 2.0], [4.0, 1.5, 3.0]],
        [[0.1, 0.4, 0.05], [0.2, 0.3, 0.0]],
    ]
    # thresholds 0.35 * 4 = 1.4 and 0.35 * 0.4 = 0.14
    target = [
        [[0, 0, 1], [1, 1, 1]],
        [[0, 1, 0], [1, 1, 0]],
    ]
    logits = [
        [[0.5, -1.0, 2.0], [0.0, 1.0, -0.5]],
        [[-2.0, 0.3, 1.0], [0.7, -0.2, 0.1]],
    ]
    h = [[1.0, -2.0], [0.5, 3.0]]
    z_q = [[0.0, -1.0], [2.5, 3.0]]
    coef = 2.0

    bce_terms = []
    for b in range(2):
        for t in range(2):
            for f in range(3):
                s, y = sigmoid(logits[b][t][f]), target[b][t][f]
                bce_terms.append(-(y * math.log(s) + (1 - y) * math.log(1 - s)))
    bce = sum(bce_terms) / 12
    # z_q - h = [-1, 1, 2, 0]: mean square 6 / 4 = 1.5, once per VQ term
    expected = coef * bce + 1.5 + 1.5

    h_t = torch.tensor(h, requires_grad=True)
    z_t = torch.tensor(z_q, requires_grad=True)
    logits_t = torch.tensor(logits, requires_grad=True)
    loss = piq_loss(logits_t, torch.tensor(X), h_t, z_t, 0.35, coef)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # each VQ term moves one side only: d/dz_q = 2 (z_q - h) / 4 from the
    # codebook term, d/dh = 2 (h - z_q) / 4 from the commitment term (twice
    # these without the stop-gradients)
    assert z_t.grad.flatten().tolist() == pytest.approx([-0.5, 0.5, 1.0, 0])
    assert h_t.grad.flatten().tolist() == pytest.approx([0.5, -0.5, -1.0, 0])
    expected_grad = [
        coef * (sigmoid(logits[b][t][f]) - target[b][t][f]) / 12
        for b in range(2)
        for t in range(2)
        for f in range(3)
    ]
    assert logits_t.grad.flatten().tolist() == pytest.approx(expected_grad)


def test_l2i_loss_matches_hand_arithmetic():
    """alpha mean((X_hat - X)^2) + beta mean|H|
    - 1 / (B C) sum_{b,c} softmax(logits / tau) log(theta + 1e-10)."""
    X = [[[1.0, 0.0, 2.0], [0.5, 0.5, 1.0]], [[0.0, 0.0, 3.0], [1.0, 2.0, 0.0]]]
    X_hat = [
        [[0.5, 0.0, 2.0], [0.5, 1.5, 1.0]],
        [[0.0, 1.0, 1.0], [1.0, 2.0, 0.5]],
    ]
    H = [[[0.5, -1.0], [2.0, 0.0]], [[-0.5, 1.5], [0.0, 3.0]]]
    logits = [[2.0, 0.0, -1.0, 1.0], [0.0, 0.0, 0.0, 4.0]]
    theta = [[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]]
    alpha, beta, tau = 10.0, 0.8, 2.0
    B, C = 2, 4

    # squares: 0.25 + 0 + 0 + 0 + 1 + 0 + 0 + 1 + 4 + 0 + 0 + 0.25 = 6.5
    reconstruction = 6.5 / 12
    sparsity = (0.5 + 1 + 2 + 0 + 0.5 + 1.5 + 0 + 3) / 8
    fidelity = 0.0
    for b in range(B):
        exps = [math.exp(v / tau) for v in logits[b]]
        for c in range(C):
            q = exps[c] / sum(exps)
            fidelity -= q * math.log(theta[b][c] + 1e-10)
    fidelity /= B * C
    expected = alpha * reconstruction + beta * sparsity + fidelity

    loss = l2i_loss(
        torch.tensor(X),
        torch.tensor(X_hat),
        torch.tensor(H),
        torch.tensor(logits),
        torch.tensor(theta),
        alpha,
        beta,
        tau,
    )
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("n_classes", [2, 5, 50])
def test_l2i_fidelity_term_is_a_mean_over_clips_and_classes(n_classes):
    """Perfect reconstruction, H = 0, uniform Theta: the loss is the fidelity
    term alone, -(1 / (B C)) sum_b sum_c q log(1 / C) = log(C) / C whatever
    the targets q; a sum over the classes would give log(C), C times more."""
    B, T, F, K = 3, 2, 3, 4
    X = torch.rand(B, T, F)
    loss = l2i_loss(
        X,
        X.clone(),
        torch.zeros(B, K, T),
        torch.randn(B, n_classes),
        torch.full((B, n_classes), 1.0 / n_classes),
        alpha=10.0,
        beta=0.8,
        tau=1.0,
    )
    assert loss.item() == pytest.approx(
        math.log(n_classes) / n_classes, rel=1e-5
    )
    assert loss.item() * n_classes == pytest.approx(math.log(n_classes))


# --------------------------------------------------------------------------
# Metrics through the brain, with a known mask


class FullMaskBrain(InterpreterBrain):
    """M = 1 everywhere: X_in = X and X_out = 0. Nothing to train."""

    def interpret(self, X, stft, hidden, logits, stage):
        return Interpretation(
            X=X, stft=stft, logits=logits, mask=torch.ones_like(X)
        )

    def interpreter_loss(self, result, batch, stage):
        return torch.zeros((), device=result.X.device)


class NaNMaskBrain(FullMaskBrain):
    """M = 1, except NaN for the clip ``bad_clip``."""

    bad_clip = None

    def compute_forward(self, batch, stage):
        result = super().compute_forward(batch, stage)
        for i, clip in enumerate(batch.id):
            if clip == self.bad_clip:
                result.mask[i] = float("nan")
        return result


@pytest.fixture(scope="module")
def piq_setup(synthetic_data, trained_classifier, tmp_path_factory):
    """piq.yaml with the tiny trained classifier, set up in this process
    as train_piq.py does: (hparams, run_opts, datasets, output folder)."""
    out = tmp_path_factory.mktemp("full_mask")
    hparams, run_opts = setup_experiment(
        [
            os.path.join(ROOT, "hparams", "piq.yaml"),
            "--data_folder",
            str(synthetic_data),
            "--output_folder",
            str(out),
            *classifier_args(trained_classifier),
            *TINY_PIQ,
        ]
    )
    prepare_manifests(hparams)
    datasets = make_datasets(hparams, load_classifier(hparams))
    return hparams, run_opts, datasets, out


def softmax(logits):
    e = np.exp(logits - logits.max())
    return e / e.sum()


def test_full_mask_metrics_and_audio(piq_setup, trained_classifier):
    """M = 1: fidelity_in 1, AI = AD = AG = 0, FF = mean(p_c - p_out_c) with
    p_out the classifier on the all-zero input, SPS 0, COMP log(T F),
    accuracy as train_classifier.py tested it; interpretation.wav is
    original.wav (the clip as loaded) within the ISTFT's error."""
    hparams, run_opts, datasets, out = piq_setup
    brain = FullMaskBrain(hparams=hparams, run_opts=run_opts)
    brain.evaluate(
        datasets["test"],
        test_loader_kwargs=dict(hparams["test_dataloader_opts"]),
    )
    results = json.loads((out / "test_metrics.json").read_text())

    # by hand, one clip at a time
    backbone = hparams["backbone"]
    test = datasets["test"]
    ff, correct, clips = [], [], {}
    with torch.no_grad():
        for i in range(len(test)):
            item = test[i]
            clips[item["id"]] = item["sig"].numpy()
            X, _ = log_spectrogram(hparams["compute_stft"], item["sig"][None])
            p = softmax(backbone(X)[1][0].double().numpy())
            p_out = softmax(
                backbone(torch.zeros_like(X))[1][0].double().numpy()
            )
            c = int(p.argmax())
            ff.append(p[c] - p_out[c])
            correct.append(c == int(item["label_encoded"]))
    T, F = X.shape[1:]
    assert results["n_clips"] == len(test) == 4
    assert results["n_empty_masks"] == 0
    assert results["fidelity_in"] == 1.0
    assert results["AI"] == results["AD"] == results["AG"] == 0.0
    assert abs(np.mean(ff)) > 1e-4  # p_out differs from p: FF is not 0
    assert results["faithfulness"] == pytest.approx(np.mean(ff), abs=1e-6)
    assert results["SPS"] == pytest.approx(0.0, abs=1e-9)
    assert results["COMP"] == pytest.approx(math.log(T * F), rel=1e-9)
    assert results["accuracy"] == pytest.approx(np.mean(correct))
    # the same classifier, front end and label mapping as its own test
    tested = re.search(
        r"test error_rate: (\S+)",
        (trained_classifier / "train_log.txt").read_text(),
    )
    assert results["accuracy"] == pytest.approx(
        1 - float(tested.group(1)), abs=1e-3
    )

    # ISTFT(expm1(1 * X) with the input's phase) = the input: measured
    # error about 3e-7 over the whole 5 s (float wav files, no edge effect)
    assert sorted(os.listdir(out / "interpretations")) == sorted(clips)
    for clip, loaded in clips.items():
        original, sr = sf.read(out / "interpretations" / clip / "original.wav")
        interpretation, _ = sf.read(
            out / "interpretations" / clip / "interpretation.wav"
        )
        assert sr == 16000 and np.abs(original).max() > 0.5
        assert np.abs(original - loaded).max() < 1e-7
        assert np.abs(interpretation - original).max() < 1e-5, clip


def test_nan_metric_names_the_clip():
    """batch_sums refuses a NaN or infinite figure and names the clip(s);
    NaN SPS/COMP (empty masks) are left out of their sums instead."""
    ids = ["clip_a", "clip_b", "clip_c"]
    values = {
        "accuracy": torch.tensor([1.0, 0.0, 1.0]),
        "AD": torch.tensor([0.0, float("nan"), 5.0]),
        "SPS": torch.tensor([0.5, float("nan"), 0.25]),
    }
    with pytest.raises(ValueError, match=r"AD is nan .*\['clip_b'\]"):
        metrics.batch_sums(values, ids)
    values["AD"] = torch.tensor([float("inf"), 1.0, float("-inf")])
    with pytest.raises(ValueError, match=r"\['clip_a', 'clip_c'\]"):
        metrics.batch_sums(values, ids)
    values["AD"] = torch.tensor([0.0, 1.0, 5.0])
    sums = metrics.batch_sums(values, ids)
    assert sums["SPS"].item() == 0.75 and sums["AD"].item() == 6.0
    assert sums["n_clips"].item() == 3 and sums["n_defined_masks"].item() == 2


def test_nan_metric_through_the_brain_names_the_clip(piq_setup):
    """A NaN mask for one clip: the test stage stops with an error naming
    that clip only, and writes no metrics."""
    hparams, run_opts, datasets, out = piq_setup
    ids = [datasets["test"][i]["id"] for i in range(len(datasets["test"]))]
    # nothing saved: the error must come from the metrics, not the plots
    brain = NaNMaskBrain(
        hparams={**hparams, "save_interpretations": False}, run_opts=run_opts
    )
    brain.bad_clip = ids[2]
    metrics_file = out / "test_metrics.json"
    if metrics_file.exists():
        metrics_file.unlink()
    with pytest.raises(ValueError, match=re.escape(ids[2])) as error:
        brain.evaluate(
            datasets["test"],
            test_loader_kwargs=dict(hparams["test_dataloader_opts"]),
        )
    assert not any(clip in str(error.value) for clip in ids if clip != ids[2])
    assert not metrics_file.exists()


# --------------------------------------------------------------------------
# WHAM! noise in training


def test_wham_noise_reaches_the_training_batches_only(piq_setup, wham_folder):
    """add_wham_noise: the training waveforms are the clips mixed with noise
    at 0 dB (correlation with the clean clip about 1/sqrt(2), peak 1);
    validation and test batches, and every batch without the key, are the
    clips as loaded."""
    hparams, run_opts, datasets, _ = piq_setup
    train = datasets["train"]
    batch = PaddedBatch([train[i] for i in range(4)])
    clean = batch.sig.data
    noisy_brain = FullMaskBrain(
        hparams={
            **hparams,
            "add_wham_noise": True,
            "wham_folder": str(wham_folder),
        },
        run_opts=run_opts,
    )
    noisy = noisy_brain.input_wavs(batch, sb.Stage.TRAIN)
    assert noisy.shape == clean.shape and torch.isfinite(noisy).all()
    for x, y in zip(clean.double(), noisy.double()):
        corr = (x @ y / (x.norm() * y.norm())).item()
        assert 0.6 < corr < 0.8, corr
        assert y.abs().max().item() == pytest.approx(1.0, abs=1e-4)
    # what the brain trains on
    result = noisy_brain.compute_forward(batch, sb.Stage.TRAIN)
    assert not torch.allclose(result.wav, clean, atol=1e-2)
    X_clean, _ = log_spectrogram(hparams["compute_stft"], clean)
    assert not torch.allclose(result.X, X_clean, atol=1e-2)
    for stage in (sb.Stage.VALID, sb.Stage.TEST):
        assert torch.equal(noisy_brain.input_wavs(batch, stage), clean)

    assert hparams["add_wham_noise"] is False  # piq.yaml's default
    clean_brain = FullMaskBrain(hparams=hparams, run_opts=run_opts)
    assert torch.equal(clean_brain.input_wavs(batch, sb.Stage.TRAIN), clean)
    result = clean_brain.compute_forward(batch, sb.Stage.TRAIN)
    assert torch.equal(result.wav, clean)


# --------------------------------------------------------------------------
# The tested checkpoint is the best on validation loss

FORCED_VALID_LOSS = {1: 3.0, 2: 1.0, 3: 2.0}  # best at epoch 2, not the last


class ForcedValidLossPIQ(PIQBrain):
    """PIQ trained as usual, with the validation loss of epoch e forced to
    FORCED_VALID_LOSS[e]."""

    def interpreter_loss(self, result, batch, stage):
        loss = super().interpreter_loss(result, batch, stage)
        if stage == sb.Stage.VALID:
            epoch = self.hparams.epoch_counter.current
            return torch.tensor(FORCED_VALID_LOSS[epoch])
        return loss


def psi_weights_equal(module, path):
    stored = torch.load(path, map_location="cpu", weights_only=True)
    state = module.state_dict()
    assert state.keys() == stored.keys()
    return all(torch.equal(state[k].cpu(), stored[k]) for k in state)


def test_best_validation_checkpoint_is_tested(
    synthetic_data, trained_classifier, tmp_path
):
    """3 epochs with validation losses 3, 1, 2: the test stage and a later
    --test_only both load the epoch-2 checkpoint (stored meta loss 1.0)."""
    out = tmp_path / "run"
    argv = tiny_piq_argv(
        synthetic_data,
        trained_classifier,
        out,
        "--number_of_epochs",
        3,
        "--save_interpretations",
        False,
    )
    brain = run_interpreter(ForcedValidLossPIQ, argv)
    train_log = (out / "train_log.txt").read_text()
    for epoch, loss in FORCED_VALID_LOSS.items():
        line = re.search(
            rf"^epoch: {epoch},.* valid loss: (\S+),", train_log, re.M
        )
        assert float(line.group(1)) == pytest.approx(loss)
    checkpoints = Checkpointer(out / "save").list_checkpoints()
    best = min(checkpoints, key=lambda ckpt: ckpt.meta["loss"])
    last = max(checkpoints, key=lambda ckpt: ckpt.meta["unixtime"])
    assert best.meta["loss"] == 1.0 and type(best.meta["loss"]) is float
    assert last.meta["loss"] == 2.0
    assert re.findall(r"^Epoch loaded: (\d+) - test", train_log, re.M) == ["2"]
    psi = brain.modules.psi
    assert psi_weights_equal(psi, best.paramfiles["psi"])
    assert not psi_weights_equal(psi, last.paramfiles["psi"])
    tested = json.loads((out / "test_metrics.json").read_text())

    retest = run_interpreter(ForcedValidLossPIQ, argv + ["--test_only"])
    new_lines = (out / "train_log.txt").read_text()[len(train_log) :]
    assert len(new_lines.splitlines()) == 1
    assert new_lines.startswith("Epoch loaded: 2 - test")
    assert psi_weights_equal(retest.modules.psi, best.paramfiles["psi"])
    retested = json.loads((out / "test_metrics.json").read_text())
    # the same process and threads reload the same weights: only float
    # rounding may differ (curves are off: their keys are absent)
    for name in [n for n in metrics.HIGHER_IS_BETTER if n in tested]:
        assert retested[name] == pytest.approx(
            tested[name], rel=1e-6, abs=1e-9
        ), name


def test_debug_run_keeps_one_checkpoint_at_a_time(
    synthetic_data, trained_classifier, tmp_path, monkeypatch
):
    """--debug checkpoints into a temporary folder deleted at exit: with
    validation losses 3, 1, 2 only epochs 1 and 2 are written, each into an
    empty folder, and the test stage loads epoch 2 (the best), as without
    --debug."""
    on_disk_before_write = []
    save = Checkpointer.save_checkpoint

    def counting_save(self, *args, **kwargs):
        on_disk_before_write.append(len(self.list_checkpoints()))
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Checkpointer, "save_checkpoint", counting_save)
    out = tmp_path / "run"
    argv = tiny_piq_argv(
        synthetic_data,
        trained_classifier,
        out,
        "--debug",
        "--debug_epochs",
        3,
        "--save_interpretations",
        False,
    )
    brain = run_interpreter(ForcedValidLossPIQ, argv)
    assert brain.checkpointer.tempdir is not None
    assert not (out / "save" / "CKPT.yaml").exists()
    assert on_disk_before_write == [0, 0]
    (kept,) = brain.checkpointer.list_checkpoints()
    assert kept.meta["loss"] == 1.0
    assert psi_weights_equal(brain.modules.psi, kept.paramfiles["psi"])
    train_log = (out / "train_log.txt").read_text()
    assert len(re.findall(r"^epoch: \d+,", train_log, re.M)) == 3
    assert re.findall(r"^Epoch loaded: (\d+) - test", train_log, re.M) == ["2"]


# --------------------------------------------------------------------------
# torchrun, 2 CPU processes, every method

DDP_LAUNCHER = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--standalone",
    "--nproc_per_node=2",
]
# method -> (script, hparams file, tiny overrides)
DDP_METHODS = {
    "piq": ("train_piq.py", "hparams/piq.yaml", TINY_PIQ),
    "l2i": (
        "train_l2i.py",
        "hparams/l2i_conv2d.yaml",
        TINY + ["--out_n_neurons", N_CLASSES],
    ),
    # random ViT weights: what is checked is the split across processes
    "amt": (
        "interpret_amt.py",
        "hparams/amt_vit.yaml",
        QUICK + TINY_ARCH["vit"] + ["--use_pretrained", False],
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("method", DDP_METHODS)
def test_ddp_two_cpu_processes(
    method, synthetic_data, trained_classifier, request, tmp_path
):
    """torchrun with 2 gloo processes: validation and test clips each
    evaluated once (n_clips = the manifest's clip count), one log line per
    stage, one metrics file, one folder per test clip."""
    script, hparams_file, tiny = DDP_METHODS[method]
    out = tmp_path / "ddp"
    args = ["--data_folder", synthetic_data, *tiny]
    if method != "amt":
        args += [*classifier_args(trained_classifier), "--number_of_epochs", 1]
    if method == "l2i":
        nmf = request.getfixturevalue("trained_nmf")
        args += ["--nmf_decoder_path", nmf / "nmf_decoder.ckpt"]
    run_script(
        script,
        hparams_file,
        *args,
        "--output_folder",
        out,
        "--distributed_backend",
        "gloo",
        launcher=DDP_LAUNCHER,
        env={"OMP_NUM_THREADS": "1"},
    )
    n_test = len(json.loads((out / "save" / "test.json").read_text()))
    n_valid = len(json.loads((out / "save" / "valid.json").read_text()))
    results = check_test_metrics(out, n_clips=n_test)
    check_interpretations(out, n_clips=n_test)
    assert [os.path.basename(p) for p in glob.glob(f"{out}/test_metrics*")] == [
        "test_metrics.json"
    ]
    log = (out / "train_log.txt").read_text().splitlines()
    valid = [line for line in log if " - valid " in line]
    test = [line for line in log if " - test " in line]
    assert len(valid) == 1 and f"valid n_clips: {n_valid}," in valid[0]
    assert len(test) == 1 and f"test n_clips: {n_test}," in test[0]
    if method == "amt":  # nothing trained: the same numbers as 1 process
        single = tmp_path / "single"
        run_script(
            script,
            hparams_file,
            *args,
            "--output_folder",
            single,
            "--test_only",
            "--save_interpretations",
            False,
        )
        alone = check_test_metrics(single, n_clips=n_test)
        # 2 gloo processes of 1 thread against 1 process of 2 threads: the
        # float32 sums run in another order (measured on an AMD EPYC: AD
        # 2.7041544 vs 2.7041525, 7e-7 relative). rel 1e-4 covers any CPU,
        # while a clip counted twice or missed moves a mean over 4 clips by
        # 25%; the integer-valued metrics are compared exactly by it too.
        for name in [n for n in metrics.HIGHER_IS_BETTER if n in alone]:
            assert results[name] == pytest.approx(
                alone[name], rel=1e-4, abs=1e-9
            ), name


# --------------------------------------------------------------------------
# NMF --test_only


def test_nmf_test_only_retests_without_training(
    synthetic_data, trained_nmf, tmp_path
):
    """On a finished 1-epoch run, --test_only with 2 epochs asked for: the
    best checkpoint is re-tested (same reconstruction error, test_metrics.json
    rewritten) and no epoch is trained."""
    out = tmp_path / "nmf"
    shutil.copytree(trained_nmf, out)
    before = json.loads((out / "test_metrics.json").read_text())
    train_log = (out / "train_log.txt").read_text()
    checkpoints = sorted(os.listdir(out / "save"))
    (out / "test_metrics.json").unlink()
    proc = run_nmf(synthetic_data, out, "--number_of_epochs", 2, "--test_only")
    after = json.loads((out / "test_metrics.json").read_text())
    assert after["reconstruction_error"] == pytest.approx(
        before["reconstruction_error"], rel=1e-6
    )
    new_log = (out / "train_log.txt").read_text()
    assert new_log.startswith(train_log)
    new_lines = new_log[len(train_log) :].splitlines()
    assert len(new_lines) == 1 and new_lines[0].startswith("Epoch loaded: 1 -")
    assert "Going into epoch" not in proc.stdout + proc.stderr
    assert sorted(os.listdir(out / "save")) == checkpoints


# --------------------------------------------------------------------------
# Exported checkpoints load strictly into the interpreter configs


def assert_loaded(module, path):
    """``module`` holds exactly the tensors stored in ``path``."""
    stored = torch.load(path, map_location="cpu", weights_only=True)
    state = module.state_dict()
    assert state.keys() == stored.keys()
    for key in state:
        assert torch.equal(state[key], stored[key]), key


def test_exported_checkpoints_load_strictly(trained_classifier, trained_nmf):
    """embedding_model.ckpt, classifier.ckpt (train_classifier.py) and
    nmf_decoder.ckpt (train_nmf.py) are the checkpoints their runs kept as
    best, and load strictly into the modules built by piq.yaml and
    l2i_conv2d.yaml with the same architecture keys; a file that does not
    fit is an error."""
    tiny = {"emb_dim": 16, "out_n_neurons": N_CLASSES}
    embedding = trained_classifier / "embedding_model.ckpt"
    classifier = trained_classifier / "classifier.ckpt"
    decoder = trained_nmf / "nmf_decoder.ckpt"
    for config in ("piq.yaml", "l2i_conv2d.yaml"):
        hparams = load_yaml(config, tiny)
        strict_load(hparams["embedding_model"], embedding)
        strict_load(hparams["classifier"], classifier)
        assert_loaded(hparams["embedding_model"], embedding)
        assert_loaded(hparams["classifier"], classifier)
    strict_load(hparams["nmf_decoder"], decoder)
    assert_loaded(hparams["nmf_decoder"], decoder)

    # the exported files are the best checkpoints of their runs
    best = Checkpointer(trained_classifier / "save").find_checkpoint(
        min_key="error_rate"
    )
    for name, path in (
        ("embedding_model", embedding),
        ("classifier", classifier),
    ):
        module = load_yaml("piq.yaml", tiny)[name]
        strict_load(module, best.paramfiles[name])
        assert_loaded(module, path)
    best = Checkpointer(trained_nmf / "save").find_checkpoint(
        min_key="reconstruction_error"
    )
    module = load_yaml("l2i_conv2d.yaml", tiny)["nmf_decoder"]
    strict_load(module, best.paramfiles["nmf_decoder"])
    assert_loaded(module, decoder)

    with pytest.raises(RuntimeError, match="does not match"):
        strict_load(
            load_yaml("piq.yaml", {**tiny, "out_n_neurons": 4})["classifier"],
            classifier,
        )
    with pytest.raises(RuntimeError, match="does not match"):
        strict_load(
            load_yaml("piq.yaml", {**tiny, "emb_dim": 24})["embedding_model"],
            embedding,
        )
    with pytest.raises(RuntimeError, match="does not match"):
        strict_load(
            load_yaml("l2i_conv2d.yaml", {**tiny, "n_comp": 50})["nmf_decoder"],
            decoder,
        )
    with pytest.raises(RuntimeError, match="does not match"):
        strict_load(hparams["classifier"], decoder)


# --------------------------------------------------------------------------
# Learning-rate schedule


@pytest.mark.parametrize("script", ["piq", "classifier"])
def test_plateau_halves_the_optimizers_learning_rate(
    script, synthetic_data, trained_classifier, tmp_path
):
    """The schedule's new learning rate reaches the optimizer (as the public
    recipe's ``update_learning_rate``): with patience 0 and no epoch held
    back, a validation worse than the previous one halves it."""
    from speechbrain.nnet.schedulers import ReduceLROnPlateau

    import train_classifier

    out = tmp_path / script
    if script == "piq":
        argv = tiny_piq_argv(synthetic_data, trained_classifier, out)
        hparams, run_opts = setup_experiment(argv)
        prepare_manifests(hparams)
        load_classifier(hparams)
        brain = make_brain(PIQBrain, hparams, run_opts)
        worse = [{"loss": 1.0, "fidelity_in": f} for f in (1.0, 0.0)]
    else:
        hparams, run_opts = setup_experiment(
            [
                os.path.join(ROOT, "hparams", "classifier_conv2d.yaml"),
                "--data_folder",
                str(synthetic_data),
                "--output_folder",
                str(out),
                *TINY,
            ]
        )
        brain = make_brain(train_classifier.ClassifierBrain, hparams, run_opts)
        worse = [{"error_rate": e} for e in (0.0, 1.0)]
    brain.hparams.lr_annealing = ReduceLROnPlateau(
        factor=0.5, patience=0, dont_halve_until_epoch=0
    )
    brain.init_optimizers()
    lr = brain.optimizer.param_groups[0]["lr"]
    brain.train_stats = {"loss": 1.0}
    for epoch, stats in enumerate(worse, start=1):
        if script == "piq":
            brain.reduce_metrics = lambda loss, stats=stats: dict(stats)
        else:
            brain.error_metrics = type(
                "Fixed",
                (),
                {"summarize": lambda self, _, e=stats: e["error_rate"]},
            )()
        brain.on_stage_end(sb.Stage.VALID, 1.0, epoch)
    assert brain.optimizer.param_groups[0]["lr"] == pytest.approx(lr / 2)
