#!/usr/bin/env python3
"""Listenable Maps for Audio Classifiers (L-MAC, arXiv 2403.13086) of a
frozen ESC-50 classifier.

Run:
    python train_lmac.py hparams/lmac_cnn14.yaml --data_folder=/data/ESC50
    python train_lmac.py hparams/lmac_cnn14.yaml --data_folder=/data/ESC50 --test_only
    python train_lmac.py hparams/lmac_conv2d.yaml --data_folder=/data/ESC50
Fine-tuning stage ("L-MAC FT"), from a trained decoder:
    ... --finetuning True \\
        --pretrained_interpreter=results/lmac_cnn14/1234/save/<CKPT+...>/psi.ckpt
With a classifier trained by train_classifier.py:
    ... --embedding_model_path=<folder>/embedding_model.ckpt \\
        --classifier_model_path=<folder>/classifier.ckpt --out_n_neurons=<classes>

A decoder maps the classifier's hidden representation to mask logits;
M = sigmoid(logits) on the first Tmax frames of the input (the decoder's
output length; the input is cropped to it, as in the public recipe). The
frozen classifier stays in the training loop: the masked-in input M * X must
keep the predicted class, the masked-out input (1 - M) * X must lose it, and
M is kept small; the gradients reach the decoder through the classifier.
Fine-tuning adds a guidance loss towards the binarised clean spectrogram for
the clips whose masked-in input already resembles it (METHODS.md §4).
Read ``main`` first.

Authors: the ESC-50 interpretability recipe developers.
"""

import os
import sys

import torch
import torch.nn.functional as F
from speechbrain.utils.logger import get_logger

from experiment import run_interpreter
from front_end import log_spectrogram
from interpretation import align_to_input
from interpreter_brain import Interpretation, InterpreterBrain
from pretrained import strict_load

CROSSCOR_TYPES = ("dotp", "conv")
GUIDE_LOSS_TYPES = ("binary", "mse")
logger = get_logger(__name__)


def lmac_loss(
    logits_in,
    logits_out,
    mask,
    classes,
    l_in_w,
    l_out_w,
    reg_w_l1,
    guided=None,
):
    """The L-MAC training loss of a batch (lower is better)::

        l_in_w CE(logits_in, c) - l_out_w CE(logits_out, c)
            + reg_w_l1 sum_b [not guided_b] mean_{t,f} |M_b|

    CE is the cross-entropy averaged over the B clips. The mask-size term
    is a SUM over the clips of each clip's mean |M| (as the public recipe),
    so at batch B it weighs B times a plain mean over all bins; clips that
    the fine-tuning stage guides (``guided``) are left out of it.

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
    guided : torch.Tensor, optional
        [B] bool, the clips the guidance loss takes (``guidance_loss``);
        None: no clip is guided.

    Returns
    -------
    torch.Tensor
        Scalar, float32.
    """
    ce_in = F.cross_entropy(logits_in.float(), classes)
    ce_out = F.cross_entropy(logits_out.float(), classes)
    per_clip = mask.float().abs().mean((1, 2))
    if guided is not None:
        per_clip = per_clip * (~guided).float()
    return l_in_w * ce_in - l_out_w * ce_out + reg_w_l1 * per_clip.sum()


def crosscor_dotp(spectrogram, template, eps=1e-12):
    """Normalised dot product of two spectrograms, per clip (the "dotp"
    cross-correlation of the L-MAC paper)::

        mean_{t,f}(S T) / (sqrt(mean_{t,f} S^2) sqrt(mean_{t,f} T^2))

    the cosine of the angle between the two as vectors: 1 for T = a S
    (a > 0), 0 for disjoint supports; in [0, 1] for non-negative inputs such
    as log1p magnitudes, [-1, 1] in general. A clip where either input is all
    zero gives 0 (the denominator is clamped at ``eps``).

    Arguments
    ---------
    spectrogram, template : torch.Tensor
        [B, T, F] each, the same shape.
    eps : float
        Smallest denominator.

    Returns
    -------
    torch.Tensor
        [B].

    Example
    -------
    >>> S = torch.rand(2, 5, 4)
    >>> crosscor_dotp(S, 3 * S)
    tensor([1.0000, 1.0000])
    """
    dot = (spectrogram * template).mean((-1, -2))
    rms_s = spectrogram.pow(2).mean((-1, -2)).sqrt()
    rms_t = template.pow(2).mean((-1, -2)).sqrt()
    return dot / (rms_s * rms_t).clamp_min(eps)


