"""L-MAC (train_lmac.py): its loss and the fine-tuning stage's terms against
hand arithmetic, the crop of the input to psi's frames, the cross-correlations'
analytic cases, a training step whose gradients reach the decoder through the
frozen classifier, a fine-tuning run from a trained psi, and interpret_file.py
on an L-MAC run folder."""

import glob
import math
import os
import shutil

import numpy as np
import pytest
import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch

from conftest import N_CLASSES, ROOT, TINY, classifier_args, run_script
from experiment import (
    make_brain,
    make_datasets,
    prepare_manifests,
    setup_experiment,
)
from front_end import log_spectrogram
from interpret_file import AudioInterpreter
from interpretation import (
    Interpretation,
    align_to_input,
    crop_to_mask,
    pad_to_input,
)
from pretrained import load_classifier
from test_recipes import check_interpretations, check_test_metrics
from train_lmac import (
    LMACBrain,
    binarised_oracle,
    crosscor,
    crosscor_dotp,
    guidance_loss,
    lmac_loss,
    normalised_cross_correlation,
)


def cross_entropy(logits, c):
    """-log softmax(logits)[c], written out."""
    return -(logits[c] - math.log(sum(math.exp(v) for v in logits)))


def test_lmac_loss_matches_hand_arithmetic():
    """l_in_w CE(in) - l_out_w CE(out) + reg_w_l1 sum_b mean|M_b|: CE
    averaged over clips, the mask term SUMMED over the clips of each clip's
    mean (the public recipe's; B times a plain mean); c is given, not read
    from either input; a guided clip leaves the mask term."""
    logits_in = [[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]]
    logits_out = [[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]]
    classes = [0, 1]  # the second clip's masked-in input prefers class 2
    mask = [[[0.0, 0.5], [1.0, 0.25]], [[0.75, 0.0], [0.5, 1.0]]]
    l_in_w, l_out_w, reg_w_l1 = 4.0, 0.2, 0.4

    ce_in = sum(map(cross_entropy, logits_in, classes)) / 2
    ce_out = sum(map(cross_entropy, logits_out, classes)) / 2
    mean_abs = [(0 + 0.5 + 1 + 0.25) / 4, (0.75 + 0 + 0.5 + 1) / 4]
    expected = l_in_w * ce_in - l_out_w * ce_out + reg_w_l1 * sum(mean_abs)
    # the same numbers, evaluated
    assert ce_in == pytest.approx((0.24131 + 2.16985) / 2, abs=1e-4)
    assert ce_out == pytest.approx((math.log(3) + 3.50460) / 2, abs=1e-4)
    assert sum(mean_abs) == pytest.approx(0.4375 + 0.5625)

    def loss(out=logits_out, guided=None):
        return lmac_loss(
            torch.tensor(logits_in),
            torch.as_tensor(out),
            torch.tensor(mask),
            torch.tensor(classes),
            l_in_w,
            l_out_w,
            reg_w_l1,
            guided,
        )

    assert loss().dtype == torch.float32
    assert loss().item() == pytest.approx(expected, rel=1e-6)
    # B = 2 clips: the mask term is twice reg_w_l1 x the mean over all bins
    plain = l_in_w * ce_in - l_out_w * ce_out + reg_w_l1 * (1.0 / 2)
    assert loss().item() - plain == pytest.approx(reg_w_l1 * 0.5, rel=1e-5)
    # the second clip guided: only the first clip's mean|M| is left
    guided = torch.tensor([False, True])
    assert loss(guided=guided).item() == pytest.approx(
        expected - reg_w_l1 * mean_abs[1], rel=1e-6
    )
    assert loss(guided=torch.tensor([False, False])).item() == pytest.approx(
        expected, rel=1e-6
    )
    # a masked-out input that loses the class more lowers the loss
    worse_out = torch.tensor(logits_out)
    worse_out[:, 0] -= 1.0
    worse_out[1, 1] -= 1.0
    assert loss(worse_out).item() < loss().item()


