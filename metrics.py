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
evidence_mass, evidence_mass_ratio, pointing_game, roc_auc, topk_iou and
topk_f1 are better when higher. The same functions score any binary ground
truth of the bins (e.g. the ideal binary mask of a mixture).

Deletion and insertion (``top_fraction_masks``, ``curve_area``; the classifier
passes are the brain's): the area under p_c as the most relevant bins are
removed from X (``deletion_auc``, lower is better) or kept alone
(``insertion_auc``, higher is better).

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
    "roc_auc": True,
    "topk_iou": True,
    "topk_f1": True,
    "deletion_auc": False,
    "insertion_auc": True,
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


def _midranks(values):
    """1-based ranks of the ascending-sorted rows ``values`` [B, n], tied
    values sharing the mean of their ranks (the Mann-Whitney midranks).
    Returns [B, n] float64."""
    n = values.shape[1]
    position = torch.arange(n, device=values.device).expand_as(values)
    first = torch.ones_like(values, dtype=torch.bool)  # a run of ties starts
    first[:, 1:] = values[:, 1:] != values[:, :-1]
    last = torch.ones_like(first)  # a run of ties ends
    last[:, :-1] = first[:, 1:]
    start = torch.where(first, position, 0).cummax(1).values
    end = torch.where(last, position, n - 1).flip(1).cummin(1).values.flip(1)
    return (start + end).double() / 2 + 1


def roc_auc(mask, truth):
    """ROC AUC of the mask's values as a score of the ground-truth bins.

    The probability that a bin of the truth scores above a bin outside it,
    ties counted half: the Mann-Whitney U over n_pos * n_neg. With r_i the
    midranks of the n = T*F values (ascending, tied values sharing the mean
    of their ranks) and P the truth's bins:
    AUC = (sum_{i in P} r_i - n_pos (n_pos + 1) / 2) / (n_pos * n_neg).
    Exactly sklearn's ``roc_auc_score`` (and Quantus ``AUC``, which
    integrates sklearn's ``roc_curve``), computed from one sort per clip on
    the mask's device. 1 for a mask above the truth everywhere, 0 for one
    below it everywhere, 0.5 for a constant mask (an all-zero one included).

    Arguments
    ---------
    mask : torch.Tensor
        [B, ...] scores (the values as they are: the caller takes abs).
    truth : torch.Tensor
        [B, ...] bool ground truth, the shape of ``mask``.

    Returns
    -------
    torch.Tensor
        [B] float64; NaN where the truth is all in or all out (no AUC).
        Higher is better.
    """
    m = mask.detach().flatten(1)
    return _roc_auc_sorted(m.sort(dim=1), truth.flatten(1).to(m.device).bool())


def _roc_auc_sorted(ascending, inside):
    """``roc_auc`` from the rows' ascending sort ``(values, order)`` [B, n]
    and the truth ``inside`` [B, n] bool."""
    values, order = ascending
    rank_sum = (_midranks(values) * inside.gather(1, order)).sum(1)
    n_pos = inside.sum(1).double()
    n_neg = inside.shape[1] - n_pos
    auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg).clamp(min=1)
    trivial = (n_pos == 0) | (n_neg == 0)
    return torch.where(trivial, torch.full_like(auc, float("nan")), auc)


def _top_k_overlap(mask, truth):
    """(I, k), both [B] float64: k = number of truth bins, I = overlap of
    the mask's top-k bins with the truth, a tie at the k-th value shared
    fractionally (``topk_iou``)."""
    m = mask.detach().flatten(1)
    inside = truth.flatten(1).to(m.device).bool()
    return _top_k_overlap_sorted(m, m.sort(dim=1).values, inside)


def _top_k_overlap_sorted(m, ascending, inside):
    """``_top_k_overlap`` from the scores m [B, n], their rows sorted
    ascending, and the truth ``inside`` [B, n] bool."""
    k = inside.sum(1)
    n = m.shape[1]
    kth = ascending.gather(1, (n - k).clamp(max=n - 1)[:, None])
    above, tied = m > kth, m == kth
    share = (k - above.sum(1)).double() / tied.sum(1)
    overlap = (above & inside).sum(1).double()
    overlap = overlap + share * (tied & inside).sum(1).double()
    return overlap, k.double()


