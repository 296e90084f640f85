#!/usr/bin/env python3
r"""Gradient baselines (Captum) of a frozen ESC-50 classifier: Saliency,
Integrated Gradients, SmoothGrad and Grad-CAM, each turned into a mask in
[0, 1]. Nothing is trained.

Run (``--attribution``: saliency | integrated_gradients | smoothgrad | gradcam):
    python interpret_gradients.py hparams/gradients_conv2d.yaml --data_folder=/data/ESC50
    python interpret_gradients.py hparams/gradients_conv2d.yaml \
        --data_folder=/data/ESC50 --attribution=gradcam
    python interpret_gradients.py hparams/gradients_cnn14.yaml \
        --data_folder=/data/ESC50 --attribution=integrated_gradients
    python interpret_gradients.py hparams/gradients_cnn14.yaml \
        --data_folder=/data/ESC50 --attribution=smoothgrad --test_only

Per batch, one Captum call attributes p_c = softmax(f(X))_c, the probability
of the class c that the frozen classifier f predicts on X, to the log1p STFT
magnitude X [B, T, F] (METHODS.md §4):
* saliency: dp_c/dX;
* integrated_gradients: X * the average of dp_c/dX along the straight path
  from the zero baseline (silence: log1p(0) = 0) to X, ``n_steps``
  Gauss-Legendre points;
* smoothgrad: the mean of dp_c/dX over ``nt_samples`` copies of X plus
  Gaussian noise of std ``stdevs`` (log1p-magnitude units), clipped at 0
  (X is the log1p of a magnitude; CNN14's log1p(mel(expm1(X))) is NaN far
  below 0);
* gradcam: ReLU(sum_k a_k A_k) on the output A of the backbone's module
  ``gradcam_layer``, a_k = mean over the map of dp_c/dA_k, resized
  (bilinear) to [T, F].
The mask is ``mask_from_attribution``: |attribution| / its per-clip maximum.
As for AMT, the validation folds are evaluated (train_log.txt), then the test
folds (test_metrics.json, interpretations); ``--test_only`` skips
validation. Read ``main`` first.

Authors: the ESC-50 interpretability recipe developers.
"""

import sys

import torch
from captum.attr import IntegratedGradients, LayerGradCam, NoiseTunnel, Saliency

from experiment import run_without_training
from interpret_amt import resize_map
from interpreter_brain import Interpretation
from training_free import TrainingFreeBrain

ATTRIBUTIONS = ("saliency", "integrated_gradients", "smoothgrad", "gradcam")


def mask_from_attribution(attribution):
    """M = |A| / max_{t,f} |A| per clip; an all-zero A gives M = 0.

    Arguments
    ---------
    attribution : torch.Tensor
        [B, T, F] attribution A (Grad-CAM's is already non-negative).

    Returns
    -------
    torch.Tensor
        [B, T, F] float32 mask in [0, 1], exactly 1 at each clip's largest
        |A| (unless A is all zero).

    Example
    -------
    >>> mask_from_attribution(torch.tensor([[[-2.0, 1.0]], [[0.0, 0.0]]]))
    tensor([[[1.0000, 0.5000]],
    <BLANKLINE>
            [[0.0000, 0.0000]]])
    """
    magnitude = attribution.detach().float().abs()
    peak = magnitude.flatten(1).amax(1).clamp_min(torch.finfo().tiny)
    return magnitude / peak[:, None, None]


class GradientBrain(TrainingFreeBrain):
    """A Captum attribution as the interpreter, evaluated like every method
    that trains nothing (``training_free.TrainingFreeBrain``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.hparams.attribution not in ATTRIBUTIONS:
            raise ValueError(
                f"attribution: {self.hparams.attribution!r} is not one of "
                f"{', '.join(ATTRIBUTIONS)}."
            )

    def class_probabilities(self, X):
        """X [B, T, F] -> p = softmax(f(X)) [B, C] (float32), what Captum
        differentiates at the predicted class. X is clipped at 0 first,
        which only changes SmoothGrad's noisy copies (X itself, and the
        Integrated Gradients path, are >= 0; the gradient passes at 0)."""
        return torch.softmax(self.classify(X.clamp_min(0))[1].float(), dim=1)

    def attribute(self, X, c):
        """[B, T, F] attribution of p_c to X (one Captum call for the batch).

        Arguments
        ---------
        X : torch.Tensor
            [B, T, F] log1p magnitude.
        c : torch.Tensor
            [B] class whose probability is attributed.
        """
        hp, forward = self.hparams, self.class_probabilities
        # speechbrain evaluates under no_grad; the weights stay frozen
        with torch.enable_grad():
            X = X.detach().requires_grad_()
            if hp.attribution == "saliency":
                return Saliency(forward).attribute(X, target=c, abs=False)
            if hp.attribution == "integrated_gradients":
                return IntegratedGradients(forward).attribute(
                    X,
                    baselines=torch.zeros_like(X),
                    target=c,
                    n_steps=hp.n_steps,
                    internal_batch_size=len(X) * hp.copies_per_pass,
                )
            if hp.attribution == "smoothgrad":
                return NoiseTunnel(Saliency(forward)).attribute(
                    X,
                    nt_type="smoothgrad",
                    nt_samples=hp.nt_samples,
                    nt_samples_batch_size=hp.copies_per_pass,
                    stdevs=hp.stdevs,
                    target=c,
                    abs=False,
                )
            layer = hp.backbone.get_submodule(hp.gradcam_layer)
            cam = LayerGradCam(forward, layer).attribute(
                X, target=c, relu_attributions=True
            )  # [B, 1, h, w]
            return resize_map(cam.squeeze(1), X.shape[-2:])

    def interpret(self, X, stft, hidden, logits, stage):
        """The mask of the attribution of the predicted class.

        Arguments
        ---------
        X : torch.Tensor
            [B, T, F] log1p magnitude.
        stft : torch.Tensor
            [B, T, F, 2] complex STFT.
        hidden : object
            Unused: the attribution runs the classifier again, with gradients.
        logits : torch.Tensor
            [B, C] classifier output; c = argmax.
        stage : sb.Stage
            Unused: the method is the same in every stage.

        Returns
        -------
        Interpretation
            with aux ``attribution`` [B, T, F], the signed attribution.
        """
        attribution = self.attribute(X, logits.argmax(1)).detach()
        return Interpretation(
            X=X,
            stft=stft,
            logits=logits,
            mask=mask_from_attribution(attribution),
            aux={"attribution": attribution},
        )


def main(argv):
    """Parse, prepare data, load the frozen classifier, evaluate valid (unless
    --test_only) and test (``experiment.run_without_training``)."""
    return run_without_training(GradientBrain, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
