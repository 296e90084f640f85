"""The Hugging Face backbones (FocalNet, ViT) and the methods on them: AMT
(interpret_amt.py) and PIQ (train_piq.py), with shrunk architectures.

A classifier trained by train_classifier.py (classifier_<arch>.yaml) is loaded
strictly by amt_<arch>.yaml and piq_<arch>.yaml; every run leaves
test_metrics.json and, with --test_only, the same numbers and interpretations.
"""

import math

import pytest
import torch
import yaml
from hyperpyyaml import load_hyperpyyaml

from compare_interpreters import TINY
from conftest import N_CLASSES, ROOT, classifier_args, run_script
from test_recipes import (
    METRIC_NAMES,
    check_interpretations,
    check_test_metrics,
)

QUICK = [
    "--batch_size",
    4,
    "--device",
    "cpu",
    "--noprogressbar",
    "--out_n_neurons",
    N_CLASSES,
]
# Shrunk architectures: seconds per run on 2 CPU cores (those of
# compare_interpreters.py --tiny)
TINY_ARCH = {arch: list(TINY[arch]) for arch in ("focalnet", "vit")}
# (script, config prefix, extra overrides)
METHODS = [
    ("interpret_amt.py", "amt", []),
    ("train_piq.py", "piq", ["--K", 48, "--number_of_epochs", 1]),
]


@pytest.fixture(scope="session")
def hf_classifiers(synthetic_data, tmp_path_factory):
    """arch -> folder of a tiny classifier trained by train_classifier.py (1 epoch)."""
    folders = {}
    for arch, tiny in TINY_ARCH.items():
        folders[arch] = tmp_path_factory.mktemp(f"classifier_{arch}")
        run_script(
            "train_classifier.py",
            f"hparams/classifier_{arch}.yaml",
            "--data_folder",
            synthetic_data,
            "--output_folder",
            folders[arch],
            "--number_of_epochs",
            1,
            *QUICK,
            *tiny,
        )
    return folders


@pytest.mark.parametrize(
    "script,method,extra,arch",
    [
        # PIQ on ViT repeats PIQ on FocalNet's path: the slow tier
        pytest.param(
            *m, arch, marks=[pytest.mark.slow] * (m[1] + arch == "piqvit")
        )
        for m in METHODS
        for arch in TINY_ARCH
    ],
    ids=[f"{m[1]}-{arch}" for m in METHODS for arch in TINY_ARCH],
)
def test_method_on_hf_classifier(
    script, method, extra, arch, synthetic_data, hf_classifiers, tmp_path
):
    """Run, then --test_only: metrics, the same numbers, interpretations,
    the classifier's mapping."""
    out = tmp_path / "run"
    common = [
        "--data_folder",
        synthetic_data,
        "--output_folder",
        out,
        *classifier_args(hf_classifiers[arch]),
        *QUICK,
        *TINY_ARCH[arch],
        *extra,
    ]
    proc = run_script(
        script,
        f"hparams/{method}_{arch}.yaml",
        *common,
        "--save_interpretations",
        False,
    )
    assert "valid fidelity_in" in (out / "train_log.txt").read_text()
    # the mapping written by train_classifier.py beside the checkpoint
    beside = hf_classifiers[arch] / "label_encoder.txt"
    assert f"label mapping: 3 classes ({beside})" in proc.stdout + proc.stderr
    first = check_test_metrics(out)
    assert not (out / "interpretations").exists()

    proc = run_script(
        script, f"hparams/{method}_{arch}.yaml", *common, "--test_only"
    )
    assert "Going into epoch" not in proc.stdout + proc.stderr
    check_interpretations(out)
    again = check_test_metrics(out)
    for name in METRIC_NAMES:
        assert again[name] == pytest.approx(first[name], abs=1e-5), name
    assert (out / "save" / "label_encoder.txt").read_text() == (
        hf_classifiers[arch] / "label_encoder.txt"
    ).read_text()
    if method == "amt":  # binary masks keeping the top 10% of the bins
        assert first["SPS"] == pytest.approx(0.9, abs=0.01)


def test_amt_test_only_needs_no_checkpoint(
    synthetic_data, hf_classifiers, tmp_path
):
    """AMT trains nothing: --test_only on a fresh folder evaluates the test folds only."""
    run_script(
        "interpret_amt.py",
        "hparams/amt_vit.yaml",
        "--data_folder",
        synthetic_data,
        "--output_folder",
        tmp_path,
        *classifier_args(hf_classifiers["vit"]),
        *QUICK,
        *TINY_ARCH["vit"],
        "--test_only",
        "--save_interpretations",
        False,
    )
    check_test_metrics(tmp_path)
    assert "valid" not in (tmp_path / "train_log.txt").read_text()


