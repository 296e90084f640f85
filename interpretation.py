"""The one typed result of every interpretation method.

Authors: the ESC-50 interpretability recipe developers.
"""

from dataclasses import dataclass, field
from typing import Optional

import torch


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
