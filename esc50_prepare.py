"""ESC-50 preparation: download, manifests, and the 16 kHz audio cache.

``prepare_esc50`` makes sure ``data_folder`` holds ESC-50 (``audio/`` and
``meta/esc50.csv``), downloading and verifying the archive when it does not,
then writes one JSON manifest per split and a cache of the clips already
downmixed, resampled, padded/cropped and peak-normalised, so that no epoch
recomputes them.

Decisions a user may want to know:
* An unreadable or missing audio file listed in ``meta/esc50.csv`` is an
  ERROR that names the file, raised before any training starts: silently
  dropping clips would change the test set.
* A failed or interrupted download leaves only a ``.part`` file and a scratch
  folder, both inside ``data_folder`` and both removed by the next run, which
  starts the download again. ``meta/esc50.csv`` is moved in last, so its
  presence means the dataset is complete.

Authors: the ESC-50 interpretability recipe developers.
"""

import csv
import functools
import hashlib
import json
import os
import shutil
import urllib.error
import urllib.request
import zipfile

import numpy as np
import soundfile as sf
import torch
import torchaudio
from tqdm import tqdm

from speechbrain.utils.logger import get_logger

logger = get_logger(__name__)

ESC50_URL = "https://github.com/karolpiczak/ESC-50/archive/master.zip"
ESC50_CSV = os.path.join("meta", "esc50.csv")
SPLITS = ("train", "valid", "test")
_CHUNK = 1 << 20


def write_atomically(path, write_fn, mode="w"):
    """Writes ``path`` through a temporary file in the same folder, then
    renames it, so a reader never sees a half-written file.

    Arguments
    ---------
    path : str
        Destination file.
    write_fn : callable
        Called with the open temporary file object.
    mode : str
        Open mode for the temporary file ("w" or "wb").
    """
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, mode) as f:
            write_fn(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def check_folds(train_fold_nums, valid_fold_nums, test_fold_nums, n_folds=5):
    """Raises ``ValueError`` naming the offending folds unless every list is a
    non-empty list of integers in 1..n_folds and the three are disjoint."""
    folds = {
        "train_fold_nums": train_fold_nums,
        "valid_fold_nums": valid_fold_nums,
        "test_fold_nums": test_fold_nums,
    }
    for key, nums in folds.items():
        if not isinstance(nums, (list, tuple)) or not nums:
            raise ValueError(f"{key}={nums!r}: give a non-empty list of folds, e.g. [1, 2, 3].")
        bad = [n for n in nums if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= n_folds]
        if bad:
            raise ValueError(f"{key}={list(nums)}: folds {bad} are not integers in 1..{n_folds}.")
    keys = list(folds)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            common = sorted(set(folds[a]) & set(folds[b]))
            if common:
                raise ValueError(
                    f"{a}={list(folds[a])} and {b}={list(folds[b])} share folds {common}; "
                    "the splits must be disjoint."
                )


def _download(url, dest, expected_sha256=None):
    """Streams ``url`` into ``dest`` with a progress bar; checks the size
    against Content-Length and, if given, the SHA-256. Returns the hex digest."""
    sha = hashlib.sha256()
    size = 0
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(url)) as bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                sha.update(chunk)
                size += len(chunk)
                bar.update(len(chunk))
    if total is not None and size != total:
        raise IOError(f"Download of {url} is truncated: got {size} of {total} bytes. Run again to retry.")
    digest = sha.hexdigest()
    if expected_sha256 and digest != expected_sha256.lower():
        raise IOError(
            f"Checksum mismatch for {url}: SHA-256 {digest}, expected {expected_sha256}. "
            "The file is corrupt or the URL serves another archive; check the URL and the "
            "sha256 key, then run again."
        )
    return digest


def _remove(*paths):
    """Removes files or folders that exist."""
    for path in paths:
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def download_and_extract(url, data_folder, marker, sha256=None):
    """Downloads a zip archive and unpacks it into ``data_folder`` atomically.

    The archive is verified (byte count against Content-Length, the SHA-256
    when ``sha256`` is given, and the CRC-32 of every member), unpacked into a
    scratch folder, and the folder of the archive that holds ``marker`` is moved
    into ``data_folder`` entry by entry, the entry holding ``marker`` last.

    Arguments
    ---------
    url : str
        Archive URL (http(s) or file).
    data_folder : str
        Destination; created if needed.
    marker : str
        Relative path whose presence means the dataset is complete, e.g.
        ``meta/esc50.csv``.
    sha256 : str, optional
        Expected SHA-256 of the archive.
    """
    os.makedirs(data_folder, exist_ok=True)
    part = os.path.join(data_folder, ".download.part")
    scratch = os.path.join(data_folder, ".extract-tmp")
    _remove(part, scratch)  # leftovers of an interrupted earlier run
    logger.info(f"Downloading {url} into {data_folder}")
    try:
        try:
            digest = _download(url, part, sha256)
        except urllib.error.URLError as err:
            raise IOError(f"Cannot download {url} into {data_folder}: {err}. Check the URL and the network.") from err
        try:
            with zipfile.ZipFile(part) as archive:
                broken = archive.testzip()
                if broken is not None:
                    raise IOError(f"Archive from {url} has a corrupt member {broken} (CRC-32 mismatch).")
                archive.extractall(scratch)
        except zipfile.BadZipFile as err:
            raise IOError(f"Archive from {url} is not a valid zip ({err}). Run again to retry.") from err
        roots = [root for root, _, _ in os.walk(scratch) if os.path.isfile(os.path.join(root, marker))]
        if not roots:
            raise IOError(f"Archive from {url} has no {marker}; is the URL right?")
        root = roots[0]
        top = marker.split("/")[0]
        entries = sorted(os.listdir(root), key=lambda e: e == top)
        for entry in entries:
            dest = os.path.join(data_folder, entry)
            _remove(dest)
            os.replace(os.path.join(root, entry), dest)
        logger.info(f"Unpacked {url} (SHA-256 {digest}) into {data_folder}")
    finally:
        _remove(part, scratch)


