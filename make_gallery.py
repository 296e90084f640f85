#!/usr/bin/env python3
"""A listening gallery: one static HTML page that puts the saved
interpretations of one or several runs (methods on the same test clips)
side by side, to open from the file system (no server, no internet).

Run:
    python make_gallery.py results/piq/1234 results/l2i/1234 --output gallery/

Each run folder holds ``test_metrics.json`` and ``interpretations/<clip id>/``
(original.wav, interpretation.wav, mask.npy, spectra.png and, when saved,
clip.json). The page shows each run's aggregate test metrics, then one row
per clip: its classes, the original audio and, per run, the spectrograms, the
interpretation audio and the per-clip metrics. The media are hard-linked (else
copied) into ``<output>/media/`` and linked relatively from
``<output>/index.html``. Chromium plays the recipe's 32-bit float WAV files
as they are (checked by tests/test_gallery.py), so they are not converted.
"""

import argparse
import html
import json
import logging
import os
import shutil
from urllib.parse import quote

from speechbrain.utils.logger import get_logger

from fileio import write_atomically
from metrics import HIGHER_IS_BETTER

logger = get_logger(__name__)
# metric -> which direction is better (metrics.py, README "Metrics")
BETTER = {k: "higher" if up else "lower" for k, up in HIGHER_IS_BETTER.items()}
# Chromium blocks media players past 1000 per page (crbug.com/1144736): past
# this many audio elements, a player loads its file only when played
MAX_PRELOADED = 500
STYLE = """body{font-family:sans-serif;margin:1em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px;
vertical-align:top;text-align:left}img{width:600px;display:block}
.missing{color:#a00}.small td,.small th{border:none;padding:0 6px 0 0}"""


def read_json(path):
    """The JSON object in ``path``, or an empty dict if there is no file."""
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def fmt(value):
    """A metric value as short text (floats to 4 significant digits)."""
    if value is None:
        return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def place(src, dst):
    """Hard-links ``src`` at ``dst``, or copies it where linking fails
    (another file system); atomically either way. Returns ``dst``."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    tmp = f"{dst}.tmp-{os.getpid()}"
    try:
        os.link(src, tmp)
        os.replace(tmp, dst)
    except OSError:
        with open(src, "rb") as f:
            write_atomically(dst, lambda out: shutil.copyfileobj(f, out), "wb")
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dst


def metrics_table(runs, names):
    """HTML table of the aggregate test metrics: one row per metric, one
    column per run, the best value of a metric with a direction in bold."""
    keys = [k for k in BETTER if any(k in r["metrics"] for r in runs)]
    keys += sorted({k for r in runs for k in r["metrics"]} - set(keys))
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    rows = [f"<tr><th>metric</th><th>better</th>{head}</tr>"]
    for key in keys:
        values = [r["metrics"].get(key) for r in runs]
        numbers = [v for v in values if isinstance(v, (int, float))]
        best = object()  # equal to no value
        if key in BETTER and len(set(numbers)) > 1:
            best = (max if BETTER[key] == "higher" else min)(numbers)
        cells = "".join(
            f"<td>{'<b>' if v == best else ''}{html.escape(fmt(v))}"
            f"{'</b>' if v == best else ''}</td>"
            for v in values
        )
        direction = html.escape(BETTER.get(key, ""))
        rows.append(
            f"<tr><td>{html.escape(key)}</td><td>{direction}</td>{cells}</tr>"
        )
    return f'<table id="metrics">{"".join(rows)}</table>'


def media(output, src, *parts):
    """Places ``src`` at ``<output>/media/<parts>`` and returns its relative
    URL, escaped for an HTML attribute."""
    place(src, os.path.join(output, "media", *parts))
    return html.escape("media/" + "/".join(quote(p) for p in parts))


def method_cell(output, clip, k, folder, info, predicted):
    """HTML of one run's cell for one clip (or a note that it is missing)."""
    if folder is None:
        return '<td class="missing">not in this run</td>'
    parts = []
    if info.get("predicted_class") not in (None, predicted):
        parts.append(
            f"<p>predicted: {html.escape(str(info['predicted_class']))}</p>"
        )
    png = os.path.join(folder, "spectra.png")
    if os.path.isfile(png):
        url = media(output, png, clip, str(k), "spectra.png")
        parts.append(f'<a href="{url}"><img src="{url}" alt="spectra"></a>')
    wav = os.path.join(folder, "interpretation.wav")
    if os.path.isfile(wav):
        url = media(output, wav, clip, str(k), "interpretation.wav")
        parts.append(f'<audio controls preload="metadata" src="{url}"></audio>')
    if "metrics" in info:
        rows = "".join(
            f"<tr><td>{html.escape(m)}</td><td>{html.escape(fmt(v))}</td>"
            f"<td>{html.escape(BETTER.get(m, ''))}</td></tr>"
            for m, v in info["metrics"].items()
        )
        parts.append(f'<table class="small">{rows}</table>')
    else:
        parts.append('<p class="missing">no per-clip metrics (clip.json)</p>')
    return f"<td>{''.join(parts)}</td>"