def test_lmac_loss_mask_term_is_batch_size_times_the_mean():
    """At batch 16 the mask term is 16 reg_w_l1 mean|M| (0.4 x 16 = 6.4 per
    unit of mean|M|), whatever the masks."""
    torch.manual_seed(0)
    mask = torch.rand(16, 7, 5)
    zero = torch.zeros(16, 3)
    classes = torch.zeros(16, dtype=torch.long)
    with_mask = lmac_loss(zero, zero, mask, classes, 4.0, 0.2, 0.4)
    without = lmac_loss(zero, zero, 0 * mask, classes, 4.0, 0.2, 0.4)
    assert (with_mask - without).item() == pytest.approx(
        16 * 0.4 * mask.mean().item(), rel=1e-5
    )


def test_crop_keeps_the_first_frames_of_the_input():
    """psi's [B, 1, Tmax, F] logits on a [B, T, F] input (417 frames for
    conv2d, 425 for the public CNN14 decoder, of 431): the mask is
    [B, Tmax, F] and X and the STFT are their first Tmax frames, unchanged
    (no resize in time); a mask longer than the input cannot be cropped."""
    torch.manual_seed(0)
    X, stft = torch.rand(2, 431, 513), torch.rand(2, 431, 513, 2)
    for frames in (417, 425):
        logits = torch.randn(2, 1, frames, 513)
        mask_logits, X_cut, stft_cut = align_to_input(logits, X, stft)
        assert mask_logits.shape == X_cut.shape == (2, frames, 513)
        assert stft_cut.shape == (2, frames, 513, 2)
        assert torch.equal(mask_logits, logits[:, 0])
        assert torch.equal(X_cut, X[:, :frames])
        assert torch.equal(stft_cut, stft[:, :frames])
    with pytest.raises(ValueError, match="432 frames"):
        crop_to_mask(X, stft, torch.rand(2, 432, 513))


def test_decoders_give_the_input_bins_and_fewer_frames():
    """Both L-MAC decoders, as their YAMLs build them, on a 5 s clip: X's
    513 bins (so only the crop applies) and 417 (conv2d) or 425 (CNN14's
    CNN14PSI_stft, the public recipe's) of its 431 frames."""
    from hyperpyyaml import load_hyperpyyaml

    for name, frames, tiny in (
        ("lmac_conv2d", 417, {"emb_dim": 16}),
        ("lmac_cnn14", 425, {}),
    ):
        with open(os.path.join(ROOT, "hparams", f"{name}.yaml")) as f:
            hparams = load_hyperpyyaml(f, {"data_folder": "unused", **tiny})
        if name == "lmac_cnn14":
            assert type(hparams["psi"]).__name__ == "CNN14PSI_stft"
        X, stft = torch.rand(1, 431, 513), torch.rand(1, 431, 513, 2)
        with torch.no_grad():
            hidden, _ = hparams["backbone"].eval()(X)
            logits = hparams["psi"].eval()(hidden)
        assert logits.shape == (1, 1, frames, 513), name
        mask_logits, X_cut, _ = align_to_input(logits, X, stft)
        assert mask_logits.shape == X_cut.shape == (1, frames, 513)


def test_pad_to_input_puts_the_mask_back_on_every_frame():
    """The saved form of a cropped result: the whole input, the mask
    unchanged on its Tmax frames and 0 after; the result itself unchanged."""
    torch.manual_seed(0)
    X, stft = torch.rand(2, 431, 513), torch.rand(2, 431, 513, 2)
    mask = torch.rand(2, 417, 513)
    part = Interpretation(X[:, :417], stft[:, :417], torch.rand(2, 3), mask)
    whole = pad_to_input(part, X, stft)
    assert whole.mask.shape == whole.X_int.shape == (2, 431, 513)
    assert torch.equal(whole.mask[:, :417], mask)
    assert not whole.mask[:, 417:].any()
    assert whole.X is X and whole.stft is stft and part.mask is mask
    assert torch.equal(whole.class_pred, part.class_pred)