def normalised_cross_correlation(spectrogram, template, eps=1e-8):
    """Normalised cross-correlation of each clip's spectrogram with its own
    template at every lag (the "conv" cross-correlation of the L-MAC paper).

    Both are centred by their own mean over (t, f): S' = S - mean(S),
    K' = K - mean(K). At lag (i, j)::

        NCC[i, j] = sum_{u,v} S'[i+u, j+v] K'[u, v]
                    / sqrt(sum_{u,v} S'[i+u, j+v]^2 sum_{u,v} K'[u, v]^2 + eps)

    in [-1, 1] (Cauchy-Schwarz). For a template of the spectrogram's own
    shape there is one lag, (0, 0), and NCC is the Pearson correlation of the
    two: 1 for K = a S + b (a > 0), -1 for a < 0.

    Arguments
    ---------
    spectrogram : torch.Tensor
        [B, T, F].
    template : torch.Tensor
        [B, t, f], t <= T, f <= F.
    eps : float
        Added under the square root (the public recipe's 1e-8).

    Returns
    -------
    torch.Tensor
        [B, T - t + 1, F - f + 1].

    Example
    -------
    >>> S = torch.rand(2, 5, 4)
    >>> normalised_cross_correlation(S, 2 * S + 1).shape
    torch.Size([2, 1, 1])
    """
    clips = spectrogram.shape[0]
    # float32 even under autocast: fp16 sums over a whole spectrogram overflow
    with torch.autocast(spectrogram.device.type, enabled=False):
        S = spectrogram.float()
        S = S - S.mean((-1, -2), keepdim=True)
        K = template.float()
        K = (K - K.mean((-1, -2), keepdim=True)).unsqueeze(1)
        # one group per clip: [1, B, T, F] with B kernels [1, t, f]
        products = F.conv2d(S[None], K, groups=clips)
        energy_s = F.conv2d(S[None].pow(2), torch.ones_like(K), groups=clips)
        energy_k = K.pow(2).sum((-1, -2, -3)).view(1, clips, 1, 1)
        return (products / torch.sqrt(energy_s * energy_k + eps))[0]


def crosscor(spectrogram, template, kind):
    """Per-clip similarity of a clean spectrogram and a masked-in input, the
    fine-tuning stage's selection score.

    Arguments
    ---------
    spectrogram, template : torch.Tensor
        [B, T, F] each, the same shape.
    kind : str
        "dotp" (``crosscor_dotp``) or "conv" (``normalised_cross_correlation``
        at its one lag).

    Returns
    -------
    torch.Tensor
        [B].
    """
    if spectrogram.shape != template.shape:
        raise ValueError(
            f"crosscor of shapes {tuple(spectrogram.shape)} and "
            f"{tuple(template.shape)}: they must be equal."
        )
    if kind == "dotp":
        return crosscor_dotp(spectrogram, template)
    if kind == "conv":
        return normalised_cross_correlation(spectrogram, template).flatten(1)[
            :, 0
        ]
    raise ValueError(f"crosscortype={kind!r}: use one of {CROSSCOR_TYPES}.")


def binarised_oracle(X_clean, bin_th):
    """[B, T, F] -> [B, T, F] float: 1 where X_clean >= bin_th x the clip's
    maximum of X_clean, else 0 (the fine-tuning stage's target mask)."""
    peak = X_clean.flatten(1).amax(1).view(-1, 1, 1)
    return (X_clean >= bin_th * peak).float()


def guidance_loss(mask_logits, X, X_clean, guided, g_w, bin_th, kind):
    """The fine-tuning stage's guidance term::

        binary: g_w mean_b [guided_b] mean_{t,f} BCE(M_b, Y_b)
        mse:    g_w mean_b [guided_b] mean_{t,f} (M_b X_b - X_clean_b)^2

    with M = sigmoid(mask_logits), Y = ``binarised_oracle(X_clean, bin_th)``.
    The mean over b runs over all B clips (the unguided ones add 0), as in
    the public recipe. BCE is computed from the logits (the same value as
    BCE on M, without its clamp of log at -100).

    Arguments
    ---------
    mask_logits : torch.Tensor
        [B, T, F] logits of M.
    X : torch.Tensor
        [B, T, F] the input as interpreted (after any contamination).
    X_clean : torch.Tensor
        [B, T, F] the clean input's log1p magnitude.
    guided : torch.Tensor
        [B] bool, the clips the term takes.
    g_w, bin_th : float
        Weight of the term; binarisation threshold (share of the peak).
    kind : str
        "binary" or "mse" (``guidelosstype``).

    Returns
    -------
    torch.Tensor
        Scalar, float32.
    """
    mask_logits, X_clean = mask_logits.float(), X_clean.float()
    if kind == "binary":
        per_clip = F.binary_cross_entropy_with_logits(
            mask_logits, binarised_oracle(X_clean, bin_th), reduction="none"
        ).mean((1, 2))
    elif kind == "mse":
        M = mask_logits.sigmoid()
        per_clip = (M * X.float() - X_clean).pow(2).mean((1, 2))
    else:
        raise ValueError(
            f"guidelosstype={kind!r}: use one of {GUIDE_LOSS_TYPES}."
        )
    return g_w * (per_clip * guided.float()).mean()


