"""ESC-50 preparation: download, manifests, and the 16 kHz audio cache.

``prepare_esc50`` makes sure ``data_folder`` holds ESC-50 (``audio/`` and
``meta/esc50.csv``), downloading and verifying the archive when it does not,
then writes one JSON manifest per split and a cache of the clips already
downmixed, resampled, padded/cropped and peak-normalised, so that no epoch
recomputes them. The cache belongs to the data folder
(``<data_folder>/audio_cache/<rate>Hz_<length>s/``) and is shared by every run
on it; a clip edited on disk is read again.

Decisions a user may want to know:
* An unreadable, empty (0 bytes or 0 samples) or missing audio file listed
  in ``meta/esc50.csv``, or one holding NaN or infinite samples, is an ERROR
  that names the file and its line in the csv (missing files: the first
  three and their count), raised before any training starts: silently
  dropping clips would change the test set, and a 0-sample file padded to
  5 s would be a silent clip with a label. Every file's header is checked
  before the first clip is cached.
* ``meta/esc50.csv`` is checked row by row: a missing column, a row of the
  wrong length, an empty file name, a fold or target that is not an
  integer, a file listed twice, no row at all, or folds of a split that no
  row holds are errors of one line naming the file, line and column.
* ESC-50 is only downloaded into a new or empty ``data_folder``: a folder
  holding other files is an error, so no file of the user's is replaced.
* A failed or interrupted download leaves only a ``.part`` file and a scratch
  folder, both inside ``data_folder`` and both removed by the next run, which
  starts the download again. ``meta/esc50.csv`` is moved in last, so its
  presence means the dataset is complete.

Authors: the ESC-50 interpretability recipe developers.
"""

import csv
import hashlib
import json
import os

import numpy as np
from speechbrain.utils.logger import get_logger

from fileio import (
    check_download_target,
    download_and_extract,
    remove,
    write_atomically,
)
from front_end import check_audio_file, load_clip

logger = get_logger(__name__)

ESC50_URL = "https://github.com/karolpiczak/ESC-50/archive/master.zip"
ESC50_CSV = os.path.join("meta", "esc50.csv")
SPLITS = ("train", "valid", "test")


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
            raise ValueError(
                f"{key}={nums!r}: give a non-empty list of folds, e.g. [1, 2, 3]."
            )
        bad = [
            n
            for n in nums
            if isinstance(n, bool)
            or not isinstance(n, int)
            or not 1 <= n <= n_folds
        ]
        if bad:
            raise ValueError(
                f"{key}={list(nums)}: folds {bad} are not integers in "
                f"1..{n_folds}. Give folds among 1..{n_folds}, e.g. [1, 2]."
            )
    keys = list(folds)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            common = sorted(set(folds[a]) & set(folds[b]))
            if common:
                raise ValueError(
                    f"{a}={list(folds[a])} and {b}={list(folds[b])} share "
                    f"folds {common}; the splits must be disjoint: give each "
                    "fold to one split."
                )


# columns of meta/esc50.csv that preparation reads
COLUMNS = ("filename", "fold", "target", "category")
# what to do about a bad row, the same for every check
FIX_ROW = "Fix that row, or remove it"