def _iou(overlap, k):
    """I / (2k - I), the IoU of a k-bin selection with a k-bin truth."""
    return overlap / (2 * k - overlap).clamp(min=1)


def topk_iou(mask, truth):
    """IoU of the mask's k most relevant bins with the truth, k = its size.

    S_k = the k bins of highest mask value, k = |truth|; IoU = |S_k & truth| /
    |S_k | truth| = I / (2k - I) with I = |S_k & truth|. Ties at the k-th
    value: the r bins still to choose among the t bins tied there are shared,
    each tied bin counting r / t (every bin above counts 1). I is then the
    expected overlap over all orders of the ties, and the IoU that of the
    soft selection w (sum w = k) with the truth, sum min(w, truth) /
    sum max(w, truth); with no tie at the k-th value it is the ordinary IoU.
    A constant mask (an all-zero one included) scores k / (2n - k), chance.

    Arguments
    ---------
    mask : torch.Tensor
        [B, ...] scores (as they are: the caller takes abs).
    truth : torch.Tensor
        [B, ...] bool, the shape of ``mask``.

    Returns
    -------
    torch.Tensor
        [B] float64 in [0, 1]; NaN where the truth is empty (k = 0).
        Higher is better.
    """
    overlap, k = _top_k_overlap(mask, truth)
    iou = _iou(overlap, k)
    return torch.where(k == 0, torch.full_like(iou, float("nan")), iou)


def topk_f1(mask, truth):
    """F1 (Dice) of the mask's k most relevant bins with the truth, k = its
    size: 2 I / (|S_k| + |truth|) = I / k, which is also the top-k precision
    and recall (Quantus ``TopKIntersection`` with that k, and
    ``RelevanceRankAccuracy``). S_k, I and the tie rule as ``topk_iou``: I / k
    is the expected F1 over the orders of the ties. A constant mask scores
    k / n, chance.

    Arguments
    ---------
    mask : torch.Tensor
        [B, ...] scores (as they are: the caller takes abs).
    truth : torch.Tensor
        [B, ...] bool, the shape of ``mask``.

    Returns
    -------
    torch.Tensor
        [B] float64 in [0, 1]; NaN where the truth is empty.
        Higher is better.
    """
    overlap, k = _top_k_overlap(mask, truth)
    f1 = overlap / k.clamp(min=1)
    return torch.where(k == 0, torch.full_like(f1, float("nan")), f1)


def relevance_ranks(mask):
    """Rank of every bin by decreasing mask value: 0 for the most relevant.

    Ties are ordered by the bins' flat index (``torch.argsort(...,
    stable=True)``: for [B, T, F], earlier frames first, then lower
    frequency bins), so the order, and the deletion and insertion inputs,
    are deterministic.

    Arguments
    ---------
    mask : torch.Tensor
        [B, ...] mask values.

    Returns
    -------
    torch.Tensor
        [B, ...] int64, each row a permutation of 0 .. n - 1.
    """
    m = mask.detach().flatten(1)
    order = m.argsort(dim=1, descending=True, stable=True)
    position = torch.arange(m.shape[1], device=m.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, position).view(mask.shape)


def top_fraction_masks(mask, steps):
    """The S + 1 keep-masks of the insertion curve, step s = 0 .. S.

    Step s keeps the floor(s n / S) most relevant of the n bins of each clip
    (``relevance_ranks``; q = s / S is the nominal fraction): the insertion
    input is X * keep (only those bins, the rest silent, 0), the deletion
    input X * ~keep (those bins removed). Step 0 keeps nothing, step S all.

    Arguments
    ---------
    mask : torch.Tensor
        [B, ...] mask values.
    steps : int
        S >= 1.

    Yields
    ------
    torch.Tensor
        [B, ...] bool, one step at a time (memory: one mask of ranks).
    """
    if steps < 1:
        raise ValueError(f"curve_steps must be >= 1 here, not {steps}.")
    ranks = relevance_ranks(mask)
    n = ranks[0].numel()
    for s in range(steps + 1):
        yield ranks < (s * n) // steps


