"""The listening gallery (make_gallery.py) opened in a real headless Chromium.

Needs Debian's ``chromium`` and ``chromium-driver`` (``bash setup.sh --test``
installs them) and selenium (requirements-test.txt). Nothing is downloaded at
run time: the browser and the driver are given by path, so Selenium Manager
is never called. A browser that cannot start fails the tests, never skips.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

import make_gallery
from conftest import ROOT, TINY_PIQ, classifier_args, run_script

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = (
    "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run "
    "--disable-background-networking --disable-component-update "
    "--disable-sync --window-size=1600,1000"
).split()
# the state of every <audio> and <img> of the page, for the assertions
MEDIA_STATE = """return {
  audio: [...document.querySelectorAll('audio')].map(a => ({src: a.src,
    ready: a.readyState, duration: a.duration, error: a.error && a.error.code})),
  img: [...document.querySelectorAll('img')].map(i => ({src: i.src,
    complete: i.complete, width: i.naturalWidth}))};"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A headless Chromium driven by selenium, with its console log kept."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.isfile(p)]
    if missing:
        pytest.fail(f"{missing} missing: run `bash setup.sh --test`", False)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as e:
        pytest.fail(
            f"selenium missing ({e}): run `bash setup.sh --test`", False
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tmp_path_factory.mktemp("chromium_profile")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver, error = None, None
    try:
        driver = webdriver.Chrome(
            options=options, service=Service(executable_path=CHROMEDRIVER)
        )
    except Exception as e:  # failed outside the handler: no chained trace
        error = str(e).split("Stacktrace")[0].strip()
    if error:
        pytest.fail(f"{CHROMIUM} could not start headless: {error}", False)
    yield driver
    driver.quit()


def check_page(driver, index, screenshot, names, load_audio=False):
    """Opens ``index`` and checks: no console error, every audio playable
    with a finite non-zero duration (after asking each to load if
    ``load_audio``), every image decoded, one metric column per run; saves a
    full-page screenshot. Returns the page's text."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(pathlib.Path(index).as_uri())
    if load_audio:  # what pressing play does to a preload="none" player
        driver.execute_script(
            "document.querySelectorAll('audio').forEach(a => a.load())"
        )
    WebDriverWait(driver, 30).until(
        lambda d: all(
            a["ready"] >= 2 or a["error"]
            for a in d.execute_script(MEDIA_STATE)["audio"]
        ),
        "audio elements never became playable",
    )
    state = driver.execute_script(MEDIA_STATE)
    assert state["audio"] and state["img"]
    for audio in state["audio"]:
        assert audio["error"] is None and audio["ready"] >= 2, audio
        assert audio["duration"] and np.isfinite(audio["duration"]), audio
    for img in state["img"]:
        assert img["complete"] and img["width"] > 0, img
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    header = driver.find_elements("css selector", "#metrics tr:first-child th")
    assert [h.text for h in header] == ["metric", "better", *names]
    height = driver.execute_script(
        "return document.documentElement.scrollHeight"
    )
    driver.set_window_size(1600, min(height + 300, 8000))
    assert driver.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 0
    return driver.find_element("tag name", "body").text


def fake_run(folder, clips, with_clip_json, seed):
    """A run folder as a test with save_interpretations leaves it: 0.5 s
    float WAVs, a mask, a spectra.png and (optionally) clip.json per clip."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    metrics = {"loss": 0.5, "n_clips": len(clips), "accuracy": 1.0}
    metrics.update(AD=10.0 * seed, COMP=None, contamination=None)
    folder.mkdir(parents=True)
    (folder / "test_metrics.json").write_text(json.dumps(metrics))
    for clip in clips:
        clip_folder = folder / "interpretations" / clip
        clip_folder.mkdir(parents=True)
        wav = (0.1 * rng.standard_normal(8000)).astype(np.float32)
        for name in ("original.wav", "interpretation.wav"):
            sf.write(clip_folder / name, wav, 16000, subtype="FLOAT")
        mask = rng.random((16, 8)).astype(np.float32)
        np.save(clip_folder / "mask.npy", mask)
        fig, ax = plt.subplots(figsize=(3, 1))
        ax.imshow(mask.T)
        fig.savefig(clip_folder / "spectra.png", dpi=50)
        plt.close(fig)
        if with_clip_json:
            info = {"id": clip, "true_class": "<dog> & cat"}
            info["predicted_class"] = f"class {seed}"
            info["metrics"] = {"accuracy": 1.0, "AD": 3.25, "SPS": None}
            (clip_folder / "clip.json").write_text(json.dumps(info))
    return folder


def test_gallery_of_two_runs(browser, tmp_path):
    """Two runs, one without clip.json and missing a clip, through the CLI."""
    first = fake_run(tmp_path / "piq" / "1", ["a1", "b 2", "c#3"], True, 1)
    second = fake_run(tmp_path / "l2i" / "1", ["a1", "b 2"], False, 2)
    out = tmp_path / "gallery"
    command = [sys.executable, "make_gallery.py", first, second, "--output"]
    subprocess.run(
        [*map(str, command), str(out), "--names", "PIQ <1>", "L2I"],
        cwd=ROOT,
        check=True,
    )
    page = (out / "index.html").read_text()
    assert str(tmp_path) not in page and "http" not in page  # relative only
    text = check_page(
        browser, out / "index.html", tmp_path / "two.png", ["PIQ <1>", "L2I"]
    )
    assert "true: <dog> & cat" in text and "not in this run" in text
    assert "no per-clip metrics (clip.json)" in text
    assert page.count("<audio") == 3 + 5  # originals, interpretations
    assert page.count("<img") == 5
    # media are hard links of the run's files (same file system here)
    original = first / "interpretations" / "a1" / "original.wav"
    linked = out / "media" / "a1" / "original.wav"
    assert os.path.samefile(original, linked)


def test_gallery_of_a_piq_run(
    browser, synthetic_data, trained_classifier, tmp_path
):
    """The real outputs of a 1-epoch PIQ run: their 32-bit float WAVs play."""
    run = tmp_path / "piq"
    run_script(
        "train_piq.py",
        "hparams/piq.yaml",
        "--data_folder",
        synthetic_data,
        "--output_folder",
        run,
        *classifier_args(trained_classifier),
        *TINY_PIQ,
        "--number_of_epochs",
        1,
    )
    wavs = list((run / "interpretations").glob("*/*.wav"))
    assert wavs and {sf.info(w).subtype for w in wavs} == {"FLOAT"}
    index = make_gallery.build_gallery([run], str(tmp_path / "gallery"))
    # default column name: the last two parts of the run folder
    text = check_page(
        browser, index, tmp_path / "piq.png", [f"{tmp_path.name}/piq"]
    )
    assert "true: tone_" in text  # from clip.json, else the test manifest
    if any(run.glob("interpretations/*/clip.json")):
        assert "no per-clip metrics" not in text


def test_gallery_copies_when_links_fail(monkeypatch, tmp_path):
    """Across file systems (no hard link) the media are copied; a gallery
    written twice into one folder stays whole."""
    run = fake_run(tmp_path / "piq" / "1", ["a1"], True, 1)

    def no_link(src, dst):
        raise OSError("cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    for _ in range(2):
        make_gallery.build_gallery([run], str(tmp_path / "gallery"))
    original = run / "interpretations" / "a1" / "original.wav"
    copied = tmp_path / "gallery" / "media" / "a1" / "original.wav"
    assert not os.path.samefile(original, copied)
    assert copied.read_bytes() == original.read_bytes()
    leftovers = [
        p for p in (tmp_path / "gallery").rglob("*") if ".tmp" in p.name
    ]
    assert not leftovers


def test_large_gallery_loads_audio_when_played(browser, monkeypatch, tmp_path):
    """Past MAX_PRELOADED audio elements no player is created until asked
    (Chromium refuses more than 1000 per page); then each plays."""
    run = fake_run(tmp_path / "piq" / "1", ["a1", "b2"], True, 1)
    monkeypatch.setattr(make_gallery, "MAX_PRELOADED", 3)
    index = make_gallery.build_gallery([run], str(tmp_path / "gallery"))
    assert 'preload="metadata"' not in pathlib.Path(index).read_text()
    browser.get(pathlib.Path(index).as_uri())
    state = browser.execute_script(MEDIA_STATE)["audio"]
    assert [a["ready"] for a in state] == [0] * 4
    check_page(browser, index, tmp_path / "large.png", ["piq/1"], True)
