"""Contaminated inputs: WHAM! noise for training, out-of-domain test inputs.

``--eval_contamination`` (test stage, e.g. with ``--test_only``):
* ``none``: the clean test clip;
* ``mixtures``: 0.8 x the clip + 0.2 x another test clip of a different class
  (chosen reproducibly per clip), peak-normalised;
* ``white_noise``: the clip and Gaussian white noise mixed at 0 dB;
* ``wham``: the clip and a WHAM! noise clip mixed at 0 dB.
``add_wham_noise: True`` mixes every training batch with WHAM! noise at 0 dB.

Authors: the ESC-50 interpretability recipe developers.
"""

import json
import random

import numpy as np
import speechbrain as sb
import torch

from front_end import peak_normalize
from wham_prepare import load_wham, mix_at_0db

MODES = ("none", "mixtures", "white_noise", "wham")
TARGET_GAIN, INTERFERER_GAIN = 0.8, 0.2


def check_mode(mode):
    """Raises a ValueError naming the key unless ``mode`` is one of MODES."""
    if mode not in MODES:
        raise ValueError(
            f"eval_contamination={mode!r}: use one of {', '.join(MODES)}."
        )


def mix_gains(target, interferer, eps=1e-8):
    """0.8 target + 0.2 interferer, peak-normalised per clip. [B, N] -> [B, N]."""
    mix = TARGET_GAIN * target + INTERFERER_GAIN * interferer
    return peak_normalize(mix, eps)


def interferer_pipeline(manifest, seed):
    """A data pipeline adding ``interferer_sig``: for each clip of ``manifest``,
    another clip of the same manifest from a different class, the same one for
    a clip on every run with the same ``seed``."""
    with open(manifest) as f:
        entries = json.load(f)

    @sb.utils.data_pipeline.takes("id", "category")
    @sb.utils.data_pipeline.provides("interferer_sig")
    def pipeline(clip_id, category):
        candidates = sorted(
            other
            for other, entry in entries.items()
            if entry["category"] != category
        )
        if not candidates:
            raise ValueError(
                f"eval_contamination=mixtures: {manifest} has no clip of "
                f"another class than '{category}'."
            )
        chosen = random.Random(f"{seed}-{clip_id}").choice(candidates)
        return torch.from_numpy(np.load(entries[chosen]["wav"]))

    return pipeline


def contaminate(mode, wavs, interferers=None, wham=None, generator=None):
    """The test input for a contamination mode.

    Arguments
    ---------
    mode : str
        One of MODES.
    wavs : torch.Tensor
        [B, N] clean clips.
    interferers : torch.Tensor, optional
        [B, N] clips of other classes (``mixtures``).
    wham : wham_prepare.WhamNoise, optional
        Noise clips (``wham``).
    generator : torch.Generator, optional
        CPU generator for the noise, for reproducible runs.

    Returns
    -------
    torch.Tensor
        [B, N] contaminated clips, peak-normalised.
    """
    check_mode(mode)
    if mode == "none":
        return wavs
    if mode == "mixtures":
        return mix_gains(wavs, interferers.to(wavs))
    if mode == "white_noise":  # drawn on the CPU: the same on every device
        noise = torch.randn(wavs.shape, generator=generator, device="cpu")
    else:
        noise = wham.sample_batch(wavs.shape[0], generator)
    return mix_at_0db(wavs, noise.to(wavs))


class InputContamination:
    """The clips as the brain interprets them: with ``add_wham_noise``,
    training batches mixed with WHAM! noise at 0 dB; with
    ``eval_contamination``, test batches contaminated (``contaminate``);
    every other batch as loaded.

    Arguments
    ---------
    hparams : speechbrain hparams namespace
        ``eval_contamination``, ``add_wham_noise``, ``seed`` and, when WHAM!
        noise is needed, ``wham_folder``, ``wham_url``, ``sample_rate``,
        ``signal_length_s``.
    """

    def __init__(self, hparams):
        self.mode = hparams.eval_contamination
        check_mode(self.mode)
        # in the names of what a contaminated test writes
        self.suffix = "" if self.mode == "none" else f"_{self.mode}"
        self.add_wham_noise = hparams.add_wham_noise
        self.generator = torch.Generator("cpu").manual_seed(hparams.seed)
        needs_wham = self.mode == "wham" or self.add_wham_noise
        self.wham = load_wham(hparams) if needs_wham else None

    def __call__(self, batch, stage):
        """[B, N] waveforms of ``batch`` for ``stage``."""
        wavs = batch.sig.data
        if stage == sb.Stage.TRAIN and self.add_wham_noise:
            noise = self.wham.sample_batch(len(wavs), self.generator)
            return mix_at_0db(wavs, noise.to(wavs))
        if stage == sb.Stage.TEST and self.mode != "none":
            mixtures = self.mode == "mixtures"
            interferers = batch.interferer_sig.data if mixtures else None
            return contaminate(
                self.mode, wavs, interferers, self.wham, self.generator
            )
        return wavs
