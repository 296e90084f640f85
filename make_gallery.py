#!/usr/bin/env python3
"""A listening gallery: one static HTML page that puts the saved
interpretations of one or several runs (methods on the same test clips)
side by side, to open from the file system (no server, no internet).

Run:
    python make_gallery.py results/piq/1234 results/l2i/1234 --output gallery/
    python make_gallery.py runs/piq runs/uniform --output out/gallery \
        --names PIQ "Uniform mask (reference)" --table out/comparison.csv

Each run folder holds ``test_metrics.json`` and ``interpretations/<clip id>/``
(original.wav, interpretation.wav, mask.npy, spectra.png and, when saved,
clip.json). The page (inline CSS and JavaScript only) shows:

* the comparison table: one row per method with the metrics and their
  direction (↑ / ↓, ``metrics.HIGHER_IS_BETTER``, and comparison_report's
  for compare_interpreters.py's other figures), mean ± 95% half-width
  from ``--table`` (compare_interpreters.py's comparison.csv) or else each
  run's test_metrics.json; references (names containing "reference", given
  by ``--references`` or marked in the table's ``reference`` column) form a
  separate group of bounds, and bold marks
  the best non-reference method of a column. Each method links to its column;
* a clip index, a class filter and "sort rows by <metric> of <method>";
* one row per clip: the input spectrogram (input.png) and the original audio
  once, then per method, side by side, the masked spectrogram M * X
  (mask.png, on the input's colour scale; the mask itself where its shape
  differs from the input's STFT) with the interpretation audio and a
  compact table of the clip's metrics. A row scrolls sideways when the
  methods do not fit (all rows and the method names scroll together, the
  input stays at the left), so the page itself never does.

input.png and mask.png are drawn here from original.wav (log1p |STFT|, the
recipe's STFT at the wav's rate) and mask.npy, so any run folder works
without re-running it; spectra.png (input, mask, M * X) stays linked from
each panel. The media are hard-linked (else copied) into
``<output>/media/`` and linked relatively from ``<output>/index.html``.
Chromium plays the recipe's 32-bit float WAV files as they are (checked by
tests/test_gallery.py), so they are not converted. A run folder without
interpretations (a method that failed) is listed in the table, not in the
rows.
"""

import argparse
import csv
import hashlib
import html
import json
import logging
import math
import os
import re
import shutil
from urllib.parse import quote

from speechbrain.utils.logger import get_logger

from fileio import write_atomically
from metrics import HIGHER_IS_BETTER

logger = get_logger(__name__)
try:  # compare_interpreters.py's figures beyond the metrics (directions)
    # and the columns a reader compares first, when its module is there
    from comparison_report import DIRECTIONS, MAIN_COLUMNS
except Exception:  # (an absent or broken report module changes no metric)
    DIRECTIONS, MAIN_COLUMNS = {}, ()
