"""Tests of esc50_prepare.py: download (against a loopback HTTP server),
fold checks, manifests, the audio cache and ``load_clip``.

Everything runs on tiny generated data in the ESC-50 layout
(synthetic_esc50.generate: 3 classes, 2 clips per fold, 10 clips in all),
written at 16 kHz so that preparation does not spend the test time
resampling; the 44.1 kHz -> 16 kHz path is tested on load_clip directly.
"""

import csv
import hashlib
import io
import json
import os
import re
import shutil
import struct
import zipfile

import numpy as np
import pytest
import soundfile as sf

import fileio
import synthetic_esc50
from conftest import TINY_PIQ, run_script, tiered
from esc50_prepare import prepare_esc50
from front_end import load_clip
from http_fixtures import serve_archives

CLIPS_PER_FOLD = 2
N_CLASSES = 3
N_SAMPLES = 80000  # 5 s at 16 kHz
TOP = "ESC-50-master"
PART = ".download.part"
SCRATCH = ".extract-tmp"
SOURCE_SR = 16000


# --------------------------------------------------------------------------
# Fixtures: generated dataset, zip archives, loopback HTTP server
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A generated dataset in ESC-50 layout (audio/, meta/esc50.csv)."""
    folder = tmp_path_factory.mktemp("esc50_source")
    synthetic_esc50.generate(
        str(folder),
        n_classes=N_CLASSES,
        clips_per_fold=CLIPS_PER_FOLD,
        seed=0,
        sample_rate=SOURCE_SR,
    )
    return folder


def _zip_folder(folder, compression=zipfile.ZIP_DEFLATED, include_meta=True):
    """Zips ``folder`` the way GitHub zips a branch: everything under one
    top folder ``ESC-50-master/``, with directory entries."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as archive:
        archive.mkdir(f"{TOP}/")
        archive.writestr(f"{TOP}/README.md", "ESC-50 test archive\n")
        for sub in ("audio", "meta"):
            if sub == "meta" and not include_meta:
                continue
            archive.mkdir(f"{TOP}/{sub}/")
            for name in sorted(os.listdir(os.path.join(folder, sub))):
                archive.write(
                    os.path.join(folder, sub, name),
                    arcname=f"{TOP}/{sub}/{name}",
                )
    return buf.getvalue()


