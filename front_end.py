"""The audio front end shared by classifiers, NMF and interpreters.

* ``load_audio``: any sound file as mono audio at the models' rate;
  ``load_clip``: a file as the models expect it (mono, resampled, padded or
  cropped to a fixed length, peak-normalised).
* ``log_spectrogram``: the model input X = log1p |STFT|.
* ``interpretation_wavs``: back to audio, the ISTFT of a masked X with the
  input's own phase.

Nothing here knows about interpreters, datasets or the command line.

Authors: the ESC-50 interpretability recipe developers.
"""

import functools

import numpy as np
import soundfile as sf
import torch
import torchaudio
from speechbrain.processing.features import spectral_magnitude


def peak_normalize(x, eps=1e-8):
    """x / (max|x| + eps) along the last axis: a negative peak counts, and a
    silent clip stays all zeros instead of becoming inf/NaN."""
    return x / (x.abs().amax(dim=-1, keepdim=True) + eps)


@functools.lru_cache(maxsize=8)
def _resampler(orig_sr, sample_rate):
    """One resampling filter per rate pair, built once (building it costs more
    than applying it)."""
    return torchaudio.transforms.Resample(orig_sr, sample_rate)


def load_audio(path, sample_rate):
    """A sound file (wav, flac, ogg, mp3, ...) as one mono float32 tensor
    [N] at ``sample_rate``: channels averaged, then resampled.

    Raises RuntimeError (unreadable file) or ValueError (NaN or infinite
    samples), naming the file."""
    try:
        data, orig_sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises several types
        raise RuntimeError(
            f"Cannot read audio file {path}: {err}. Replace the file, or "
            "remove it from the dataset's list (meta/esc50.csv for ESC-50)."
        ) from err
    if not np.isfinite(data).all():
        raise ValueError(
            f"Audio file {path} holds NaN or infinite samples. Replace the "
            "file, or remove it from the dataset's list (meta/esc50.csv for "
            "ESC-50)."
        )
    wav = torch.from_numpy(data).mean(1)
    if orig_sr != sample_rate and wav.numel():
        wav = _resampler(orig_sr, sample_rate)(wav)
    return wav


def load_clip(path, sample_rate, signal_length_s, eps=1e-8):
    """Loads one clip as the recipe's models expect it.

    ``load_audio``, then pad with zeros or crop to exactly
    ``signal_length_s`` seconds, and divide by max|x| + eps (a silent clip
    stays all zeros, a negative peak is handled).

    Returns
    -------
    torch.Tensor
        float32 [round(sample_rate * signal_length_s)].
    """
    wav = load_audio(path, sample_rate)
    n = int(round(sample_rate * signal_length_s))
    wav = torch.nn.functional.pad(wav, (0, max(0, n - wav.numel())))[:n]
    return peak_normalize(wav, eps)


def log_spectrogram(compute_stft, wavs):
    """The front end: wavs [B, N] -> (X [B, T, F] = log1p |STFT|,
    stft [B, T, F, 2] real and imaginary parts)."""
    stft = compute_stft(wavs)
    return torch.log1p(spectral_magnitude(stft, power=0.5)), stft


def interpretation_wavs(compute_istft, X_int, stft, n_samples):
    """The interpretation as audio: ISTFT of expm1(X_int) with the phase of
    ``stft``.

    Arguments
    ---------
    compute_istft : speechbrain.processing.features.ISTFT
    X_int : torch.Tensor
        [B, T, F] masked log1p magnitude M * X.
    stft : torch.Tensor
        [B, T, F, 2] STFT of the input (its phase is used).
    n_samples : int
        Output length N.

    Returns
    -------
    torch.Tensor
        [B, N] float32 waveforms. With M = 1 this is the input, within the
        ISTFT's reconstruction error.
    """
    stft = stft.float()
    phase = torch.atan2(stft[..., 1], stft[..., 0])
    magnitude = torch.expm1(X_int.float())
    spectrum = torch.stack(
        [magnitude * torch.cos(phase), magnitude * torch.sin(phase)], -1
    )
    return compute_istft(spectrum, sig_length=n_samples)