DIRECTIONS = {**DIRECTIONS, **HIGHER_IS_BETTER}
# metric -> which direction is better (metrics.py, README "Metrics")
BETTER = {k: "higher" if up else "lower" for k, up in DIRECTIONS.items()}
ARROW = {k: "↑" if up else "↓" for k, up in DIRECTIONS.items()}
# Chromium blocks media players past 1000 per page (crbug.com/1144736): past
# this many audio elements, a player loads its file only when played
MAX_PRELOADED = 500
# the recipe's front end (hparams/*.yaml): n_fft, window and hop in ms
N_FFT, WIN_LENGTH_MS, HOP_LENGTH_MS = 1024, 23.2199, 11.6099
# comparison.csv columns that are not metrics
TABLE_TEXT = ("method", "explains", "seeds")
TABLE_FLAG = "reference"  # True/False: a reference row (bound, not ranked)
TABLE_TIME = "seconds"
BEST, REF = ' class="best"', ' class="ref"'
STYLE = """
:root{--w:340px;--fg:#1d2330;--muted:#5b6472;--line:#d9dde3;--bg:#f6f7f9;
--accent:#2357c6;--bad:#b3261e;--ok:#1e7b34}
*{box-sizing:border-box}
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--fg);
margin:0;background:var(--bg)}
header{padding:16px 24px 8px;background:#fff;border-bottom:1px solid var(--line)}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:20px 0 8px}
.lead{margin:0;color:var(--muted);max-width:1100px}
main{padding:0 24px 24px}a{color:var(--accent)}
.scroll-x{overflow-x:auto;max-width:100%}
table.summary{border-collapse:collapse;background:#fff;font-size:13px}
.summary th,.summary td{border:1px solid var(--line);padding:3px 7px;
text-align:right;white-space:nowrap}
.summary th:first-child,.summary td:first-child{text-align:left;position:sticky;
left:0;background:#fff}
.summary thead th{background:#eef1f5;text-align:center}
.summary thead th:first-child{background:#eef1f5}
.summary tr.group th{text-align:left;background:#fafbfc;color:var(--muted);
font-weight:600}
.summary tr.ref td{color:var(--muted);font-style:italic}
.summary td.best{font-weight:700}
.ci{color:var(--muted);font-size:11px}.note{color:var(--muted);font-size:12px}
.legend{color:var(--muted);font-size:12px;margin:6px 0 0;max-width:1100px}
#index{font-size:12px;line-height:1.9}
#index a{display:inline-block;padding:0 6px;margin:0 4px 0 0;background:#fff;
border:1px solid var(--line);border-radius:10px;text-decoration:none}
#bar{position:sticky;top:0;z-index:5;background:var(--bg);padding:8px 0 0;
border-bottom:1px solid var(--line)}
.controls{display:flex;flex-wrap:wrap;gap:6px 16px;align-items:center;
font-size:13px;margin-bottom:6px}
.controls select{font-size:13px}#count{color:var(--muted)}
.strip{display:grid;grid-auto-flow:column;grid-auto-columns:var(--w);gap:8px;
overflow-x:auto;padding-bottom:4px}
.strip.head{overflow-x:hidden;padding-bottom:6px;margin:0 9px}
.strip.head .cell{font-weight:600;padding:2px 8px;background:#eef1f5;
border-radius:4px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.strip.head .cell.ref,.cell.ref .name{color:var(--muted);font-style:italic}
.strip>.input{position:sticky;left:0;z-index:2;box-shadow:6px 0 6px -4px #0002}
.strip.head>.input{background:#e2e6ec}
.clip{background:#fff;border:1px solid var(--line);border-radius:6px;
margin:10px 0;padding:6px 8px}
.clip h3{font-size:14px;margin:0 0 6px;font-weight:600}
.clip h3 .cls{font-weight:400;color:var(--muted);margin-left:8px}
.cell{background:#fff;min-width:0}
.strip:not(.head) .cell{border:1px solid var(--line);border-radius:4px;padding:4px}
.cell img{width:100%;display:block;border-radius:2px}
.cell audio{width:100%;height:32px;margin-top:4px;display:block}
.cell .top{display:flex;justify-content:space-between;gap:6px;font-size:12px;
margin-bottom:3px;white-space:nowrap;overflow:hidden}
.cell .name{font-weight:600;overflow:hidden;text-overflow:ellipsis}
.pred.ok{color:var(--ok)}.pred.bad{color:var(--bad);font-weight:600}
.kind{font-size:11px;color:var(--muted)}
table.mini{width:100%;border-collapse:collapse;font-size:11px;margin-top:4px}
.mini th{font-weight:400;color:var(--muted);text-align:left;padding:0 3px 0 0;
white-space:nowrap}
.mini td{text-align:right;padding:0 8px 0 0;font-variant-numeric:tabular-nums;
white-space:nowrap}
.mini .sorted{background:#fff3bf;color:var(--fg)}
.missing{color:var(--bad);font-size:12px}
.cell.empty{display:flex;align-items:center;justify-content:center;
color:var(--muted);background:#fafbfc}
.hl{outline:3px solid var(--accent);outline-offset:-2px}
"""
SCRIPT = """
(function(){
const rows=document.getElementById('rows');
if(!rows)return;
const all=[...rows.querySelectorAll('article.clip')];
const strips=()=>[...document.querySelectorAll('.strip')];
let syncing=false;
function sync(e){if(syncing)return;syncing=true;const x=e.target.scrollLeft;
strips().forEach(s=>{if(s!==e.target)s.scrollLeft=x});
requestAnimationFrame(()=>{syncing=false})}
strips().forEach(s=>s.addEventListener('scroll',sync,{passive:true}));
const $=id=>document.getElementById(id);
const cls=$('class-filter'),met=$('sort-metric'),who=$('sort-method'),
ord=$('sort-order'),size=$('panel-size');
function value(row){const m=JSON.parse(row.dataset.metrics||'{}')[who.value];
const v=m?m[met.value]:null;return typeof v==='number'&&isFinite(v)?v:null}
function apply(){
let shown=all.filter(r=>!cls.value||r.dataset.cls===cls.value);
if(met.value){const sign=ord.value==='asc'?1:-1;
const keyed=shown.map(r=>[value(r),r]);
keyed.sort((a,b)=>a[0]===null?(b[0]===null?0:1):b[0]===null?-1:
sign*(a[0]-b[0]));shown=keyed.map(p=>p[1])}
all.forEach(r=>{r.hidden=true});
shown.forEach(r=>{r.hidden=false;rows.appendChild(r)});
document.querySelectorAll('.mini .sorted').forEach(c=>c.classList.remove('sorted'));
if(met.value)document.querySelectorAll('.cell[data-k="'+who.value+
'"] .mini [data-metric="'+CSS.escape(met.value)+'"]').forEach(
c=>c.classList.add('sorted'));
$('count').textContent=shown.length+' of '+all.length+' clips shown'}
met.addEventListener('change',()=>{const o=met.selectedOptions[0];
if(o&&o.dataset.order)ord.value=o.dataset.order;apply()});
[cls,who,ord].forEach(c=>c.addEventListener('change',apply));
size.addEventListener('input',()=>document.documentElement.style
.setProperty('--w',size.value+'px'));
function showMethod(k){
document.querySelectorAll('.hl').forEach(c=>c.classList.remove('hl'));
const cells=document.querySelectorAll('.cell[data-k="'+k+'"]');
cells.forEach(c=>c.classList.add('hl'));
const head=$('method-'+k);if(!head)return;
const strip=head.parentElement,input=strip.querySelector('.input');
const x=strip.scrollLeft+head.getBoundingClientRect().left-
strip.getBoundingClientRect().left-(input?input.offsetWidth+8:0);
strips().forEach(s=>{s.scrollLeft=x});
$('clips').scrollIntoView()}
document.addEventListener('click',e=>{const a=e.target.closest(
'a[href^="#method-"]');if(!a)return;e.preventDefault();
history.replaceState(null,'',a.getAttribute('href'));
showMethod(a.getAttribute('href').slice(8))});
if(location.hash.startsWith('#method-'))showMethod(location.hash.slice(8));
apply();
})();
"""


