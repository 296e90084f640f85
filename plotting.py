"""Saved interpretations and figures: the files a researcher listens to and
looks at (input, mask and interpretation side by side, NMF reconstructions).

Imported only when something is saved, so training never pays for
matplotlib. Every spectrogram is drawn with imshow (``_draw``): ~5x faster
than librosa's specshow mesh, for the hundreds of clips of an ESC-50 test.
"""

import io
import logging
import math
import os

import numpy as np
import soundfile as sf

# matplotlib's DEBUG records (~150 lines of font matching per figure) would
# fill the run's log.txt, which speechbrain writes at DEBUG level
logging.getLogger("matplotlib").setLevel(logging.INFO)
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fileio import write_atomically, write_json  # noqa: E402


def save_clip(
    folder,
    audios,
    X,
    mask,
    true_class,
    predicted_class,
    sample_rate,
    hop_length,
):
    """Writes one clip's interpretation folder, every file atomically.

    Arguments
    ---------
    folder : str
        ``<output_folder>/interpretations/<clip id>`` (created).
    audios : dict
        file name -> float32 waveform [N] (original.wav, interpretation.wav, ...).
    X, mask : numpy.ndarray
        [T, F] log1p magnitude and float32 mask in [0, 1] (saved as mask.npy).
    true_class, predicted_class : str
        Class names for the figure.
    sample_rate, hop_length : int
        Hz and STFT hop in samples.
    """
    os.makedirs(folder, exist_ok=True)
    for name, audio in audios.items():
        write_atomically(
            os.path.join(folder, name),
            lambda f, a=audio: sf.write(
                f, a.numpy(), sample_rate, format="WAV", subtype="FLOAT"
            ),
            mode="wb",
        )
    write_atomically(
        os.path.join(folder, "mask.npy"), lambda f: np.save(f, mask), mode="wb"
    )
    plot_interpretation(
        os.path.join(folder, "spectra.png"),
        X,
        mask,
        true_class,
        predicted_class,
        sample_rate,
        hop_length,
    )


def save_batch(
    folder,
    ids,
    audios,
    X,
    mask,
    true_classes,
    predicted_classes,
    clip_metrics=None,
    **kwargs,
):
    """``save_clip`` for every clip of a batch, into ``<folder>/<clip id>``.

    Arguments
    ---------
    folder : str
        e.g. ``<output_folder>/interpretations``.
    ids : list of str
        B clip ids.
    audios : dict
        file name -> [B, N] waveforms (any float tensor).
    X, mask : torch.Tensor
        [B, T, F] log1p magnitude and mask.
    true_classes, predicted_classes : list of str
        B class names each.
    clip_metrics : dict, optional
        name -> [B] per-clip metrics; with them each folder gets clip.json
        (id, classes, metrics; NaN written as null).
    **kwargs
        ``sample_rate`` and ``hop_length`` for ``save_clip``.
    """
    audios = {name: a.detach().float().cpu() for name, a in audios.items()}
    X = X.detach().float().cpu().numpy()
    mask = mask.detach().float().cpu().numpy().astype(np.float32)
    for i, clip_id in enumerate(ids):
        if clip_metrics is not None:
            os.makedirs(os.path.join(folder, clip_id), exist_ok=True)
            values = {
                name: float(v[i]) if math.isfinite(float(v[i])) else None
                for name, v in clip_metrics.items()
            }
            write_json(
                os.path.join(folder, clip_id, "clip.json"),
                {
                    "id": clip_id,
                    "true_class": true_classes[i],
                    "predicted_class": predicted_classes[i],
                    "metrics": values,
                },
            )
        save_clip(
            os.path.join(folder, clip_id),
            audios={name: a[i] for name, a in audios.items()},
            X=X[i],
            mask=mask[i],
            true_class=true_classes[i],
            predicted_class=predicted_classes[i],
            **kwargs,
        )


