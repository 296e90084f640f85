"""Interpretation metrics as pure functions over tensors (METHODS.md §5).

Every function takes tensors that were computed once per batch (probabilities,
predicted classes, masks) and returns ONE VALUE PER CLIP, shape ``[B]``. Means
over a dataset are taken by the caller, so sums can be reduced across
processes before dividing. Nothing here runs a model.

Notation: ``p``, ``p_in`` and ``p_out`` are softmax probabilities ``[B, C]`` of
the frozen classifier on the original input X, on the masked-in input M*X and on
the masked-out input (1-M)*X; ``c`` ``[B]`` is the class predicted on X; all
probabilities are read at ``c``. Softmax is applied once, by the caller.

Direction of each metric (``HIGHER_IS_BETTER``): accuracy, fidelity_in,
faithfulness, AI, AG and SPS are better when higher; AD and COMP when lower.

Localisation (``localisation_metrics``), only where the data has a ground
truth: the box [B, T, F] of the bins that hold the planted class evidence
(``evidence_boxes``, from ``meta/evidence.json`` of ``synthetic_esc50.py``).
evidence_mass, evidence_mass_ratio and pointing_game are better when higher.

Example
-------
>>> import torch
>>> p = torch.tensor([[0.7, 0.3], [0.2, 0.8]])
>>> c = p.argmax(1)
>>> average_drop(p, p, c)
tensor([0., 0.])
>>> faithfulness(p, p, c)
tensor([0., 0.])
"""

import torch

HIGHER_IS_BETTER = {
    "accuracy": True,
    "fidelity_in": True,
    "faithfulness": True,
    "AI": True,
    "AD": False,
    "AG": True,
    "SPS": True,
    "COMP": False,
    "evidence_mass": True,
    "evidence_mass_ratio": True,
    "pointing_game": True,
}


def _at_class(p, c):
    """Reads ``p [B, C]`` at the classes ``c [B]``; returns ``[B]``."""
    return p.gather(1, c.long().unsqueeze(1)).squeeze(1)


def accuracy(p, labels):
    """1 where ``argmax p == label``, else 0. p: [B, C], labels: [B]. Higher is better."""
    return (p.argmax(1) == labels).float()


def input_fidelity(p_in, c):
    """Fid-In = [argmax p_in == c]. p_in: [B, C], c: [B]. Higher is better."""
    return (p_in.argmax(1) == c).float()


def faithfulness(p, p_out, c):
    """FF = p_c - p_out_c: how much removing the interpretation costs the
    decision. p, p_out: [B, C], c: [B]. Higher is better."""
    return _at_class(p, c) - _at_class(p_out, c)


def average_increase(p, p_in, c):
    """AI = 100 * [p_in_c > p_c]. p, p_in: [B, C], c: [B]. Higher is better."""
    return 100.0 * (_at_class(p_in, c) > _at_class(p, c)).float()


def average_drop(p, p_in, c, eps=1e-12):
    """AD = 100 * max(0, p_c - p_in_c) / p_c. p, p_in: [B, C] probabilities
    (NOT logits), c: [B]. Lower is better."""
    p_c, p_in_c = _at_class(p, c), _at_class(p_in, c)
    return 100.0 * (p_c - p_in_c).clamp(min=0) / p_c.clamp(min=eps)


def average_gain(p, p_in, c, eps=1e-12):
    """AG = 100 * max(0, p_in_c - p_c) / (1 - p_c). p, p_in: [B, C], c: [B].
    Higher is better."""
    p_c, p_in_c = _at_class(p, c), _at_class(p_in, c)
    return 100.0 * (p_in_c - p_c).clamp(min=0) / (1.0 - p_c).clamp(min=eps)


def sparseness(mask):
    """SPS: Gini index of |M| per clip (Quantus ``Sparseness``), in [0, 1).

    For the n values a_(1) <= ... <= a_(n) of |M|:
    G = sum_i (2i - n - 1) a_(i) / (n sum_i a_(i)).
    mask: [B, ...]. Returns [B]; NaN for an all-zero mask, whose Gini index is
    undefined (the caller counts and excludes those). Higher is better.
    """
    a = mask.detach().abs().flatten(1).double().sort(dim=1).values
    n = a.shape[1]
    i = torch.arange(1, n + 1, device=a.device, dtype=a.dtype)
    total = a.sum(1)
    gini = ((2 * i - n - 1) * a).sum(1) / (n * total)
    return torch.where(total > 0, gini, torch.full_like(gini, float("nan")))