def read_json(path):
    """The JSON object in ``path``, or an empty dict if there is no file."""
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def number(value):
    """``value`` as a finite float, or None (missing, text, NaN, inf)."""
    if isinstance(value, bool) or value is None:
        return None if value is None else float(value)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def fmt(value):
    """A metric value as short text (floats to 4 significant digits)."""
    if value is None:
        return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def short(value):
    """A per-clip metric value as short text (3 significant digits)."""
    return "n/a" if value is None else f"{value:.3g}"


def esc(value):
    """``value`` as text escaped for HTML (quotes included)."""
    return html.escape(str(value), quote=True)


def anchor(prefix, name):
    """An id for ``name`` made of letters, digits and dashes only (every
    other character as _<hex>), so that ``#id`` needs no URL encoding."""
    safe = re.sub(
        r"[^A-Za-z0-9-]", lambda m: f"_{ord(m.group()):x}_", str(name)
    )
    return f"{prefix}-{safe}"


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


def url_of(*parts):
    """The relative URL of ``<output>/media/<parts>``, escaped for HTML."""
    return esc("media/" + "/".join(quote(p) for p in parts))


def media(output, src, *parts):
    """Places ``src`` at ``<output>/media/<parts>`` and returns its relative
    URL, escaped for an HTML attribute."""
    place(src, os.path.join(output, "media", *parts))
    return url_of(*parts)


def is_reference(name, references=()):
    """Whether the method ``name`` is a reference (a bound, not a
    competitor): named in ``references`` or containing "reference"."""
    return name in references or "reference" in name.lower()


