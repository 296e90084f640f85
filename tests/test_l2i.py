"""L2I's batched interpretation equals a clip-by-clip reference."""

import pytest
import torch
from speechbrain.lobes.models.L2I import NMFDecoderAudio, Theta

from train_l2i import relevant_mask


def reference_mask(H, classes, theta, decoder, relevance_th, eps=1e-10):
    """METHODS.md §4 clip by clip, component set by component set."""
    W = decoder.return_W()
    masks = []
    for h, c in zip(H, classes):
        z = theta.hard_att(h.unsqueeze(0)).squeeze()
        r = theta.classifier[0].weight[c] * z
        r = r / r.abs().max().clamp(min=eps)
        L = [k for k in range(len(r)) if r[k] > relevance_th]
        full = W @ torch.relu(h)
        part = W[:, L] @ torch.relu(h[L]) if L else torch.zeros_like(full)
        masks.append((part / (full + eps)).clamp(0, 1))
    return torch.stack(masks)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_mask_equals_clip_by_clip(seed):
    torch.manual_seed(seed)
    K, T, F, C, B = 12, 30, 40, 5, 6
    theta, decoder = (
        Theta(n_comp=K, T=T, num_classes=C),
        NMFDecoderAudio(n_comp=K, n_freq=F),
    )
    H = torch.rand(B, K, T) * (torch.rand(B, K, 1) > 0.3)
    classes = torch.randint(0, C, (B,))
    with torch.no_grad():
        batched = relevant_mask(
            H, decoder(H), classes, theta, decoder, relevance_th=0.2
        )
        reference = reference_mask(H, classes, theta, decoder, relevance_th=0.2)
    assert batched.shape == (B, F, T)
    assert torch.allclose(batched, reference, atol=1e-6)
    assert 0 < batched.mean() < 1  # some components kept, not all
