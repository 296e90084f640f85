#!/usr/bin/env python3
"""Listenable Maps for Audio Classifiers (L-MAC, arXiv 2403.13086) of a
frozen ESC-50 classifier.

Run:
    python train_lmac.py hparams/lmac_cnn14.yaml --data_folder=/data/ESC50
    python train_lmac.py hparams/lmac_cnn14.yaml --data_folder=/data/ESC50 --test_only
    python train_lmac.py hparams/lmac_conv2d.yaml --data_folder=/data/ESC50
With a classifier trained by train_classifier.py:
    ... --embedding_model_path=<folder>/embedding_model.ckpt \\
        --classifier_model_path=<folder>/classifier.ckpt --out_n_neurons=<classes>

A decoder maps the classifier's hidden representation to mask logits;
M = sigmoid(logits) on the input's [T, F]. The frozen classifier stays in
the training loop: the masked-in input M * X must keep the predicted class,
the masked-out input (1 - M) * X must lose it, and M is kept small; the
gradients reach the decoder through the classifier (METHODS.md §4).
Read ``main`` first.

Authors: the ESC-50 interpretability recipe developers.
"""

import sys

import torch
import torch.nn.functional as F

from experiment import run_interpreter
from interpreter_brain import Interpretation, InterpreterBrain


def lmac_loss(logits_in, logits_out, mask, classes, l_in_w, l_out_w, reg_w_l1):
    """The L-MAC training loss of a batch (lower is better)::

        l_in_w CE(logits_in, c) - l_out_w CE(logits_out, c) + reg_w_l1 mean|M|

    CE is the cross-entropy averaged over the B clips; the mean of |M| is
    over all B T F bins.

    Arguments
    ---------
    logits_in, logits_out : torch.Tensor
        [B, C] frozen classifier output on M * X and on (1 - M) * X.
    mask : torch.Tensor
        [B, T, F] mask M in [0, 1].
    classes : torch.Tensor
        [B] c, the class the classifier predicts on X.
    l_in_w, l_out_w, reg_w_l1 : float
        Weights of the masked-in term, the masked-out term and |M|.

    Returns
    -------
    torch.Tensor
        Scalar, float32.
    """
    ce_in = F.cross_entropy(logits_in.float(), classes)
    ce_out = F.cross_entropy(logits_out.float(), classes)
    sparsity = mask.float().abs().mean()
    return l_in_w * ce_in - l_out_w * ce_out + reg_w_l1 * sparsity


class LMACBrain(InterpreterBrain):
    """L-MAC: M = sigmoid(psi(hidden)), resized to the input's [T, F]."""

    def interpret(self, X, stft, hidden, logits, stage):
        """Decodes the classifier's hidden representation into a mask.

        Arguments
        ---------
        X : torch.Tensor
            [B, T, F] log1p magnitude.
        stft : torch.Tensor
            [B, T, F, 2] complex STFT.
        hidden : torch.Tensor or tuple
            The classifier's hidden map [B, D, T', F'] (conv2d) or tuple of
            maps (CNN14).
        logits : torch.Tensor
            [B, C] classifier output.
        stage : sb.Stage
            Unused: the mask is computed the same way in every stage.

        Returns
        -------
        Interpretation
            mask [B, T, F] = sigmoid(psi's logits resized bilinearly).
        """
        mask_logits = self.modules.psi(hidden)
        # float32 from here: a bf16 mask would keep only a handful of distinct values
        mask_logits = F.interpolate(
            mask_logits.float(), size=X.shape[-2:], mode="bilinear"
        ).squeeze(1)
        return Interpretation(
            X=X, stft=stft, logits=logits, mask=mask_logits.sigmoid()
        )

    def interpreter_loss(self, result, batch, stage):
        """``lmac_loss`` of the batch: the masked-in and masked-out inputs go
        through the frozen classifier in one batched pass, with gradient."""
        M, X = result.mask, result.X
        _, io_logits = self.classify(torch.cat([M * X, (1 - M) * X]))
        logits_in, logits_out = io_logits.chunk(2)
        return lmac_loss(
            logits_in,
            logits_out,
            M,
            result.class_pred,
            self.hparams.l_in_w,
            self.hparams.l_out_w,
            self.hparams.reg_w_l1,
        )


def main(argv):
    """Parse, prepare data, load the frozen classifier, train L-MAC, test."""
    run_interpreter(LMACBrain, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
