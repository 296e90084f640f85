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
        return hidden, self.classifier(hidden.mean((-1, -2)).unsqueeze(1)).squeeze(1)


class Cnn14Backbone(torch.nn.Module):
    """CNN14 on the log1p mel spectrogram of the magnitude expm1(X).

    ``embedding_model`` is ``Cnn14(..., return_reps=True)``; ``classifier``
    maps its [B, 1, emb_dim] embedding to logits. Returns hidden = the tuple of
    CNN14's intermediate maps (deepest first) and logits [B, C].
    """

    def __init__(self, embedding_model, classifier, compute_fbank):
        super().__init__()
        self.embedding_model = embedding_model
        self.classifier = classifier
        self.compute_fbank = compute_fbank

    def forward(self, X):
        """X [B, T, F] -> (tuple of CNN14 maps, logits [B, C])."""
        mel = torch.log1p(self.compute_fbank(torch.expm1(X)))
        embedding, hidden = self.embedding_model(mel)
        return hidden, self.classifier(embedding).squeeze(1)
