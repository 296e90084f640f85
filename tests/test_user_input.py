"""What a user gets wrong: every mistake is stopped before any work starts,
with a message naming the key, file or value given and what to do, and the
user's own files are never touched.

* a bad input of each kind (parametrised), through the real scripts;
* downloads into a folder holding the user's files (ESC-50 and WHAM!),
  against a loopback server: refused before any request, files intact;
* the audio cache of a data folder: shared by runs, an edited clip re-read.
"""

import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

import synthetic_esc50
from conftest import TINY_PIQ, classifier_args, run_piq, run_script
from esc50_prepare import prepare_esc50
from http_fixtures import serve_archives
from wham_prepare import prepare_wham


def _nan_clip_data(data):
    """A copy of ``data`` whose first test clip holds a NaN sample; returns
    the clip's path."""
    with open(data / "meta" / "esc50.csv") as f:
        name = [r.split(",")[0] for r in f.read().splitlines() if ",5," in r][0]
    path = data / "audio" / name
    wav, sr = sf.read(path, dtype="float32")
    wav[100] = np.nan
    sf.write(path, wav, sr, subtype="FLOAT")
    return path


def _wrong_checkpoint(tmp_path, trained_classifier):
    """The embedding model's checkpoint, given as the classifier's."""
    path = tmp_path / "not_a_classifier.ckpt"
    shutil.copy(trained_classifier / "embedding_model.ckpt", path)
    return path


def _garbage_checkpoint(tmp_path, trained_classifier):
    """A file that is not a PyTorch checkpoint."""
    path = tmp_path / "garbage.ckpt"
    path.write_bytes(b"this is not a checkpoint")
    return path


