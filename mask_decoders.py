"""L-MAC's decoders: a frozen classifier's hidden representation -> mask
logits on a time-frequency grid (METHODS.md §4, L-MAC).

* ``Conv2dMaskDecoder``: the conv2d classifier's map [B, D, T', F'] -> [B, 1,
  16 T' + 1, 16 F' + 1] (417 x 513 for the 26 x 32 map of a 5 s clip): a
  residual adapter, then the transposed convolutions of speechbrain's PIQ
  decoder (``PIQ.VectorQuantizedPSI_Audio``) without vector quantisation.
* ``Cnn14MaskDecoder``: speechbrain's ``L2I.CNN14PSI_stft_2d`` on CNN14's
  tuple of maps, stopped before its last ReLU and its mean over frequency:
  [B, K, 431, 513] for a 5 s clip, where the library class returns the
  non-negative [B, K, 431] (a sigmoid of which never falls below 0.5).

Both return logits; the script resizes them to the input's [T, F] and
applies the sigmoid.

Authors: the ESC-50 interpretability recipe developers.
"""

import torch
from speechbrain.lobes.models.L2I import CNN14PSI_stft_2d
from speechbrain.lobes.models.PIQ import ResBlockAudio, weights_init


class Conv2dMaskDecoder(torch.nn.Module):
    """Hidden map [B, dim, T', F'] -> mask logits [B, 1, 16 T' + 1, 16 F' + 1].

    Arguments
    ---------
    dim : int
        Channels of the hidden map, kept through the decoder.

    Example
    -------
    >>> decoder = Conv2dMaskDecoder(dim=8)
    >>> decoder(torch.rand(2, 8, 26, 32)).shape
    torch.Size([2, 1, 417, 513])
    """

    def __init__(self, dim):
        super().__init__()
        self.adapter = ResBlockAudio(dim)
        layers = [torch.nn.ConvTranspose2d(dim, dim, 3, 2, 1)]
        for _ in range(3):
            layers += [torch.nn.ReLU(), torch.nn.BatchNorm2d(dim)]
            layers += [torch.nn.ConvTranspose2d(dim, dim, 4, 2, 1)]
        layers += [torch.nn.ReLU(), torch.nn.BatchNorm2d(dim)]
        layers += [torch.nn.ConvTranspose2d(dim, 1, 12, 1, 1)]
        self.decoder = torch.nn.Sequential(*layers)
        # xavier-uniform convolutions, zero biases (as PIQ's decoder)
        self.adapter.apply(weights_init)
        self.decoder.apply(weights_init)

    def forward(self, hidden):
        """[B, dim, T', F'] -> mask logits [B, 1, 16 T' + 1, 16 F' + 1]."""
        return self.decoder(self.adapter(hidden))


class Cnn14MaskDecoder(CNN14PSI_stft_2d):
    """CNN14's maps (deepest first) -> mask logits [B, K, 431, 513] for a
    5 s clip: ``CNN14PSI_stft_2d``'s layers (same parameters, same
    checkpoint keys) without the final ReLU and mean over frequency.

    Arguments
    ---------
    dim : int
        CNN14's embedding size (channels of its deepest map).
    K : int
        Output channels (1 for a mask).

    Example
    -------
    >>> decoder = Cnn14MaskDecoder(dim=16, K=1)
    >>> maps = [
    ...     torch.rand(2, 16, 13, 2),
    ...     torch.rand(2, 8, 13, 2),
    ...     torch.rand(2, 4, 26, 5),
    ...     torch.rand(2, 2, 53, 10),
    ... ]
    >>> decoder(maps).shape
    torch.Size([2, 1, 431, 513])
    """

    def forward(self, hs, labels=None):
        """Tuple of CNN14 maps -> mask logits [B, K, T'', F'']; ``labels``
        is unused (the library's signature)."""
        relu = self.nonl
        h = relu(self.convt1(hs[0])) + relu(self.convt2(hs[1]))
        h = relu(self.convt3(h)) + relu(self.convt4(hs[2]))
        h = relu(self.convt5(h)) + relu(self.convt6(hs[3]))
        h = relu(self.convt8(relu(self.convt7(h))))
        return self.convt9(h)
