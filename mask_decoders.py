"""L-MAC's conv2d decoder: a frozen classifier's hidden representation ->
mask logits on a time-frequency grid (METHODS.md §4, L-MAC).

``Conv2dMaskDecoder``: the conv2d classifier's map [B, D, T', F'] -> [B, 1,
16 T' + 1, 16 F' + 1] (417 x 513 for the 26 x 32 map of a 5 s clip): a
residual adapter, then the transposed convolutions of speechbrain's PIQ
decoder (``PIQ.VectorQuantizedPSI_Audio``) without vector quantisation.
L-MAC on CNN14 uses speechbrain's own ``Cnn14.CNN14PSI_stft``, as the public
recipe does.

It returns logits; the script crops the input to their frames
(``interpretation.align_to_input``) and applies the sigmoid.

Authors: the ESC-50 interpretability recipe developers.
"""

import torch
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