def test_crosscor_dotp_analytic_cases():
    """mean(S T) / (rms S rms T): 1 with itself and with a scaled copy, 0 for
    disjoint supports, cos 45 degrees for half-overlapping equal blocks, 0
    (not NaN) against silence; one value per clip."""
    torch.manual_seed(0)
    S = torch.rand(3, 20, 30) + 0.1
    assert torch.allclose(crosscor_dotp(S, S), torch.ones(3))
    assert torch.allclose(crosscor_dotp(S, 0.25 * S), torch.ones(3))
    low, high = torch.zeros(1, 20, 30), torch.zeros(1, 20, 30)
    low[:, :, :15], high[:, :, 15:] = 1.0, 1.0
    assert crosscor_dotp(low, high).item() == 0.0
    inside = torch.zeros(1, 20, 30)
    inside[:, 10:, :15] = 1.0  # half of low's bins
    assert crosscor_dotp(low, inside).item() == pytest.approx(
        1 / math.sqrt(2), rel=1e-6
    )
    assert crosscor_dotp(S[:1], torch.zeros(1, 20, 30)).item() == 0.0
    # the dispatcher, on equal shapes only
    assert torch.allclose(crosscor(S, 2 * S, "dotp"), torch.ones(3))
    with pytest.raises(ValueError, match="crosscortype"):
        crosscor(S, S, "cosine")
    with pytest.raises(ValueError, match="equal"):
        crosscor(S, S[:, :10], "dotp")


def test_crosscor_conv_analytic_cases():
    """The normalised cross-correlation of mean-removed inputs: at the one
    lag of equal shapes, 1 for identical inputs and for a S + b (a > 0), -1
    for a < 0, the Pearson correlation in general; a smaller template gives
    one value per lag, 1 where it was cut from a zero-mean spectrogram."""
    torch.manual_seed(0)
    S = torch.rand(2, 20, 30)
    ncc = normalised_cross_correlation(S, S)
    assert ncc.shape == (2, 1, 1)
    assert torch.allclose(ncc.flatten(), torch.ones(2), atol=1e-5)
    assert torch.allclose(
        crosscor(S, 3 * S + 1, "conv"), torch.ones(2), atol=1e-5
    )
    assert torch.allclose(crosscor(S, 1 - S, "conv"), -torch.ones(2), atol=1e-5)
    T = torch.rand(2, 20, 30)
    pearson = [
        np.corrcoef(S[b].flatten().numpy(), T[b].flatten().numpy())[0, 1]
        for b in range(2)
    ]
    assert crosscor(S, T, "conv").tolist() == pytest.approx(pearson, abs=1e-5)
    # lags: a zero-mean window cut at (3, 4) of a zero-mean spectrogram
    Z = torch.zeros(1, 20, 30)
    Z[:, 3:11, 4:16] = torch.randn(1, 8, 12)
    Z[:, 3:11, 4:16] -= Z[:, 3:11, 4:16].mean()
    lags = normalised_cross_correlation(Z, Z[:, 3:11, 4:16])
    assert lags.shape == (1, 13, 19)
    assert lags[0, 3, 4].item() == pytest.approx(1.0, abs=1e-5)
    assert lags.abs().max().item() <= 1 + 1e-5
    # float32 under autocast too (fp16 sums over a spectrogram would overflow)
    big = 5 * torch.rand(2, 417, 513)
    fp32 = crosscor(big, big, "conv")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(crosscor(big, big, "conv"), fp32)
    assert torch.allclose(fp32, torch.ones(2), atol=1e-4)


