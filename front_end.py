"""The audio front end shared by classifiers, NMF and interpreters.

* ``check_audio_file``: a sound file's header checked before any work;
  ``load_audio``: any sound file as mono audio at the models' rate;
  ``load_clip``: a file as the models expect it (mono, resampled, padded or
  cropped to a fixed length, peak-normalised).
* ``log_spectrogram``: the model input X = log1p |STFT|.
* ``interpretation_wavs``: back to audio, the ISTFT of a masked X with the
  input's own phase.

Nothing here knows about interpreters, datasets or the command line.

Authors: the ESC-50 interpretability recipe developers.
"""

import functools
import os

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


# what to do about a bad sound file, when the caller knows no better
FILE_ADVICE = "Replace it with a readable sound file (wav, flac, ogg, mp3)."


def _soundfile_reason(err):
    """libsndfile's own words for ``err`` (e.g. "Format not recognised"),
    without the "Error opening '<path>'" that the message gives anyway."""
    reason = getattr(err, "error_string", None) or str(err)
    return " ".join(str(reason).split()).rstrip(".")


def check_audio_file(path, advice=FILE_ADVICE):
    """Cheap checks of a sound file before any work (its header only):
    raises FileNotFoundError (no such file), or RuntimeError (a folder, 0
    bytes, unreadable) or ValueError (0 samples), each one line naming
    ``path`` and ending with ``advice`` (what the caller's user should do).
    Returns the file's ``soundfile.info``."""
    path = str(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Audio file {path} does not exist. {advice}")
    if os.path.isdir(path):
        raise RuntimeError(f"Audio file {path} is a folder. {advice}")
    if os.path.getsize(path) == 0:
        raise RuntimeError(f"Audio file {path} is empty (0 bytes). {advice}")
    try:
        info = sf.info(path)
    except Exception as err:  # soundfile raises several types
        raise RuntimeError(
            f"Cannot read audio file {path} ({_soundfile_reason(err)}). "
            f"{advice}"
        ) from err
    if info.frames == 0:
        raise ValueError(f"Audio file {path} is empty (0 samples). {advice}")
    return info


def load_audio(path, sample_rate, advice=FILE_ADVICE):
    """A sound file (wav, flac, ogg, mp3, ...) as one mono float32 tensor
    [N] at ``sample_rate``: channels averaged, then resampled.

    Raises FileNotFoundError (no such file), RuntimeError (unreadable: a
    folder, 0 bytes, not a sound file) or ValueError (0 samples, NaN or
    infinite samples), in one line naming the file and ending with
    ``advice``: what the caller's user should do (a dataset names its list
    and row, a single file asks for another file)."""
    check_audio_file(path, advice)
    try:
        data, orig_sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises several types
        raise RuntimeError(
            f"Cannot read audio file {path} ({_soundfile_reason(err)}). "
            f"{advice}"
        ) from err
    if data.shape[0] == 0:
        raise ValueError(f"Audio file {path} is empty (0 samples). {advice}")
    if not np.isfinite(data).all():
        raise ValueError(
            f"Audio file {path} holds NaN or infinite samples. {advice}"
        )
    wav = torch.from_numpy(data).mean(1)
    if orig_sr != sample_rate:
        wav = _resampler(orig_sr, sample_rate)(wav)
    return wav


def load_clip(path, sample_rate, signal_length_s, eps=1e-8, advice=FILE_ADVICE):
    """Loads one clip as the recipe's models expect it.

    ``load_audio`` (its errors end with ``advice``), then pad with zeros or
    crop to exactly ``signal_length_s`` seconds, and divide by max|x| + eps
    (a silent clip stays all zeros, a negative peak is handled).

    Returns
    -------
    torch.Tensor
        float32 [round(sample_rate * signal_length_s)].
    """
    wav = load_audio(path, sample_rate, advice)
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