class LMACBrain(InterpreterBrain):
    """L-MAC: M = sigmoid(psi(hidden)) on the input's first Tmax frames; with
    ``finetuning``, psi starts from ``pretrained_interpreter`` and the guided
    clips get the guidance loss."""

    def on_fit_start(self):
        """With ``finetuning``, ``load_pretrained_interpreter`` before the
        optimiser is made and before a checkpoint of an interrupted run is
        recovered (which then takes precedence)."""
        if self.hparams.finetuning:
            self.load_pretrained_interpreter()
        super().on_fit_start()

    def load_pretrained_interpreter(self):
        """Checks the fine-tuning keys and loads ``pretrained_interpreter``
        into psi (``pretrained.strict_load``: every tensor must fit)."""
        hp = self.hparams
        if hp.crosscortype not in CROSSCOR_TYPES:
            raise ValueError(
                f"crosscortype={hp.crosscortype!r}: use one of {CROSSCOR_TYPES}."
            )
        if hp.guidelosstype not in GUIDE_LOSS_TYPES:
            raise ValueError(
                f"guidelosstype={hp.guidelosstype!r}: use one of "
                f"{GUIDE_LOSS_TYPES}."
            )
        path = hp.pretrained_interpreter
        if not path or not os.path.isfile(path):
            raise FileNotFoundError(
                "finetuning: True needs pretrained_interpreter, the psi "
                "checkpoint of a trained L-MAC run (e.g. <output_folder>/save/"
                f"CKPT+.../psi.ckpt); got pretrained_interpreter={path!r}, "
                "which is not a file."
            )
        strict_load(
            self.modules.psi, path, where=f"pretrained_interpreter={path}"
        )
        logger.info(f"Fine-tuning L-MAC from pretrained_interpreter={path}")

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
            X [B, Tmax, F] and stft cropped to psi's Tmax frames (417 of 431
            for conv2d, 425 for CNN14; ``interpretation.align_to_input``),
            mask [B, Tmax, F] = sigmoid(psi's logits); aux["mask_logits"]
            the logits. Both decoders give X's 513 bins, so nothing is
            resized. The brain's saved files pad the mask back to the whole
            clip (``interpretation.pad_to_input``).
        """
        mask_logits, X, stft = align_to_input(self.modules.psi(hidden), X, stft)
        return Interpretation(
            X=X,
            stft=stft,
            logits=logits,
            mask=mask_logits.sigmoid(),
            aux={"mask_logits": mask_logits},
        )

    def clean_spectrogram(self, result, batch):
        """[B, Tmax, F] log1p magnitude of the batch's clips as loaded,
        before any WHAM! noise or test contamination: result.X itself when
        the clips were interpreted as loaded."""
        clean = batch.sig.data.to(self.device)
        if result.wav is clean or torch.equal(result.wav, clean):
            return result.X
        X_clean, _ = log_spectrogram(self.hparams.compute_stft, clean)
        return X_clean[:, : result.X.shape[1]]

    def interpreter_loss(self, result, batch, stage):
        """``lmac_loss`` of the batch (the masked-in and masked-out inputs go
        through the frozen classifier in one batched pass, with gradient);
        with ``finetuning``, plus ``guidance_loss`` on the clips whose
        masked-in input has ``crosscor`` >= ``crosscor_th`` with the clean
        input (their share is logged as ``in_masks``)."""
        hp = self.hparams
        M, X = result.mask, result.X
        _, io_logits = self.classify(torch.cat([M * X, (1 - M) * X]))
        logits_in, logits_out = io_logits.chunk(2)
        guided, guidance = None, 0.0
        if hp.finetuning:
            X_clean = self.clean_spectrogram(result, batch).float()
            with torch.no_grad():
                score = crosscor(X_clean, (M * X).float(), hp.crosscortype)
            guided = score >= hp.crosscor_th
            result.aux["in_masks"] = guided.float()
            guidance = guidance_loss(
                result.aux["mask_logits"],
                X,
                X_clean,
                guided,
                hp.g_w,
                hp.bin_th,
                hp.guidelosstype,
            )
        loss = lmac_loss(
            logits_in,
            logits_out,
            M,
            result.class_pred,
            hp.l_in_w,
            hp.l_out_w,
            hp.reg_w_l1,
            guided,
        )
        return loss + guidance

    def method_metrics(self, result):
        """With ``finetuning``: ``in_masks``, 1 for a clip the guidance loss
        took (crosscor >= crosscor_th), else 0; its mean is their share."""
        if "in_masks" in result.aux:
            return {"in_masks": result.aux["in_masks"]}
        return {}


def main(argv):
    """Parse, prepare data, load the frozen classifier, train L-MAC (from
    ``pretrained_interpreter`` when ``finetuning``), test."""
    run_interpreter(LMACBrain, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