def _flip_byte_in_first_wav(data):
    """Returns a copy of a STORED zip with one byte of the first wav's
    content flipped, so that its CRC-32 no longer matches."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = next(
            i for i in archive.infolist() if i.filename.endswith(".wav")
        )
    assert info.compress_type == zipfile.ZIP_STORED
    name_len, extra_len = struct.unpack(
        "<HH", data[info.header_offset + 26 : info.header_offset + 30]
    )
    start = info.header_offset + 30 + name_len + extra_len
    pos = start + info.file_size // 2
    corrupt = bytearray(data)
    corrupt[pos] ^= 0xFF
    return bytes(corrupt)


@pytest.fixture(scope="module")
def archives(source):
    """name -> (body bytes, Content-Length sent)."""
    good = _zip_folder(source)
    stored = _zip_folder(source, compression=zipfile.ZIP_STORED)
    half = good[: len(good) // 2]
    no_marker = _zip_folder(source, include_meta=False)
    return {
        "/good.zip": (good, len(good)),
        # Server promises more bytes than it sends, then closes the connection.
        "/short.zip": (good[: len(good) // 2], len(good)),
        # A zip cut in half with a matching Content-Length.
        "/half.zip": (half, len(half)),
        # Right size, valid zip directory, but one member's CRC-32 is wrong.
        "/crc.zip": (_flip_byte_in_first_wav(stored), len(stored)),
        # A valid zip that is not ESC-50 (no meta/esc50.csv).
        "/nomarker.zip": (no_marker, len(no_marker)),
    }


@pytest.fixture(scope="module")
def server(archives):
    """A loopback HTTP server (127.0.0.1, free port) serving ``archives``."""
    with serve_archives(archives) as httpd:
        yield httpd


@pytest.fixture
def data_copy(source, tmp_path):
    """A private, modifiable copy of the generated dataset."""
    dest = tmp_path / "data"
    shutil.copytree(source, dest)
    return dest


def _csv_rows(folder):
    with open(os.path.join(folder, "meta", "esc50.csv"), newline="") as f:
        return list(csv.DictReader(f))


def _load_manifests(manifests):
    out = {}
    for split, path in manifests.items():
        with open(path) as f:
            out[split] = json.load(f)
    return out


def _assert_clean(data_folder):
    """No download leftovers and no marker: the dataset is not half-present."""
    assert not os.path.exists(os.path.join(data_folder, "meta", "esc50.csv"))
    assert not os.path.exists(os.path.join(data_folder, PART))
    assert not os.path.exists(os.path.join(data_folder, SCRATCH))


def _assert_default_split(manifests, source_folder):
    """Manifests of folds train 1,2,3 / valid 4 / test 5 with the right clips."""
    data = _load_manifests(manifests)
    expected = {"train": {1, 2, 3}, "valid": {4}, "test": {5}}
    rows = _csv_rows(source_folder)
    for split, folds in expected.items():
        entries = data[split]
        assert len(entries) == CLIPS_PER_FOLD * len(folds)
        assert {e["fold"] for e in entries.values()} == folds
        want = [
            os.path.splitext(r["filename"])[0]
            for r in rows
            if int(r["fold"]) in folds
        ]
        assert list(entries) == want
        for entry in entries.values():
            assert os.path.isfile(entry["source"])
            wav = np.load(entry["wav"])
            assert wav.shape == (N_SAMPLES,) and wav.dtype == np.float32
            assert np.isfinite(wav).all() and np.abs(
                wav
            ).max() == pytest.approx(1.0, abs=1e-4)


# --------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------


def test_download_good_archive(server, source, tmp_path):
    data, save = tmp_path / "data", tmp_path / "save"
    n_requests = len(server.requests)
    manifests = prepare_esc50(str(data), str(save), url=server.url("/good.zip"))

    assert server.requests[n_requests:] == ["/good.zip"]
    assert set(manifests) == {"train", "valid", "test"}
    # Unpacked from ESC-50-master/ straight into data_folder.
    assert sorted(os.listdir(data / "audio")) == sorted(
        os.listdir(source / "audio")
    )
    assert (data / "meta" / "esc50.csv").read_bytes() == (
        source / "meta" / "esc50.csv"
    ).read_bytes()
    some_wav = sorted(os.listdir(source / "audio"))[3]
    assert (data / "audio" / some_wav).read_bytes() == (
        source / "audio" / some_wav
    ).read_bytes()
    assert not (data / TOP).exists()
    assert not (data / PART).exists() and not (data / SCRATCH).exists()
    _assert_default_split(manifests, source)
    # No temporary files of write_atomically left behind.
    assert not [p for p in save.rglob("*") if ".tmp-" in p.name]

    # A second run finds meta/esc50.csv and does not download again.
    prepare_esc50(str(data), str(save), url=server.url("/good.zip"))
    assert server.requests[n_requests:] == ["/good.zip"]


@pytest.mark.parametrize(
    "path, message",
    [
        ("/short.zip", r"truncated"),
        ("/half.zip", r"not a valid zip"),
        ("/crc.zip", r"corrupt member .*\.wav"),
        ("/nomarker.zip", r"has no meta/esc50\.csv"),
    ],
    ids=[
        "content-length-larger-than-body",
        "zip-cut-in-half",
        "crc-mismatch",
        "not-esc50",
    ],
)
def test_bad_archive_leaves_nothing_and_rerun_recovers(
    server, source, tmp_path, path, message
):
    data, save = tmp_path / "data", tmp_path / "save"
    with pytest.raises(OSError, match=message):
        prepare_esc50(str(data), str(save), url=server.url(path))
    _assert_clean(data)
    assert not (data / "audio").exists()
    assert not (save / "train.json").exists()

    manifests = prepare_esc50(str(data), str(save), url=server.url("/good.zip"))
    assert (data / "meta" / "esc50.csv").is_file()
    assert not (data / PART).exists() and not (data / SCRATCH).exists()
    _assert_default_split(manifests, source)


def test_leftovers_of_interrupted_run_are_removed(server, source, tmp_path):
    data, save = tmp_path / "data", tmp_path / "save"
    (data / SCRATCH / TOP).mkdir(parents=True)
    (data / SCRATCH / TOP / "junk.bin").write_bytes(b"x" * 100)
    (data / PART).write_bytes(b"half of an old download")
    manifests = prepare_esc50(str(data), str(save), url=server.url("/good.zip"))
    assert not (data / PART).exists() and not (data / SCRATCH).exists()
    _assert_default_split(manifests, source)


def test_checksum(server, archives, source, tmp_path):
    good_sha = hashlib.sha256(archives["/good.zip"][0]).hexdigest()
    wrong_sha = hashlib.sha256(b"something else").hexdigest()
    data, save = tmp_path / "data", tmp_path / "save"

    with pytest.raises(IOError, match=r"[Cc]hecksum") as err:
        prepare_esc50(
            str(data), str(save), url=server.url("/good.zip"), sha256=wrong_sha
        )
    assert wrong_sha in str(err.value) and good_sha in str(err.value)
    _assert_clean(data)
    assert os.listdir(data) == []  # nothing unpacked at all
    assert not save.exists() or not os.listdir(save)

    manifests = prepare_esc50(
        str(data), str(save), url=server.url("/good.zip"), sha256=good_sha
    )
    _assert_default_split(manifests, source)
    assert not (data / PART).exists() and not (data / SCRATCH).exists()


def test_download_and_extract_checksum_is_case_insensitive(
    server, archives, tmp_path
):
    good_sha = hashlib.sha256(archives["/good.zip"][0]).hexdigest()
    fileio.download_and_extract(
        server.url("/good.zip"),
        str(tmp_path / "d"),
        "meta/esc50.csv",
        sha256=good_sha.upper(),
    )
    assert (tmp_path / "d" / "meta" / "esc50.csv").is_file()


# --------------------------------------------------------------------------
# Fold checks
# --------------------------------------------------------------------------

DEFAULT = {
    "train_fold_nums": [1, 2, 3],
    "valid_fold_nums": [4],
    "test_fold_nums": [5],
}


@pytest.mark.parametrize(
    "override, must_mention",
    [
        (
            {"valid_fold_nums": [3]},
            ["train_fold_nums", "valid_fold_nums", "[3]"],
        ),
        (
            {"test_fold_nums": [4, 5]},
            ["valid_fold_nums", "test_fold_nums", "[4]"],
        ),
        ({"train_fold_nums": [0, 1, 2]}, ["train_fold_nums", "[0]"]),
        ({"test_fold_nums": [6]}, ["test_fold_nums", "[6]"]),
        ({"valid_fold_nums": [1.5]}, ["valid_fold_nums", "1.5"]),
        ({"train_fold_nums": [1, "2", 3]}, ["train_fold_nums", "'2'"]),
        ({"test_fold_nums": [True]}, ["test_fold_nums", "True"]),
        ({"valid_fold_nums": []}, ["valid_fold_nums"]),
        ({"train_fold_nums": ()}, ["train_fold_nums"]),
    ],
    ids=[
        "overlap-train-valid",
        "overlap-valid-test",
        "zero",
        "six",
        "float",
        "string",
        "bool",
        "empty",
        "empty-tuple",
    ],
)
def test_bad_folds_raise_before_anything(
    server, tmp_path, override, must_mention
):
    data, save = tmp_path / "data", tmp_path / "save"
    n_requests = len(server.requests)
    with pytest.raises(ValueError) as err:
        prepare_esc50(
            str(data),
            str(save),
            url=server.url("/good.zip"),
            **dict(DEFAULT, **override),
        )
    for text in must_mention:
        assert text in str(err.value)
    # Checked before the (600 MB) download and before any manifest.
    assert server.requests[n_requests:] == []
    assert not data.exists()
    assert not save.exists()


def test_bad_folds_on_present_data_write_no_manifest(data_copy, tmp_path):
    save = tmp_path / "save"
    with pytest.raises(ValueError, match="test_fold_nums"):
        prepare_esc50(
            str(data_copy),
            str(save),
            train_fold_nums=[1, 2],
            valid_fold_nums=[3],
            test_fold_nums=[3],
        )
    assert not (save / "train.json").exists()
    assert not (save / "test.json").exists()


def test_scalar_fold_gives_value_error_naming_key(data_copy, tmp_path):
    """``--test_fold_nums 5`` on a speechbrain command line (YAML override)
    arrives as the int 5, not [5]. check_folds() reports non-lists with a
    ValueError naming the key, but prepare_esc50 calls list() on the value
    before check_folds runs, so the user gets ``TypeError: 'int' object is not
    iterable`` instead (METHODS.md §6: invalid folds must fail clearly)."""
    save = tmp_path / "save"
    with pytest.raises(ValueError, match="test_fold_nums"):
        prepare_esc50(str(data_copy), str(save), test_fold_nums=5)
    assert not (save / "train.json").exists()


# --------------------------------------------------------------------------
# Manifests
# --------------------------------------------------------------------------

OLD_NS = 1_000_000_000_000_000_000  # 2001-09-09, far from "now"


def _age(paths):
    for p in paths:
        os.utime(p, ns=(OLD_NS, OLD_NS))


def test_manifests_skipped_when_unchanged_and_rebuilt_when_folds_change(
    data_copy, tmp_path
):
    save = tmp_path / "save"
    manifests = prepare_esc50(str(data_copy), str(save))
    files = list(manifests.values()) + [str(save / "esc50_prepare.json")]
    before = {p: open(p).read() for p in files}
    _age(files)

    # Same options: nothing is rewritten (a rewrite would reset the mtime).
    again = prepare_esc50(str(data_copy), str(save))
    assert again == manifests
    for p in files:
        assert os.stat(p).st_mtime_ns == OLD_NS, (
            f"{p} was rewritten although nothing changed"
        )
        assert open(p).read() == before[p]

    # Folds changed: test [5] -> [4], valid [4] -> [5]: manifests rebuilt.
    prepare_esc50(
        str(data_copy), str(save), valid_fold_nums=[5], test_fold_nums=[4]
    )
    data = _load_manifests(manifests)
    assert {e["fold"] for e in data["test"].values()} == {4}
    assert {e["fold"] for e in data["valid"].values()} == {5}
    assert {e["fold"] for e in data["train"].values()} == {1, 2, 3}
    assert len(data["test"]) == len(data["valid"]) == CLIPS_PER_FOLD
    for p in files:
        assert os.stat(p).st_mtime_ns != OLD_NS

    # Train folds changed as well.
    prepare_esc50(
        str(data_copy),
        str(save),
        train_fold_nums=[1, 2],
        valid_fold_nums=[3],
        test_fold_nums=[4, 5],
    )
    data = _load_manifests(manifests)
    assert {e["fold"] for e in data["train"].values()} == {1, 2}
    assert {e["fold"] for e in data["valid"].values()} == {3}
    assert {e["fold"] for e in data["test"].values()} == {4, 5}
    assert len(data["test"]) == 2 * CLIPS_PER_FOLD


def test_manifests_rebuilt_when_sample_rate_or_length_change(
    data_copy, tmp_path
):
    save = tmp_path / "save"
    manifests = prepare_esc50(str(data_copy), str(save))
    prepare_esc50(
        str(data_copy), str(save), sample_rate=8000, signal_length_s=2.0
    )
    data = _load_manifests(manifests)
    for entries in data.values():
        for entry in entries.values():
            assert np.load(entry["wav"]).shape == (16000,)


def test_manifest_follows_csv_row_order(data_copy, tmp_path):
    """Entries follow meta/esc50.csv row order (METHODS.md §3), not filename
    order and not target order; so does the order of first-seen classes."""
    csv_path = data_copy / "meta" / "esc50.csv"
    rows = _csv_rows(data_copy)[::-1]  # reverse the file: rows no longer sorted
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    save = tmp_path / "save"
    manifests = prepare_esc50(str(data_copy), str(save))
    train = _load_manifests(manifests)["train"]

    expected_rows = [r for r in rows if int(r["fold"]) in (1, 2, 3)]
    assert list(train) == [
        os.path.splitext(r["filename"])[0] for r in expected_rows
    ]
    assert list(train) != sorted(train)  # the check is not vacuous

    def first_seen(items):
        seen = []
        for item in items:
            if item not in seen:
                seen.append(item)
        return seen

    classes = first_seen(e["category"] for e in train.values())
    assert classes == first_seen(r["category"] for r in expected_rows)
    targets = first_seen(e["target"] for e in train.values())
    assert targets != sorted(targets)  # class order is NOT the target column
    for r in expected_rows:
        entry = train[os.path.splitext(r["filename"])[0]]
        assert entry["category"] == r["category"]
        assert entry["target"] == int(r["target"])
        assert entry["fold"] == int(r["fold"])
        assert entry["source"] == os.path.join(
            str(data_copy), "audio", r["filename"]
        )


# --------------------------------------------------------------------------
# Unreadable / missing audio
# --------------------------------------------------------------------------


def _pick(folder, fold):
    return next(
        r["filename"] for r in _csv_rows(folder) if int(r["fold"]) == fold
    )


def test_corrupt_wav_raises_runtime_error_naming_file(data_copy, tmp_path):
    name = _pick(data_copy, 2)
    path = os.path.join(str(data_copy), "audio", name)
    with open(path, "wb") as f:
        f.write(b"this is not a wav file " * 64)
    save = tmp_path / "save"
    with pytest.raises(RuntimeError, match=re.escape(path)):
        prepare_esc50(str(data_copy), str(save))
    # Fold 2 is in train, the first split: no manifest, no options file.
    assert not (save / "train.json").exists()
    assert not (save / "esc50_prepare.json").exists()


def test_missing_wav_raises_file_not_found_naming_file(data_copy, tmp_path):
    name = _pick(data_copy, 4)
    path = os.path.join(str(data_copy), "audio", name)
    os.remove(path)
    save = tmp_path / "save"
    with pytest.raises(FileNotFoundError, match=re.escape(path)):
        prepare_esc50(str(data_copy), str(save))
    # The run is not recorded as complete, so the next run does not skip.
    assert not (save / "esc50_prepare.json").exists()


def test_load_clip_corrupt_file_names_path(tmp_path):
    path = tmp_path / "garbage.wav"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(RuntimeError, match=re.escape(str(path))):
        load_clip(str(path), 16000, 5.0)


# --------------------------------------------------------------------------
# A bad data folder, as a user meets it: the last line of stderr names the
# file, the line and the column (or the first few files), and says what to
# do; no manifest is written.
# --------------------------------------------------------------------------


def _edit_csv(folder, edit):
    """Rewrites meta/esc50.csv of ``folder`` as ``edit(lines)`` returns it;
    returns the csv's path."""
    path = folder / "meta" / "esc50.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")
    return path


