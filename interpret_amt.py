#!/usr/bin/env python3
"""Activation Map Thresholding (AMT): the by-design saliency of a FocalNet or
ViT ESC-50 classifier, thresholded into a binary mask. Nothing is trained.

Run:
    python interpret_amt.py hparams/amt_focalnet.yaml --data_folder=/data/ESC50
    python interpret_amt.py hparams/amt_vit.yaml --data_folder=/data/ESC50
    python interpret_amt.py hparams/amt_vit.yaml --data_folder=/data/ESC50 --test_only

The map (FocalNet: L2 norm of the last stage's modulator; ViT: last-layer
attention of the CLS token to the patches, averaged over heads) is resized to
the input's [T, F] and thresholded per clip at its ``quantile``: M = 1 at or
above, 0 below (METHODS.md §4). The validation folds are evaluated (metrics in
train_log.txt), then the test folds (test_metrics.json, interpretations);
``--test_only`` skips validation. There is no checkpoint to load or select.
Read ``main`` first.

Authors: the ESC-50 interpretability recipe developers.
"""

import sys

import torch
import torch.nn.functional as F

from experiment import run_without_training
from interpreter_brain import Interpretation
from training_free import TrainingFreeBrain


def resize_map(saliency, size):
    """saliency [B, h, w] -> [B, T, F] = ``size``, bilinear."""
    return F.interpolate(
        saliency.float().unsqueeze(1),
        size=tuple(size),
        mode="bilinear",
        align_corners=False,
    ).squeeze(1)


def threshold_mask(saliency, quantile):
    """Binary mask of the bins at or above the clip's ``quantile`` of ``saliency``.

    Arguments
    ---------
    saliency : torch.Tensor
        [B, T, F] map.
    quantile : float
        In [0, 1]; with distinct values about (1 - quantile) of the bins are kept.

    Returns
    -------
    torch.Tensor
        [B, T, F] float32 mask of 0 and 1.

    Example
    -------
    >>> threshold_mask(torch.arange(100.0).reshape(1, 10, 10), 0.9).sum().item()
    10.0
    """
    flat = saliency.float().flatten(1)
    # one clip at a time: torch.quantile refuses inputs over 2^24 elements
    thresholds = torch.stack([torch.quantile(clip, quantile) for clip in flat])
    return (flat >= thresholds[:, None]).float().view_as(saliency)


class AMTBrain(TrainingFreeBrain):
    """AMT through the shared brain: the classifier's activation maps are its
    hidden representation, the thresholded last map is the mask."""

    def classify(self, X):
        """X [B, T, F] -> (activation maps, shallowest first, logits [B, C])."""
        return self.hparams.backbone.activation_maps(X)

    def interpret(self, X, stft, hidden, logits, stage):
        """Resizes the deepest activation map to [T, F] and thresholds it.

        Arguments
        ---------
        X : torch.Tensor
            [B, T, F] log1p magnitude.
        stft : torch.Tensor
            [B, T, F, 2] complex STFT.
        hidden : list of torch.Tensor
            Activation maps [B, h, w] of the classifier, deepest last.
        logits : torch.Tensor
            [B, C] classifier output.
        stage : sb.Stage
            Unused: AMT is the same in every stage.

        Returns
        -------
        Interpretation
            with aux ``saliency`` [B, T, F], the resized map.
        """
        saliency = resize_map(hidden[-1], X.shape[-2:])
        mask = threshold_mask(saliency, self.hparams.quantile)
        return Interpretation(
            X=X, stft=stft, logits=logits, mask=mask, aux={"saliency": saliency}
        )


def main(argv):
    """Parse, prepare data, load the frozen classifier, evaluate valid (unless
    --test_only) and test (``experiment.run_without_training``)."""
    return run_without_training(AMTBrain, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
