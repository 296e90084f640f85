"""Device placement, proven without a GPU.

On CUDA a tensor made without ``device=`` lands on the CPU and the first op
that meets the batch's CUDA tensors fails ("Expected all tensors to be on the
same device"). Here the batch stays on the CPU while every tensor that the
recipe's own code makes without a device goes to PyTorch's data-less ``meta``
device (``RecipeTensorsOnMeta``): meeting CPU data, it raises; copied out
(``.item()``, ``.tolist()``), it raises. The meta device is stricter than
CUDA (it does not even admit 0-dim CPU scalars), so passing here means the
recipe makes no tensor on the wrong device.

Each method runs for real (train, validate, test, save) with the Brain's
forward, objectives and stage ends under that mode: the method's forward and
loss, contamination, the metric accumulation, the reduction over processes,
the checkpoint meta, and the saved interpretations. Data loading and
PyTorch's optimizer step are not the recipe's code and stay outside it.
On today's code before this test (batch_sums' n_clips made on the CPU)
every case but the premise fails."""

import json
import os
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors

import experiment
import interpret_amt
import interpret_gradients
import train_l2i
import train_lmac
import train_nmf
import train_piq
from conftest import ROOT, TINY, TINY_PIQ, classifier_args
from test_hf_backbones import QUICK, TINY_ARCH

RECIPE = os.path.realpath(ROOT) + os.sep
SITE = os.path.dirname(os.path.dirname(os.path.realpath(torch.__file__)))


def made_by_the_recipe():
    """Whether the innermost caller outside torch is one of the recipe's own
    files (not a library in the virtual environment)."""
    frame = sys._getframe(2)
    while frame is not None:
        path = os.path.realpath(frame.f_code.co_filename)
        if not path.startswith(os.path.join(SITE, "torch") + os.sep):
            return path.startswith(RECIPE) and not path.startswith(SITE)
        frame = frame.f_back
    return False