def _set_field(lines, line, column, value):
    """``lines`` with ``column`` of line ``line`` (1-based) set to ``value``."""
    header = lines[0].split(",")
    fields = lines[line - 1].split(",")
    fields[header.index(column)] = value
    return lines[: line - 1] + [",".join(fields)] + lines[line:]


def _empty_wav(folder):
    """The clip of line 3 rewritten with 0 samples; returns (wav, line)."""
    name = _csv_rows(folder)[1]["filename"]
    sf.write(folder / "audio" / name, np.zeros(0), SOURCE_SR)
    return folder / "audio" / name, 3


def _remove_wavs(folder, n):
    """The clips of the first ``n`` rows removed; returns their paths."""
    paths = [folder / "audio" / r["filename"] for r in _csv_rows(folder)[:n]]
    for path in paths:
        path.unlink()
    return paths


# id -> (corruption of a copy of the data (returns what the message names),
# texts the last line must hold, given the csv path and what was returned)
BAD_DATA = {
    "fold_not_an_integer": (
        lambda d: _edit_csv(d, lambda ls: _set_field(ls, 3, "fold", "x")),
        lambda csv_path, _: [
            f"{csv_path}, line 3, column fold: 'x' is not an integer"
        ],
    ),
    "target_not_an_integer": (
        lambda d: _edit_csv(d, lambda ls: _set_field(ls, 5, "target", "dog")),
        lambda csv_path, _: [f"{csv_path}, line 5, column target: 'dog'"],
    ),
    "header_only": (
        lambda d: _edit_csv(d, lambda ls: ls[:1]),
        lambda csv_path, _: [f"{csv_path} lists no clip", "Restore"],
    ),
    "column_missing": (
        lambda d: _edit_csv(
            d, lambda ls: [ls[0].replace("fold", "folds")] + ls[1:]
        ),
        lambda csv_path, _: [f"{csv_path}, line 1", "lacks column(s) fold"],
    ),
    "row_too_short": (
        lambda d: _edit_csv(
            d, lambda ls: ls[:3] + [",".join(ls[3].split(",")[:3])] + ls[4:]
        ),
        lambda csv_path, _: [f"{csv_path}, line 4: 3 fields", "has 7"],
    ),
    "file_listed_twice": (
        lambda d: _edit_csv(d, lambda ls: ls + [ls[1]]),
        lambda csv_path, _: [
            f"{csv_path}, line {1 + 5 * CLIPS_PER_FOLD + 1}",
            "listed again (first on line 2)",
        ],
    ),
    "filename_empty": (
        lambda d: _edit_csv(d, lambda ls: _set_field(ls, 2, "filename", "")),
        lambda csv_path, _: [f"{csv_path}, line 2, column filename: empty"],
    ),
    "not_utf8": (
        lambda d: (d / "meta" / "esc50.csv").write_bytes(b"\xff\xfe\x00bad"),
        lambda csv_path, _: [f"{csv_path}: not a UTF-8 text file"],
    ),
    "no_clip_of_the_test_folds": (
        lambda d: _edit_csv(
            d, lambda ls: [x for x in ls if x.split(",")[1] != "5"]
        ),
        lambda csv_path, _: [
            "test_fold_nums=[5]",
            f"{csv_path} lists no clip",
            "its folds: [1, 2, 3, 4]",
        ],
    ),
    "zero_sample_wav": (
        _empty_wav,
        lambda csv_path, bad: [
            f"Audio file {bad[0]} is empty (0 samples)",
            f"remove line {bad[1]} of {csv_path}",
        ],
    ),
    "audio_files_missing": (
        lambda d: _remove_wavs(d, 4),
        lambda csv_path, paths: [
            f"4 audio file(s) listed in {csv_path} are missing",
            f"{paths[0]} (line 2), {paths[1]} (line 3), {paths[2]} (line 4) "
            "and 1 more",
        ],
    ),
    "audio_folder_missing": (
        lambda d: shutil.rmtree(d / "audio"),
        lambda csv_path, _: ["does not exist: is --data_folder the folder"],
    ),
}


