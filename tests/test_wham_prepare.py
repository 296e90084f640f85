"""Tests of wham_prepare.py: download (against a loopback HTTP server), the
cached ``WhamNoise`` dataset and ``mix_at_0db``.

The archive is a tiny generated ``wham_noise.zip`` in the official layout
(top folder ``wham_noise/`` with ``tr/``, ``cv/``, ``tt/`` and
``metadata/noise_meta_*.csv``); its ``tr/`` clips are at 8 kHz and of
different lengths, so that loading exercises resampling, padding and cropping.
"""

import doctest
import hashlib
import io
import os
import re
import zipfile

import numpy as np
import pytest
import soundfile as sf
import torch

import front_end
import wham_prepare
from http_fixtures import serve_archives
from wham_prepare import WhamNoise, mix_at_0db, prepare_wham

TOP = "wham_noise"
PART = ".download.part"
SCRATCH = ".extract-tmp"
SOURCE_SR = 8000
SR = 16000
LENGTH_S = 5.0
N_SAMPLES = 80000
# tr clip name -> duration (s): shorter than, equal to and longer than 5 s.
TR_CLIPS = {"a_short.wav": 2.0, "b_exact.wav": 5.0, "c_long.wav": 7.0}


# --------------------------------------------------------------------------
# Fixtures: generated WHAM! noise folder, archives, loopback HTTP server
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A generated folder in the layout of the archive's ``wham_noise/``."""
    folder = tmp_path_factory.mktemp("wham_source")
    rng = np.random.default_rng(0)
    for sub in ("tr", "cv", "tt", "metadata"):
        (folder / sub).mkdir()
    t = np.arange(int(2.0 * SOURCE_SR)) / SOURCE_SR
    sf.write(
        str(folder / "tr" / "a_short.wav"),
        0.3 * np.sin(2 * np.pi * 440.0 * t),
        SOURCE_SR,
        subtype="FLOAT",
    )
    n = int(5.0 * SOURCE_SR)
    stereo = np.stack(
        [
            rng.uniform(-0.2, 0.2, n),
            0.1 * np.sin(2 * np.pi * 300.0 * np.arange(n) / SOURCE_SR),
        ],
        1,
    )
    sf.write(
        str(folder / "tr" / "b_exact.wav"), stereo, SOURCE_SR, subtype="FLOAT"
    )  # WHAM! noise is 2-channel
    t = np.arange(int(7.0 * SOURCE_SR)) / SOURCE_SR
    sf.write(
        str(folder / "tr" / "c_long.wav"),
        -0.5 * np.sin(2 * np.pi * 1000.0 * t),
        SOURCE_SR,
        subtype="PCM_16",
    )
    for sub in ("cv", "tt"):
        sf.write(
            str(folder / sub / f"{sub}_0.wav"),
            rng.uniform(-0.1, 0.1, SOURCE_SR),
            SOURCE_SR,
        )
        (folder / "metadata" / f"noise_meta_{sub}.csv").write_text(
            "utterance_id,noise_snr\nx,0.0\n"
        )
    (folder / "metadata" / "noise_meta_tr.csv").write_text(
        "utterance_id,noise_snr\n"
        + "".join(f"{name[:-4]},0.0\n" for name in TR_CLIPS)
    )
    return folder