def test_guidance_loss_matches_hand_arithmetic():
    """binary: g_w mean_b [guided_b] BCE(M_b, Y_b), Y = X_clean >= bin_th x
    the clip's max; mse: g_w mean_b [guided_b] mean (M X - X_clean)^2; the
    mean runs over all B clips."""
    X_clean = torch.tensor([[[1.0, 4.0], [2.0, 0.0]], [[3.0, 3.0], [0.5, 1.0]]])
    # bin_th 0.5: thresholds 2.0 and 1.5
    Y = binarised_oracle(X_clean, 0.5)
    assert Y.tolist() == [[[0, 1], [1, 0]], [[1, 1], [0, 0]]]
    logits = torch.tensor(
        [[[0.0, 2.0], [-1.0, 1.0]], [[3.0, -3.0], [0.0, 0.5]]]
    )
    M = torch.sigmoid(logits)
    X = torch.full((2, 2, 2), 2.0)
    g_w = 4.0

    def bce(m, y):
        return -(y * math.log(m) + (1 - y) * math.log(1 - m))

    per_clip = [
        sum(
            bce(M[b].flatten()[i].item(), Y[b].flatten()[i].item())
            for i in range(4)
        )
        / 4
        for b in range(2)
    ]
    squared = [
        ((M[b] * X[b] - X_clean[b]) ** 2).mean().item() for b in range(2)
    ]
    both, first = torch.tensor([True, True]), torch.tensor([True, False])
    for kind, values in (("binary", per_clip), ("mse", squared)):
        loss = guidance_loss(logits, X, X_clean, both, g_w, 0.5, kind)
        assert loss.item() == pytest.approx(g_w * sum(values) / 2, rel=1e-5)
        loss = guidance_loss(logits, X, X_clean, first, g_w, 0.5, kind)
        assert loss.item() == pytest.approx(g_w * values[0] / 2, rel=1e-5)
        none = torch.tensor([False, False])
        assert guidance_loss(logits, X, X_clean, none, g_w, 0.5, kind) == 0
    with pytest.raises(ValueError, match="guidelosstype"):
        guidance_loss(logits, X, X_clean, both, g_w, 0.5, "l1")


@pytest.fixture(scope="module")
def lmac_setup(synthetic_data, trained_classifier, tmp_path_factory):
    """lmac_conv2d.yaml with the tiny trained classifier and reg_w_l1 = 0
    (every gradient then goes through the classifier), set up in this
    process as train_lmac.py does: (hparams, run_opts, train dataset,
    output folder)."""
    out = tmp_path_factory.mktemp("lmac")
    hparams, run_opts = setup_experiment(
        [
            os.path.join(ROOT, "hparams", "lmac_conv2d.yaml"),
            "--data_folder",
            str(synthetic_data),
            "--output_folder",
            str(out),
            *map(str, classifier_args(trained_classifier)),
            *TINY,
            "--out_n_neurons",
            str(N_CLASSES),
            "--reg_w_l1",
            "0.0",
        ]
    )
    prepare_manifests(hparams)
    train = make_datasets(hparams, load_classifier(hparams))["train"]
    return hparams, run_opts, train, out


def test_training_step_reaches_decoder_through_frozen_classifier(lmac_setup):
    """One fit_batch with reg_w_l1 = 0: the classifier's weights and
    buffers are byte-identical afterwards and have no gradient, every
    decoder parameter gets a non-zero gradient, and the step moves it."""
    hparams, run_opts, train, _ = lmac_setup
    brain = make_brain(LMACBrain, hparams, run_opts)
    brain.init_optimizers()
    brain.modules.train()
    backbone = hparams["backbone"]
    for name in ("embedding_model", "classifier"):  # frozen in eval mode
        assert not any(m.training for m in hparams[name].modules()), name
    frozen = {k: v.clone() for k, v in backbone.state_dict().items()}
    psi = brain.modules.psi
    before = {k: v.detach().clone() for k, v in psi.named_parameters()}
    grads = {}
    for name, param in psi.named_parameters():
        param.register_hook(
            lambda g, name=name: grads.__setitem__(name, g.detach().clone())
        )

    loss = brain.fit_batch(PaddedBatch([train[i] for i in range(4)]))

    assert torch.isfinite(loss)
    after = backbone.state_dict()
    assert after.keys() == frozen.keys()
    for name, value in frozen.items():
        assert torch.equal(after[name], value), name
    assert all(p.grad is None for p in backbone.parameters())
    assert grads.keys() == before.keys()
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, name
    moved = [
        name
        for name, param in psi.named_parameters()
        if not torch.equal(param.detach(), before[name])
    ]
    assert moved == list(before)