# the cases issue 21 reported stay in the default tier
@pytest.mark.parametrize(
    "case",
    tiered(BAD_DATA, {"fold_not_an_integer", "header_only", "zero_sample_wav"}),
)
def test_bad_data_is_named_in_the_last_line(case, data_copy, tmp_path):
    """train_piq.py on a copy of the data with one flaw: exit status 1,
    the last line of stderr names it, and no manifest was written."""
    corrupt, expected = BAD_DATA[case]
    bad = corrupt(data_copy)
    out = tmp_path / "run"
    proc = run_script(
        "train_piq.py",
        "hparams/piq.yaml",
        "--data_folder",
        data_copy,
        "--output_folder",
        out,
        "--use_pretrained",
        False,
        *TINY_PIQ,
        expect_ok=False,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    csv_path = data_copy / "meta" / "esc50.csv"
    for text in expected(csv_path, bad):
        assert text in lines[-1], (text, lines[-1])
    assert not list((out / "save").glob("*.json")), "no manifest"


# --------------------------------------------------------------------------
# Cache consistency (bugs found while writing these tests)
# --------------------------------------------------------------------------


def test_interrupted_rebuild_does_not_leave_stale_manifests(
    data_copy, tmp_path
):
    """A rebuild that fails half-way must not let a later run skip
    preparation with manifests from the failed options.

    Run 1 (16 kHz) completes. Run 2 (8 kHz) rewrites train.json and
    valid.json, then fails on an unreadable clip of fold 5 (a Ctrl-C would do
    the same); esc50_prepare.json still says 16 kHz. Run 3 (16 kHz again)
    sees all manifests plus an options file equal to its options and skips,
    so train.json keeps pointing at the 8 kHz cache."""
    save = tmp_path / "save"
    manifests = prepare_esc50(str(data_copy), str(save))
    victim = os.path.join(str(data_copy), "audio", _pick(data_copy, 5))
    good_bytes = open(victim, "rb").read()
    with open(victim, "wb") as f:
        f.write(b"garbage" * 100)
    with pytest.raises(RuntimeError):
        prepare_esc50(str(data_copy), str(save), sample_rate=8000)
    with open(victim, "wb") as f:
        f.write(good_bytes)

    prepare_esc50(str(data_copy), str(save))
    data = _load_manifests(manifests)
    for split, entries in data.items():
        for clip_id, entry in entries.items():
            assert np.load(entry["wav"]).shape == (N_SAMPLES,), (
                f"{split}/{clip_id} uses {entry['wav']}"
            )


def test_cache_not_reused_across_data_folders(source, tmp_path):
    """Two datasets with the same file names (e.g. a clean and a noisy copy
    of ESC-50) prepared into the same save_folder: the manifests are rebuilt
    (data_folder is part of the options), but the cached clips must come from
    the new data_folder, not from the first one."""
    other = tmp_path / "other"
    synthetic_esc50.generate(
        str(other),
        n_classes=N_CLASSES,
        clips_per_fold=CLIPS_PER_FOLD,
        seed=1,
        sample_rate=SOURCE_SR,
    )
    assert sorted(os.listdir(other / "audio")) == sorted(
        os.listdir(source / "audio")
    )
    save = tmp_path / "save"
    prepare_esc50(str(source), str(save))
    manifests = prepare_esc50(str(other), str(save))
    for entries in _load_manifests(manifests).values():
        for entry in entries.values():
            assert entry["source"].startswith(str(other))
            expected = load_clip(entry["source"], 16000, 5.0).numpy()
            np.testing.assert_allclose(
                np.load(entry["wav"]), expected, atol=1e-6
            )


# --------------------------------------------------------------------------
# load_clip
# --------------------------------------------------------------------------


def _peak_hz(wav, sample_rate):
    spectrum = np.abs(np.fft.rfft(wav))
    return np.fft.rfftfreq(len(wav), 1 / sample_rate), spectrum


def test_load_clip_stereo_44k_to_mono_16k(tmp_path):
    sr, n = 44100, 44100 * 5
    t = np.arange(n) / sr
    left = 0.5 * np.sin(2 * np.pi * 440.0 * t)
    right = 0.25 * np.sin(2 * np.pi * 660.0 * t)
    path = tmp_path / "stereo.wav"
    sf.write(str(path), np.stack([left, right], axis=1), sr, subtype="FLOAT")

    wav = load_clip(str(path), 16000, 5.0)
    assert wav.ndim == 1 and wav.shape == (N_SAMPLES,)
    assert str(wav.dtype) == "torch.float32"
    x = wav.numpy()
    assert np.isfinite(x).all()
    assert np.abs(x).max() == pytest.approx(1.0, abs=1e-6)
    # Both channels are in the mono mix, at their real frequencies (i.e. the
    # clip was resampled, not relabelled), with the 2:1 amplitude ratio.
    freqs, spectrum = _peak_hz(x, 16000)
    a440 = spectrum[np.argmin(np.abs(freqs - 440.0))]
    a660 = spectrum[np.argmin(np.abs(freqs - 660.0))]
    assert freqs[np.argmax(spectrum)] == pytest.approx(440.0, abs=0.5)
    assert a440 / a660 == pytest.approx(2.0, rel=0.02)
    assert a660 > 0.3 * spectrum.max()


def test_load_clip_pads_short_clip(tmp_path):
    sr = 16000
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.4, 0.4, 2 * sr)
    path = tmp_path / "short.wav"
    sf.write(str(path), x, sr, subtype="FLOAT")
    wav = load_clip(str(path), sr, 5.0).numpy()
    assert wav.shape == (N_SAMPLES,)
    assert np.all(wav[2 * sr :] == 0.0)
    np.testing.assert_allclose(wav[: 2 * sr], x / np.abs(x).max(), atol=1e-6)


