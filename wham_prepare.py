"""WHAM! noise: download, a cached dataset of its ``tr`` clips, and 0 dB mixing.

WHAM! noise (``wham_noise.zip``, about 17 GB) holds recordings of urban
ambient noise; the recipe uses its training folder ``tr/`` to contaminate
training clips at 0 dB and for out-of-domain evaluation (METHODS.md §1).

Usage::

    from wham_prepare import WhamNoise, mix_at_0db, prepare_wham

    files = prepare_wham("/data/wham_noise")       # downloads once, then reuses
    noise = WhamNoise(files, sample_rate=16000, signal_length_s=5.0)
    gen = torch.Generator().manual_seed(0)
    noisy = mix_at_0db(wavs, noise.sample_batch(wavs.shape[0], gen))  # wavs: [B, N]

Decisions a user may want to know:
* ``prepare_wham`` downloads only when ``<wham_folder>/tr`` holds no wav file.
  A folder that already holds WHAM! noise (``tr/``, ``cv/``, ``tt/``,
  ``metadata/``) is used as is; so is its parent when the archive was unzipped
  there (``<wham_folder>/wham_noise/tr``), so as not to fetch 17 GB again.
* Download, verification and unpacking are ``fileio.download_and_extract``:
  a failed or interrupted download leaves nothing but leftovers that the next
  run removes. The archive counts as WHAM! noise when it holds
  ``metadata/noise_meta_tr.csv`` (present in the official archive); every
  entry is moved into ``wham_folder`` whole, so ``tr/`` is never half-present.
* With an archive already on disk, pass ``url="file:///path/to/wham_noise.zip"``.
* In DDP, run ``prepare_wham`` on the main process first
  (``speechbrain.utils.distributed.run_on_main``); calling it again on every
  process then only lists the files.
* ``WhamNoise`` keeps every loaded clip in memory (float32; 5 s at 16 kHz is
  320 kB, so the full ``tr`` set of 20,000 clips takes about 6.4 GB once
  every clip has been drawn).

Authors: the ESC-50 interpretability recipe developers.
"""

import os
import urllib.error

import torch
from speechbrain.utils.distributed import run_on_main
from speechbrain.utils.logger import get_logger

from fileio import check_download_target, download_and_extract
from front_end import load_clip, peak_normalize

logger = get_logger(__name__)

WHAM_URL = "https://my-bucket-a8b4b49c25c811ee9a7e8bba05fa24c7.s3.amazonaws.com/wham_noise.zip"
# A file of the official archive (``wham_noise/metadata/noise_meta_tr.csv``):
# download_and_extract finds the archive's top folder by it.
WHAM_MARKER = "metadata/noise_meta_tr.csv"


def _tr_wavs(folder):
    """Sorted paths of the wav files in ``<folder>/tr`` (none if it is absent)."""
    tr = os.path.join(folder, "tr")
    if not os.path.isdir(tr):
        return []
    return sorted(
        os.path.join(tr, name)
        for name in os.listdir(tr)
        if name.lower().endswith(".wav") and not name.startswith(".")
    )


def prepare_wham(wham_folder, url=WHAM_URL, sha256=None):
    """Makes sure ``wham_folder`` holds WHAM! noise and lists its training clips.

    When ``<wham_folder>/tr`` (or ``<wham_folder>/wham_noise/tr``) holds no
    wav file, the archive at ``url`` is downloaded, verified and unpacked into
    ``wham_folder`` (the archive's top folder ``wham_noise/`` is dropped, so
    ``tr/``, ``cv/``, ``tt/`` and ``metadata/`` land directly in it). Run it on
    the main process only.

    Arguments
    ---------
    wham_folder : str
        Folder holding (or to hold) ``tr/``, ``cv/``, ``tt/``, ``metadata/``.
    url : str
        Archive URL (http(s) or ``file://``).
    sha256 : str, optional
        Expected SHA-256 of the archive; not checked when None.

    Returns
    -------
    list of str
        Paths of ``tr/*.wav``, sorted.

    Raises
    ------
    OSError
        The download failed, was truncated, has the wrong checksum or is not
        a WHAM! noise archive (the message names the URL).
    FileNotFoundError
        The archive was unpacked but ``tr/`` holds no wav file.
    """
    files = _tr_wavs(wham_folder)
    if not files:
        nested = os.path.join(wham_folder, "wham_noise")
        files = _tr_wavs(nested)
        if files:
            logger.info(f"Using WHAM! noise unpacked in {nested}")
    if files:
        logger.info(
            f"WHAM! noise: {len(files)} clips in {os.path.dirname(files[0])}; no download needed."
        )
        return files

    try:
        check_download_target(wham_folder, "wham_folder", "WHAM! noise")
        download_and_extract(url, wham_folder, WHAM_MARKER, sha256)
    except urllib.error.URLError as err:  # its message does not name the URL
        raise OSError(
            f"Cannot download the WHAM! noise archive {url} into {wham_folder}: {err}. Check the "
            "URL and the network, or download wham_noise.zip yourself and pass "
            "url='file:///path/to/wham_noise.zip'."
        ) from err
    files = _tr_wavs(wham_folder)
    if not files:
        raise FileNotFoundError(
            f"{url} was unpacked into {wham_folder}, but "
            f"{os.path.join(wham_folder, 'tr')} holds no wav file. Is the URL "
            "the WHAM! noise archive (wham_noise.zip)?"
        )
    logger.info(
        f"WHAM! noise: {len(files)} clips in {os.path.join(wham_folder, 'tr')}"
    )
    return files


