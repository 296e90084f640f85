"""Frozen-classifier backbones: one interface, whatever the architecture.

Each backbone maps the log1p STFT magnitude X [B, T, F] to
``(hidden, logits)``: the hidden representation an interpreter decodes, and
the classifier's output [B, C]. Method scripts only ever call ``backbone(X)``,
so they do not know which architecture they explain (METHODS.md §3). The
embedding model and the classifier stay separate submodules, because their
checkpoints are separate files.

Authors: the ESC-50 interpretability recipe developers.
"""

import torch


class Conv2dBackbone(torch.nn.Module):
    """conv2d: ``Conv2dEncoder_v2`` on X; the embedding is the mean of its map.

    Returns hidden [B, D, T', F'] (the encoder's map) and logits [B, C].
    """

    def __init__(self, embedding_model, classifier):
        super().__init__()
        self.embedding_model = embedding_model
        self.classifier = classifier

    def forward(self, X):
        """X [B, T, F] -> (hidden [B, D, T', F'], logits [B, C])."""
        hidden = self.embedding_model(X)
        return hidden, self.classifier(
            hidden.mean((-1, -2)).unsqueeze(1)
        ).squeeze(1)


class Cnn14Backbone(torch.nn.Module):
    """CNN14 on the mel spectrogram of the magnitude expm1(X).

    ``embedding_model`` is ``Cnn14(..., return_reps=True)``; ``classifier``
    maps its [B, 1, emb_dim] embedding to logits. Returns hidden = the tuple of
    CNN14's intermediate maps (deepest first) and logits [B, C].

    The mel features are ``compute_fbank(|STFT|)``, then log1p when ``log1p``
    is True. The hub's speechbrain/cnn14-esc50 was trained on
    ``Filterbank(log_mel=True)`` (dB, 80 dB floor) of |STFT| at 44.1 kHz
    (its hyperparams.yaml; ``log1p`` False); the public interpretability
    recipe's own CNN14 on log1p of a linear ``Filterbank(log_mel=False)``
    at 16 kHz (``log1p`` True).

    Arguments
    ---------
    embedding_model : speechbrain.lobes.models.Cnn14.Cnn14
    classifier : torch.nn.Module
        [B, 1, emb_dim] -> [B, 1, C] (ECAPA ``Classifier``) or [B, C].
    compute_fbank : speechbrain.processing.features.Filterbank
    log1p : bool
        Whether log1p is applied to the filterbank's output.
    """

    def __init__(self, embedding_model, classifier, compute_fbank, log1p=True):
        super().__init__()
        self.embedding_model = embedding_model
        self.classifier = classifier
        self.compute_fbank = compute_fbank
        self.log1p = log1p

    def forward(self, X):
        """X [B, T, F] -> (tuple of CNN14 maps, logits [B, C])."""
        mel = self.compute_fbank(torch.expm1(X))
        if self.log1p:
            mel = torch.log1p(mel)
        embedding, hidden = self.embedding_model(mel)
        logits = self.classifier(embedding)
        return hidden, logits.reshape(len(logits), -1)


def spectrogram_as_image(X, image_size):
    """X [B, T, F] -> [B, 3, image_size, image_size]: bilinear resize (with
    antialiasing, as torchvision's ``resize`` of a tensor) repeated to the
    three channels an ImageNet architecture expects (METHODS.md §3)."""
    image = torch.nn.functional.interpolate(
        X.unsqueeze(1),
        size=(image_size, image_size),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )
    return image.expand(-1, 3, -1, -1)


class FocalNetBackbone(torch.nn.Module):
    """FocalNet: transformers ``FocalNetBackbone`` on X seen as an image; the
    embedding is the mean of its last feature map, classified by an ECAPA
    cosine ``Classifier``.

    ``forward`` returns hidden = the last feature map [B, D, h, w] (what
    ``PIQ.VectorQuantizedPSIFocalNet_Audio`` decodes) and logits [B, C].
    ``activation_maps`` returns, instead of hidden, the modulators of AMT
    (METHODS.md §4): the output of ``modulation.projection_context`` of the
    last layer of every encoder stage, L2 norm over channels.

    Arguments
    ---------
    embedding_model : transformers.FocalNetBackbone
        Built from a ``FocalNetConfig`` whose ``out_features`` include the last stage.
    classifier : torch.nn.Module
        [B, 1, D] embedding -> [B, 1, C] scores.

    Example
    -------
    >>> from transformers import FocalNetConfig, FocalNetBackbone as HFFocalNet
    >>> from speechbrain.lobes.models.ECAPA_TDNN import Classifier
    >>> config = FocalNetConfig(
    ...     embed_dim=4, depths=[1, 1], hidden_sizes=[8, 8], image_size=32
    ... )
    >>> head = Classifier(8, out_neurons=3, lin_blocks=1).eval()
    >>> backbone = FocalNetBackbone(HFFocalNet(config).eval(), head)
    >>> hidden, logits = backbone(torch.rand(2, 431, 513))
    >>> hidden.shape, logits.shape
    (torch.Size([2, 8, 4, 4]), torch.Size([2, 3]))
    >>> [m.shape for m in backbone.activation_maps(torch.rand(2, 431, 513))[0]]
    [torch.Size([2, 8, 8]), torch.Size([2, 4, 4])]
    """

    def __init__(self, embedding_model, classifier):
        super().__init__()
        self.embedding_model = embedding_model
        self.classifier = classifier

    def forward(self, X):
        """X [B, T, F] -> (last feature map [B, D, h, w], logits [B, C])."""
        image = spectrogram_as_image(X, self.embedding_model.config.image_size)
        hidden = self.embedding_model(image).feature_maps[-1]
        return hidden, self.classifier(
            hidden.mean((-1, -2)).unsqueeze(1)
        ).squeeze(1)

    def activation_maps(self, X):
        """X [B, T, F] -> (list of modulator norms [B, h_s, w_s], one per
        encoder stage, shallowest first; logits [B, C])."""
        modulators = []
        hooks = [
            stage.layers[
                -1
            ].modulation.projection_context.register_forward_hook(
                lambda module, inputs, output: modulators.append(output)
            )
            for stage in self.embedding_model.focalnet.encoder.stages
        ]
        try:
            _, logits = self(X)
        finally:
            for hook in hooks:
                hook.remove()
        return [modulator.norm(p=2, dim=1) for modulator in modulators], logits


