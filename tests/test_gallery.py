"""The listening gallery (make_gallery.py) opened in a real headless Chromium.

Needs Debian's ``chromium`` and ``chromium-driver`` (``bash setup.sh --test``
installs them) and selenium (requirements-test.txt). Nothing is downloaded at
run time: the browser and the driver are given by path, so Selenium Manager
is never called. A browser that cannot start fails the tests, never skips.
"""

import json
import os
import pathlib
import struct
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

import make_gallery
from conftest import (
    N_CLASSES,
    ROOT,
    TINY,
    TINY_PIQ,
    classifier_args,
    run_script,
)

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
# every in-page link and whether its target exists
LINKS = """return [...document.querySelectorAll('a[href^="#"]')].map(a =>
  [a.getAttribute('href'), !!document.getElementById(
    decodeURIComponent(a.getAttribute('href').slice(1)))]);"""
# the boxes of the images of the n-th visible clip row: input, then methods
ROW_IMAGES = """const row = document.querySelectorAll(
  '#rows article.clip:not([hidden])')[arguments[0]];
return [...row.querySelectorAll('.cell img')].map(i => {
  const r = i.getBoundingClientRect(), c = i.closest('.cell');
  return {k: c.dataset.k ?? 'input', top: r.top, left: r.left,
          right: r.right, width: r.width};});"""
# the clip ids of the visible rows, top to bottom
VISIBLE_ROWS = """return [...document.querySelectorAll('#rows article.clip')]
  .filter(r => !r.hidden && r.offsetHeight > 0).map(r => r.dataset.clip);"""


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


def png_size(path):
    """(width, height) of a PNG file, from its header."""
    head = pathlib.Path(path).read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