def curve_area(p):
    """Area under a curve sampled at q = 0, 1/S, ..., 1 (trapezoid rule):
    (sum_s p_s - (p_0 + p_S) / 2) / S.

    p: [B, S + 1], S >= 1 (e.g. p_c along the deletion or insertion
    curve). Returns [B] float64, in [0, 1] for probabilities. Deletion: lower
    is better; insertion: higher is better.
    """
    steps = p.shape[1] - 1
    if steps < 1:
        raise ValueError("A curve needs at least 2 points (S >= 1).")
    return torch.trapezoid(p.double(), dx=1.0 / steps, dim=1)


def localisation_metrics(mask, box):
    """How much of each mask lies on the ground truth, and how well its
    values rank the truth's bins above the others.

    With m = |M| and A = mean(box) (the truth's share of the T x F bins):
    * ``evidence_mass`` = sum(m * box) / sum(m), in [0, 1] (Quantus
      ``RelevanceMassAccuracy``);
    * ``evidence_mass_ratio`` = evidence_mass / A: 1.0 for a uniform mask,
      1 / A for a mask exactly on the box, 0 for one entirely outside;
    * ``pointing_game`` = share of the bins where m reaches its maximum that
      lie in the box: 1 or 0 when the maximum is unique (the pointing game's
      hit), and fair to ties (a uniform mask scores A);
    * ``roc_auc`` = ``roc_auc(m, box)``: 0.5 for a constant mask;
    * ``topk_iou``, ``topk_f1`` = ``topk_iou(m, box)``, ``topk_f1(m, box)``,
      k = |box|: chance k / (2n - k) and A for a constant mask;
    * ``evidence_area`` = A (no direction: what the ratio is relative to).
    All are better when higher but the area.

    Undefined values are NaN, left out of that key's mean
    (``batch_sums``): a clip whose mask is all zero points nowhere, so its
    evidence_mass, evidence_mass_ratio and pointing_game are NaN
    (``UNDEFINED_FOR_EMPTY_MASK``, like SPS/COMP), while roc_auc, topk_iou
    and topk_f1 rank its (all equal) values and score it at chance, defined.
    A truth with no bin leaves evidence_mass_ratio, roc_auc, topk_iou and
    topk_f1 undefined, and one with every bin roc_auc
    (``UNDEFINED_FOR_TRIVIAL_TRUTH``).

    Arguments
    ---------
    mask : torch.Tensor
        [B, T, F] mask M in [0, 1].
    box : torch.Tensor
        [B, T, F] bool ground truth: ``evidence_boxes``, or e.g. the ideal
        binary mask of a mixture.

    Returns
    -------
    dict
        name -> [B] float64 tensor: evidence_mass, evidence_mass_ratio,
        pointing_game, roc_auc, topk_iou, topk_f1, evidence_area.
    """
    scores = mask.detach().abs()
    m = scores.flatten(1).double()
    inside = box.flatten(1).to(m.device).bool()
    total = m.sum(1)
    area = inside.double().mean(1)
    mass = (m * inside).sum(1) / total
    peaks = m == m.amax(1, keepdim=True)
    hit = (peaks & inside).sum(1).double() / peaks.sum(1)
    empty = total == 0
    nan = torch.full_like(mass, float("nan"))
    flat = scores.flatten(1)
    ascending = flat.sort(dim=1)
    overlap, k = _top_k_overlap_sorted(flat, ascending.values, inside)
    undefined = k == 0  # no truth: no top-k
    return {
        "evidence_mass": torch.where(empty, nan, mass),
        "evidence_mass_ratio": torch.where(
            empty | (area == 0), nan, mass / area
        ),
        "pointing_game": torch.where(empty, nan, hit),
        "roc_auc": _roc_auc_sorted(ascending, inside),
        "topk_iou": torch.where(undefined, nan, _iou(overlap, k)),
        "topk_f1": torch.where(undefined, nan, overlap / k.clamp(min=1)),
        "evidence_area": area,
    }