def load_yaml(name, overrides):
    """The objects of hparams/<name> with ``overrides`` (a dict), without running anything."""
    with open(f"{ROOT}/hparams/{name}") as f:
        return load_hyperpyyaml(f, {"data_folder": "unused", **overrides})


def tiny_overrides(arch):
    """TINY_ARCH[arch] as a YAML overrides dict."""
    args = TINY_ARCH[arch]
    return {
        str(key).lstrip("-"): yaml.safe_load(str(value))
        for key, value in zip(args[::2], args[1::2])
    }


def test_trained_checkpoints_load_strictly_and_wrong_ones_fail(hf_classifiers):
    """train_classifier.py's files load strictly into the interpreter configs;
    a FocalNet checkpoint in the ViT config is an error."""
    from pretrained import strict_load

    for arch in TINY_ARCH:
        for method in ("amt", "piq"):
            hparams = load_yaml(
                f"{method}_{arch}.yaml",
                {**tiny_overrides(arch), "out_n_neurons": N_CLASSES},
            )
            strict_load(
                hparams["embedding_model"],
                hf_classifiers[arch] / "embedding_model.ckpt",
            )
            strict_load(
                hparams["classifier"], hf_classifiers[arch] / "classifier.ckpt"
            )
    hparams = load_yaml("amt_vit.yaml", tiny_overrides("vit"))
    with pytest.raises(RuntimeError, match="does not match"):
        strict_load(
            hparams["embedding_model"],
            hf_classifiers["focalnet"] / "embedding_model.ckpt",
        )


def test_focalnet_hook_captures_one_modulator_per_stage():
    hparams = load_yaml("amt_focalnet.yaml", tiny_overrides("focalnet"))
    backbone = hparams["backbone"].eval()
    stages = backbone.embedding_model.focalnet.encoder.stages
    with torch.no_grad():
        maps, logits = backbone.activation_maps(torch.rand(2, 431, 513))
        hidden, same_logits = backbone(torch.rand(2, 431, 513))
    assert len(maps) == len(stages) == 4
    assert [tuple(m.shape) for m in maps] == [
        (2, 16, 16),
        (2, 8, 8),
        (2, 4, 4),
        (2, 2, 2),
    ]
    assert all((m >= 0).all() for m in maps)  # L2 norms
    assert logits.shape == (2, 50) and hidden.shape == (2, 32, 2, 2)
    assert all(
        not stage.layers[-1].modulation.projection_context._forward_hooks
        for stage in stages
    )


def test_vit_attention_map():
    """CLS-to-patch attention on the patch grid; an sdpa-built ViT fails clearly."""
    hparams = load_yaml("amt_vit.yaml", tiny_overrides("vit"))
    with torch.no_grad():
        (attention,), logits = (
            hparams["backbone"].eval().activation_maps(torch.rand(2, 431, 513))
        )
    assert attention.shape == (2, 4, 4) and logits.shape == (2, 50)
    assert (attention > 0).all() and (
        attention.sum((1, 2)) < 1
    ).all()  # the CLS key holds the rest
    hparams = load_yaml(
        "piq_vit.yaml", tiny_overrides("vit")
    )  # default sdpa attention
    with pytest.raises(RuntimeError, match="eager"), torch.no_grad():
        hparams["backbone"].eval().activation_maps(torch.rand(1, 431, 513))


def test_amt_mask_keeps_the_quantile():
    """Distinct values: exactly the bins at or above the quantile, ~10% at 0.9."""
    from interpret_amt import resize_map, threshold_mask

    T, F, q = 431, 513, 0.9
    saliency = torch.stack(
        [torch.randperm(T * F).float().view(T, F) for _ in range(2)]
    )
    mask = threshold_mask(saliency, q)
    n = T * F
    expected = n - math.ceil(
        q * (n - 1)
    )  # torch.quantile interpolates between order statistics
    assert mask.sum((1, 2)).tolist() == [expected, expected]
    assert torch.equal(mask.bool(), saliency >= n - expected)
    assert (
        threshold_mask(torch.ones(1, 4, 4), q).sum() == 16
    )  # ties at the threshold are kept
    assert resize_map(torch.rand(3, 7, 7), (T, F)).shape == (3, T, F)


@pytest.mark.parametrize(
    "arch,hidden_shape",
    [("focalnet", (1, 1024, 7, 7)), ("vit", (1, 768, 14, 14))],
)
def test_full_size_configs_build_offline(arch, hidden_shape):
    """The default YAMLs build focalnet-base / vit-base-patch16-224 from their
    configs (no download) and classify one clip."""
    hparams = load_yaml(f"amt_{arch}.yaml", {})
    with torch.no_grad():
        hidden, logits = hparams["backbone"].eval()(torch.rand(1, 431, 513))
    assert hidden.shape == hidden_shape
    assert logits.shape == (1, 50)
