#!/usr/bin/env python3
"""Posthoc Interpretation via Quantization (PIQ) of a frozen ESC-50 classifier.

Run:
    python train_piq.py hparams/piq.yaml --data_folder=/data/ESC50
    python train_piq.py hparams/piq.yaml --data_folder=/data/ESC50 --test_only

The classifier's hidden map h goes through a decoder psi with a
class-partitioned vector-quantised codebook; psi outputs mask logits, trained
to match the binary mask of the loud time-frequency points of the input
(METHODS.md §4). Read ``main`` first.

Authors: the ESC-50 interpretability recipe developers.
"""

import sys

import torch.nn.functional as F

from experiment import run_interpreter
from interpretation import align_to_input
from interpreter_brain import Interpretation, InterpreterBrain


def piq_loss(mask_logits, X, h, z_q, mask_th, rec_loss_coef):
    """The PIQ training loss of a batch (lower is better)::

        rec_loss_coef BCE(sigmoid(mask_logits), X > mask_th max_{t,f} X)
        + mean((sg(h) - z_q)^2) + mean((h - sg(z_q))^2)

    (sg: stop-gradient; the max is per clip; BCE and squares are means.)

    Arguments
    ---------
    mask_logits, X : torch.Tensor
        [B, T, F] mask logits and log1p magnitude.
    h, z_q : torch.Tensor
        psi's adapted hidden map and its quantisation, same shape.
    mask_th, rec_loss_coef : float

    Returns
    -------
    torch.Tensor
        Scalar, float32.
    """
    target = (X > mask_th * X.amax(dim=(1, 2), keepdim=True)).float()
    bce = F.binary_cross_entropy_with_logits(mask_logits.float(), target)
    codebook = F.mse_loss(z_q.float(), h.detach().float())
    commitment = F.mse_loss(h.float(), z_q.detach().float())
    return rec_loss_coef * bce + codebook + commitment


class PIQBrain(InterpreterBrain):
    """PIQ: M = sigmoid(psi(h, c)) on the input's first T' frames (the
    decoder's; ``interpretation.align_to_input``)."""

    def interpret(self, X, stft, hidden, logits, stage):
        """Decodes the quantised hidden map of the predicted class into a mask.

        Arguments
        ---------
        X : torch.Tensor
            [B, T, F] log1p magnitude.
        stft : torch.Tensor
            [B, T, F, 2] complex STFT.
        hidden : torch.Tensor
            [B, D, T', F'] classifier hidden map.
        logits : torch.Tensor
            [B, C] classifier output.
        stage : sb.Stage
            Unused: psi's own train/eval mode selects the codebook regions.

        Returns
        -------
        Interpretation
            on X cropped to psi's T' frames (417 of 431 for conv2d; the
            FocalNet decoder's map is resized to [T, F] instead), with aux
            ``mask_logits`` [B, T', F], ``h`` (adapted hidden map) and
            ``z_q`` (its quantisation).
        """
        mask_logits, h, z_q = self.modules.psi(hidden, logits.argmax(1))
        mask_logits, X, stft = align_to_input(mask_logits, X, stft)
        return Interpretation(
            X=X,
            stft=stft,
            logits=logits,
            mask=mask_logits.sigmoid(),
            aux={"mask_logits": mask_logits, "h": h, "z_q": z_q},
        )

    def interpreter_loss(self, result, batch, stage):
        """``piq_loss`` of the batch."""
        aux = result.aux
        return piq_loss(
            aux["mask_logits"],
            result.X,
            aux["h"],
            aux["z_q"],
            self.hparams.mask_th,
            self.hparams.rec_loss_coef,
        )


def main(argv):
    """Parse, prepare data, load the frozen classifier, train PIQ, test."""
    run_interpreter(PIQBrain, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