def read_metadata(data_folder):
    """Rows of ``meta/esc50.csv`` in file order, with ``fold`` and
    ``target`` as int and ``line`` the row's line in the file (the header is
    line 1). Raises ValueError, in one line naming the file, the line and
    the column, for a file that is not UTF-8 text, a header without the
    columns filename, fold, target and category, a row of another length, an
    empty file name, a fold or target that is not an integer, a file listed
    twice, or no row at all."""
    path = os.path.join(data_folder, ESC50_CSV)
    rows = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                has = ", ".join(header) or "nothing"
                raise ValueError(
                    f"{path}, line 1: the header lacks column(s) "
                    f"{', '.join(missing)} (it has {has}). ESC-50's header "
                    "starts filename,fold,target,category: restore the file "
                    "from the ESC-50 archive."
                )
            for row in reader:
                extra = row.pop(None, [])
                absent = [k for k, v in row.items() if v is None]
                if extra or absent:
                    n = len(header) + len(extra) - len(absent)
                    raise ValueError(
                        f"{path}, line {reader.line_num}: {n} fields, the "
                        f"header has {len(header)}. {FIX_ROW}."
                    )
                row["line"] = reader.line_num
                rows.append(row)
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path}: not a UTF-8 text file ({err.reason} at byte "
            f"{err.start}). Restore it from the ESC-50 archive."
        ) from None
    seen = {}
    for row in rows:
        where = f"{path}, line {row['line']}"
        if not row["filename"].strip():
            raise ValueError(f"{where}, column filename: empty. {FIX_ROW}.")
        for column in ("fold", "target"):
            try:
                row[column] = int(row[column])
            except ValueError:
                raise ValueError(
                    f"{where}, column {column}: {row[column]!r} is not an "
                    f"integer. {FIX_ROW}."
                ) from None
        if row["filename"] in seen:
            raise ValueError(
                f"{where}, column filename: {row['filename']} is listed "
                f"again (first on line {seen[row['filename']]}). Remove one "
                "of the two rows."
            )
        seen[row["filename"]] = row["line"]
    if not rows:
        raise ValueError(
            f"{path} lists no clip (a header and no row). Restore it from the "
            "ESC-50 archive, or point --data_folder at a complete copy of "
            "ESC-50."
        )
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
    train_fold_nums, valid_fold_nums, test_fold_nums = map(
        list, (train_fold_nums, valid_fold_nums, test_fold_nums)
    )
    if os.path.exists(data_folder) and not os.path.isdir(data_folder):
        raise NotADirectoryError(
            f"data_folder={data_folder} is a file, not a folder. Point "
            "--data_folder at the ESC-50 folder (audio/ and meta/esc50.csv), "
            "or at a new folder to download ESC-50 into."
        )
    if not os.path.isfile(os.path.join(data_folder, ESC50_CSV)):
        check_download_target(data_folder, "data_folder", "ESC-50")
        download_and_extract(url, data_folder, "meta/esc50.csv", sha256)

    os.makedirs(save_folder, exist_ok=True)
    given = {
        "train": save_json_train,
        "valid": save_json_valid,
        "test": save_json_test,
    }
    manifests = {
        split: given[split] or os.path.join(save_folder, f"{split}.json")
        for split in SPLITS
    }
    folds = {
        "train": train_fold_nums,
        "valid": valid_fold_nums,
        "test": test_fold_nums,
    }
    cache = audio_cache_folder(
        data_folder, save_folder, sample_rate, signal_length_s
    )
    splits, lines = list_clips(data_folder, folds, cache)
    csv_path = os.path.join(data_folder, ESC50_CSV)
    advice = {
        source: f"Replace it, or remove line {line} of {csv_path}."
        for source, line in lines.items()
    }
    for entries in splits.values():  # every file, before any work
        for entry in entries.values():  # (its header: 2000 files in ~0.1 s)
            check_audio_file(entry["source"], advice[entry["source"]])
    options = {
        "data_folder": os.path.abspath(data_folder),
        "folds": folds,
        "sample_rate": sample_rate,
        "signal_length_s": signal_length_s,
        "manifests": manifests,
        # changes when a clip is edited, added or removed
        "clips": hashlib.sha1(json.dumps(splits).encode()).hexdigest(),
    }
    options_path = os.path.join(save_folder, "esc50_prepare.json")
    if all(map(os.path.isfile, manifests.values())) and os.path.isfile(
        options_path
    ):
        with open(options_path) as f:
            if json.load(f) == options:
                logger.info(f"Manifests in {save_folder} are up to date.")
                return manifests

    remove(options_path)  # a rebuild stopped half-way must not look up to date
    for split, entries in splits.items():
        for entry in entries.values():
            if not os.path.isfile(entry["wav"]):
                cache_clip(
                    entry, sample_rate, signal_length_s, advice[entry["source"]]
                )
        write_atomically(
            manifests[split], lambda f: json.dump(entries, f, indent=1)
        )
        logger.info(
            f"{split}: {len(entries)} clips from folds {folds[split]} -> "
            f"{manifests[split]}"
        )
    write_atomically(options_path, lambda f: json.dump(options, f))
    return manifests