def complexity(mask):
    """COMP: entropy (nats) of the distribution |M| / sum|M| per clip (Quantus
    ``Complexity``), in [0, log n].

    mask: [B, ...]. Returns [B]; NaN for an all-zero mask (undefined).
    Lower is better.
    """
    a = mask.detach().abs().flatten(1).double()
    total = a.sum(1, keepdim=True)
    q = a / total.clamp(min=torch.finfo(a.dtype).tiny)
    entropy = -torch.special.xlogy(q, q).sum(1)
    return torch.where(
        total.squeeze(1) > 0, entropy, torch.full_like(entropy, float("nan"))
    )


def per_clip_metrics(p, p_in, p_out, mask, labels):
    """All metrics of METHODS.md §5 for one batch, one value per clip.

    Arguments
    ---------
    p, p_in, p_out : torch.Tensor
        [B, C] softmax probabilities on X, M*X and (1-M)*X.
    mask : torch.Tensor
        [B, T, F] interpretation mask M in [0, 1].
    labels : torch.Tensor
        [B] true class indices (in the classifier's own label mapping).

    Returns
    -------
    dict
        name -> [B] tensor; SPS and COMP hold NaN for all-zero masks
        (``UNDEFINED_FOR_EMPTY_MASK``).
    """
    c = p.argmax(1)
    return {
        "accuracy": accuracy(p, labels),
        "fidelity_in": input_fidelity(p_in, c),
        "faithfulness": faithfulness(p, p_out, c),
        "AI": average_increase(p, p_in, c),
        "AD": average_drop(p, p_in, c),
        "AG": average_gain(p, p_in, c),
        "SPS": sparseness(mask),
        "COMP": complexity(mask),
    }


def evidence_boxes(records, shape, sample_rate, hop_length, n_fft):
    """Where the planted evidence of each clip lies on the spectrogram.

    Frame t is at t * hop_length / sample_rate s, bin f at f * sample_rate /
    n_fft Hz; a bin is in the box when both lie in the record's closed
    [start_s, end_s] x [low_hz, high_hz].

    Arguments
    ---------
    records : list of dict
        B records with ``start_s``, ``end_s``, ``low_hz``, ``high_hz``.
    shape : tuple
        (T, F) of the spectrogram.
    sample_rate, hop_length, n_fft : int
        Hz, samples, samples of the STFT.

    Returns
    -------
    torch.Tensor
        [B, T, F] bool, on the CPU (the caller moves it to the mask's device).
    """
    grid = {"dtype": torch.float64, "device": "cpu"}
    t = torch.arange(shape[0], **grid) * hop_length / sample_rate
    f = torch.arange(shape[1], **grid) * sample_rate / n_fft
    boxes = [
        ((t >= r["start_s"]) & (t <= r["end_s"]))[:, None]
        & ((f >= r["low_hz"]) & (f <= r["high_hz"]))[None, :]
        for r in records
    ]
    return torch.stack(boxes)


