"""Contaminated inputs: WHAM! noise for training, out-of-domain test inputs.

``--eval_contamination`` (test stage, e.g. with ``--test_only``):
* ``none``: the clean test clip;
* ``mixtures``: 0.8 x the clip + 0.2 x another test clip of a different class
  (chosen reproducibly per clip), peak-normalised;
* ``white_noise``: the clip and Gaussian white noise mixed at 0 dB;
* ``wham``: the clip and a WHAM! noise clip mixed at 0 dB;
* ``speech``: the clip and a speech clip from ``speech_folder`` (any folder of
  wav/flac files, e.g. LJSpeech-1.1/wavs, as the public ``eval.py``'s
  LJSpeech overlap) mixed at 0 dB.
``add_wham_noise: True`` mixes every training batch with WHAM! noise at 0 dB.

A contaminated test also knows its ground truth: the target and the
interferer are known before they are summed, so ``ideal_binary_mask`` gives
the bins where the target dominates, which the brain scores every mask
against (``metrics.localisation_metrics``), on any data, real ESC-50
included.

Authors: the ESC-50 interpretability recipe developers.
"""

import glob
import json
import os
import random

import numpy as np
import speechbrain as sb
import torch
from speechbrain.processing.features import spectral_magnitude

from front_end import peak_normalize
from wham_prepare import WhamNoise, load_wham, mix_at_0db, parts_at_0db

MODES = ("none", "mixtures", "white_noise", "wham", "speech")
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


def parts_of_gains(target, interferer, eps=1e-8):
    """The two terms of ``mix_gains``, as summed: (0.8 target / peak,
    0.2 interferer / peak) with peak = max|0.8 target + 0.2 interferer| +
    eps per clip; their sum is ``mix_gains(target, interferer)``."""
    mix = TARGET_GAIN * target + INTERFERER_GAIN * interferer
    peak = mix.abs().amax(dim=-1, keepdim=True) + eps
    return TARGET_GAIN * target / peak, INTERFERER_GAIN * interferer / peak


def ideal_binary_mask(compute_stft, target, interferer):
    """The ground truth of a mixture target + interferer: the bins where the
    target's STFT magnitude exceeds the interferer's.

    IBM[b, t, f] = |STFT(target_b)|[t, f] > |STFT(interferer_b)|[t, f]

    Arguments
    ---------
    compute_stft : speechbrain.processing.features.STFT
        The recipe's STFT (the mask's grid).
    target, interferer : torch.Tensor
        [B, N] the two terms exactly as summed into the input
        (``parts_of_gains``, ``wham_prepare.parts_at_0db``).

    Returns
    -------
    torch.Tensor
        [B, T, F] bool, on the signals' device.
    """
    magnitudes = [
        spectral_magnitude(compute_stft(wav.float()), power=0.5)
        for wav in (target, interferer)
    ]
    return magnitudes[0] > magnitudes[1]


def load_speech(hparams):
    """The speech clips of ``speech_folder`` (``eval_contamination:
    speech``): every wav/flac file under it, loaded like WHAM! noise (mono,
    resampled, padded or cropped, peak-normalised) on first use."""
    folder = hparams.speech_folder
    if not folder or not os.path.isdir(folder):
        raise ValueError(
            f"eval_contamination=speech needs speech clips: speech_folder="
            f"{folder!r} is not a folder. Set --speech_folder=<folder of "
            "wav/flac files>, e.g. LJSpeech-1.1/wavs."
        )
    files = sorted(
        path
        for pattern in ("*.wav", "*.flac")
        for path in glob.glob(
            os.path.join(folder, "**", pattern), recursive=True
        )
    )
    if not files:
        raise ValueError(
            f"speech_folder={folder}: no .wav or .flac file in it or below "
            "it. Point --speech_folder at a folder of speech recordings."
        )
    return WhamNoise(files, hparams.sample_rate, hparams.signal_length_s)


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


def contaminate(mode, wavs, interferers=None, noise=None, generator=None):
    """The test input for a contamination mode and its two terms.

    Arguments
    ---------
    mode : str
        One of MODES.
    wavs : torch.Tensor
        [B, N] clean clips.
    interferers : torch.Tensor, optional
        [B, N] clips of other classes (``mixtures``).
    noise : wham_prepare.WhamNoise, optional
        Noise or speech clips (``wham``, ``speech``).
    generator : torch.Generator, optional
        CPU generator for the noise, for reproducible runs.

    Returns
    -------
    (torch.Tensor, torch.Tensor or None, torch.Tensor or None)
        The [B, N] input, peak-normalised, and the target and interferer
        terms whose sum it is (None, None for ``none``).
    """
    check_mode(mode)
    if mode == "none":
        return wavs, None, None
    if mode == "mixtures":
        target, interferer = parts_of_gains(wavs, interferers.to(wavs))
    else:
        if mode == "white_noise":  # drawn on the CPU: the same on any device
            other = torch.randn(wavs.shape, generator=generator, device="cpu")
        else:
            other = noise.sample_batch(wavs.shape[0], generator)
        target, interferer = parts_at_0db(wavs, other.to(wavs))
    return target + interferer, target, interferer


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
        ``signal_length_s``; for ``speech``, ``speech_folder``.
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
        self.speech = load_speech(hparams) if self.mode == "speech" else None

    def __call__(self, batch, stage):
        """[B, N] waveforms of ``batch`` for ``stage``."""
        return self.parts(batch, stage)[0]

    def parts(self, batch, stage):
        """(input [B, N], target, interferer) of ``batch`` for ``stage``: a
        contaminated test's two terms (``contaminate``), else None, None."""
        wavs = batch.sig.data
        if stage == sb.Stage.TRAIN and self.add_wham_noise:
            noise = self.wham.sample_batch(len(wavs), self.generator)
            return mix_at_0db(wavs, noise.to(wavs)), None, None
        if stage == sb.Stage.TEST and self.mode != "none":
            mixtures = self.mode == "mixtures"
            interferers = batch.interferer_sig.data if mixtures else None
            noise = self.speech if self.mode == "speech" else self.wham
            return contaminate(
                self.mode, wavs, interferers, noise, self.generator
            )
        return wavs, None, None