def peak_normalize(x, eps=1e-8):
    """x / (max|x| + eps) along the last axis: a negative peak counts, and a
    silent clip stays all zeros instead of becoming inf/NaN."""
    return x / (x.abs().amax(dim=-1, keepdim=True) + eps)


@functools.lru_cache(maxsize=8)
def _resampler(orig_sr, sample_rate):
    """One resampling filter per rate pair, built once (building it costs more
    than applying it)."""
    return torchaudio.transforms.Resample(orig_sr, sample_rate)


def load_clip(path, sample_rate, signal_length_s, eps=1e-8):
    """Loads one clip as the recipe's models expect it.

    Downmix to mono, resample to ``sample_rate``, pad with zeros or crop to
    exactly ``signal_length_s`` seconds, and divide by max|x| + eps (a silent
    clip stays all zeros, a negative peak is handled).

    Returns
    -------
    torch.Tensor
        float32 [round(sample_rate * signal_length_s)].
    """
    try:
        data, orig_sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises several types
        raise RuntimeError(
            f"Cannot read audio file {path}: {err}. Replace the file, or remove it from the "
            "dataset's list (meta/esc50.csv for ESC-50)."
        ) from err
    wav = torch.from_numpy(data).mean(1)
    if orig_sr != sample_rate:
        wav = _resampler(orig_sr, sample_rate)(wav)
    n = int(round(sample_rate * signal_length_s))
    wav = torch.nn.functional.pad(wav, (0, max(0, n - wav.numel())))[:n]
    return peak_normalize(wav, eps)


def read_metadata(data_folder):
    """Rows of ``meta/esc50.csv`` in file order, with ``fold`` as int."""
    with open(os.path.join(data_folder, ESC50_CSV), newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["fold"] = int(row["fold"])
    return rows


def prepare_esc50(
    data_folder,
    save_folder,
    train_fold_nums=(1, 2, 3),
    valid_fold_nums=(4,),
    test_fold_nums=(5,),
    sample_rate=16000,
    signal_length_s=5.0,
    url=ESC50_URL,
    sha256=None,
    save_json_train=None,
    save_json_valid=None,
    save_json_test=None,
):
    """Ensures ESC-50 is present, writes the manifests (``save_json_*``, by
    default ``<save_folder>/{train,valid,test}.json``) and the audio cache.
    Run it on the main process only.

    Manifests map clip id -> {"wav": cached 16 kHz clip, "source": original
    file, "fold", "category", "target"}; entries follow the rows of
    ``meta/esc50.csv`` in file order (the order that defines the class indices
    of the public checkpoints, METHODS.md §3). They are rebuilt whenever the
    fold lists, sample rate or length change.

    Returns
    -------
    dict
        split -> manifest path.
    """
    check_folds(train_fold_nums, valid_fold_nums, test_fold_nums)
    train_fold_nums, valid_fold_nums, test_fold_nums = map(list, (train_fold_nums, valid_fold_nums, test_fold_nums))
    if not os.path.isfile(os.path.join(data_folder, ESC50_CSV)):
        download_and_extract(url, data_folder, "meta/esc50.csv", sha256)

    os.makedirs(save_folder, exist_ok=True)
    given = {"train": save_json_train, "valid": save_json_valid, "test": save_json_test}
    manifests = {split: given[split] or os.path.join(save_folder, f"{split}.json") for split in SPLITS}
    options = {
        "data_folder": os.path.abspath(data_folder),
        "folds": {"train": train_fold_nums, "valid": valid_fold_nums, "test": test_fold_nums},
        "sample_rate": sample_rate,
        "signal_length_s": signal_length_s,
        "manifests": manifests,
    }
    options_path = os.path.join(save_folder, "esc50_prepare.json")
    if all(map(os.path.isfile, manifests.values())) and os.path.isfile(options_path):
        with open(options_path) as f:
            if json.load(f) == options:
                logger.info(f"Manifests in {save_folder} are up to date; skipping preparation.")
                return manifests

    _remove(options_path)  # a rebuild stopped half-way must not look up to date
    source_key = hashlib.sha1(options["data_folder"].encode()).hexdigest()[:10]
    cache = os.path.join(save_folder, f"audio_{sample_rate}Hz_{signal_length_s}s_{source_key}")
    os.makedirs(cache, exist_ok=True)
    rows = read_metadata(data_folder)
    for split, folds in options["folds"].items():
        entries = {}
        for row in rows:
            if row["fold"] not in folds:
                continue
            source = os.path.join(data_folder, "audio", row["filename"])
            clip_id = os.path.splitext(row["filename"])[0]
            cached = os.path.join(cache, clip_id + ".npy")
            if not os.path.isfile(cached):
                if not os.path.isfile(source):
                    raise FileNotFoundError(
                        f"{source} is listed in {os.path.join(data_folder, ESC50_CSV)} but missing."
                    )
                wav = load_clip(source, sample_rate, signal_length_s).numpy()
                write_atomically(cached, lambda f: np.save(f, wav), mode="wb")
            entries[clip_id] = {
                "wav": cached,
                "source": source,
                "fold": row["fold"],
                "category": row["category"],
                "target": int(row["target"]),
            }
        write_atomically(manifests[split], lambda f: json.dump(entries, f, indent=1))
        logger.info(f"{split}: {len(entries)} clips from folds {folds} -> {manifests[split]}")
    write_atomically(options_path, lambda f: json.dump(options, f))
    return manifests
