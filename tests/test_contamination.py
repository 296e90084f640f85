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
    a = contamination.contaminate(
        "white_noise", wavs, generator=torch.Generator().manual_seed(3)
    )
    b = contamination.contaminate(
        "white_noise", wavs, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(a, b) and not torch.allclose(a, wavs / wavs.abs().max())
    assert contamination.contaminate("none", wavs) is wavs


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


@pytest.mark.parametrize("mode", ["none", "mixtures", "white_noise", "wham"])
def test_out_of_domain_evaluation(mode, trained_l2i, tmp_path):
    """--test_only --eval_contamination <mode> on a trained L2I run."""
    out, args = trained_l2i
    clean = (out / "test_metrics.json").read_text()
    run_script(
        "train_l2i.py",
        "hparams/l2i_conv2d.yaml",
        *args,
        "--test_only",
        "--eval_contamination",
        mode,
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
        extra=("interferer.wav", "target.wav") if mode == "mixtures" else (),
    )
    if mode != "none":  # the clean result is left as it was
        assert (out / "test_metrics.json").read_text() == clean
        assert json.loads(clean)["contamination"] == "none"