def audio_cache_folder(data_folder, save_folder, sample_rate, signal_length_s):
    """The audio cache of ``data_folder`` at this rate and length, shared by
    every run on that data: ``<data_folder>/audio_cache/<rate>Hz_<len>s``, or
    under ``save_folder`` when the data folder is read-only."""
    name = f"{sample_rate}Hz_{signal_length_s}s"
    folder = os.path.join(data_folder, "audio_cache", name)
    try:
        os.makedirs(folder, exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder
    except OSError:
        pass
    fallback = os.path.join(save_folder, "audio_cache", name)
    logger.warning(
        f"{data_folder} is not writable: the audio cache goes to {fallback}, "
        "for this run only."
    )
    os.makedirs(fallback, exist_ok=True)
    return fallback


def list_clips(data_folder, folds, cache):
    """(split -> clip id -> manifest entry, source file -> its line in
    meta/esc50.csv), for the rows of meta/esc50.csv in file order. An
    entry's ``wav`` is the cache file of the clip as it is on disk now: its
    name holds a digest of the file's size and modification time, so an
    edited clip gets a new cache file. Raises FileNotFoundError naming the
    first few listed files that are missing, with their lines, and
    ValueError naming the split whose folds hold no row."""
    rows = read_metadata(data_folder)
    csv_path = os.path.join(data_folder, ESC50_CSV)
    audio = os.path.join(data_folder, "audio")
    splits, lines, missing = {}, {}, []
    for split, split_folds in folds.items():
        entries = splits[split] = {}
        for row in rows:
            if row["fold"] not in split_folds:
                continue
            source = os.path.join(audio, row["filename"])
            lines[source] = row["line"]
            if not os.path.isfile(source):
                missing.append(f"{source} (line {row['line']})")
                continue
            stat = os.stat(source)
            version = f"{stat.st_size}-{stat.st_mtime_ns}".encode()
            clip_id = os.path.splitext(row["filename"])[0]
            key = hashlib.sha1(version).hexdigest()[:12]
            entries[clip_id] = {
                "wav": os.path.join(cache, f"{clip_id}.{key}.npy"),
                "source": source,
                "fold": row["fold"],
                "category": row["category"],
                "target": row["target"],
            }
    if missing:
        shown = ", ".join(missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        hint = (
            f" ({audio} does not exist: is --data_folder the folder that "
            "holds audio/ and meta/?)"
            if not os.path.isdir(audio)
            else ""
        )
        raise FileNotFoundError(
            f"{len(missing)} audio file(s) listed in {csv_path} are missing"
            f"{hint}: {shown}{more}. Restore them, or remove their rows from "
            "the csv."
        )
    present = sorted({row["fold"] for row in rows})
    for split, entries in splits.items():
        if not entries:
            raise ValueError(
                f"{split}_fold_nums={folds[split]}: {csv_path} lists no clip "
                f"of these folds (its folds: {present}). Choose "
                f"--{split}_fold_nums among them."
            )
    return splits, lines


def cache_clip(entry, sample_rate, signal_length_s, advice=None):
    """Loads ``entry["source"]`` (``front_end.load_clip``; ``advice``: what
    to do about a bad file, e.g. which csv line to remove), writes it to
    ``entry["wav"]`` atomically and removes the clip's older versions."""
    advice = advice or "Replace it, or remove its row from meta/esc50.csv."
    wav = load_clip(
        entry["source"], sample_rate, signal_length_s, advice=advice
    ).numpy()
    write_atomically(entry["wav"], lambda f: np.save(f, wav), mode="wb")
    folder, name = os.path.split(entry["wav"])
    clip_id = name.split(".")[0]
    for old in os.listdir(folder):
        stale = old.startswith(clip_id + ".") and old.endswith(".npy")
        if stale and old != name:
            remove(os.path.join(folder, old))