def _zip(folder, skip=()):
    """Zips ``folder`` under one top folder ``wham_noise/`` (with directory
    entries, as the official archive), leaving out the relative paths in ``skip``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.mkdir(f"{TOP}/")
        for sub in sorted(os.listdir(folder)):
            archive.mkdir(f"{TOP}/{sub}/")
            for name in sorted(os.listdir(folder / sub)):
                if f"{sub}/{name}" not in skip and sub not in skip:
                    archive.write(
                        folder / sub / name, arcname=f"{TOP}/{sub}/{name}"
                    )
    return buf.getvalue()


@pytest.fixture(scope="module")
def archives(source):
    """URL path -> (body bytes, Content-Length sent)."""
    good = _zip(source)
    half = good[: len(good) // 2]
    no_tr = _zip(source, skip=("tr",))
    not_wham = _zip(source, skip=("metadata/noise_meta_tr.csv",))
    return {
        "/good/wham_noise.zip": (good, len(good)),
        # The server promises more bytes than it sends, then closes.
        "/short/wham_noise.zip": (half, len(good)),
        # A zip cut in half with a matching Content-Length.
        "/half/wham_noise.zip": (half, len(half)),
        # WHAM! layout, but tr/ holds no wav.
        "/notr/wham_noise.zip": (no_tr, len(no_tr)),
        # A valid zip without metadata/noise_meta_tr.csv: not WHAM! noise.
        "/other/wham_noise.zip": (not_wham, len(not_wham)),
    }


@pytest.fixture(scope="module")
def server(archives):
    with serve_archives(archives) as httpd:
        yield httpd


def _tr_files(folder):
    return [os.path.join(str(folder), "tr", name) for name in sorted(TR_CLIPS)]


def _assert_clean(folder):
    """Nothing half-present: no tr/, no download leftovers."""
    assert not (folder / "tr").exists()
    assert not (folder / PART).exists()
    assert not (folder / SCRATCH).exists()


# --------------------------------------------------------------------------
# prepare_wham
# --------------------------------------------------------------------------


def test_download_good_archive_then_reuse(server, source, tmp_path):
    folder = tmp_path / "wham"
    url = server.url("/good/wham_noise.zip")
    n_requests = len(server.requests)
    files = prepare_wham(str(folder), url=url)

    assert files == _tr_files(folder)
    assert server.requests[n_requests:] == ["/good/wham_noise.zip"]
    # Unpacked from wham_noise/ straight into the folder, byte for byte.
    assert sorted(os.listdir(folder)) == ["cv", "metadata", "tr", "tt"]
    for name in TR_CLIPS:
        assert (folder / "tr" / name).read_bytes() == (
            source / "tr" / name
        ).read_bytes()
    meta = os.path.join("metadata", "noise_meta_tr.csv")
    assert (folder / meta).read_text() == (source / meta).read_text()
    assert (folder / "cv" / "cv_0.wav").is_file() and (
        folder / "tt" / "tt_0.wav"
    ).is_file()

    # Second call: files found, nothing downloaded.
    assert prepare_wham(str(folder), url=url) == files
    assert server.requests[n_requests:] == ["/good/wham_noise.zip"]


@pytest.mark.parametrize(
    "path, error, message",
    [
        ("/short/wham_noise.zip", OSError, r"truncated"),
        ("/half/wham_noise.zip", OSError, r"not a valid zip"),
        (
            "/other/wham_noise.zip",
            OSError,
            r"has no metadata/noise_meta_tr\.csv",
        ),
        (
            "/missing/wham_noise.zip",
            OSError,
            r"Cannot download .*/missing/wham_noise\.zip.*404",
        ),
    ],
    ids=[
        "content-length-larger-than-body",
        "zip-cut-in-half",
        "not-wham",
        "http-404",
    ],
)
def test_bad_download_leaves_nothing_and_rerun_recovers(
    server, tmp_path, path, error, message
):
    folder = tmp_path / "wham"
    with pytest.raises(error, match=message) as err:
        prepare_wham(str(folder), url=server.url(path))
    assert server.url(path) in str(err.value)
    _assert_clean(folder)
    assert os.listdir(folder) == []

    n_requests = len(server.requests)
    assert prepare_wham(
        str(folder), url=server.url("/good/wham_noise.zip")
    ) == _tr_files(folder)
    assert server.requests[n_requests:] == ["/good/wham_noise.zip"]
    assert not (folder / PART).exists() and not (folder / SCRATCH).exists()


def test_checksum(server, archives, tmp_path):
    good_sha = hashlib.sha256(archives["/good/wham_noise.zip"][0]).hexdigest()
    wrong_sha = hashlib.sha256(b"something else").hexdigest()
    folder = tmp_path / "wham"
    url = server.url("/good/wham_noise.zip")

    with pytest.raises(OSError, match=r"[Cc]hecksum") as err:
        prepare_wham(str(folder), url=url, sha256=wrong_sha)
    assert wrong_sha in str(err.value) and good_sha in str(err.value)
    assert os.listdir(folder) == []  # nothing unpacked at all

    assert prepare_wham(str(folder), url=url, sha256=good_sha) == _tr_files(
        folder
    )


def test_archive_without_tr_wavs_names_folder_and_url(server, tmp_path):
    folder = tmp_path / "wham"
    url = server.url("/notr/wham_noise.zip")
    with pytest.raises(FileNotFoundError) as err:
        prepare_wham(str(folder), url=url)
    assert os.path.join(str(folder), "tr") in str(err.value)
    assert url in str(err.value)


def test_present_folders_are_used_without_download(server, source, tmp_path):
    """Files already in <folder>/tr, or unzipped one level up
    (<folder>/wham_noise/tr), are used as they are; the URL is never fetched."""
    n_requests = len(server.requests)
    unreachable = server.url("/missing/wham_noise.zip")

    direct = tmp_path / "direct"
    (direct / "tr").mkdir(parents=True)
    for name in TR_CLIPS:
        (direct / "tr" / name).write_bytes((source / "tr" / name).read_bytes())
    (direct / "tr" / "notes.txt").write_text("not audio")
    assert prepare_wham(str(direct), url=unreachable) == _tr_files(direct)

    parent = tmp_path / "parent"
    (parent / TOP / "tr").mkdir(parents=True)
    (parent / TOP / "tr" / "x.wav").write_bytes(
        (source / "tr" / "a_short.wav").read_bytes()
    )
    assert prepare_wham(str(parent), url=unreachable) == [
        str(parent / TOP / "tr" / "x.wav")
    ]
    assert server.requests[n_requests:] == []


# --------------------------------------------------------------------------
# WhamNoise
# --------------------------------------------------------------------------


@pytest.fixture
def noise_set(source):
    return WhamNoise(
        _tr_files(source), sample_rate=SR, signal_length_s=LENGTH_S
    )


def _dominant_hz(x, sample_rate):
    spectrum = np.abs(np.fft.rfft(x))
    return np.fft.rfftfreq(len(x), 1 / sample_rate)[np.argmax(spectrum)]


def test_clips_are_16k_fixed_length_peak_normalised(noise_set, source):
    assert len(noise_set) == len(TR_CLIPS)
    clips = [noise_set[i] for i in range(len(noise_set))]
    for clip in clips:
        assert clip.dtype == torch.float32 and clip.shape == (N_SAMPLES,)
        assert torch.isfinite(clip).all()
        assert clip.abs().max().item() == pytest.approx(1.0, abs=1e-4)
    short, exact, long = (c.numpy() for c in clips)
    # 2 s of 440 Hz at 8 kHz -> 32000 samples of 440 Hz at 16 kHz, then zeros.
    assert _dominant_hz(short[:32000], SR) == pytest.approx(440.0, abs=1.0)
    assert np.all(short[32100:] == 0.0)
    assert np.abs(short[1000:31000]).max() == pytest.approx(1.0, abs=1e-2)
    # 7 s clip cropped to 5 s: no zero padding at the end; its frequency kept.
    assert np.abs(long[-2000:]).max() > 0.9
    assert _dominant_hz(long, SR) == pytest.approx(1000.0, abs=1.0)
    # Same processing as the ESC-50 clips.
    ref = front_end.load_clip(
        str(source / "tr" / "b_exact.wav"), SR, LENGTH_S
    ).numpy()
    np.testing.assert_array_equal(exact, ref)


def test_clips_are_loaded_once(noise_set, monkeypatch):
    calls = []
    real = wham_prepare.load_clip

    def counting(path, *args, **kwargs):
        calls.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(wham_prepare, "load_clip", counting)
    first = [noise_set[i] for i in range(len(noise_set))]
    assert sorted(calls) == noise_set.files
    for _ in range(3):  # "epochs"
        again = [noise_set[i] for i in range(len(noise_set))]
        noise_set.sample_batch(8, torch.Generator().manual_seed(1))
    assert sorted(calls) == noise_set.files  # no file read twice
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    assert torch.equal(noise_set[-1], first[-1])
    assert len(calls) == len(noise_set.files)

    # A caller modifying a returned clip does not corrupt the cache.
    first[0].zero_()
    assert noise_set[0].abs().max().item() == pytest.approx(1.0, abs=1e-4)


def test_sample_batch_is_reproducible_and_draws_clips(noise_set):
    clips = torch.stack([noise_set[i] for i in range(len(noise_set))])
    batch = noise_set.sample_batch(
        32, generator=torch.Generator().manual_seed(0)
    )
    assert batch.shape == (32, N_SAMPLES) and batch.dtype == torch.float32
    again = noise_set.sample_batch(
        32, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(batch, again)
    other = noise_set.sample_batch(
        32, generator=torch.Generator().manual_seed(1)
    )
    assert not torch.equal(batch, other)
    # Every row is one of the clips, and all clips are drawn.
    matches = (batch[:, None, :] == clips[None, :, :]).all(-1)  # [32, n_clips]
    assert (matches.sum(1) == 1).all()
    assert matches.any(0).all()


def test_wham_noise_errors(source, tmp_path):
    with pytest.raises(ValueError, match="prepare_wham"):
        WhamNoise([])
    noise = WhamNoise(_tr_files(source))
    with pytest.raises(IndexError):
        noise[len(TR_CLIPS)]
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not a wav file" * 50)
    with pytest.raises(RuntimeError, match=re.escape(str(bad))) as err:
        WhamNoise([str(bad)])[0]
    # The hint is about WHAM!, not load_clip's ESC-50 advice (meta/esc50.csv).
    assert "WHAM!" in str(err.value) and "esc50.csv" not in str(err.value)


# --------------------------------------------------------------------------
# mix_at_0db
# --------------------------------------------------------------------------

N_MIX = 16000


def _orthogonal_pair():
    """Two batches whose rows are orthogonal (integer numbers of periods) and
    of very different energies."""
    k = torch.arange(N_MIX, dtype=torch.float64)
    s = torch.stack(
        [
            0.05 * torch.sin(2 * torch.pi * 5 * k / N_MIX),
            3.0 * torch.sin(2 * torch.pi * 11 * k / N_MIX),
        ]
    )
    n = torch.stack(
        [
            0.8 * torch.cos(2 * torch.pi * 7 * k / N_MIX),
            0.01 * torch.sin(2 * torch.pi * 2 * k / N_MIX),
        ]
    )
    return s.float(), n.float()


def test_mix_gives_signal_and_noise_equal_energy():
    s, n = _orthogonal_pair()
    assert torch.allclose(
        (s * n).sum(-1), torch.zeros(2), atol=1e-3
    )  # orthogonal indeed
    mix = mix_at_0db(s, n)
    assert mix.shape == s.shape and mix.dtype == torch.float32
    s_unit = s / s.norm(dim=-1, keepdim=True)
    n_unit = n / n.norm(dim=-1, keepdim=True)
    proj_s, proj_n = (mix * s_unit).sum(-1), (mix * n_unit).sum(-1)
    # Input energies differ by 256x and 90000x; in the mixture they are equal.
    torch.testing.assert_close(proj_s, proj_n, rtol=1e-4, atol=0)
    assert (proj_s > 0).all()
    # Peak-normalised per clip.
    torch.testing.assert_close(
        mix.abs().amax(-1), torch.ones(2), rtol=0, atol=1e-6
    )


def test_mix_is_per_clip_and_scale_invariant():
    s, n = _orthogonal_pair()
    mix = mix_at_0db(s, n)
    scaled = mix_at_0db(
        s * torch.tensor([[7.0], [0.02]]), n * torch.tensor([[0.3], [40.0]])
    )
    torch.testing.assert_close(scaled, mix, rtol=0, atol=1e-5)
    for i in range(2):
        torch.testing.assert_close(
            mix_at_0db(s[i : i + 1], n[i : i + 1]), mix[i : i + 1]
        )


def test_mix_with_silence_has_no_nan():
    s, _ = _orthogonal_pair()
    s[0, 100] = -1.0  # a negative peak
    silent = torch.zeros_like(s)
    mix = mix_at_0db(s, silent)
    assert torch.isfinite(mix).all()
    torch.testing.assert_close(
        mix, s / s.abs().amax(-1, keepdim=True), rtol=0, atol=1e-5
    )
    assert mix[0, 100].item() == pytest.approx(-1.0, abs=1e-6)
    both = mix_at_0db(silent, silent)
    assert torch.isfinite(both).all() and torch.equal(both, silent)


def test_mix_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(2, 10\).*\(2, 11\)"):
        mix_at_0db(torch.ones(2, 10), torch.ones(2, 11))


def test_docstring_examples():
    result = doctest.testmod(wham_prepare)
    assert result.attempted >= 1 and result.failed == 0