def load_run(folder):
    """A run's aggregate metrics, clip folders and test manifest (which
    knows each clip's true class when clip.json is missing)."""
    clips_folder = os.path.join(folder, "interpretations")
    if not os.path.isdir(clips_folder):
        raise FileNotFoundError(f"{clips_folder}: no saved interpretations")
    clips = {
        c: os.path.join(clips_folder, c)
        for c in os.listdir(clips_folder)
        if os.path.isdir(os.path.join(clips_folder, c))
    }
    return {
        "metrics": read_json(os.path.join(folder, "test_metrics.json")),
        "clips": clips,
        "manifest": read_json(os.path.join(folder, "save", "test.json")),
    }


def clip_row(output, clip, runs):
    """HTML row of one clip: id, classes, original audio, one cell per run."""
    folders = [r["clips"].get(clip) for r in runs]
    infos = [
        read_json(os.path.join(f, "clip.json")) if f else {} for f in folders
    ]
    known = next((i for i in infos if i), {})
    categories = [r["manifest"].get(clip, {}).get("category") for r in runs]
    true = known.get("true_class") or next(filter(None, categories), "?")
    predicted = known.get("predicted_class")
    header = (
        f"<td><b>{html.escape(clip)}</b><br>true: {html.escape(str(true))}"
        f"<br>predicted: {html.escape(str(predicted or '?'))}<br>"
    )
    originals = [os.path.join(f, "original.wav") for f in folders if f]
    originals = [o for o in originals if os.path.isfile(o)]
    if originals:
        url = media(output, originals[0], clip, "original.wav")
        header += f'<audio controls preload="metadata" src="{url}"></audio>'
    cells = "".join(
        method_cell(output, clip, k, f, i, predicted)
        for k, (f, i) in enumerate(zip(folders, infos))
    )
    return f"<tr>{header}</td>{cells}</tr>"


def build_gallery(run_folders, output, names=None):
    """Writes ``<output>/index.html`` and its media for ``run_folders``;
    ``names`` are the column names (default: the last two parts of each
    run folder, e.g. ``piq/1234``). Returns the path of index.html."""
    names = names or [
        "/".join(os.path.normpath(os.path.abspath(r)).split(os.sep)[-2:])
        for r in run_folders
    ]
    if len(names) != len(run_folders):
        raise ValueError(f"{len(names)} names for {len(run_folders)} runs")
    runs = [load_run(folder) for folder in run_folders]
    clips = sorted({c for r in runs for c in r["clips"]})
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    rows = [f"<tr><th>clip</th>{head}</tr>"]
    rows += [clip_row(output, clip, runs) for clip in clips]
    page = (
        '<!doctype html><html><head><meta charset="utf-8">'
        '<link rel="icon" href="data:,"><title>Listening gallery</title>'
        f"<style>{STYLE}</style></head><body><h1>Listening gallery</h1>"
        f"<h2>Test metrics</h2>{metrics_table(runs, names)}"
        f'<h2>Clips</h2><table id="clips">{"".join(rows)}</table></body></html>'
    )
    if page.count("<audio") > MAX_PRELOADED:  # (escaped text has no quote)
        page = page.replace('preload="metadata"', 'preload="none"')
    index = os.path.join(output, "index.html")
    os.makedirs(output, exist_ok=True)
    write_atomically(index, lambda f: f.write(page.encode()), mode="wb")
    logger.info(f"Gallery of {len(clips)} clips written to {index}")
    return index


def main(argv=None):
    """Command line: run folders, --output, --names."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="run output folders")
    parser.add_argument("--output", default="gallery")
    parser.add_argument("--names", nargs="+", help="column names, one per run")
    args = parser.parse_args(argv)
    return build_gallery(args.runs, args.output, args.names)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
