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
import re
import shutil

import numpy as np
import pytest
import soundfile as sf

import synthetic_esc50
from conftest import (
    TINY_PIQ,
    classifier_args,
    replace_arg,
    run_piq,
    run_script,
    tiered,
    tiny_piq_argv,
)
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


def last_line(proc):
    """The last non-empty line of the process's stderr: the last line a user
    sees in a terminal, where the error must be named."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _set(key, value):
    """An edit of the command line: ``--key value``, replacing the value
    already given (a callable value gets (tmp_path, trained classifier))."""

    def edit(argv, tmp, cls):
        given = value(tmp, cls) if callable(value) else value
        if f"--{key}" in argv:
            return replace_arg(argv, key, given)
        return argv + [f"--{key}", str(given)]

    return edit


def _add(*items):
    """An edit of the command line: ``items`` appended as they are."""
    return lambda argv, tmp, cls: argv + [str(i) for i in items]


def _drop(key):
    """An edit of the command line: ``--key`` and its value removed."""

    def edit(argv, tmp, cls):
        at = argv.index(f"--{key}")
        return argv[:at] + argv[at + 2 :]

    return edit


def _hparams_file(name):
    """An edit of the command line: another first argument (the YAML)."""
    return lambda argv, tmp, cls: [name] + argv[1:]


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


def _unlabelled_classifier(argv, tmp, cls):
    """The trained classifier's files in a folder without its
    label_encoder.txt (the hub's 50 classes are then assumed)."""
    folder = tmp / "bare"
    folder.mkdir()
    keys = {"embedding_model": "embedding_model_path"}
    for name in ("embedding_model", "classifier"):
        shutil.copy(cls / f"{name}.ckpt", folder / f"{name}.ckpt")
        key = keys.get(name, f"{name}_model_path")
        argv = replace_arg(argv, key, folder / f"{name}.ckpt")
    return argv


def _a_file(tmp, cls):
    path = tmp / "a_file"
    path.write_text("not a folder\n")
    return path


# id -> (edit of a good command line, environment, texts the last line of
# stderr must hold)
CASES = {
    "missing_local_checkpoint": (
        _set("classifier_model_path", lambda tmp, cls: tmp / "no" / "c.ckpt"),
        {},
        ["classifier_model_path=", "no" + os.sep + "c.ckpt", "no such"],
    ),
    "unreachable_hub_checkpoint": (
        _set(
            "classifier_model_path", "nobody-here/no-such-repo/classifier.ckpt"
        ),
        {"HF_HUB_OFFLINE": "1"},
        [
            "classifier_model_path=nobody-here/no-such-repo/classifier.ckpt",
            "Cannot fetch",
        ],
    ),
    "wrong_architecture": (
        _set("classifier_model_path", _wrong_checkpoint),
        {},
        [
            "classifier_model_path=",
            "not_a_classifier.ckpt",
            "does not match",
            "missing keys",
            "unexpected keys",
            "more",
        ],
    ),
    "unreadable_checkpoint": (
        _set("classifier_model_path", _garbage_checkpoint),
        {},
        ["classifier_model_path=", "garbage.ckpt", "not a readable"],
    ),
    "classifier_without_label_file": (
        _unlabelled_classifier,
        {},
        [
            "classifier_model_path=",
            "bare" + os.sep + "classifier.ckpt",
            "out_n_neurons=3",
            "no " + os.sep,  # where it looked
            "--classifier_labels",
        ],
    ),
    "missing_label_file": (
        _set("classifier_labels", lambda tmp, cls: tmp / "labels.txt"),
        {},
        ["--classifier_labels", "labels.txt", "no such file"],
    ),
    "word_for_a_number": (
        _set("number_of_epochs", "many"),
        {},
        ["--number_of_epochs 'many'", "expects an integer"],
    ),
    "word_for_a_bool": (
        _set("save_interpretations", "sometimes"),
        {},
        ["--save_interpretations 'sometimes'", "True or False"],
    ),
    "zero_batch_size": (
        _set("batch_size", 0),
        {},
        ["--batch_size 0", "integer >= 1"],
    ),
    "zero_sample_rate": (
        _set("sample_rate", 0),
        {},
        ["--sample_rate 0", "integer >= 1", "16000"],
    ),
    "negative_epochs": (
        _set("number_of_epochs", -1),
        {},
        ["--number_of_epochs -1", "integer >= 0"],
    ),
    "unknown_contamination": (
        _set("eval_contamination", "noise"),
        {},
        ["--eval_contamination 'noise'", "none, mixtures, white_noise"],
    ),
    "misspelt_key": (
        _add("--batchsize", 4),
        {},
        ["--batchsize", "no key batchsize", "did you mean --batch_size"],
    ),
    "misspelt_run_option": (
        _add("--test-only"),
        {},
        ["--test-only", "did you mean --test_only"],
    ),
    "key_given_twice": (
        _add("--emb_dim", 32),
        {},
        ["--emb_dim is given 2 times"],
    ),
    "value_not_yaml": (
        _set("test_fold_nums", "[1,"),
        {},
        ["--test_fold_nums [1,", "[1, 2]"],
    ),
    "overlapping_folds": (
        _set("valid_fold_nums", "[3]"),
        {},
        ["train_fold_nums=[1, 2, 3]", "valid_fold_nums=[3]", "share folds"],
    ),
    "empty_fold_list": (
        _set("test_fold_nums", "[]"),
        {},
        ["test_fold_nums=[]", "non-empty list"],
    ),
    "word_for_a_fold": (
        _set("test_fold_nums", "[x]"),
        {},
        ["test_fold_nums=['x']", "not integers in 1..5"],
    ),
    "fold_not_a_list": (
        _set("test_fold_nums", 5),
        {},
        ["--test_fold_nums 5", "a list", "[5]"],
    ),
    "data_folder_is_a_file": (
        _set("data_folder", _a_file),
        {},
        ["--data_folder", "a_file", "this is a file; give a folder"],
    ),
    "data_folder_missing": (
        _drop("data_folder"),
        {},
        ["--data_folder is required", "hparams/piq.yaml"],
    ),
    "hparams_file_missing": (
        _hparams_file("hparams/no_such.yaml"),
        {},
        ["hparams/no_such.yaml", "not found", "hparams/piq.yaml"],
    ),
    "device_not_here": (
        _set("device", "cuda:99"),
        {},
        ["--device cuda:99", "Give"],
    ),
    "device_not_a_device": (
        _set("device", "gpu"),
        {},
        ["--device gpu", "not a device", "cpu"],
    ),
}


# one case per check (files, command-line values, YAML overrides, devices)
# in the default tier, the others in the slow tier
DEFAULT_TIER = {
    "wrong_architecture",
    "missing_local_checkpoint",
    "misspelt_key",
    "word_for_a_number",
    "data_folder_missing",
    "device_not_here",
}


@pytest.mark.parametrize("case", tiered(CASES, DEFAULT_TIER))
def test_bad_input_is_named(case, synthetic_data, trained_classifier, tmp_path):
    """PIQ on a trained classifier with one bad input: exit status 1 (2 for
    argparse), the last line of stderr names what was given in one line,
    and nothing was trained."""
    edit, env, must_hold = CASES[case]
    out = tmp_path / "run"
    argv = tiny_piq_argv(
        synthetic_data, trained_classifier, out, "--number_of_epochs", 1
    )
    argv = edit(argv, tmp_path, trained_classifier)
    proc = run_script("train_piq.py", *argv, env=env, expect_ok=False)
    line = last_line(proc)
    for text in must_hold:
        assert text in line, (text, line, proc.stderr[-3000:])
    assert len(line) < 800, line  # one line, not a dump
    assert not list(out.glob("save/CKPT*")), "nothing may be trained"


def test_wrong_architecture_names_the_file_first_and_last(
    synthetic_data, trained_classifier, tmp_path
):
    """A checkpoint of another model: the last line starts and ends with the
    key and file, and shows only 3 of the 42 unexpected keys, with counts."""
    wrong = _wrong_checkpoint(tmp_path, trained_classifier)
    argv = tiny_piq_argv(synthetic_data, trained_classifier, tmp_path / "r")
    argv = replace_arg(argv, "classifier_model_path", wrong)
    line = last_line(run_script("train_piq.py", *argv, expect_ok=False))
    where = f"classifier_model_path={wrong}"
    assert line.startswith(f"RuntimeError: Checkpoint {where} does not"), line
    assert line.endswith(f"{where}."), line
    assert re.search(r"\d+ missing keys \([^()]+ and \d+ more\)", line), line
    assert re.search(r"\d+ unexpected keys \(([^,()]+, ){2}[^,()]+ and", line)


@pytest.mark.slow  # a second launch of a run
def test_copied_run_folder_tests_again(
    synthetic_data, trained_classifier, tmp_path
):
    """A run folder copied with ``shutil.copytree`` (links followed: its
    save/pretrained/*.ckpt become files, with no label_encoder.txt beside
    them) tests again with ``--test_only``: with the same classifier paths
    (the copies are replaced by links to the files the keys name), and with
    the copies themselves named (the run's save/label_encoder.txt, written
    by its first run, gives the mapping)."""
    run = tmp_path / "run"
    args = [
        *classifier_args(trained_classifier),
        "--number_of_epochs",
        1,
        "--save_interpretations",
        False,
    ]
    run_piq(synthetic_data, run, *args)
    assert os.path.islink(run / "save" / "pretrained" / "classifier.ckpt")
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    pretrained = copy / "save" / "pretrained"
    assert not os.path.islink(pretrained / "classifier.ckpt")
    proc = run_piq(synthetic_data, copy, *args, "--test_only")
    assert os.path.samefile(
        pretrained / "classifier.ckpt", trained_classifier / "classifier.ckpt"
    )
    assert f"({trained_classifier / 'label_encoder.txt'})" in proc.stdout

    copy2 = tmp_path / "copy2"
    shutil.copytree(run, copy2)
    own = [
        "--embedding_model_path",
        copy2 / "save" / "pretrained" / "embedding_model.ckpt",
        "--classifier_model_path",
        copy2 / "save" / "pretrained" / "classifier.ckpt",
    ]
    proc = run_piq(synthetic_data, copy2, *own, *args[4:], "--test_only")
    assert f"({copy2 / 'save' / 'label_encoder.txt'})" in proc.stdout
    assert (copy2 / "test_metrics.json").is_file()


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
    message = last_line(proc)
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
