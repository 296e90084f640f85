"""interpret_file.py: one's own recordings, any format, rate, channels and
length, through a trained PIQ run (and the errors a user can meet)."""

import json
import re
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from hyperpyyaml import resolve_references

from conftest import classifier_args, run_piq, run_script, tiered
from interpret_file import AudioInterpreter

# name -> (sample rate, channels, seconds, format)
FILES = {
    "stereo_44k.wav": (44100, 2, 3.0, "WAV"),
    "mono_8k.flac": (8000, 1, 2.0, "FLAC"),
    "short.wav": (16000, 1, 0.5, "WAV"),
    "long.wav": (22050, 1, 12.0, "WAV"),
}


@pytest.fixture(scope="module")
def piq_run(synthetic_data, trained_classifier, tmp_path_factory):
    """A PIQ run trained for one epoch on the generated data."""
    out = tmp_path_factory.mktemp("piq_run")
    run_piq(
        synthetic_data,
        out,
        *classifier_args(trained_classifier),
        "--number_of_epochs",
        1,
        "--save_interpretations",
        False,
    )
    return out


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """The files of ``FILES``: a tone in noise, so each has content."""
    folder = tmp_path_factory.mktemp("recordings")
    rng = np.random.default_rng(0)
    for name, (rate, channels, seconds, fmt) in FILES.items():
        t = np.arange(int(rate * seconds)) / rate
        wav = 0.5 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(
            t.size
        )
        data = np.stack([wav] * channels, 1) if channels > 1 else wav
        sf.write(folder / name, data, rate, format=fmt)
    return folder