def test_interpret_file_reloads_an_lmac_run(lmac_setup):
    """interpret_file.py's AudioInterpreter on the folder of an L-MAC run
    (its hyperparams.yaml, train_lmac.py and a checkpoint) gives, for a 5 s
    clip, the mask of the brain that saved the checkpoint on psi's 417
    frames, and 0 on the clip's last 14 frames, which psi does not reach:
    [431, 513] in [0, 1]."""
    hparams, run_opts, train, out = lmac_setup
    brain = make_brain(LMACBrain, hparams, run_opts)
    with torch.no_grad():  # weights that no fresh initialisation has
        for param in brain.modules.psi.parameters():
            param.add_(0.01 * torch.randn_like(param))
    brain.checkpointer.save_checkpoint(meta={"loss": 1.0})
    shutil.copy(os.path.join(ROOT, "train_lmac.py"), out)
    brain.modules.eval()
    clip = PaddedBatch([train[0]])
    with torch.no_grad():
        expected = brain.compute_forward(clip, sb.Stage.TEST).mask[0]

    interpreter = AudioInterpreter.from_hparams(str(out))
    assert type(interpreter.brain).__name__ == "LMACBrain"
    assert interpreter.brain.modules.psi is not brain.modules.psi
    mask = interpreter.interpret_batch([clip.sig.data[0]])[0]["mask"]
    assert expected.shape == (417, 513) and mask.shape == (431, 513)
    assert 0 <= mask.min() <= mask.max() <= 1 and mask.std() > 0
    assert np.allclose(mask[:417], expected.numpy(), atol=1e-5)
    assert not mask[417:].any()


def finetuning_brain(lmac_setup, **keys):
    """An LMACBrain of ``lmac_setup`` with ``finetuning`` True and ``keys``
    set in its own hparams (the fixture's are unchanged)."""
    hparams, run_opts, _, _ = lmac_setup
    brain = make_brain(LMACBrain, hparams, run_opts)
    brain.hparams.finetuning = True
    for key, value in keys.items():
        setattr(brain.hparams, key, value)
    return brain


def test_pretrained_interpreter_is_loaded_strictly(
    lmac_setup, trained_classifier, tmp_path
):
    """psi gets every tensor of pretrained_interpreter; a missing key, a path
    that is not a file, a checkpoint of another module and an unknown
    crosscortype or guidelosstype are errors naming their key."""
    trained = finetuning_brain(lmac_setup).modules.psi
    with torch.no_grad():
        for param in trained.parameters():
            param.add_(0.01 * torch.randn_like(param))
    path = tmp_path / "psi.ckpt"
    torch.save(trained.state_dict(), path)

    brain = finetuning_brain(lmac_setup, pretrained_interpreter=str(path))
    brain.load_pretrained_interpreter()
    loaded = brain.modules.psi.state_dict()
    for name, value in trained.state_dict().items():
        assert torch.equal(loaded[name], value), name

    for bad in (None, str(tmp_path / "missing.ckpt"), str(tmp_path)):
        brain = finetuning_brain(lmac_setup, pretrained_interpreter=bad)
        with pytest.raises(FileNotFoundError, match="pretrained_interpreter"):
            brain.load_pretrained_interpreter()
    other = str(trained_classifier / "classifier.ckpt")
    brain = finetuning_brain(lmac_setup, pretrained_interpreter=other)
    with pytest.raises(RuntimeError, match="pretrained_interpreter="):
        brain.load_pretrained_interpreter()
    for key in ("crosscortype", "guidelosstype"):
        brain = finetuning_brain(
            lmac_setup, pretrained_interpreter=str(path), **{key: "other"}
        )
        with pytest.raises(ValueError, match=key):
            brain.load_pretrained_interpreter()