def metric_order(keys):
    """Metric names: those compare_interpreters.py's report shows first
    (comparison_report.MAIN_COLUMNS), then those with a direction in
    metrics.py's order, then the others sorted."""
    keys = set(keys)
    first = [k for k in (*MAIN_COLUMNS, *BETTER) if k in keys]
    first = list(dict.fromkeys(first))
    return first + sorted(keys - set(first))


def read_table(path):
    """The rows of compare_interpreters.py's comparison.csv as
    {method: {"text": {explains, seeds}, "values": {metric: (mean, ci)},
    "seconds": float or None, "reference": bool}}, in file order, and the
    metric columns (every column but method, explains, reference, seeds,
    seconds and the ``<metric>_ci95`` half-widths).
    A missing or unreadable file gives ({}, []) with a warning."""
    if not path:
        return {}, []
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            fields = list(reader.fieldnames or [])
            lines = list(reader)
    except (OSError, csv.Error, UnicodeDecodeError) as error:
        logger.warning(
            "--table %s not read (%s): metrics from each run", path, error
        )
        return {}, []
    if "method" not in fields:
        logger.warning("--table %s has no 'method' column: not used", path)
        return {}, []
    skip = {*TABLE_TEXT, TABLE_TIME, TABLE_FLAG}
    columns = [
        c
        for c in fields
        if c not in skip
        and not (c.endswith("_ci95") and c[: -len("_ci95")] in fields)
    ]
    rows = {}
    for line in lines:
        values = {
            c: (number(line.get(c)), number(line.get(f"{c}_ci95")))
            for c in columns
        }
        rows[line["method"]] = {
            "text": {k: line.get(k) or "" for k in TABLE_TEXT[1:]},
            "values": values,
            "seconds": number(line.get(TABLE_TIME)),
            "reference": (line.get(TABLE_FLAG) or "").strip().lower()
            in ("true", "1", "yes"),
        }
    return rows, columns


def load_run(folder):
    """A run's aggregate metrics, clip folders and test manifest (which
    knows each clip's true class when clip.json is missing). A run without
    saved interpretations (a method that failed) has no clips and a note."""
    clips_folder = os.path.join(folder, "interpretations")
    clips, note = {}, ""
    if os.path.isdir(clips_folder):
        clips = {
            c: os.path.join(clips_folder, c)
            for c in os.listdir(clips_folder)
            if os.path.isdir(os.path.join(clips_folder, c))
        }
    if not clips:
        note = "no saved interpretations"
        logger.warning("%s: no saved interpretations", folder)
    metrics_file = os.path.join(folder, "test_metrics.json")
    if not os.path.isfile(metrics_file):
        note = "no test_metrics.json" + (f", {note}" if note else "")
    return {
        "metrics": read_json(metrics_file),
        "clips": clips,
        "manifest": read_json(os.path.join(folder, "save", "test.json")),
        "note": note,
    }