def check_page(driver, index, screenshot, names, load_audio=False):
    """Opens ``index`` and checks: no console error, every audio playable
    with a finite non-zero duration (after asking each to load if
    ``load_audio``), every image decoded, one summary row per method, every
    in-page link has its target, nothing wider than the 1600 px window;
    saves a full-page screenshot (checked to be a 1600 px wide PNG as tall
    as the page). Returns the page's text."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.set_window_size(1600, 1000)
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
    height = driver.execute_script(
        "return document.documentElement.scrollHeight"
    )
    driver.set_window_size(1600, min(height + 300, 8000))
    # what scrolling to them does to the lazy images out of the window
    driver.execute_script(
        "document.querySelectorAll('img').forEach(i => i.loading = 'eager')"
    )
    WebDriverWait(driver, 30).until(
        lambda d: all(
            i["complete"] for i in d.execute_script(MEDIA_STATE)["img"]
        ),
        "images never loaded",
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
    first = driver.find_elements("css selector", "#summary .mname")
    assert sorted(c.text for c in first) == sorted(names)
    links = driver.execute_script(LINKS)
    assert links and all(ok for _, ok in links), links
    width = driver.execute_script(
        "return [document.documentElement.scrollWidth, window.innerWidth]"
    )
    assert width[0] <= width[1], f"page wider than the window: {width}"
    assert driver.save_screenshot(str(screenshot))
    shot = png_size(screenshot)
    assert shot[0] == 1600 and shot[1] >= min(height, 7000), shot
    return driver.find_element("tag name", "body").text


def assert_side_by_side(driver, row=0):
    """In the ``row``-th visible clip row the input image and every
    method's image are on one line (same top within 3 px), left to right,
    each at least 300 px wide (the default panel is 340 px)."""
    boxes = driver.execute_script(ROW_IMAGES, row)
    assert len(boxes) >= 3 and boxes[0]["k"] == "input", boxes
    visible = [b for b in boxes if b["right"] <= 1600]
    assert len(visible) >= 3, boxes
    for left, right in zip(visible, visible[1:]):
        assert abs(left["top"] - right["top"]) <= 3, (left, right)
        assert right["left"] >= left["right"], (left, right)
    assert all(b["width"] >= 300 for b in visible), boxes


def fake_run(folder, clips, with_clip_json, seed, mask_shape=(44, 513)):
    """A run folder as a test with save_interpretations leaves it: 0.5 s
    float WAVs at 16 kHz, a mask (by default of the recipe STFT's shape for
    them, 44 frames x 513 bins), a spectra.png and (optionally) clip.json
    per clip: classes alternate "<dog> & cat" and "rain", and AD differs
    per clip (1, 3, 0, 2 for seed 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    metrics = {"loss": 0.5, "n_clips": len(clips), "accuracy": 1.0}
    metrics.update(AD=10.0 * seed, COMP=None, contamination=None)
    folder.mkdir(parents=True)
    (folder / "test_metrics.json").write_text(json.dumps(metrics))
    for i, clip in enumerate(clips):
        clip_folder = folder / "interpretations" / clip
        clip_folder.mkdir(parents=True)
        wav = (0.1 * rng.standard_normal(8000)).astype(np.float32)
        for name in ("original.wav", "interpretation.wav"):
            sf.write(clip_folder / name, wav, 16000, subtype="FLOAT")
        mask = rng.random(mask_shape).astype(np.float32)
        np.save(clip_folder / "mask.npy", mask)
        fig, ax = plt.subplots(figsize=(3, 1))
        ax.imshow(mask.T)
        fig.savefig(clip_folder / "spectra.png", dpi=50)
        plt.close(fig)
        if with_clip_json:
            info = {"id": clip, "true_class": ("<dog> & cat", "rain")[i % 2]}
            info["predicted_class"] = f"class {seed}"
            ad = float((7 * i + seed) % 5)
            info["metrics"] = {"accuracy": 1.0, "AD": ad, "SPS": None}
            (clip_folder / "clip.json").write_text(json.dumps(info))
    return folder


def test_gallery_of_two_runs(browser, tmp_path):
    """Two runs through the CLI, one without clip.json, missing a clip and
    with masks of another shape than the input's STFT: one row per clip
    with the input once and the methods side by side."""
    first = fake_run(tmp_path / "piq" / "1", ["a1", "b 2", "c#3"], True, 1)
    second = fake_run(tmp_path / "l2i" / "1", ["a1", "b 2"], False, 2, (16, 8))
    out = tmp_path / "gallery"
    command = [sys.executable, "make_gallery.py", first, second, "--output"]
    subprocess.run(
        [*map(str, command), str(out), "--names", "PIQ <1>", "L2I"],
        cwd=ROOT,
        check=True,
    )
    page = (out / "index.html").read_text()
    assert str(tmp_path) not in page and "http" not in page  # relative only
    assert '<link rel="stylesheet"' not in page and "<script src" not in page
    text = check_page(
        browser, out / "index.html", tmp_path / "two.png", ["PIQ <1>", "L2I"]
    )
    assert "true: <dog> & cat" in text and "not in this run" in text
    assert "no per-clip metrics (clip.json)" in text
    assert "M·X: what the interpretation plays" in text  # the first run
    assert "mask M (0 to 1): its shape differs" in text  # the second
    assert page.count("<audio") == 3 + 5  # originals, interpretations
    assert page.count("<img") == 3 + 5  # input.png once a clip, mask.png
    assert len(list(out.glob("media/*/input.png"))) == 3
    assert len(list(out.glob("media/*/*/mask.png"))) == 5
    assert_side_by_side(browser)
    # media are hard links of the run's files (same file system here)
    original = first / "interpretations" / "a1" / "original.wav"
    linked = out / "media" / "a1" / "original.wav"
    assert os.path.samefile(original, linked)


def test_sort_and_filter_rows(browser, tmp_path):
    """The class filter hides rows; "sort rows by AD of <method>" orders
    them (low to high, then high to low), clips without a value last."""
    from selenium.webdriver.support.ui import Select

    clips = ["c0", "c1", "c2", "c3"]
    first = fake_run(tmp_path / "a", clips, True, 1)  # AD 1, 3, 0, 2
    second = fake_run(tmp_path / "b", clips, True, 2)  # AD 2, 4, 1, 3
    index = make_gallery.build_gallery(
        [first, second], str(tmp_path / "gallery"), ["A", "B"]
    )
    check_page(browser, index, tmp_path / "sort.png", ["A", "B"])
    assert browser.execute_script(VISIBLE_ROWS) == clips

    def choose(select_id, text):
        Select(browser.find_element("id", select_id)).select_by_visible_text(
            text
        )

    choose("class-filter", "rain (2)")
    assert browser.execute_script(VISIBLE_ROWS) == ["c1", "c3"]
    assert browser.find_element("id", "count").text == "2 of 4 clips shown"
    choose("class-filter", "all classes (4)")
    choose("sort-metric", "AD ↓")  # lower is better: low to high first
    assert (
        Select(
            browser.find_element("id", "sort-order")
        ).first_selected_option.text
        == "low to high"
    )
    assert browser.execute_script(VISIBLE_ROWS) == ["c2", "c0", "c3", "c1"]
    choose("sort-order", "high to low")
    assert browser.execute_script(VISIBLE_ROWS) == ["c1", "c3", "c0", "c2"]
    choose("sort-method", "B")
    assert browser.execute_script(VISIBLE_ROWS) == ["c1", "c3", "c0", "c2"]
    choose("class-filter", "<dog> & cat (2)")
    assert browser.execute_script(VISIBLE_ROWS) == ["c0", "c2"]
    highlighted = browser.find_elements(
        "css selector", "article:not([hidden]) .mini td.sorted"
    )
    assert [c.text for c in highlighted] == ["2", "1"]  # B's AD, in order
    assert_side_by_side(browser)  # still one line per clip after sorting
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_ten_methods_scroll_inside_their_rows(browser, tmp_path):
    """Ten methods at 1600 px: the page does not scroll sideways, each
    clip row does; a method's link in the table scrolls every row (and the
    column names) to its column and outlines it."""
    names = [f"M{k}" for k in range(10)]
    runs = [fake_run(tmp_path / n, ["x1", "x2"], True, 1) for n in names]
    index = make_gallery.build_gallery(runs, str(tmp_path / "g"), names)
    check_page(browser, index, tmp_path / "ten.png", names)
    browser.set_window_size(1600, 1000)
    widths = browser.execute_script(
        "return [...document.querySelectorAll('.strip')].map("
        "s => [s.scrollWidth, s.clientWidth])"
    )
    assert len(widths) == 3 and all(w > c for w, c in widths), widths
    browser.find_element("css selector", '#summary a[href="#method-9"]').click()
    state = browser.execute_script(
        "const c = document.querySelector('#rows .cell[data-k=\"9\"]');"
        "const r = c.getBoundingClientRect();"
        "return {left: r.left, right: r.right, hl: c.classList.contains('hl'),"
        "scroll: [...document.querySelectorAll('.strip')].map(s => s.scrollLeft),"
        "head: document.getElementById('method-9').getBoundingClientRect().left}"
    )
    assert state["hl"] and 0 <= state["left"] < state["right"] <= 1600, state
    assert len(set(state["scroll"])) == 1 and state["scroll"][0] > 0, state
    assert abs(state["head"] - state["left"]) <= 2, state  # names aligned


def write_table(path, rows):
    """A comparison.csv as compare_interpreters.py writes it."""
    fields = ["method", "explains", "reference", "seeds", "AD", "AD_ci95"]
    fields += ["SPS", "seconds"]
    lines = [",".join(fields)] + [",".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_table_with_references_and_a_failed_method(browser, tmp_path):
    """--table gives mean ± ci per method; references (by name, by
    --references or by the table's reference column) are a separate group
    never in bold; bold is the best other method; a run the table lacks
    shows its test_metrics.json; a failed method (empty folder) is listed,
    not drawn."""
    runs = [fake_run(tmp_path / n, ["a1", "b2"], True, 1) for n in "pqr"]
    extra = fake_run(tmp_path / "s", ["a1", "b2"], True, 3)  # AD 30
    failed = tmp_path / "failed"
    failed.mkdir()
    table = write_table(
        tmp_path / "comparison.csv",
        [
            ("PIQ", "conv2d", False, 3, 20.5, 1.25, 0.3, 4.0),
            ("Saliency", "conv2d", False, 3, 12.5, "", 0.6, 1.0),
            ("Uniform mask (reference)", "conv2d", "", 3, 0, 0, 0, 1.0),
            ("Energy", "conv2d", False, 1, 5.0, "", 0.9, 1.0),
            ("L2I", "conv2d", False, 3, 30.0, 2.0, 0.1, 9.0),
            ("Random mask", "conv2d", True, 3, 1.0, 0.5, 0.95, 1.0),
        ],
    )
    names = ["PIQ", "Saliency", "Uniform mask (reference)", "Energy", "L2I"]
    names += ["Random mask", "Extra"]
    out = tmp_path / "gallery"
    labels = ["PIQ", "Saliency", "Uniform mask (reference)", "L2I", "Extra"]
    make_gallery.main(
        [*map(str, [*runs, failed, extra]), "--output", str(out), "--names"]
        + [*labels, "--table", str(table), "--references", "Energy"]
    )
    text = check_page(browser, out / "index.html", tmp_path / "t.png", names)
    assert "L2I (no test_metrics.json, no saved interpretations)" in text
    assert "Energy (no run folder given)" in text
    assert "Extra (not in --table: test_metrics.json)" in text
    groups = browser.execute_script(
        "return [...document.querySelectorAll('#summary tbody')].map(b =>"
        "[b.className, [...b.querySelectorAll('.mname')].map("
        "c => c.textContent)])"
    )
    assert groups == [
        ["methods", ["PIQ", "Saliency", "L2I", "Extra"]],  # table order
        ["references", ["Uniform mask (reference)", "Energy", "Random mask"]],
    ]
    bold = browser.execute_script(
        "return [...document.querySelectorAll('#summary td.best')].map(c =>"
        "[c.closest('tr').querySelector('.mname').textContent,"
        "c.textContent])"
    )
    # AD ↓: Saliency (the uniform mask's 0 is a bound); SPS ↑: Saliency,
    # not the references' 0.9 (--references) and 0.95 (the reference column)
    assert bold == [["Saliency", "12.5"], ["Saliency", "0.6"]]
    assert "20.5 ± 1.2" in text and "AD ↓" in text and "SPS ↑" in text
    head = browser.execute_script(
        "return [...document.querySelectorAll('#rows .strip')[0].children]"
        ".map(c => c.dataset.k ?? 'input')"
    )
    assert head == ["input", "0", "1", "2", "4"]  # none for the failed run
    # a missing --table: each run's test_metrics.json, still a page
    index = make_gallery.main(
        [str(runs[0]), str(failed), "--output", str(tmp_path / "g2")]
        + ["--table", str(tmp_path / "absent.csv")]
    )
    page = pathlib.Path(index).read_text()
    assert "test_metrics.json (one run per method)" in page
    assert 'href="#method-0"' in page and 'href="#method-1"' not in page


def test_gallery_of_a_piq_run(
    browser, synthetic_data, trained_classifier, tmp_path
):
    """The real outputs of a 1-epoch PIQ run and of the uniform reference:
    their 32-bit float WAVs play, and the masks have the shape of the
    input's STFT as recomputed here (so the panels show M·X)."""
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
    uniform = tmp_path / "uniform"
    run_script(
        "interpret_reference.py",
        "hparams/reference_conv2d.yaml",
        "--data_folder",
        synthetic_data,
        "--output_folder",
        uniform,
        *classifier_args(trained_classifier),
        *TINY,
        "--out_n_neurons",
        N_CLASSES,
        "--reference",
        "uniform",
    )
    wavs = list((run / "interpretations").glob("*/*.wav"))
    assert wavs and {sf.info(w).subtype for w in wavs} == {"FLOAT"}
    names = ["PIQ", "Uniform mask"]
    index = make_gallery.build_gallery(
        [run, uniform], str(tmp_path / "gallery"), names, None, names[1:]
    )
    text = check_page(browser, index, tmp_path / "piq.png", names)
    refs = browser.find_elements("css selector", "#summary .references .mname")
    assert [r.text for r in refs] == ["Uniform mask"]
    assert not browser.find_elements(
        "css selector", "#summary .references td.best"
    )
    assert "true: tone_" in text  # from clip.json, else the test manifest
    if any(run.glob("interpretations/*/clip.json")):
        assert "no per-clip metrics" not in text
    assert "mask M (0 to 1)" not in text  # every panel is M·X
    assert_side_by_side(browser)


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
