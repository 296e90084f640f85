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
from interpreter_brain import Interpretation, InterpreterBrain


class PIQBrain(InterpreterBrain):
    """PIQ: M = sigmoid(psi(h, c)), resized to the input's [T, F]."""

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
            with aux ``mask_logits`` [B, T, F], ``h`` (adapted hidden map)
            and ``z_q`` (its quantisation).
        """
        mask_logits, h, z_q = self.modules.psi(hidden, logits.argmax(1))
        # float32 from here: a bf16 mask would keep only a handful of distinct values
        mask_logits = F.interpolate(
            mask_logits.float(), size=X.shape[-2:], mode="bilinear"
        ).squeeze(1)
        return Interpretation(
            X=X,
            stft=stft,
            logits=logits,
            mask=mask_logits.sigmoid(),
            aux={"mask_logits": mask_logits, "h": h, "z_q": z_q},
        )

    def interpreter_loss(self, result, batch, stage):
        """rec_loss_coef x BCE(M, [X > mask_th max X]) + ||sg(h) - z_q||^2 + ||h - sg(z_q)||^2."""
        X, aux = result.X, result.aux
        target = (
            X > self.hparams.mask_th * X.amax(dim=(1, 2), keepdim=True)
        ).float()
        reconstruction = F.binary_cross_entropy_with_logits(
            aux["mask_logits"].float(), target
        )
        codebook = F.mse_loss(aux["z_q"].float(), aux["h"].detach().float())
        commitment = F.mse_loss(aux["h"].float(), aux["z_q"].detach().float())
        return (
            self.hparams.rec_loss_coef * reconstruction + codebook + commitment
        )


def main(argv):
    """Parse, prepare data, load the frozen classifier, train PIQ, test."""
    run_interpreter(PIQBrain, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