class WhamNoise(torch.utils.data.Dataset):
    """The WHAM! ``tr`` clips, loaded like the recipe's ESC-50 clips.

    Each clip goes through ``front_end.load_clip`` (downmix to mono,
    resample to ``sample_rate``, pad/crop to ``signal_length_s``, divide by
    max|x| + eps) on first use only, then stays in memory.

    Arguments
    ---------
    files : list of str
        Wav files, e.g. the list returned by ``prepare_wham``.
    sample_rate : int
        Output sample rate (Hz).
    signal_length_s : float
        Output length (s).

    Example
    -------
    >>> noise = WhamNoise(prepare_wham("wham_noise"))  # doctest: +SKIP
    >>> noise.sample_batch(8, torch.Generator().manual_seed(0)).shape  # doctest: +SKIP
    torch.Size([8, 80000])
    """

    def __init__(self, files, sample_rate=16000, signal_length_s=5.0):
        self.files = list(files)
        if not self.files:
            raise ValueError(
                "WhamNoise got no files; pass the list returned by prepare_wham(wham_folder)."
            )
        self.sample_rate = sample_rate
        self.signal_length_s = signal_length_s
        self.n_samples = int(round(sample_rate * signal_length_s))
        self._cache = {}

    def __len__(self):
        return len(self.files)

    def _clip(self, index):
        """The cached clip ``index`` (loaded on first use); do not modify it."""
        index = range(len(self.files))[
            index
        ]  # IndexError when out of range; negatives resolved
        clip = self._cache.get(index)
        if clip is None:
            path = self.files[index]
            try:
                clip = load_clip(path, self.sample_rate, self.signal_length_s)
            except RuntimeError as err:
                raise RuntimeError(
                    f"WHAM! noise file {path} is unreadable "
                    f"({err.__cause__ or err}). Delete it, or delete the whole "
                    "tr/ folder so that prepare_wham downloads the archive "
                    "again."
                ) from err
            self._cache[index] = clip
        return clip

    def __getitem__(self, index):
        """Clip ``index``: float32 tensor [n_samples] (a copy of the cached clip)."""
        return self._clip(index).clone()

    def sample_batch(self, batch_size, generator=None):
        """``batch_size`` clips drawn uniformly with replacement.

        Arguments
        ---------
        batch_size : int
            Number of clips B.
        generator : torch.Generator, optional
            A CPU generator, for reproducible draws; the global RNG when None.

        Returns
        -------
        torch.Tensor
            float32 [B, n_samples], on the CPU.
        """
        indices = torch.randint(
            len(self.files), (batch_size,), generator=generator, device="cpu"
        )
        return torch.stack([self._clip(i) for i in indices.tolist()])


def parts_at_0db(signals, noise, eps=1e-8):
    """The two terms of ``mix_at_0db``, as summed: (s', n') with
    s' = s / (||s||_2 + eps) / peak, n' = n / (||n||_2 + eps) / peak and
    peak = max|s / (||s|| + eps) + n / (||n|| + eps)| + eps per clip, so that
    s' + n' is the mix. Same arguments and checks as ``mix_at_0db``."""
    if signals.shape != noise.shape:
        raise ValueError(
            f"signals {tuple(signals.shape)} and noise "
            f"{tuple(noise.shape)} must have the same shape."
        )
    noise = noise.to(device=signals.device, dtype=signals.dtype)
    s = signals / (signals.norm(dim=-1, keepdim=True) + eps)
    n = noise / (noise.norm(dim=-1, keepdim=True) + eps)
    peak = (s + n).abs().amax(dim=-1, keepdim=True) + eps
    return s / peak, n / peak


def mix_at_0db(signals, noise, eps=1e-8):
    """Mixes each signal with its noise at 0 dB, then peak-normalises.

    For each clip (last axis)::

        mix = s / (||s||_2 + eps) + n / (||n||_2 + eps)
        out = mix / (max|mix| + eps)

    so signal and noise enter with the same energy, and the result's peak
    is 1. A silent signal or silent noise stays zero (no NaN): the result is
    then the other component, peak-normalised.

    Arguments
    ---------
    signals : torch.Tensor
        [B, N] clean clips (any leading shape works; the last axis is time).
    noise : torch.Tensor
        [B, N] noise clips, same shape; moved to ``signals``' device and dtype.
    eps : float
        Guards both divisions.

    Returns
    -------
    torch.Tensor
        [B, N], same dtype and device as ``signals``.

    Example
    -------
    >>> mix_at_0db(torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 0.5]]))
    tensor([[1., 1.]])
    """
    if signals.shape != noise.shape:
        raise ValueError(
            f"signals {tuple(signals.shape)} and noise "
            f"{tuple(noise.shape)} must have the same shape."
        )
    noise = noise.to(device=signals.device, dtype=signals.dtype)
    mix = signals / (signals.norm(dim=-1, keepdim=True) + eps) + noise / (
        noise.norm(dim=-1, keepdim=True) + eps
    )
    return peak_normalize(mix, eps)


def load_wham(hparams):
    """WHAM! noise for ``add_wham_noise`` / ``eval_contamination: wham``:
    prepared (downloaded if needed) on the main process, then listed on every
    process. Returns a ``WhamNoise`` at the recipe's rate and length."""
    if not hparams.wham_folder:
        raise ValueError(
            "add_wham_noise / eval_contamination=wham need WHAM! noise: set --wham_folder=<folder> "
            "(downloaded there from wham_url if it holds no tr/*.wav)."
        )
    run_on_main(prepare_wham, args=[hparams.wham_folder, hparams.wham_url])
    files = prepare_wham(hparams.wham_folder, hparams.wham_url)
    return WhamNoise(files, hparams.sample_rate, hparams.signal_length_s)