def test_finetuning_loss_guides_by_the_clean_input(lmac_setup):
    """With finetuning, a batch's loss is lmac_loss without the guided
    clips' mask term plus the guidance loss, the clips being chosen by
    crosscor of the CLEAN input's spectrogram (the batch as loaded, cropped
    to psi's frames) with M * X; their share is the in_masks metric."""
    _, _, train, _ = lmac_setup
    brain = finetuning_brain(lmac_setup, crosscor_th=0.0, reg_w_l1=0.4)
    brain.modules.eval()
    batch = PaddedBatch([train[i] for i in range(3)])
    with torch.no_grad():
        result = brain.compute_forward(batch, sb.Stage.VALID)
        M, X = result.mask, result.X
        assert brain.clean_spectrogram(result, batch) is X
        loss = brain.interpreter_loss(result, batch, sb.Stage.VALID)
        _, io_logits = brain.classify(torch.cat([M * X, (1 - M) * X]))
    hp = brain.hparams
    everyone = torch.ones(
        3, dtype=torch.bool
    )  # dotp of non-negative inputs >= 0
    expected = lmac_loss(
        *io_logits.chunk(2), M, result.class_pred, 4.0, 0.2, 0.4, everyone
    ) + guidance_loss(
        result.aux["mask_logits"], X, X, everyone, hp.g_w, hp.bin_th, "binary"
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert brain.method_metrics(result)["in_masks"].tolist() == [1.0] * 3
    # no clip reaches crosscor 2: no guidance, the full mask term
    brain.hparams.crosscor_th = 2.0
    with torch.no_grad():
        unguided = brain.interpreter_loss(result, batch, sb.Stage.VALID)
    plain = lmac_loss(*io_logits.chunk(2), M, result.class_pred, 4.0, 0.2, 0.4)
    assert unguided.item() == pytest.approx(plain.item(), rel=1e-5)
    assert brain.method_metrics(result)["in_masks"].tolist() == [0.0] * 3
    # contaminated input: the clean spectrogram is the loaded clips'
    result.wav = batch.sig.data + 0.1 * torch.randn_like(batch.sig.data)
    clean = brain.clean_spectrogram(result, batch)
    X_clean, _ = log_spectrogram(hp.compute_stft, batch.sig.data)
    assert clean.shape == X.shape and torch.equal(clean, X_clean[:, :417])


@pytest.fixture(scope="module")
def lmac_run(synthetic_data, trained_classifier, tmp_path_factory):
    """A one-epoch train_lmac.py run of lmac_conv2d.yaml (tiny sizes):
    (its command-line arguments but the output folder, its psi.ckpt)."""
    args = [
        "--data_folder",
        synthetic_data,
        *classifier_args(trained_classifier),
        *TINY,
        "--out_n_neurons",
        N_CLASSES,
        "--number_of_epochs",
        1,
    ]
    out = tmp_path_factory.mktemp("lmac_run")
    run_script(
        "train_lmac.py",
        "hparams/lmac_conv2d.yaml",
        *args,
        "--output_folder",
        out,
    )
    (psi,) = glob.glob(str(out / "save" / "CKPT*" / "psi.ckpt"))
    return args, psi


@pytest.mark.slow
def test_finetuning_run_from_a_trained_psi(lmac_run, tmp_path):
    """train_lmac.py --finetuning True --pretrained_interpreter <psi.ckpt>:
    it says it loads psi, trains, tests (in_masks logged beside every metric;
    crosscor_th 0 guides every clip) and saves the interpretations."""
    args, psi = lmac_run
    out = tmp_path / "ft"
    run_script(
        "train_lmac.py",
        "hparams/lmac_conv2d.yaml",
        *args,
        "--output_folder",
        out,
        "--finetuning",
        True,
        "--pretrained_interpreter",
        psi,
        "--crosscor_th",
        0.0,
    )
    assert f"pretrained_interpreter={psi}" in (out / "log.txt").read_text()
    results = check_test_metrics(out)
    assert results["in_masks"] == 1.0
    assert "in_masks: 1.00" in (out / "train_log.txt").read_text()
    check_interpretations(out)


def test_finetuning_without_pretrained_interpreter_fails_clearly(
    synthetic_data, trained_classifier, tmp_path
):
    """--finetuning True alone stops before training, naming the key."""
    proc = run_script(
        "train_lmac.py",
        "hparams/lmac_conv2d.yaml",
        "--data_folder",
        synthetic_data,
        "--output_folder",
        tmp_path / "ft",
        *classifier_args(trained_classifier),
        *TINY,
        "--out_n_neurons",
        N_CLASSES,
        "--finetuning",
        True,
        expect_ok=False,
    )
    assert (
        "finetuning: True needs pretrained_interpreter"
        in proc.stdout + proc.stderr
    )
    assert not list((tmp_path / "ft" / "save").glob("CKPT*"))