def test_load_clip_pads_short_clip_after_resampling(tmp_path):
    sr = 44100
    x = 0.3 * np.sin(2 * np.pi * 1000.0 * np.arange(2 * sr) / sr)
    path = tmp_path / "short44k.wav"
    sf.write(str(path), x, sr, subtype="FLOAT")
    wav = load_clip(str(path), 16000, 5.0).numpy()
    assert wav.shape == (N_SAMPLES,)
    assert np.all(wav[32000:] == 0.0)
    assert np.abs(wav[:31000]).max() == pytest.approx(1.0, abs=1e-2)


def test_load_clip_crops_long_clip(tmp_path):
    sr = 16000
    rng = np.random.default_rng(1)
    x = rng.uniform(-0.5, 0.5, 7 * sr)
    x[5 * sr :] = 0.99  # a loud tail that must be cropped away
    path = tmp_path / "long.wav"
    sf.write(str(path), x, sr, subtype="FLOAT")
    wav = load_clip(str(path), sr, 5.0).numpy()
    assert wav.shape == (N_SAMPLES,)
    head = x[: 5 * sr]
    np.testing.assert_allclose(wav, head / np.abs(head).max(), atol=1e-6)


def test_load_clip_silence_stays_zero(tmp_path):
    path = tmp_path / "silent.wav"
    sf.write(str(path), np.zeros(44100 * 5), 44100, subtype="PCM_16")
    wav = load_clip(str(path), 16000, 5.0).numpy()
    assert wav.shape == (N_SAMPLES,)
    assert np.isfinite(wav).all()
    assert np.all(wav == 0.0)


def test_load_clip_negative_peak(tmp_path):
    sr = 16000
    x = np.linspace(0.0, 0.3, 5 * sr)
    x[12345] = -0.8
    path = tmp_path / "negpeak.wav"
    sf.write(str(path), x, sr, subtype="FLOAT")
    wav = load_clip(str(path), sr, 5.0).numpy()
    assert np.isfinite(wav).all()
    assert np.abs(wav).max() == pytest.approx(1.0, abs=1e-6)
    assert wav[12345] == pytest.approx(-1.0, abs=1e-6)
    assert wav.max() == pytest.approx(0.3 / 0.8, abs=1e-6)