# Undefined for an all-zero mask: NaN there, and such a clip is left out of
# their mean (and counted in n_empty_masks).
UNDEFINED_FOR_EMPTY_MASK = (
    "SPS",
    "COMP",
    "evidence_mass",
    "evidence_mass_ratio",
    "pointing_game",
)
# Undefined for a ground truth with no bin (roc_auc: or with every bin):
# NaN there, and that clip is left out of their mean.
UNDEFINED_FOR_TRIVIAL_TRUTH = (
    "evidence_mass_ratio",
    "roc_auc",
    "topk_iou",
    "topk_f1",
)
# every figure that may be NaN; each is averaged over its own defined clips
MAY_BE_UNDEFINED = tuple(
    dict.fromkeys(UNDEFINED_FOR_EMPTY_MASK + UNDEFINED_FOR_TRIVIAL_TRUTH)
)
# prefix of the per-figure counts of defined values in ``batch_sums``
DEFINED = "n_defined:"


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
        over the clips; for a figure of ``MAY_BE_UNDEFINED`` the sum over
        the clips where it is defined (not NaN), and their number under
        ``"n_defined:<name>"``; plus ``n_clips`` and ``n_defined_masks``
        (clips whose mask is not all zero, read from the NaNs of a figure of
        ``UNDEFINED_FOR_EMPTY_MASK``, one that only an empty mask leaves
        undefined when there is one; ``n_clips`` when there is none).

    Raises
    ------
    ValueError
        Any figure is infinite, or NaN but for those of
        ``MAY_BE_UNDEFINED``, for some clip: a mean that silently skipped it
        would be wrong.
    """
    device = next(iter(values.values())).device if values else None
    n_clips = torch.tensor(float(len(ids)), dtype=torch.float64, device=device)
    sums = {"n_clips": n_clips, "n_defined_masks": n_clips}
    by_mask = [n for n in UNDEFINED_FOR_EMPTY_MASK if n in values]
    by_mask.sort(key=lambda n: n in UNDEFINED_FOR_TRIVIAL_TRUTH)
    for name, value in values.items():
        value = value.detach().double()
        defined = ~torch.isnan(value)
        if name not in MAY_BE_UNDEFINED:
            defined = torch.ones_like(defined)
        bad = (defined & ~torch.isfinite(value)).nonzero().flatten().tolist()
        if bad:
            raise ValueError(
                f"{name} is {value[bad[0]].item()} for clip(s) "
                f"{[ids[i] for i in bad]}: the classifier or the mask gave "
                "non-finite values there (check the clip's audio and the "
                "checkpoints; under --precision fp16 try bf16 or fp32)."
            )
        if name in MAY_BE_UNDEFINED:
            sums[name] = value.nansum()
            sums[DEFINED + name] = defined.double().sum()
        else:
            sums[name] = value.sum()
        if by_mask and name == by_mask[0]:
            sums["n_defined_masks"] = defined.double().sum()
    return sums


def means_from_sums(sums):
    """Dataset-level means from per-clip sums accumulated over batches.

    Arguments
    ---------
    sums : dict
        name -> float sum over clips of each per-clip figure, plus
        ``n_clips`` (number of clips), ``n_defined_masks`` (clips whose
        mask is not all zero) and, for a figure of ``MAY_BE_UNDEFINED``,
        ``"n_defined:<name>"`` (clips where it is defined), as
        ``batch_sums`` gives them.

    Returns
    -------
    dict
        ``n_clips``, ``n_empty_masks``, then each figure's mean: the metrics
        of ``HIGHER_IS_BETTER`` first, the others after, by name. Those of
        ``MAY_BE_UNDEFINED`` are averaged over the clips with a defined
        value (None if there are none; without their own count, over
        ``n_defined_masks``); every other figure over all clips (None if
        there are none).
    """
    sums = dict(sums)
    n_clips = sums.pop("n_clips")
    n_defined = sums.pop("n_defined_masks", n_clips)
    counts = {
        name[len(DEFINED) :]: sums.pop(name)
        for name in list(sums)
        if name.startswith(DEFINED)
    }
    stats = {"n_clips": int(n_clips), "n_empty_masks": int(n_clips - n_defined)}
    others = sorted(set(sums) - set(HIGHER_IS_BETTER))
    for name in [n for n in HIGHER_IS_BETTER if n in sums] + others:
        denominator = n_clips
        if name in MAY_BE_UNDEFINED:
            denominator = counts.get(name, n_defined)
        stats[name] = sums[name] / denominator if denominator else None
    return stats
