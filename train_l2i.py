#!/usr/bin/env python3
"""Listen to Interpret (L2I) of a frozen ESC-50 classifier.

Run:
    python train_l2i.py hparams/l2i_conv2d.yaml --data_folder=/data/ESC50
    python train_l2i.py hparams/l2i_conv2d.yaml --data_folder=/data/ESC50 --test_only
With your own NMF dictionary (train_nmf.py):
    ... --nmf_decoder_path=<nmf output folder>/nmf_decoder.ckpt

psi maps the classifier's hidden representation to NMF activations H
[B, K, T]; the frozen NMF dictionary W gives X_hat = W H; Theta predicts the
classifier's decision from H. The interpretation keeps the components that are
relevant to the predicted class, so it can be listened to (METHODS.md §4).
Read ``main`` first.

Authors: the ESC-50 interpretability recipe developers.
"""

import sys

import speechbrain as sb
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from experiment import run_interpreter
from interpreter_brain import Interpretation, InterpreterBrain


def relevant_mask(
    H, X_hat, classes, theta, nmf_decoder, relevance_th, eps=1e-10
):
    """The L2I interpretation mask of a batch, computed for all clips at once.

    M = W[:, L] H[L] / (W H + eps), L = {k : r_k > relevance_th},
    r_k = w[c, k] z_k / max_k |w[c, k] z_k|, z = Theta's time pooling of H,
    w = Theta's linear weights, c = ``classes``.

    Arguments
    ---------
    H : torch.Tensor
        [B, K, T] NMF activations.
    X_hat : torch.Tensor
        [B, F, T] = W H.
    classes : torch.Tensor
        [B] class to explain.
    theta : speechbrain.lobes.models.L2I.Theta
    nmf_decoder : speechbrain.lobes.models.L2I.NMFDecoderAudio
    relevance_th : float

    Returns
    -------
    torch.Tensor
        [B, F, T] mask in [0, 1].
    """
    z = theta.hard_att(H).squeeze(2)
    relevance = theta.classifier[0].weight[classes] * z
    relevance = relevance / relevance.abs().amax(1, keepdim=True).clamp(min=eps)
    selected = (relevance > relevance_th).to(H.dtype).unsqueeze(2)
    return (nmf_decoder(H * selected) / (X_hat + eps)).clamp(0, 1)


def l2i_loss(X, X_hat, H, logits, theta_probs, alpha, beta, tau, eps=1e-10):
    """The L2I training loss of a batch (lower is better)::

        alpha mean((X_hat - X)^2) + beta mean|H|
        - mean_{b,c} softmax(logits / tau)[b, c] log(theta_probs[b, c] + eps)

    The fidelity term is a mean over clips AND classes, so its weight
    against ``alpha`` and ``beta`` does not grow with the class count.

    Arguments
    ---------
    X, X_hat : torch.Tensor
        [B, T, F] log1p magnitude and its NMF reconstruction W H.
    H : torch.Tensor
        [B, K, T] NMF activations.
    logits : torch.Tensor
        [B, C] frozen classifier output.
    theta_probs : torch.Tensor
        [B, C] Theta's class probabilities from H.
    alpha, beta, tau : float
        Reconstruction and sparsity weights; classifier temperature.

    Returns
    -------
    torch.Tensor
        Scalar, float32.
    """
    reconstruction = F.mse_loss(X_hat.float(), X.float())
    targets = F.softmax(logits.float() / tau, dim=1)
    fidelity = -(targets * torch.log(theta_probs.float() + eps)).mean()
    return alpha * reconstruction + beta * H.float().abs().mean() + fidelity


class L2IBrain(InterpreterBrain):
    """L2I: psi -> H, X_hat = W H, Theta(H) ~ classifier."""

    def interpret(self, X, stft, hidden, logits, stage):
        """NMF activations of the batch and, outside training, the mask of the
        components relevant to the predicted class, for the whole batch at once.

        Returns
        -------
        Interpretation
            on X cropped to psi's T' frames (conv2d: 417 of 431; CNN14: all
            431), mask [B, T', F] = W[:, L] H[L] / (W H + eps) with
            L = {k : r_k > relevance_th}, r_k = w[c, k] z_k / max_k |w[c, k] z_k|,
            z = Theta's time pooling of H, w = Theta's linear weights (None during
            training, where the loss does not use it); aux ``H`` [B, K, T'] and
            ``X_hat`` [B, T', F].
        """
        H = self.modules.psi(hidden)
        if isinstance(
            H, tuple
        ):  # L2I.PsiOptimized (conv2d): ([B, 1, T', K], adapted map)
            H = H[0].squeeze(1).transpose(1, 2)
        # psi's frames and the input's on one grid, as the public recipe:
        # frames past the input's are cut, and the input is cropped to
        # psi's (417 of 431 for conv2d); float32 from here
        H = H[:, :, : X.shape[1]].float()
        X, stft = X[:, : H.shape[2]], stft[:, : H.shape[2]]
        X_hat = self.hparams.nmf_decoder(H)
        mask = None
        if stage != sb.Stage.TRAIN:
            theta = self.modules.theta
            if isinstance(theta, DDP):  # under torchrun: its layers are read
                theta = theta.module
            mask = relevant_mask(
                H,
                X_hat,
                logits.argmax(1),
                theta,
                self.hparams.nmf_decoder,
                self.hparams.relevance_th,
            ).transpose(1, 2)
        return Interpretation(
            X=X,
            stft=stft,
            logits=logits,
            mask=mask,
            aux={"H": H, "X_hat": X_hat.transpose(1, 2)},
        )

    def interpreter_loss(self, result, batch, stage):
        """``l2i_loss`` of the batch, Theta run on its activations."""
        H = result.aux["H"]
        return l2i_loss(
            result.X,
            result.aux["X_hat"],
            H,
            result.logits,
            self.modules.theta(H),
            self.hparams.alpha,
            self.hparams.beta,
            self.hparams.classifier_temp,
        )

    def method_metrics(self, result):
        """Per clip: NMF reconstruction error, and whether Theta agrees with the classifier."""
        with torch.no_grad():
            error = (
                (result.aux["X_hat"].float() - result.X.float())
                .pow(2)
                .mean((1, 2))
            )
            agrees = (
                self.modules.theta(result.aux["H"]).argmax(1)
                == result.class_pred
            ).double()
        return {"reconstruction_error": error, "theta_fidelity": agrees}


def main(argv):
    """Parse, prepare data, load the frozen classifier and NMF dictionary, train L2I, test."""
    run_interpreter(L2IBrain, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