def plot_interpretation(
    path, X, mask, true_class, predicted_class, sample_rate, hop_length
):
    """Saves a PNG with three labelled spectrograms (time in s, frequency in Hz).

    Arguments
    ---------
    path : str
        PNG file to write (atomically).
    X, mask : numpy.ndarray
        [T, F] log1p magnitude and mask in [0, 1].
    true_class, predicted_class : str
        Class names shown in the title.
    sample_rate : int
        Hz.
    hop_length : int
        STFT hop in samples.
    """
    panels = (
        ("input log1p |STFT|", X, "magma"),
        ("mask", mask, "viridis"),
        ("interpretation", mask * X, "magma"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=True)
    for ax, (title, image, cmap) in zip(axes, panels):
        shown = _draw(ax, image, cmap, None, None, sample_rate, hop_length)
        ax.set_title(title)
        fig.colorbar(shown, ax=ax)
    for ax in axes[1:]:
        ax.set_ylabel("")
    fig.suptitle(
        f"{os.path.basename(os.path.dirname(path))}: true {true_class}, predicted {predicted_class}"
    )
    # fixed margins: tight_layout, which draws the figure once more, took
    # 40% of the time of a figure saved for every test clip
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.12, top=0.86)
    _save(fig, path, tight=False)


def _save(fig, path, tight=True, dpi=80):
    """Writes the figure as a PNG atomically (after ``tight_layout`` if
    ``tight``) and closes it."""
    if tight:
        fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    write_atomically(path, lambda f: f.write(buffer.getvalue()), mode="wb")


def plot_reconstructions(path, X, X_hat, ids, sample_rate, hop_length):
    """Saves a PNG with, per clip, the log1p STFT magnitude and its NMF
    reconstruction (X, X_hat: [N, F, T])."""
    fig, axes = plt.subplots(
        len(ids), 2, figsize=(10, 3 * len(ids)), squeeze=False
    )
    for row, clip in enumerate(ids):
        for ax, image, title in zip(
            axes[row], (X[row], X_hat[row]), ("input", "NMF reconstruction W H")
        ):
            shown = _draw(
                ax, image.T, "magma", None, None, sample_rate, hop_length
            )
            ax.set_title(f"{clip}: {title}")
            fig.colorbar(shown, ax=ax)
    _save(fig, path)


def plot_spectrogram(path, X, sample_rate, hop_length, vmax=None):
    """Saves one panel: the input log1p |STFT| X [T, F] (time in s,
    frequency in Hz), colours from 0 to ``vmax`` (default X.max()), no
    title (the gallery labels it). Written atomically."""
    _panel(path, X, "magma", 0.0, vmax, sample_rate, hop_length)


def plot_mask(path, mask, sample_rate, hop_length, X=None, vmax=None):
    """Saves one panel of a mask [T, F]: with the input ``X`` (same shape)
    the masked spectrogram M * X on the colours of ``plot_spectrogram``
    (0 to ``vmax``, default X.max()), so that what a method removes is dark
    and panels of one clip compare; without ``X`` the mask itself, 0 to 1.
    ``sample_rate`` None: axes in frames and bins (the STFT is unknown).
    Written atomically."""
    if X is None:
        _panel(path, mask, "viridis", 0.0, 1.0, sample_rate, hop_length)
    else:
        _panel(path, mask * X, "magma", 0.0, vmax, sample_rate, hop_length)


def _draw(ax, image, cmap, vmin, vmax, sample_rate, hop_length):
    """Draws a [T, F] image on ``ax`` with imshow, frequency upwards: time
    in s and frequency in Hz (0 to the Nyquist rate), or frames and bins
    without ``sample_rate``; colours from ``vmin`` to ``vmax`` (None: the
    image's range). Returns the image artist (for a colorbar)."""
    frames, bins = image.shape
    extent, labels = None, ("frame", "frequency bin")
    if sample_rate is not None:
        extent = (0, frames * hop_length / sample_rate, 0, sample_rate / 2)
        labels = ("time (s)", "Hz")
    if vmin is not None and vmax is not None:
        vmax = max(vmax, vmin + 1e-6)
    shown = ax.imshow(
        image.T,
        origin="lower",
        aspect="auto",
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        extent=extent,
        interpolation="antialiased",
    )
    ax.set_xlabel(labels[0], labelpad=1)
    ax.set_ylabel(labels[1], labelpad=1)
    return shown


def _panel(path, image, cmap, vmin, vmax, sample_rate, hop_length):
    """One [T, F] image as a 520 x 300 px PNG with small axes (``_draw``)."""
    vmax = float(np.max(image)) if vmax is None else vmax
    with plt.rc_context({"font.size": 8}):
        fig, ax = plt.subplots(figsize=(5.2, 3.0))
        _draw(ax, image, cmap, vmin, vmax, sample_rate, hop_length)
        # fixed margins (tight_layout would draw the figure once more)
        fig.subplots_adjust(left=0.11, right=0.99, bottom=0.14, top=0.98)
        _save(fig, path, tight=False, dpi=100)