def test_files_of_any_rate_channels_and_length(piq_run, recordings, tmp_path):
    """The command on four files at once: per file an interpretation of the
    file's own duration, a mask over all its frames, a figure, the top
    classes (probabilities summing to at most 1, sorted)."""
    out = tmp_path / "out"
    run_script(
        "interpret_file.py",
        piq_run,
        *[recordings / name for name in FILES],
        "--output_folder",
        out,
        "--top_k",
        2,
        # 7 windows (the 12 s file has 4): batches of 3 cross the files
        "--batch_size",
        3,
    )
    hop = 186  # STFT hop (samples at 16 kHz)
    for name, (_, _, seconds, _) in FILES.items():
        folder = out / name
        wav, rate = sf.read(folder / "interpretation.wav")
        assert rate == 16000 and wav.ndim == 1
        assert len(wav) == round(16000 * seconds)
        mask = np.load(folder / "mask.npy")
        assert mask.dtype == np.float32
        assert mask.shape == (round(16000 * seconds) // hop + 1, 513)
        assert 0 <= mask.min() and mask.max() <= 1
        # every frame is explained (the 12 s file by three 5 s windows)
        assert (mask.max(axis=1) > 0).all(), name
        assert (folder / "spectra.png").stat().st_size > 0
        classes = json.loads((folder / "classes.json").read_text())
        probs = [c["probability"] for c in classes["top_classes"]]
        assert len(probs) == 2 and probs == sorted(probs, reverse=True)
        assert sum(probs) <= 1 + 1e-6


def test_long_file_mask_is_the_windows_mask_where_they_do_not_overlap(
    piq_run,
):
    """In the first 2.5 s only the first window speaks: the file's mask
    there equals that window's own mask."""
    interpreter = AudioInterpreter.from_hparams(str(piq_run))
    rng = np.random.default_rng(1)
    wav = torch.from_numpy(rng.standard_normal(16000 * 12).astype("float32"))
    (whole,) = interpreter.interpret_batch([wav])
    (first,) = interpreter.interpret_batch([wav[:80000]])
    frames = interpreter.window_hop // 186
    np.testing.assert_allclose(
        whole["mask"][:frames], first["mask"][:frames], atol=1e-5
    )


def test_windows_in_small_batches_give_the_one_pass_results(piq_run):
    """More windows than the batch size (9 windows: 12 s, 3 s and 12 s
    files), batches of 1, 2 and 4 crossing the files' boundaries: the masks,
    interpretations and probabilities of one pass of all 9 windows. Every
    window is interpreted on its own (eval mode, no batch statistics), so
    only float rounding may differ: oneDNN and MKL choose their kernels'
    blocking by batch size, which can change the summation order by one
    float32 ulp in the classifier's logits or the decoder's output (~1e-7
    on values of order 1); masks and probabilities lie in [0, 1], so an
    absolute 1e-5 is far below any change a batching bug would make (a
    window's mask given to another window, a window dropped). On the CPU
    where this was written (Xeon, AVX-512) batches of 1 changed masks by at
    most 6e-8, one ulp at 0.5."""
    interpreter = AudioInterpreter.from_hparams(str(piq_run), device="cpu")
    rng = np.random.default_rng(2)
    wavs = [
        torch.from_numpy(rng.standard_normal(16000 * s).astype("float32"))
        for s in (12, 3, 12)
    ]
    assert sum(len(interpreter.windows(w)[1]) for w in wavs) == 9
    interpreter.batch_size = 9
    whole = interpreter.interpret_batch(wavs, top_k=3)
    for batch_size in (1, 2, 4):
        interpreter.batch_size = batch_size
        parts = interpreter.interpret_batch(wavs, top_k=3)
        for one, other in zip(whole, parts):
            for key in ("mask", "X", "interpretation"):
                np.testing.assert_allclose(
                    np.asarray(other[key]), np.asarray(one[key]), atol=1e-5
                )
            # top_k = all 3 classes: the same probability for each (the
            # order of two near-equal ones could swap by rounding)
            p_one, p_other = (
                dict(one["top_classes"]),
                dict(other["top_classes"]),
            )
            assert sorted(p_other) == sorted(p_one)
            for name, p in p_one.items():
                assert p_other[name] == pytest.approx(p, abs=1e-5), name


def _no_checkpoint_run(piq_run, tmp_path):
    """A copy of the run's files without its trained checkpoint."""
    source = tmp_path / "run"
    source.mkdir()
    for name in ("hyperparams.yaml", "train_piq.py"):
        (source / name).write_text((piq_run / name).read_text())
    (source / "save").mkdir()
    (source / "save" / "label_encoder.txt").write_text(
        (piq_run / "save" / "label_encoder.txt").read_text()
    )
    return source


def _no_label_file_run(piq_run, tmp_path):
    """A copy of the run without save/label_encoder.txt."""
    source = tmp_path / "run"
    shutil.copytree(piq_run, source, symlinks=True)
    (source / "save" / "label_encoder.txt").unlink()
    return source


def _clip(path):
    """A good 1 s clip at ``path``; returns the path."""
    sf.write(path, np.full(16000, 0.5), 16000)
    return path


def _problem(tmp, clip, run, problem):
    """What ``problem`` gives interpret_file.py: (run folder, files, extra
    arguments, environment)."""
    files, extra, env = [clip], [], {}
    if problem == "unreadable":
        clip.write_bytes(b"not audio at all")
    elif problem == "empty":
        sf.write(clip, np.zeros(0), 16000)
    elif problem == "empty_mp3":
        files = [clip.with_suffix(".mp3")]
        files[0].write_bytes(b"")
    elif problem == "missing_file":
        files = [tmp / "nothere.wav"]
    elif problem == "two_files_of_one_name":
        (tmp / "sub").mkdir()
        files = [_clip(clip), _clip(tmp / "sub" / "clip.wav")]
    else:
        _clip(clip)
    if problem == "no_checkpoint":
        run = _no_checkpoint_run(run, tmp)
    elif problem == "no_label_file":
        run = _no_label_file_run(run, tmp)
    elif problem == "no_run_folder":
        run = tmp / "results" / "piq" / "1234"
    elif problem == "hub_repository_unreachable":
        run, env = "nobody-here/no-such-repo", {"HF_HUB_OFFLINE": "1"}
    elif problem == "device_not_here":
        extra = ["--device", "cuda:99"]
    elif problem == "top_k_zero":
        extra = ["--top_k", 0]
    return run, files, extra, env


# problem -> what the last line of stderr must hold (clip: tmp/clip.wav)
PROBLEMS = {
    "unreadable": lambda clip: [
        f"Cannot read audio file {clip} (Format not recognised)",
        "give another sound file",
    ],
    "empty": lambda clip: [f"Audio file {clip} is empty (0 samples)"],
    "empty_mp3": lambda clip: [
        f"Audio file {clip.with_suffix('.mp3')} is empty (0 bytes)"
    ],
    "missing_file": lambda clip: [
        f"Audio file {clip.parent / 'nothere.wav'} does not exist"
    ],
    "two_files_of_one_name": lambda clip: [
        f"{clip} and {clip.parent / 'sub' / 'clip.wav'} are both named"
    ],
    "no_checkpoint": lambda clip: [
        f"{clip.parent / 'run'}/save holds no trained checkpoint"
    ],
    "no_label_file": lambda clip: [
        f"{clip.parent / 'run'}/save/label_encoder.txt not found"
    ],
    "no_run_folder": lambda clip: [
        f"{clip.parent}/results/piq/1234: no such run folder",
        "--output_folder of a finished run",
    ],
    "hub_repository_unreachable": lambda clip: [
        "nobody-here/no-such-repo: no such local folder",
        "LocalEntryNotFoundError",
    ],
    "device_not_here": lambda clip: ["--device cuda:99"],
    "top_k_zero": lambda clip: ["--top_k 0: give at least 1"],
}


# the cases issue 21 reported stay in the default tier
@pytest.mark.parametrize(
    "problem", tiered(PROBLEMS, {"no_run_folder", "empty_mp3", "missing_file"})
)
def test_clear_errors(problem, piq_run, tmp_path):
    """An unreadable file, an empty one (0 samples, or an mp3 of 0 bytes),
    a missing one, two of one name, a folder with no trained checkpoint or
    no label file, a run folder or hub repository that is not there, a
    device that is not there, no class to report: the last line of stderr
    names it, with advice for one's own file (not ESC-50's csv)."""
    audio = tmp_path / "clip.wav"
    source, files, extra, env = _problem(tmp_path, audio, piq_run, problem)
    proc = run_script(
        "interpret_file.py",
        source,
        *files,
        "--output_folder",
        tmp_path / "out",
        *extra,
        env=env,
        expect_ok=False,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    for text in PROBLEMS[problem](audio):
        assert text in lines[-1], (text, lines[-1])
    assert "esc50.csv" not in lines[-1]
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def amt_run(synthetic_data, tmp_path_factory):
    """An AMT run (nothing trained) on an untrained tiny ViT classifier."""
    from test_hf_backbones import QUICK, TINY_ARCH

    out = tmp_path_factory.mktemp("amt_run")
    run_script(
        "interpret_amt.py",
        "hparams/amt_vit.yaml",
        "--data_folder",
        synthetic_data,
        "--output_folder",
        out,
        "--use_pretrained",
        False,
        "--test_only",
        "--save_interpretations",
        False,
        *QUICK,
        *TINY_ARCH["vit"],
    )
    return out


@pytest.mark.parametrize(
    "method", ["l2i", pytest.param("amt", marks=pytest.mark.slow)]
)
def test_every_method_interprets_a_file(method, request, recordings, tmp_path):
    """L2I (a run trained with add_wham_noise) and AMT (nothing trained)
    run folders work like PIQ's."""
    run = (
        request.getfixturevalue("trained_l2i")[0]
        if method == "l2i"
        else request.getfixturevalue("amt_run")
    )
    out = tmp_path / "out"
    run_script(
        "interpret_file.py",
        run,
        recordings / "long.wav",
        "--output_folder",
        out,
    )
    mask = np.load(out / "long.wav" / "mask.npy")
    assert mask.shape == (round(16000 * 12.0) // 186 + 1, 513)
    assert (mask.max(axis=1) > 0).any() and 0 <= mask.min() <= mask.max() <= 1
    wav, rate = sf.read(out / "long.wav" / "interpretation.wav")
    assert rate == 16000 and len(wav) == 16000 * 12


def test_run_moved_to_a_long_path(piq_run, recordings, tmp_path):
    """A run trained in a folder that no longer exists, moved to one whose
    path is too long for one YAML line (speechbrain then writes it on the
    line after ``output_folder:``): interpret_file.py finds the checkpoint
    in the folder where the run now is."""
    moved = tmp_path / ("a_folder_name_long_enough_to_fold_the_yaml_line_" * 2)
    shutil.copytree(piq_run, moved)
    text = (moved / "hyperparams.yaml").read_text()
    text = text.replace(str(piq_run), str(moved / "elsewhere"))
    # written as speechbrain writes a run's hyperparams.yaml
    text = resolve_references(text).getvalue()
    assert re.search(r"^output_folder: *\n +/", text, re.M)
    (moved / "hyperparams.yaml").write_text(text)
    run_script(
        "interpret_file.py",
        moved,
        recordings / "short.wav",
        "--output_folder",
        tmp_path / "out",
    )
    assert (tmp_path / "out" / "short.wav" / "mask.npy").is_file()