class ViTBackbone(torch.nn.Module):
    """ViT: transformers ``ViTModel`` on X seen as an image; the embedding is
    the mean over all tokens (CLS included) of ``last_hidden_state``,
    classified by an ECAPA cosine ``Classifier``.

    ``forward`` returns hidden = the patch tokens on their grid [B, D, g, g]
    (what ``PIQ.VectorQuantizedPSIViT_Audio`` decodes; g = image_size //
    patch_size, rows along time) and logits [B, C]. ``activation_maps``
    returns, instead of hidden, AMT's map (METHODS.md §4): the last layer's
    attention of the CLS token to the patch tokens, averaged over heads,
    [B, g, g]. It needs the model built with ``attn_implementation="eager"``
    (under ``sdpa`` no attention map is returned).

    Example
    -------
    >>> from transformers import ViTConfig, ViTModel
    >>> from speechbrain.lobes.models.ECAPA_TDNN import Classifier
    >>> config = ViTConfig(
    ...     hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
    ...     intermediate_size=16, image_size=32, patch_size=8,
    ...     attn_implementation="eager",
    ... )
    >>> head = Classifier(8, out_neurons=3, lin_blocks=1).eval()
    >>> backbone = ViTBackbone(ViTModel(config).eval(), head)
    >>> hidden, logits = backbone(torch.rand(2, 431, 513))
    >>> hidden.shape, logits.shape
    (torch.Size([2, 8, 4, 4]), torch.Size([2, 3]))
    >>> [m.shape for m in backbone.activation_maps(torch.rand(2, 431, 513))[0]]
    [torch.Size([2, 4, 4])]
    """

    def __init__(self, embedding_model, classifier):
        super().__init__()
        self.embedding_model = embedding_model
        self.classifier = classifier

    def encode(self, X, output_attentions=False):
        """X [B, T, F] -> (ViT output, logits [B, C])."""
        image = spectrogram_as_image(X, self.embedding_model.config.image_size)
        output = self.embedding_model(
            image, output_attentions=output_attentions
        )
        return output, self.classifier(
            output.last_hidden_state.mean(1, keepdim=True)
        ).squeeze(1)

    def forward(self, X):
        """X [B, T, F] -> (patch tokens [B, D, g, g], logits [B, C])."""
        output, logits = self.encode(X)
        patches = output.last_hidden_state[:, 1:].transpose(1, 2)
        grid = (
            self.embedding_model.config.image_size
            // self.embedding_model.config.patch_size
        )
        return patches.reshape(len(patches), -1, grid, grid), logits

    def activation_maps(self, X):
        """X [B, T, F] -> ([CLS-to-patch attention of the last layer
        [B, g, g]], logits [B, C])."""
        output, logits = self.encode(X, output_attentions=True)
        if not output.attentions or output.attentions[-1] is None:
            raise RuntimeError(
                "The ViT returned no attention maps: build its ViTConfig "
                "with attn_implementation: eager."
            )
        attention = output.attentions[-1][
            :, :, 0
        ]  # [B, heads, keys]: the CLS token's query
        assert attention.numel() > 0, "empty ViT attention map"
        assert torch.allclose(
            attention.float().sum(-1),
            attention.new_ones(attention.shape[:2]).float(),
            atol=1e-2,
        ), "ViT attention does not sum to one over keys"
        grid = (
            self.embedding_model.config.image_size
            // self.embedding_model.config.patch_size
        )
        return [
            attention[..., 1:].mean(1).reshape(len(attention), grid, grid)
        ], logits
