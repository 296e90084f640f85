"""L-MAC (train_lmac.py): its loss against hand arithmetic, a training step
whose gradients reach the decoder through the frozen classifier, and
interpret_file.py on an L-MAC run folder."""

import math
import os
import shutil

import numpy as np
import pytest
import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch

from conftest import N_CLASSES, ROOT, TINY, classifier_args
from experiment import (
    make_brain,
    make_datasets,
    prepare_manifests,
    setup_experiment,
)
from interpret_file import AudioInterpreter
from pretrained import load_classifier
from train_lmac import LMACBrain, lmac_loss


def cross_entropy(logits, c):
    """-log softmax(logits)[c], written out."""
    return -(logits[c] - math.log(sum(math.exp(v) for v in logits)))


def test_lmac_loss_matches_hand_arithmetic():
    """l_in_w CE(in) - l_out_w CE(out) + reg_w_l1 mean|M|, CE averaged over
    clips, |M| over every bin; c is given, not read from either input."""
    logits_in = [[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]]
    logits_out = [[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]]
    classes = [0, 1]  # the second clip's masked-in input prefers class 2
    mask = [[[0.0, 0.5], [1.0, 0.25]], [[0.75, 0.0], [0.5, 1.0]]]
    l_in_w, l_out_w, reg_w_l1 = 4.0, 0.2, 0.4

    ce_in = sum(map(cross_entropy, logits_in, classes)) / 2
    ce_out = sum(map(cross_entropy, logits_out, classes)) / 2
    mean_abs = (0 + 0.5 + 1 + 0.25 + 0.75 + 0 + 0.5 + 1) / 8
    expected = l_in_w * ce_in - l_out_w * ce_out + reg_w_l1 * mean_abs
    # the same numbers, evaluated
    assert ce_in == pytest.approx((0.24131 + 2.16985) / 2, abs=1e-4)
    assert ce_out == pytest.approx((math.log(3) + 3.50460) / 2, abs=1e-4)

    loss = lmac_loss(
        torch.tensor(logits_in),
        torch.tensor(logits_out),
        torch.tensor(mask),
        torch.tensor(classes),
        l_in_w,
        l_out_w,
        reg_w_l1,
    )
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # a masked-out input that loses the class more lowers the loss
    worse_out = torch.tensor(logits_out)
    worse_out[:, 0] -= 1.0
    worse_out[1, 1] -= 1.0
    lower = lmac_loss(
        torch.tensor(logits_in),
        worse_out,
        torch.tensor(mask),
        torch.tensor(classes),
        l_in_w,
        l_out_w,
        reg_w_l1,
    )
    assert lower.item() < loss.item()


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
    clip, the mask of the brain that saved the checkpoint: [431, 513] in
    [0, 1]."""
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
    assert mask.shape == (431, 513)
    assert 0 <= mask.min() <= mask.max() <= 1 and mask.std() > 0
    assert np.allclose(mask, expected.numpy(), atol=1e-5)