def summary_table(runs, names, table, columns, references):
    """HTML of the comparison table: one row per method (the methods, then
    the references as a separate group; the table's rows in its order, then
    the runs it lacks from their test_metrics.json), one column per metric
    with its direction, bold on the best non-reference value of a column."""
    # the table's rows in its order (compare_interpreters.py ranks them),
    # then the runs it lacks: (name, run index or None, text, values,
    # seconds, note)
    rows = []
    for name, row in table.items():
        k = names.index(name) if name in names else None
        note = runs[k]["note"] if k is not None else "no run folder given"
        link = k if k is not None and runs[k]["clips"] else None
        rows.append(
            (name, link, row["text"], row["values"], row["seconds"], note)
        )
    for k, (run, name) in enumerate(zip(runs, names)):
        if name in table:
            continue
        values = {
            m: (number(v) if not isinstance(v, str) else v, None)
            for m, v in run["metrics"].items()
        }
        note = run["note"] or (
            "not in --table: test_metrics.json" if table else ""
        )
        rows.append((name, k if run["clips"] else None, {}, values, None, note))
    keys = metric_order({m for r in rows for m in r[3]} | set(columns))
    text_keys = [t for t in TABLE_TEXT[1:] if any(r[2].get(t) for r in rows)]
    with_time = any(r[4] is not None for r in rows)
    best = {}
    for key in keys:
        numbers = [
            r[3][key][0]
            for r in rows
            if key in r[3]
            and isinstance(r[3][key][0], float)
            and not is_reference(r[0], references)
        ]
        if key in BETTER and len(set(numbers)) > 1:
            best[key] = (max if BETTER[key] == "higher" else min)(numbers)
    head = ["<th>method</th>"] + [f"<th>{esc(t)}</th>" for t in text_keys]
    for key in keys:
        tip = f"{BETTER[key]} is better" if key in BETTER else "no direction"
        arrow = f" {ARROW[key]}" if key in ARROW else ""
        head.append(f'<th title="{esc(tip)}">{esc(key)}{arrow}</th>')
    if with_time:
        head.append('<th title="wall-clock seconds of the run">seconds</th>')
    width = len(head)

    def line(row):
        name, link, text, values, seconds, note = row
        ref = is_reference(name, references)
        label = f'<span class="mname">{esc(name)}</span>'
        if link is not None:
            label = f'<a href="#method-{link}">{label}</a>'
        if note:
            label += f' <span class="note">({esc(note)})</span>'
        cells = [f"<td>{label}</td>"]
        cells += [f"<td>{esc(text.get(t, ''))}</td>" for t in text_keys]
        for key in keys:
            mean, ci = values.get(key, (None, None))
            if key not in values:
                cells.append("<td></td>")
                continue
            shown = esc(fmt(mean))
            if ci is not None:
                shown += f' <span class="ci">± {esc(f"{ci:.2g}")}</span>'
            bold = not ref and key in best and mean == best[key]
            cells.append(f"<td{BEST if bold else ''}>{shown}</td>")
        if with_time:
            cells.append(f"<td>{esc(fmt(seconds))}</td>")
        return f"<tr{REF if ref else ''}>{''.join(cells)}</tr>"

    methods = [r for r in rows if not is_reference(r[0], references)]
    refs = [r for r in rows if is_reference(r[0], references)]
    body = []
    if methods:
        body.append(
            f'<tbody class="methods"><tr class="group"><th colspan="{width}">'
            "Methods (bold: the best of these per column)</th></tr>"
            + "".join(map(line, methods))
            + "</tbody>"
        )
    if refs:
        body.append(
            f'<tbody class="references"><tr class="group"><th colspan="{width}">'
            "References and bounds (not ranked: what a trivial or ideal mask "
            "scores)</th></tr>" + "".join(map(line, refs)) + "</tbody>"
        )
    return (
        '<div class="scroll-x"><table class="summary" id="summary">'
        f"<thead><tr>{''.join(head)}</tr></thead>{''.join(body)}</table></div>"
    )


class Spectrograms:
    """The recipe's front end (log1p |STFT|, front_end.log_spectrogram with
    the YAML's STFT at each wav's rate) on saved wavs, one STFT per rate.
    The methods' original.wav of one clip are the same bytes: the last few
    results are kept by content."""

    def __init__(self, keep=4):
        self.stfts, self.recent, self.keep = {}, {}, keep

    def __call__(self, wav_path):
        """(X [T, F] numpy, sample rate, hop in samples) of ``wav_path``."""
        with open(wav_path, "rb") as f:
            key = hashlib.sha1(f.read()).hexdigest()
        if key not in self.recent:
            if len(self.recent) >= self.keep:
                self.recent.pop(next(iter(self.recent)))
            self.recent[key] = self.compute(wav_path)
        return self.recent[key]

    def compute(self, wav_path):
        """(X, sample rate, hop) of ``wav_path``, computed."""
        import soundfile as sf
        import torch
        from speechbrain.processing.features import STFT

        from front_end import log_spectrogram

        wav, rate = sf.read(wav_path, dtype="float32", always_2d=True)
        if rate not in self.stfts:
            self.stfts[rate] = STFT(
                sample_rate=rate,
                n_fft=N_FFT,
                win_length=WIN_LENGTH_MS,
                hop_length=HOP_LENGTH_MS,
            )
        stft = self.stfts[rate]
        X, _ = log_spectrogram(stft, torch.from_numpy(wav.mean(1))[None])
        return X[0].numpy(), rate, stft.hop_length