class RecipeTensorsOnMeta(TorchFunctionMode):
    """Sends every tensor that the recipe's own code makes without a device
    to ``meta``. Libraries keep their default (speechbrain's PIQ, e.g., makes
    a tensor on the CPU and then moves it with ``.to(labels.device)``: correct
    on CUDA, but a copy out of ``meta`` would fail)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (
            func in _device_constructors()
            and kwargs.get("device") is None
            and made_by_the_recipe()
        ):
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def strict_device(brain_class):
    """``brain_class`` whose forward, objectives and stage ends run under
    ``RecipeTensorsOnMeta``."""

    class StrictDevice(brain_class):
        def compute_forward(self, batch, stage):
            with RecipeTensorsOnMeta():
                return super().compute_forward(batch, stage)

        def compute_objectives(self, predictions, batch, stage):
            with RecipeTensorsOnMeta():
                return super().compute_objectives(predictions, batch, stage)

        def on_stage_end(self, stage, stage_loss, epoch=None):
            with RecipeTensorsOnMeta():
                return super().on_stage_end(stage, stage_loss, epoch)

    StrictDevice.__name__ = brain_class.__name__
    return StrictDevice


def interpreter_argv(hparams_file, data, out, *extra):
    """argv of a tiny run of ``hparams_file`` (as strings)."""
    return [
        os.path.join(ROOT, "hparams", hparams_file),
        "--data_folder",
        str(data),
        "--output_folder",
        str(out),
        *map(str, extra),
    ]


def test_meta_device_catches_a_cpu_tensor_beside_the_data():
    """The proof's premise: a tensor made without a device inside the
    context cannot meet CPU data, nor be copied out."""
    data = torch.ones(3)
    with RecipeTensorsOnMeta():
        made = torch.tensor(2.0)  # this file is the recipe's own code
        assert made.device.type == "meta"
        with pytest.raises(RuntimeError):
            torch.stack([data.sum(), made])
        with pytest.raises(RuntimeError):
            made.item()


TRAINED = {
    "piq": (train_piq.PIQBrain, "piq.yaml", TINY_PIQ),
    "lmac": (
        train_lmac.LMACBrain,
        "lmac_conv2d.yaml",
        TINY + ["--out_n_neurons", 3],
    ),
}


@pytest.mark.parametrize("method", TRAINED)
@pytest.mark.parametrize("contamination", ["white_noise", "mixtures"])
def test_trained_interpreter_makes_no_tensor_off_device(
    method, contamination, synthetic_data, trained_classifier, tmp_path
):
    """Train one epoch (validation, checkpoint), then test on contaminated
    inputs with interpretations saved: all under the strict context."""
    brain_class, hparams_file, tiny = TRAINED[method]
    out = tmp_path / method
    argv = interpreter_argv(
        hparams_file,
        synthetic_data,
        out,
        *classifier_args(trained_classifier),
        *tiny,
        "--number_of_epochs",
        1,
        "--eval_contamination",
        contamination,
    )
    experiment.run_interpreter(strict_device(brain_class), argv)
    stats = json.loads((out / f"test_metrics_{contamination}.json").read_text())
    assert stats["n_clips"] > 0 and stats["contamination"] == contamination


def test_l2i_with_wham_training_makes_no_tensor_off_device(
    synthetic_data, trained_classifier, trained_nmf, wham_folder, tmp_path
):
    """L2I, its training batches mixed with WHAM! noise (drawn on the CPU,
    then moved to the batch's device)."""
    out = tmp_path / "l2i"
    argv = interpreter_argv(
        "l2i_conv2d.yaml",
        synthetic_data,
        out,
        *classifier_args(trained_classifier),
        "--nmf_decoder_path",
        trained_nmf / "nmf_decoder.ckpt",
        "--wham_folder",
        wham_folder,
        "--add_wham_noise",
        True,
        *TINY,
        "--out_n_neurons",
        3,
        "--number_of_epochs",
        1,
    )
    experiment.run_interpreter(strict_device(train_l2i.L2IBrain), argv)
    assert json.loads((out / "test_metrics.json").read_text())["n_clips"] > 0


@pytest.mark.parametrize(
    "brain_class, hparams_file, extra",
    [
        (
            interpret_gradients.GradientBrain,
            "gradients_conv2d.yaml",
            ["--use_pretrained", False, "--emb_dim", 16],
        ),
        (
            interpret_amt.AMTBrain,
            "amt_vit.yaml",
            TINY_ARCH["vit"] + ["--use_pretrained", False],
        ),
    ],
    ids=["gradients", "amt"],
)
def test_training_free_interpreter_makes_no_tensor_off_device(
    brain_class, hparams_file, extra, synthetic_data, tmp_path
):
    """Validation (logged) and test (written, interpretations saved)."""
    out = tmp_path / "run"
    argv = interpreter_argv(hparams_file, synthetic_data, out, *QUICK, *extra)
    experiment.run_without_training(strict_device(brain_class), argv)
    assert json.loads((out / "test_metrics.json").read_text())["n_clips"] > 0


def test_nmf_makes_no_tensor_off_device_and_exports_plain_keys(
    synthetic_data, tmp_path, monkeypatch
):
    """train_nmf.py under the strict context; the exported dictionary has the
    keys of the bare NMFDecoderAudio even when the trained module is wrapped
    (as torchrun's DDP or --compile wrap it: "module." / "_orig_mod.")."""

    class Wrapped(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args):
            return self.module(*args)

    class WrappedNMF(strict_device(train_nmf.NMFBrain)):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.modules["nmf_decoder"] = Wrapped(self.modules["nmf_decoder"])

    monkeypatch.setattr(train_nmf, "NMFBrain", WrappedNMF)
    out = tmp_path / "nmf"
    train_nmf.main(
        interpreter_argv(
            "nmf.yaml",
            synthetic_data,
            out,
            "--batch_size",
            4,
            "--device",
            "cpu",
            "--noprogressbar",
            "--number_of_epochs",
            1,
        )
    )
    state = torch.load(out / "nmf_decoder.ckpt", weights_only=True)
    assert not [k for k in state if k.startswith(("module.", "_orig_mod."))]
    from speechbrain.lobes.models.L2I import NMFDecoderAudio

    NMFDecoderAudio(n_comp=100, n_freq=513).load_state_dict(state, strict=True)
