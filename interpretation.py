"""The one typed result of every interpretation method.

Authors: the ESC-50 interpretability recipe developers.
"""

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F


@dataclass
class Interpretation:
    """What an interpreter returns for a batch of B clips (T frames, F bins).

    Attributes
    ----------
    X : torch.Tensor
        [B, T, F] log1p STFT magnitude of the input.
    stft : torch.Tensor
        [B, T, F, 2] complex STFT (real, imaginary) of the input: its phase
        makes the interpretation listenable.
    logits : torch.Tensor
        [B, C] frozen classifier output on X (no gradient).
    mask : torch.Tensor or None
        [B, T, F] interpretation mask M in [0, 1]; the interpretation is M * X.
        A method whose training loss does not use the mask may leave it None
        in the training stage; it is always set in validation and test.
    aux : dict
        Method-specific tensors the method's loss needs (e.g. PIQ's mask
        logits and quantised codes); empty when there are none.
    wav : torch.Tensor or None
        [B, N] the waveforms as interpreted (after any contamination); set by
        the brain, not by the method.
    """

    X: torch.Tensor
    stft: torch.Tensor
    logits: torch.Tensor
    mask: Optional[torch.Tensor]
    aux: dict = field(default_factory=dict)
    wav: Optional[torch.Tensor] = None

    @property
    def class_pred(self):
        """[B] class predicted by the frozen classifier on X."""
        return self.logits.argmax(1)

    @property
    def X_int(self):
        """[B, T, F] the interpretation M * X."""
        return self.mask * self.X


def crop_to_mask(X, stft, mask):
    """X and its STFT cut to the mask's first frames, as the public recipe
    does (``X[:, :Tmax, :]`` with ``Tmax = mask.shape[-2]``): a decoder whose
    output has fewer frames than the input (e.g. 417 of 431) then covers its
    frames with no shift in time, and the frames after Tmax (the end of the
    clip) are left out of the interpretation.

    Arguments
    ---------
    X : torch.Tensor
        [B, T, F] log1p magnitude.
    stft : torch.Tensor
        [B, T, F, 2] complex STFT of the same input.
    mask : torch.Tensor
        [B, Tmax, F] (or [B, 1, Tmax, F]) mask or mask logits, Tmax <= T,
        with X's F bins.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        X [B, Tmax, F] and stft [B, Tmax, F, 2]: views of the first Tmax
        frames.

    Raises
    ------
    ValueError
        The mask has more frames than X, or not X's number of bins.

    Example
    -------
    >>> X, stft = torch.rand(2, 431, 513), torch.rand(2, 431, 513, 2)
    >>> X_cut, stft_cut = crop_to_mask(X, stft, torch.rand(2, 417, 513))
    >>> X_cut.shape, stft_cut.shape
    (torch.Size([2, 417, 513]), torch.Size([2, 417, 513, 2]))
    """
    frames, bins = mask.shape[-2:]
    if frames > X.shape[1] or bins != X.shape[2]:
        raise ValueError(
            f"A mask of {frames} frames x {bins} bins cannot be cropped from "
            f"an input of {X.shape[1]} frames x {X.shape[2]} bins: it needs "
            "at most the input's frames and exactly its bins."
        )
    return X[:, :frames], stft[:, :frames]


def pad_to_input(result, X, stft):
    """``result``, computed on the first Tmax frames of an input
    (``crop_to_mask``), on all T frames of that input again: X and stft the
    whole input's, the mask padded with zeros after frame Tmax (M = 0 where
    the decoder does not reach: nothing of those frames is kept). For what
    is saved and listened to: the ISTFT of a whole clip needs all its
    frames, and mask.npy then has the [T, F] of every other method.

    Arguments
    ---------
    result : Interpretation
        With X, stft and mask on Tmax <= T frames.
    X : torch.Tensor
        [B, T, F] log1p magnitude of the whole input.
    stft : torch.Tensor
        [B, T, F, 2] its complex STFT.

    Returns
    -------
    Interpretation
        A new one (``result`` is unchanged) with X [B, T, F], stft and mask
        [B, T, F]; logits, aux and wav are ``result``'s.

    Example
    -------
    >>> X, stft = torch.rand(1, 431, 513), torch.rand(1, 431, 513, 2)
    >>> part = Interpretation(
    ...     X[:, :417], stft[:, :417], torch.rand(1, 3), torch.rand(1, 417, 513)
    ... )
    >>> whole = pad_to_input(part, X, stft)
    >>> whole.mask.shape, float(whole.mask[:, 417:].abs().sum())
    (torch.Size([1, 431, 513]), 0.0)
    """
    mask = result.mask
    frames = X.shape[1] - mask.shape[1]
    if frames < 0 or mask.shape[2] != X.shape[2]:
        raise ValueError(
            f"A mask of {mask.shape[1]} frames x {mask.shape[2]} bins does "
            f"not fit in an input of {X.shape[1]} frames x {X.shape[2]} bins."
        )
    tail = mask.new_zeros(mask.shape[0], frames, mask.shape[2])
    return Interpretation(
        X=X,
        stft=stft,
        logits=result.logits,
        mask=torch.cat([mask, tail], 1),
        aux=result.aux,
        wav=result.wav,
    )


def align_to_input(mask_logits, X, stft):
    """A decoder's mask logits and the input on one grid.

    * The decoder gives X's F bins and at most its T frames (PIQ and L-MAC
      conv2d: 417 of 431; L-MAC CNN14: 425): X and stft are cropped to the
      logits' frames (``crop_to_mask``, the public recipe's ``X[:, :Tmax]``),
      so every frame of the mask lies where it was decoded.
    * Otherwise (PIQ-FocalNet's decoder gives 175 x 193 for 431 x 513: no
      axis can be cropped from the input) the logits are resized
      bilinearly to X's [T, F].

    Arguments
    ---------
    mask_logits : torch.Tensor
        [B, 1, T', F'] the decoder's output.
    X, stft : torch.Tensor
        [B, T, F] and [B, T, F, 2].

    Returns
    -------
    (torch.Tensor, torch.Tensor, torch.Tensor)
        logits [B, T*, F] in float32 (a bf16 mask keeps only a handful of
        distinct values), X [B, T*, F] and stft [B, T*, F, 2], with
        T* = T' when cropped, T when resized.
    """
    mask_logits = mask_logits.float()
    frames, bins = mask_logits.shape[-2:]
    if bins != X.shape[-1] or frames > X.shape[1]:
        mask_logits = F.interpolate(
            mask_logits, size=X.shape[-2:], mode="bilinear"
        )
    mask_logits = mask_logits.squeeze(1)
    X, stft = crop_to_mask(X, stft, mask_logits)
    return mask_logits, X, stft