def mask_panel(output, clip, k, folder, spectrograms):
    """Draws ``<output>/media/<clip>/<k>/mask.png`` from the run's mask.npy
    (M * X with X from its original.wav; the mask alone where there is no
    wav or the shapes differ). Returns (URL, caption) or (None, reason)."""
    import numpy as np

    import plotting

    mask_file = os.path.join(folder, "mask.npy")
    if not os.path.isfile(mask_file):
        return None, "no mask.npy"
    mask = np.squeeze(np.load(mask_file)).astype(np.float32)
    if mask.ndim != 2:
        return None, f"mask.npy of shape {mask.shape}: not drawn"
    path = os.path.join(output, "media", clip, str(k), "mask.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    wav = os.path.join(folder, "original.wav")
    X = None
    if os.path.isfile(wav):
        X, rate, hop = spectrograms(wav)
    if X is not None and X.shape == mask.shape:
        plotting.plot_mask(path, mask, rate, hop, X=X, vmax=float(X.max()))
        caption = "M·X: what the interpretation plays"
    else:
        plotting.plot_mask(path, mask, None, None)
        caption = "mask M (0 to 1): its shape differs from the input's STFT"
        if X is None:
            caption = "mask M (0 to 1): no original.wav"
    return url_of(clip, str(k), "mask.png"), caption


def metrics_mini(info):
    """A compact table of one clip's metrics (two per line) or a note."""
    if "metrics" not in info:
        return '<p class="missing">no per-clip metrics (clip.json)</p>'
    items = [(m, info["metrics"][m]) for m in metric_order(info["metrics"])]
    cells = [
        f'<th data-metric="{esc(m)}" title="{esc(BETTER.get(m, "no direction"))}'
        f'{" is better" if m in BETTER else ""}">{esc(m)}{ARROW.get(m, "")}</th>'
        f'<td data-metric="{esc(m)}">{esc(short(number(v)))}</td>'
        for m, v in items
    ]
    lines = ["".join(cells[i : i + 2]) for i in range(0, len(cells), 2)]
    return (
        '<table class="mini">'
        + "".join(f"<tr>{line}</tr>" for line in lines)
        + "</table>"
    )


def method_cell(output, clip, k, name, ref, folder, info, spectrograms):
    """HTML of one method's panel for one clip (or a note that the run does
    not have this clip)."""
    attrs = f'class="cell{" ref" if ref else ""}" data-k="{k}"'
    if folder is None:
        return (
            f"<div {attrs.replace('cell', 'cell empty', 1)}><span>"
            f"{esc(name)}: not in this run</span></div>"
        )
    predicted = info.get("predicted_class")
    top = f'<span class="name" title="{esc(name)}">{esc(name)}</span>'
    if predicted is not None:
        right = predicted == info.get("true_class")
        top += (
            f'<span class="pred {"ok" if right else "bad"}" title="predicted '
            f'class{"" if right else " (not the true class)"}">'
            f"{'' if right else '✗ '}{esc(predicted)}</span>"
        )
    parts = [f'<div class="top">{top}</div>']
    url, caption = mask_panel(output, clip, k, folder, spectrograms)
    png = os.path.join(folder, "spectra.png")
    if url:
        target = url
        if os.path.isfile(png):
            target = media(output, png, clip, str(k), "spectra.png")
        parts.append(
            f'<a href="{target}" title="input, mask and M·X (spectra.png)">'
            f'<img src="{url}" alt="{esc(name)} on {esc(clip)}" loading="lazy"></a>'
            f'<div class="kind">{esc(caption)}</div>'
        )
    else:
        parts.append(f'<p class="missing">{esc(caption)}</p>')
    wav = os.path.join(folder, "interpretation.wav")
    if os.path.isfile(wav):
        wav_url = media(output, wav, clip, str(k), "interpretation.wav")
        parts.append(
            f'<audio controls preload="metadata" src="{wav_url}"></audio>'
        )
    parts.append(metrics_mini(info))
    return f"<div {attrs}>{''.join(parts)}</div>"


def clip_row(output, clip, runs, names, refs, spectrograms):
    """HTML of one clip: id, true class, the input spectrogram and original
    audio once, then one panel per method. Returns (html, true class)."""
    import plotting

    folders = [r["clips"].get(clip) for r in runs]
    infos = [
        read_json(os.path.join(f, "clip.json")) if f else {} for f in folders
    ]
    known = next((i for i in infos if i.get("true_class")), {})
    categories = [r["manifest"].get(clip, {}).get("category") for r in runs]
    true = known.get("true_class") or next(filter(None, categories), "?")
    for info in infos:
        info.setdefault("true_class", true)
    originals = [os.path.join(f, "original.wav") for f in folders if f]
    originals = [o for o in originals if os.path.isfile(o)]
    cell = [
        '<div class="cell input"><div class="top"><span class="name">input'
        "</span><span>log1p |STFT|</span></div>"
    ]
    if originals:
        X, rate, hop = spectrograms(originals[0])
        path = os.path.join(output, "media", clip, "input.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        plotting.plot_spectrogram(path, X, rate, hop, vmax=float(X.max()))
        url = url_of(clip, "input.png")
        cell.append(
            f'<a href="{url}"><img src="{url}" alt="input of {esc(clip)}"></a>'
            '<div class="kind">the clip; every M·X of the row uses its colours</div>'
        )
        url = media(output, originals[0], clip, "original.wav")
        cell.append(f'<audio controls preload="metadata" src="{url}"></audio>')
    else:
        cell.append('<p class="missing">no original.wav</p>')
    cell.append("</div>")
    cells = [
        method_cell(output, clip, k, names[k], refs[k], f, i, spectrograms)
        for k, (f, i) in enumerate(zip(folders, infos))
        if runs[k]["clips"]
    ]
    per_method = {
        str(k): {m: number(v) for m, v in i.get("metrics", {}).items()}
        for k, i in enumerate(infos)
        if "metrics" in i
    }
    ident = anchor("clip", clip)
    return (
        f'<article class="clip" id="{ident}" data-clip="{esc(clip)}" '
        f'data-cls="{esc(true)}" data-metrics="{esc(json.dumps(per_method))}">'
        f'<h3><a href="#{ident}">{esc(clip)}</a><span class="cls">true: '
        f"{esc(true)}</span></h3>"
        f'<div class="strip">{"".join(cell)}{"".join(cells)}</div></article>',
        true,
    )


def controls(runs, names, refs, classes, clip_metrics):
    """HTML of the sticky bar: class filter, sort control, panel width,
    count, and the method names of the columns (anchors #method-<k>)."""
    counts = {c: classes.count(c) for c in sorted(set(classes))}
    options = [f'<option value="">all classes ({len(classes)})</option>']
    options += [
        f'<option value="{esc(c)}">{esc(c)} ({n})</option>'
        for c, n in counts.items()
    ]
    metric_options = ['<option value="">clip id</option>']
    for m in metric_order(clip_metrics):
        order = {"higher": "desc", "lower": "asc"}.get(BETTER.get(m), "desc")
        metric_options.append(
            f'<option value="{esc(m)}" data-order="{order}">{esc(m)} '
            f"{ARROW.get(m, '')}</option>"
        )
    shown = [k for k, r in enumerate(runs) if r["clips"]]
    method_options = "".join(
        f'<option value="{k}">{esc(names[k])}</option>' for k in shown
    )
    head = ['<div class="cell input">input</div>']
    for k in shown:
        ref = " ref" if refs[k] else ""
        head.append(
            f'<div class="cell{ref}" id="method-{k}" data-k="{k}" '
            f'title="{esc(names[k])}"><a href="#method-{k}">{esc(names[k])}</a></div>'
        )
    return (
        '<div id="bar"><div class="controls">'
        f'<label>class <select id="class-filter">{"".join(options)}</select></label>'
        f'<label>sort rows by <select id="sort-metric">{"".join(metric_options)}'
        f'</select></label><label>of <select id="sort-method">{method_options}'
        '</select></label><label><select id="sort-order">'
        '<option value="desc">high to low</option>'
        '<option value="asc">low to high</option></select></label>'
        '<label>panel width <input type="range" id="panel-size" min="200" '
        'max="620" step="20" value="340"></label><span id="count"></span>'
        f'</div><div class="strip head">{"".join(head)}</div></div>'
    )


def build_gallery(run_folders, output, names=None, table=None, references=()):
    """Writes ``<output>/index.html`` and its media for ``run_folders``;
    ``names`` are the method names (default: the last two parts of each
    run folder, e.g. ``piq/1234``); ``table`` a comparison.csv whose rows
    (by method name) give the summary table; ``references`` names of
    reference methods besides those containing "reference". Returns the
    path of index.html."""
    names = names or [
        "/".join(os.path.normpath(os.path.abspath(r)).split(os.sep)[-2:])
        for r in run_folders
    ]
    if len(names) != len(run_folders):
        raise ValueError(f"{len(names)} names for {len(run_folders)} runs")
    runs = [load_run(folder) for folder in run_folders]
    rows_of_table, columns = read_table(table)
    references = set(references or ())
    references |= {m for m, row in rows_of_table.items() if row["reference"]}
    refs = [is_reference(n, references) for n in names]
    clips = sorted({c for r in runs for c in r["clips"]})
    spectrograms = Spectrograms()
    built = [
        clip_row(output, clip, runs, names, refs, spectrograms)
        for clip in clips
    ]
    classes = [true for _, true in built]
    clip_metrics = set()
    for run in runs:
        for folder in run["clips"].values():
            clip_metrics |= set(
                read_json(os.path.join(folder, "clip.json")).get("metrics", {})
            )
    with_runs = sum(bool(r["clips"]) for r in runs)
    if rows_of_table:
        source = (
            f"{esc(os.path.basename(table))}: mean ± half-width of the 95% "
            "interval over seeds where given"
        )
    else:
        source = "each run's test_metrics.json (one run per method)"
    index = "".join(
        f'<a href="#{anchor("clip", c)}" title="{esc(t)}">{esc(c)}</a>'
        for c, t in zip(clips, classes)
    )
    if clips:
        rows_html = (
            f'<section id="clips"><h2>Clips</h2>'
            f"{controls(runs, names, refs, classes, clip_metrics)}"
            f'<div id="rows">{"".join(h for h, _ in built)}</div></section>'
        )
    else:
        rows_html = '<p class="missing">No run has saved interpretations.</p>'
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<link rel="icon" href="data:,"><title>Listening gallery</title>'
        f"<style>{STYLE}</style></head><body><header>"
        f"<h1>Listening gallery: {len(names)} method{'s' * (len(names) != 1)}, "
        f"{len(clips)} test clip{'s' * (len(clips) != 1)}</h1>"
        '<p class="lead">Each row is one test clip: its input spectrogram '
        "(log1p |STFT|) and audio, then, side by side, what each method keeps "
        "of it: the masked spectrogram M·X, on the input's colours (dark = "
        "removed), and the interpretation audio (the ISTFT of M·X with the "
        "input's phase). Click a panel for the run's spectra.png (input, mask "
        "M, M·X); the small table under it holds the clip's metrics.</p>"
        "</header><main>"
        f"<h2>Comparison</h2>{summary_table(runs, names, rows_of_table, columns, references)}"
        f'<p class="legend">Values: {source}. ↑ higher is better, ↓ lower is '
        "better. Bold: the best method of a column, references excluded: they "
        "bound the scale (the uniform mask keeps everything, the oracle is "
        f"the ground truth) and compete with nobody. {with_runs} of "
        f"{len(runs)} runs have saved interpretations; a method name leads "
        "to its column.</p>"
        f'<p id="index"><b>Clips:</b> {index}</p>{rows_html}'
        f"</main><script>{SCRIPT}</script></body></html>"
    )
    if page.count("<audio") > MAX_PRELOADED:  # (escaped text has no quote)
        page = page.replace('preload="metadata"', 'preload="none"')
    index_file = os.path.join(output, "index.html")
    os.makedirs(output, exist_ok=True)
    write_atomically(index_file, lambda f: f.write(page.encode()), mode="wb")
    logger.info(f"Gallery of {len(clips)} clips written to {index_file}")
    return index_file


def main(argv=None):
    """Command line: run folders, --output, --names, --table, --references."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="run output folders")
    parser.add_argument("--output", default="gallery")
    parser.add_argument("--names", nargs="+", help="method names, one per run")
    parser.add_argument(
        "--table",
        help="comparison.csv of compare_interpreters.py (method, explains, "
        "reference, seeds, <metric>, <metric>_ci95, seconds; all optional but "
        "method); a missing file falls back to each run's test_metrics.json",
    )
    parser.add_argument(
        "--references",
        nargs="+",
        default=(),
        help="names of reference methods (bounds, never bold) besides those "
        "containing 'reference'",
    )
    args = parser.parse_args(argv)
    return build_gallery(
        args.runs, args.output, args.names, args.table, args.references
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
