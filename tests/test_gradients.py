"""Gradient baselines (interpret_gradients.py): Saliency, Integrated
Gradients, SmoothGrad and Grad-CAM through Captum, on a tiny trained conv2d
classifier and a random CNN14 (emb_dim 16, 32 frames: its other channels are
fixed).

Batched masks equal the clip-by-clip ones, masks lie in [0, 1] with maximum 1
per clip, saliency matches dp_c/dX computed by hand, Integrated Gradients
add up to p_c(X) - p_c(0), and one run of the script, then --test_only,
leaves the shared metrics and interpretations.
"""

import glob

import numpy as np
import pytest
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml

from conftest import N_CLASSES, ROOT, TINY, classifier_args, run_script
from front_end import load_clip, log_spectrogram
from interpret_gradients import (
    ATTRIBUTIONS,
    GradientBrain,
    mask_from_attribution,
)
from pretrained import strict_load
from test_recipes import (
    METRIC_NAMES,
    check_interpretations,
    check_test_metrics,
)

# few path points and noisy copies, two per pass (so a full pass and a
# remainder): seconds on 2 CPU cores
QUICK = {"n_steps": 3, "nt_samples": 3, "copies_per_pass": 2}
# batched and clip-by-clip runs differ only by float32 rounding of the
# convolutions; masks are in [0, 1]
ATOL = 1e-5


def make_brain(config, tmp_path, **overrides):
    """The GradientBrain of hparams/gradients_<config>.yaml, tiny, on CPU."""
    with open(f"{ROOT}/hparams/gradients_{config}.yaml") as f:
        hparams = load_hyperpyyaml(
            f,
            {
                "data_folder": str(tmp_path),
                "output_folder": str(tmp_path / config),
                "out_n_neurons": N_CLASSES,
                "emb_dim": 16,
                **QUICK,
                **overrides,
            },
        )
    return GradientBrain(
        hparams=hparams, run_opts={"device": "cpu", "noprogressbar": True}
    )


@pytest.fixture(scope="module")
def brains(synthetic_data, trained_classifier, tmp_path_factory):
    """config -> (brain, X [2, T, F]): the trained conv2d classifier on two
    generated clips; a random CNN14 (seed 1: its Grad-CAM map is positive
    in part, where other seeds' are negative everywhere) on their first 32
    frames (CNN14 pools time by 32)."""
    tmp = tmp_path_factory.mktemp("gradients")
    conv2d = make_brain("conv2d", tmp)
    for name in ("embedding_model", "classifier"):
        strict_load(
            conv2d.hparams.pretrainer.loadables[name],
            trained_classifier / f"{name}.ckpt",
        )
    paths = sorted(glob.glob(f"{synthetic_data}/audio/*.wav"))
    wavs = torch.stack(
        [load_clip(p, 16000, 5.0) for p in (paths[0], paths[-1])]
    )
    X, _ = log_spectrogram(conv2d.hparams.compute_stft, wavs)
    cnn14 = make_brain("cnn14", tmp, seed=1)
    return {"conv2d": (conv2d, X), "cnn14": (cnn14, X[:, :32].contiguous())}


def interpret(brain, X, attribution, seed=0, **settings):
    """The brain's ``Interpretation`` of X by ``attribution`` with the YAML
    values ``settings`` (restored afterwards), the global RNG seeded first,
    called as speechbrain evaluates: under no_grad."""
    saved = vars(brain.hparams).copy()
    vars(brain.hparams).update(attribution=attribution, **settings)
    try:
        torch.manual_seed(seed)
        with torch.no_grad():
            hidden, logits = brain.classify(X)
            return brain.interpret(X, None, hidden, logits, sb.Stage.TEST)
    finally:
        vars(brain.hparams).clear()
        vars(brain.hparams).update(saved)


def check_mask(mask, allow_empty=False):
    """[B, T, F] float32 in [0, 1], maximum 1 per clip (or 0 everywhere for
    a clip where that is allowed)."""
    assert mask.dtype == torch.float32
    assert mask.min() >= 0 and mask.max() <= 1
    peaks = mask.flatten(1).amax(1)
    assert ((peaks == 1) | (allow_empty & (peaks == 0))).all(), peaks