# id -> (extra arguments given (a callable of tmp_path and the trained
# classifier may build a file), environment, text the message must hold)
CASES = {
    "missing_local_checkpoint": (
        lambda tmp, cls: ["--classifier_model_path", tmp / "no" / "cls.ckpt"],
        {},
        ["classifier_model_path=", "no such readable file"],
    ),
    "unreachable_hub_checkpoint": (
        lambda tmp, cls: [
            "--classifier_model_path",
            "nobody-here/no-such-repo/classifier.ckpt",
        ],
        {"HF_HUB_OFFLINE": "1"},
        [
            "classifier_model_path=nobody-here/no-such-repo/classifier.ckpt",
            "Cannot fetch",
        ],
    ),
    "wrong_architecture": (
        lambda tmp, cls: [
            "--classifier_model_path",
            _wrong_checkpoint(tmp, cls),
        ],
        {},
        ["classifier_model_path=", "not_a_classifier.ckpt", "does not match"],
    ),
    "unreadable_checkpoint": (
        lambda tmp, cls: [
            "--classifier_model_path",
            _garbage_checkpoint(tmp, cls),
        ],
        {},
        ["classifier_model_path=", "garbage.ckpt", "not a readable"],
    ),
    "word_for_a_number": (
        lambda tmp, cls: ["--number_of_epochs", "many"],
        {},
        ["--number_of_epochs 'many'", "expects an integer"],
    ),
    "word_for_a_bool": (
        lambda tmp, cls: ["--save_interpretations", "sometimes"],
        {},
        ["--save_interpretations 'sometimes'", "True or False"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_named(case, synthetic_data, trained_classifier, tmp_path):
    """PIQ on a trained classifier with one bad input: exit status 1, the
    message names what was given, and nothing was trained."""
    make_args, env, must_hold = CASES[case]
    args = classifier_args(trained_classifier)
    bad = [str(a) for a in make_args(tmp_path, trained_classifier)]
    key = bad[0]
    if key in args:  # replace the good value of that key
        args[args.index(key) + 1] = bad[1]
        bad = []
    out = tmp_path / "run"
    proc = run_piq(
        synthetic_data,
        out,
        *args,
        *bad,
        env=env,
        expect_ok=False,
    )
    # speechbrain logs the uncaught error to stdout
    message = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
    for text in must_hold:
        assert text in message, (text, message)
    assert not list(out.glob("save/CKPT*")), "nothing may be trained"


def test_nan_clip_is_named_at_preparation(synthetic_data, tmp_path):
    """A clip holding NaN is refused while preparing, by file name."""
    data = tmp_path / "data"
    shutil.copytree(
        synthetic_data, data, ignore=shutil.ignore_patterns("audio_cache")
    )
    path = _nan_clip_data(data)
    with pytest.raises(ValueError, match="NaN or infinite") as err:
        prepare_esc50(str(data), str(tmp_path / "save"))
    assert str(path) in str(err.value)
    assert not (tmp_path / "save" / "esc50_prepare.json").exists()


def test_class_unknown_to_the_classifier(synthetic_data, tmp_path):
    """Data classes the classifier's mapping lacks stop the run before
    training, by name (here: the hub mapping of 50 ESC-50 classes, and
    generated classes that are not ESC-50's)."""
    proc = run_script(
        "train_piq.py",
        "hparams/piq.yaml",
        "--data_folder",
        synthetic_data,
        "--output_folder",
        tmp_path / "run",
        *TINY_PIQ[:-2],
        "--out_n_neurons",
        50,
        "--use_pretrained",
        False,
        expect_ok=False,
    )
    message = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
    assert "does not know" in message
    assert "'tone_" in message, message  # a generated class, by name


def _user_folder(folder):
    """A folder holding a user's files, named like entries of the archives."""
    (folder / "audio").mkdir(parents=True)
    (folder / "audio" / "mine.wav").write_bytes(b"user audio")
    (folder / "README.md").write_text("my notes\n")
    (folder / "tr").mkdir()
    (folder / "tr" / "notes.txt").write_text("mine\n")
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _unchanged(folder, before):
    after = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    return after == before


def test_downloads_never_touch_a_users_files(tmp_path):
    """ESC-50 and WHAM! into a folder of the user's: refused before any
    request to the (loopback) server, every file as it was."""
    with serve_archives({"/a.zip": (b"PK", 2)}) as server:
        data = tmp_path / "data"
        before = _user_folder(data)
        with pytest.raises(FileExistsError) as err:
            prepare_esc50(
                str(data), str(tmp_path / "save"), url=server.url("/a.zip")
            )
        assert f"data_folder={data}" in str(err.value)
        assert "new or empty folder" in str(err.value)
        wham = tmp_path / "wham"
        wham_before = _user_folder(wham)
        shutil.rmtree(wham / "tr")  # no tr/*.wav: WHAM! would be downloaded
        wham_before = {
            p: b for p, b in wham_before.items() if "tr" not in p.parts
        }
        with pytest.raises(FileExistsError) as err:
            prepare_wham(str(wham), url=server.url("/a.zip"))
        assert f"wham_folder={wham}" in str(err.value)
        assert server.requests == []
    assert _unchanged(data, before) and _unchanged(wham, wham_before)


def test_audio_cache_is_per_data_folder_and_rereads_edited_clips(tmp_path):
    """Two runs on one data folder share one cache; editing a clip makes the
    next preparation read it again (and drop its old cache file)."""
    data = tmp_path / "data"
    synthetic_esc50.generate(
        str(data), n_classes=2, clips_per_fold=1, sample_rate=16000
    )
    first = prepare_esc50(str(data), str(tmp_path / "run1"))
    second = prepare_esc50(str(data), str(tmp_path / "run2"))
    entries = [
        json.loads(open(m).read()) for m in (first["test"], second["test"])
    ]
    ((clip_id, entry),) = entries[0].items()
    assert entries[1][clip_id]["wav"] == entry["wav"]
    assert entry["wav"].startswith(str(data / "audio_cache"))
    assert not list((tmp_path / "run1").rglob("*.npy"))
    old = np.load(entry["wav"])
    wav, sr = sf.read(entry["source"], dtype="float32")
    sf.write(entry["source"], -0.5 * wav, sr, subtype="FLOAT")
    third = prepare_esc50(str(data), str(tmp_path / "run1"))
    new_entry = json.loads(open(third["test"]).read())[clip_id]
    assert new_entry["wav"] != entry["wav"] and not os.path.exists(entry["wav"])
    np.testing.assert_allclose(np.load(new_entry["wav"]), -old, atol=1e-5)
