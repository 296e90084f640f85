"""Contaminated inputs: the pure functions, and out-of-domain evaluation of
a trained interpreter with every mode."""

import json

import numpy as np
import pytest
import torch

import contamination
from conftest import run_script
from test_recipes import check_interpretations, check_test_metrics


def test_mix_gains_weights_and_peak():
    target = torch.tensor([[1.0, 0.0, 0.0, -0.5]])
    interferer = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    mix = contamination.mix_gains(target, interferer)
    assert mix.abs().max() == pytest.approx(1.0, abs=1e-6)
    assert mix[0, 1] / mix[0, 0] == pytest.approx(0.2 / 0.8)


def test_unknown_mode_is_named():
    with pytest.raises(ValueError, match="eval_contamination='pink'"):
        contamination.contaminate("pink", torch.zeros(1, 4))


def test_white_noise_is_reproducible_and_changes_the_clip():
    wavs = torch.sin(torch.linspace(0, 100, 1600)).unsqueeze(0)
    a, target, noise = contamination.contaminate(
        "white_noise", wavs, generator=torch.Generator().manual_seed(3)
    )
    b, _, _ = contamination.contaminate(
        "white_noise", wavs, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(a, b) and not torch.allclose(a, wavs / wavs.abs().max())
    assert torch.equal(target + noise, a)
    assert contamination.contaminate("none", wavs) == (wavs, None, None)


def test_interferer_is_another_class_and_stable(tmp_path):
    entries = {}
    for i, category in enumerate(["dog", "dog", "rain", "cat"]):
        np.save(tmp_path / f"{i}.npy", np.full(4, i, dtype=np.float32))
        entries[f"clip{i}"] = {
            "wav": str(tmp_path / f"{i}.npy"),
            "category": category,
        }
    manifest = tmp_path / "test.json"
    manifest.write_text(json.dumps(entries))
    pipeline = contamination.interferer_pipeline(str(manifest), seed=7)
    for clip_id, entry in entries.items():
        chosen = int(pipeline.func(clip_id, entry["category"])[0])
        assert entries[f"clip{chosen}"]["category"] != entry["category"]
        assert (
            int(
                contamination.interferer_pipeline(str(manifest), seed=7).func(
                    clip_id, entry["category"]
                )[0]
            )
            == chosen
        )


@pytest.mark.parametrize(
    "mode",
    # WHAM! and speech interferers take mixtures' path with other files
    ["none", "mixtures", "white_noise"]
    + [pytest.param(m, marks=pytest.mark.slow) for m in ("wham", "speech")],
)
def test_out_of_domain_evaluation(mode, trained_l2i, wham_folder, tmp_path):
    """--test_only --eval_contamination <mode> on a trained L2I run; the
    masks of a contaminated test are scored against the target's ideal
    binary mask (the localisation keys), and its two terms are saved."""
    out, args = trained_l2i
    clean = (out / "test_metrics.json").read_text()
    run_script(
        "train_l2i.py",
        "hparams/l2i_conv2d.yaml",
        *args,
        "--test_only",
        "--eval_contamination",
        mode,
        "--speech_folder",  # any folder of wav files stands in for speech
        wham_folder / "tr",
    )
    name = (
        "test_metrics.json" if mode == "none" else f"test_metrics_{mode}.json"
    )
    results = check_test_metrics(out, name=name)
    assert results["contamination"] == mode
    subfolder = (
        "interpretations" if mode == "none" else f"interpretations_{mode}"
    )
    check_interpretations(
        out,
        subfolder=subfolder,
        extra=("interferer.wav", "target.wav") if mode != "none" else (),
    )
    if mode != "none":
        for key in ("evidence_mass", "pointing_game", "evidence_area"):
            assert results[key] is not None, key
    if mode != "none":  # the clean result is left as it was
        assert (out / "test_metrics.json").read_text() == clean
        assert json.loads(clean)["contamination"] == "none"


def test_mixture_terms_sum_to_the_mixture():
    """The two terms a contaminated test scores against are exactly what was
    summed: parts_of_gains adds up to mix_gains, parts_at_0db to
    mix_at_0db (float32 rounding of one division each: 1e-6)."""
    from wham_prepare import mix_at_0db, parts_at_0db

    s, n = torch.randn(3, 800), torch.randn(3, 800)
    target, interferer = contamination.parts_of_gains(s, n)
    assert torch.allclose(
        target + interferer, contamination.mix_gains(s, n), atol=1e-6
    )
    target, noise = parts_at_0db(s, n)
    assert torch.allclose(target + noise, mix_at_0db(s, n), atol=1e-6)


def test_ideal_binary_mask_of_two_tones():
    """A 1 kHz target over a 3 kHz interferer of half its amplitude: the
    target dominates the bins around 1 kHz and nowhere near 3 kHz; swapped,
    the mask is the complement's bins there."""
    from speechbrain.processing.features import STFT

    stft = STFT(
        sample_rate=16000, n_fft=1024, win_length=23.2199, hop_length=11.6099
    )
    t = torch.arange(16000) / 16000
    target = torch.sin(2 * torch.pi * 1000 * t).unsqueeze(0)
    interferer = 0.5 * torch.sin(2 * torch.pi * 3000 * t).unsqueeze(0)
    ibm = contamination.ideal_binary_mask(stft, target, interferer)
    bin_of = lambda hz: round(hz * 1024 / 16000)  # noqa: E731
    frames = slice(5, -5)  # away from the clip's edges
    assert ibm.shape == (1, 87, 513) and ibm.dtype == torch.bool
    assert ibm[0, frames, bin_of(1000)].all()
    assert not ibm[0, frames, bin_of(3000)].any()
    swapped = contamination.ideal_binary_mask(stft, interferer, target)
    assert swapped[0, frames, bin_of(3000)].all()
    assert not swapped[0, frames, bin_of(1000)].any()


@pytest.mark.parametrize("reference", ["oracle", "uniform"])
def test_real_clips_mixtures_score_against_the_ideal_mask(reference, tmp_path):
    """The five real ESC-50 sample clips, test folds 1-3 (dog, car horn,
    thunderstorm), mixed with another class's clip: the oracle (the ideal
    binary mask itself) puts all its mass on the truth and points at it;
    the uniform mask scores chance (mass ratio 1). No planted evidence is
    involved: the truth comes from the mixture."""
    import shutil

    from conftest import ROOT

    data = tmp_path / "ESC50"
    shutil.copytree(f"{ROOT}/tests/samples/ESC50", data)
    out = tmp_path / reference
    run_script(
        "interpret_reference.py",
        "hparams/reference_conv2d.yaml",
        "--data_folder",
        data,
        "--output_folder",
        out,
        "--train_fold_nums",
        "[4]",
        "--valid_fold_nums",
        "[5]",
        "--test_fold_nums",
        "[1, 2, 3]",
        "--use_pretrained",
        False,
        "--reference",
        reference,
        "--eval_contamination",
        "mixtures",
        "--save_interpretations",
        False,
        "--device",
        "cpu",
        "--noprogressbar",
    )
    stats = json.loads((out / "test_metrics_mixtures.json").read_text())
    assert stats["n_clips"] == 3 and stats["n_empty_masks"] == 0
    assert 0 < stats["evidence_area"] < 1
    if reference == "oracle":
        for key in ("evidence_mass", "pointing_game", "roc_auc", "topk_iou"):
            assert stats[key] == pytest.approx(1.0), key
        # the mean over clips of 1 / area: far above chance (1)
        assert stats["evidence_mass_ratio"] > 1 / stats["evidence_area"]
    else:
        assert stats["evidence_mass_ratio"] == pytest.approx(1.0)
        assert stats["roc_auc"] == pytest.approx(0.5)
        assert stats["evidence_mass"] == pytest.approx(stats["evidence_area"])
        assert stats["pointing_game"] == pytest.approx(stats["evidence_area"])