def test_mask_from_attribution():
    """|A| over its per-clip maximum: signs ignored, clips independent, a
    zero clip stays zero."""
    A = torch.tensor([[[-4.0, 2.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    expected = torch.tensor([[[1.0, 0.5], [0.25, 0.0]], [[0, 0], [0, 0]]])
    assert torch.equal(mask_from_attribution(A), expected)
    scaled = A * torch.tensor([1e-30, 5.0])[:, None, None]
    assert torch.allclose(mask_from_attribution(scaled), expected)
    check_mask(mask_from_attribution(torch.randn(3, 431, 513)))


@pytest.mark.parametrize("attribution", ATTRIBUTIONS)
@pytest.mark.parametrize("config", ["conv2d", "cnn14"])
def test_batched_equals_clip_by_clip(config, attribution, brains):
    """One Captum call for the batch gives each clip's own mask (SmoothGrad
    with the noise off: batched and single calls draw different noise)."""
    brain, X = brains[config]
    settings = {"stdevs": 0.0} if attribution == "smoothgrad" else {}
    batched = interpret(brain, X, attribution, **settings).mask
    clips = [interpret(brain, x[None], attribution, **settings) for x in X]
    diff = (batched - torch.cat([clip.mask for clip in clips])).abs()
    assert batched.shape == X.shape
    check_mask(batched, allow_empty=attribution == "gradcam")
    if config == "conv2d":
        assert diff.max() <= ATOL, diff.max()
    else:  # the random CNN14 has ReLUs within float32 rounding of 0: one
        # may flip between the batched and the single pass (Integrated
        # Gradients, at one path point: 36 of 16416 bins move by 2%)
        assert (diff <= ATOL).float().mean() >= 0.99 and diff.max() <= 0.05
    if attribution == "gradcam":  # upsampled from the coarse map
        assert batched.flatten(1).amax(1).max() == 1


@pytest.mark.parametrize("config", ["conv2d", "cnn14"])
def test_saliency_is_the_gradient_of_p_c(config, brains):
    """Saliency against dp_c/dX by torch.autograd.grad, c = argmax p."""
    brain, X = brains[config]
    result = interpret(brain, X, "saliency")
    mask, attribution = result.mask, result.aux["attribution"]
    X = X.clone().requires_grad_()
    p = torch.softmax(brain.hparams.backbone(X)[1], dim=1)
    c = p.argmax(1)
    (grad,) = torch.autograd.grad(p[torch.arange(len(X)), c].sum(), X)
    peak = grad.abs().flatten(1).amax(1)[:, None, None]
    assert torch.allclose(attribution, grad, rtol=1e-4, atol=1e-12)
    assert torch.allclose(mask, grad.abs() / peak, atol=1e-6, rtol=0)


def test_smoothgrad_noise(brains):
    """Without noise SmoothGrad is saliency; with noise (std 0.5) another
    mask, the same for the same seed, finite where noisy copies go below 0."""
    brain, X = brains["conv2d"]
    saliency = interpret(brain, X, "saliency").mask
    quiet = interpret(brain, X, "smoothgrad", stdevs=0.0).mask
    assert torch.allclose(quiet, saliency, atol=ATOL, rtol=0)
    noisy = interpret(brain, X, "smoothgrad", seed=1, stdevs=0.5).mask
    again = interpret(brain, X, "smoothgrad", seed=1, stdevs=0.5).mask
    check_mask(noisy)
    assert torch.equal(noisy, again)
    assert (noisy - saliency).abs().max() > 0.05
    brain, X = brains["cnn14"]  # log1p(mel(expm1(X))) is NaN far below 0
    check_mask(interpret(brain, X, "smoothgrad", stdevs=2.0).mask)


def test_integrated_gradients_sum_to_the_probability_change(brains):
    """Completeness: sum_{t,f} IG = p_c(X) - p_c(0), the zero baseline being
    silence (up to the quadrature error of 32 points: under 2% here)."""
    brain, X = brains["conv2d"]
    attribution = interpret(
        brain, X, "integrated_gradients", n_steps=32, copies_per_pass=32
    ).aux["attribution"]
    with torch.no_grad():
        p = torch.softmax(brain.classify(torch.cat([X, 0 * X]))[1], dim=1)
    p_X, p_0 = p.chunk(2)
    c = p_X.argmax(1, keepdim=True)
    change = (p_X.gather(1, c) - p_0.gather(1, c)).squeeze(1)
    assert torch.allclose(attribution.sum((1, 2)), change, rtol=0.02)
    assert change.abs().min() > 1e-4  # not trivially zero


def test_gradcam_layers_and_attribution_names(brains, tmp_path):
    """gradcam_layer names the last 4x4 conv of Conv2dEncoder_v2 and CNN14's
    last conv block; an unknown attribution is refused at once."""
    conv2d, cnn14 = brains["conv2d"][0].hparams, brains["cnn14"][0].hparams
    assert conv2d.gradcam_layer == "embedding_model.conv4"
    assert isinstance(
        conv2d.backbone.get_submodule(conv2d.gradcam_layer), torch.nn.Conv2d
    )
    assert cnn14.gradcam_layer == "embedding_model.conv_block6"
    blocks = list(cnn14.backbone.embedding_model.children())
    assert blocks[-1] is cnn14.backbone.get_submodule(cnn14.gradcam_layer)
    with pytest.raises(ValueError, match="is not one of"):
        make_brain("conv2d", tmp_path, attribution="gradcams")


def test_run_then_test_only(synthetic_data, trained_classifier, tmp_path):
    """interpret_gradients.py (Grad-CAM, tiny conv2d, its default layer):
    validation then test with interpretations; --test_only
    on a fresh folder: test only, the same numbers (nothing is trained or
    random)."""
    common = [
        "--data_folder",
        synthetic_data,
        *classifier_args(trained_classifier),
        *TINY,
        "--out_n_neurons",
        N_CLASSES,
        "--attribution",
        "gradcam",
    ]
    run_script(
        "interpret_gradients.py",
        "hparams/gradients_conv2d.yaml",
        *common,
        "--output_folder",
        tmp_path / "run",
    )
    assert "valid fidelity_in" in (tmp_path / "run/train_log.txt").read_text()
    first = check_test_metrics(tmp_path / "run")
    check_interpretations(tmp_path / "run")
    run_script(
        "interpret_gradients.py",
        "hparams/gradients_conv2d.yaml",
        *common,
        "--output_folder",
        tmp_path / "test_only",
        "--test_only",
        "--save_interpretations",
        False,
    )
    assert "valid" not in (tmp_path / "test_only/train_log.txt").read_text()
    again = check_test_metrics(tmp_path / "test_only")
    for name in METRIC_NAMES:
        assert again[name] == pytest.approx(first[name], abs=1e-6), name
    # interpret_file.py on the run folder: a test clip, read back from its
    # original.wav, gets the mask the test run saved for it
    clip = sorted((tmp_path / "run" / "interpretations").iterdir())[0]
    run_script(
        "interpret_file.py",
        tmp_path / "run",
        clip / "original.wav",
        "--output_folder",
        tmp_path / "file",
    )
    mask = np.load(tmp_path / "file" / "original.wav" / "mask.npy")
    np.testing.assert_allclose(mask, np.load(clip / "mask.npy"), atol=1e-3)