def localisation_metrics(mask, box):
    """How much of each mask lies on the ground-truth evidence.

    With m = |M| and A = mean(box) (the box's share of the T x F bins):
    * ``evidence_mass`` = sum(m * box) / sum(m), in [0, 1];
    * ``evidence_mass_ratio`` = evidence_mass / A: 1.0 for a uniform mask,
      1 / A for a mask exactly on the box, 0 for one entirely outside;
    * ``pointing_game`` = share of the bins where m reaches its maximum that
      lie in the box: 1 or 0 when the maximum is unique (the pointing game's
      hit), and fair to ties (a uniform mask scores A);
    * ``evidence_area`` = A (no direction: what the ratio is relative to).
    All are better when higher but the area. A clip whose mask is all zero
    points nowhere: NaN there, left out of the mean like SPS/COMP.

    Arguments
    ---------
    mask : torch.Tensor
        [B, T, F] mask M in [0, 1].
    box : torch.Tensor
        [B, T, F] bool, ``evidence_boxes``; each box must be non-empty.

    Returns
    -------
    dict
        name -> [B] float64 tensor.
    """
    m = mask.detach().abs().flatten(1).double()
    inside = box.flatten(1).to(m.device)
    total = m.sum(1)
    area = inside.double().mean(1)
    mass = (m * inside).sum(1) / total
    peaks = m == m.amax(1, keepdim=True)
    hit = (peaks & inside).sum(1).double() / peaks.sum(1)
    empty = total == 0
    nan = torch.full_like(mass, float("nan"))
    return {
        "evidence_mass": torch.where(empty, nan, mass),
        "evidence_mass_ratio": torch.where(empty, nan, mass / area),
        "pointing_game": torch.where(empty, nan, hit),
        "evidence_area": area,
    }


# Undefined for an all-zero mask: such a clip is left out of their mean.
UNDEFINED_FOR_EMPTY_MASK = (
    "SPS",
    "COMP",
    "evidence_mass",
    "evidence_mass_ratio",
    "pointing_game",
)


def batch_sums(values, ids):
    """Sums over the clips of a batch of every per-clip figure, the input of
    ``means_from_sums``.

    Arguments
    ---------
    values : dict
        name -> [B] per-clip values (``per_clip_metrics`` and any others).
    ids : list of str
        The B clip ids, to name the culprits of an error.

    Returns
    -------
    dict
        name -> 0-dim float64 tensor on the device of ``values``: the sum
        over the clips, those of
        ``UNDEFINED_FOR_EMPTY_MASK`` over the clips whose mask is not all zero; plus ``n_clips`` and
        ``n_defined_masks``.

    Raises
    ------
    ValueError
        Any figure but those of ``UNDEFINED_FOR_EMPTY_MASK`` is NaN or
        infinite for some clip: a mean that silently skipped it would be
        wrong.
    """
    device = next(iter(values.values())).device if values else None
    sums = {
        "n_clips": torch.tensor(
            float(len(ids)), dtype=torch.float64, device=device
        )
    }
    for name, value in values.items():
        value = value.detach().double()
        if name in UNDEFINED_FOR_EMPTY_MASK:
            sums[name] = value.nansum()
            defined = (~torch.isnan(value)).double().sum()
            sums["n_defined_masks"] = defined
            continue
        bad = (~torch.isfinite(value)).nonzero().flatten().tolist()
        if bad:
            raise ValueError(
                f"{name} is {value[bad[0]].item()} for clip(s) "
                f"{[ids[i] for i in bad]}: the classifier or the mask gave "
                "non-finite values there (check the clip's audio and the "
                "checkpoints; under --precision fp16 try bf16 or fp32)."
            )
        sums[name] = value.sum()
    return sums


def means_from_sums(sums):
    """Dataset-level means from per-clip sums accumulated over batches.

    Arguments
    ---------
    sums : dict
        name -> float sum over clips of each per-clip figure, plus
        ``n_clips`` (number of clips) and ``n_defined_masks`` (clips whose
        mask is not all zero).

    Returns
    -------
    dict
        ``n_clips``, ``n_empty_masks``, then each figure's mean: the metrics
        of ``HIGHER_IS_BETTER`` first, the others after, by name. Those of
        ``UNDEFINED_FOR_EMPTY_MASK`` are averaged over the clips with a
        defined value (None if there are none); every other figure over all
        clips (None if there are none).
    """
    sums = dict(sums)
    n_clips, n_defined = sums.pop("n_clips"), sums.pop("n_defined_masks")
    stats = {"n_clips": int(n_clips), "n_empty_masks": int(n_clips - n_defined)}
    others = sorted(set(sums) - set(HIGHER_IS_BETTER))
    for name in [n for n in HIGHER_IS_BETTER if n in sums] + others:
        undefined = name in UNDEFINED_FOR_EMPTY_MASK
        denominator = n_defined if undefined else n_clips
        stats[name] = sums[name] / denominator if denominator else None
    return stats
