#!/usr/bin/env python3
"""Synthetic data in the ESC-50 layout, with class evidence at known places
and class-irrelevant distractors that are as loud as it or louder.

Each clip is 5 s at 44.1 kHz (16-bit PCM, like ESC-50) holding:

* ONE burst of class evidence: two tones at ``f_k`` and ``f_k + 200`` Hz
  (``f_k = 500 + 1200 k`` for class k), ``evidence_s`` seconds (1.5 by
  default; 1.0 in the first version) from a random onset. Its box (start/end
  in s, low/high in Hz; the band of class k is ``f_k - 100 .. f_k + 300``
  Hz) is recorded per clip in ``meta/evidence.json``; every interpreter's
  test run then reports how much of its masks lies there
  (``metrics.localisation_metrics``).
* ``n_distractors`` distractor events, drawn from ONE pool shared by all
  classes, from a random stream that never sees the class (so they carry no
  class information), each of a kind drawn uniformly from ``KINDS``:

  - ``tone``: a pure tone of 0.3 to 1.5 s whose frequency is at least
    ``TONE_MARGIN_HZ`` (300 Hz) away from the band of EVERY possible class
    (0..5, whatever ``n_classes``): it lies in 1100-1300, 2300-2500,
    3500-3700, 4700-4900, 5900-6100 or 7100-7800 Hz
    (``distractor_tone_ranges``);
  - ``noise``: a burst of 0.1 to 0.4 s, broadband (50 Hz to 7.8 kHz) or
    band-limited (a random 300 to 2000 Hz wide band) half the time each;
  - ``chirp``: a linear sweep of 0.3 to 1.0 s between two frequencies drawn
    uniformly in 200 Hz .. 7.8 kHz, at least 2 kHz apart. It may cross class
    bands, but only briefly (at >= 2 kHz/s it spends <= 0.2 s in any 400 Hz
    band) and with a distribution that is the same for every class.

  Their level: ``distractor_db`` = 20 log10(RMS of the event / RMS of the
  evidence burst), each RMS taken over the event's own span (start_s to
  end_s) of that event's signal alone (tapers included, background
  excluded). The default +6 dB makes every distractor twice as loud (in RMS)
  as the evidence. Nothing of a distractor lies above 7.8 kHz (nor above 0.45
  of ``sample_rate``), so the 16 kHz front end sees all of its energy.
  Events may overlap each other and the evidence in time.
* a background (``noise_level`` RMS): ``textured`` (default), pink noise
  (power falling 3 dB per octave, ``PINK_FILTER``) with a slow random
  amplitude modulation (``textured_background``), or
  ``white``, the flat white noise of the first version.

A clip whose peak exceeds 0.99 is scaled down as a whole (every level ratio
kept; the recipe peak-normalises clips when it loads them anyway). With
``FIRST_VERSION`` (``n_distractors=0``, ``background="white"``,
``evidence_s=1.0``; ``--first_version`` on the command line) the clips are
exactly those of the first version (evidence only, quiet white noise) for the
same seed. For a given ``evidence_s`` the evidence onsets and phases do not
depend on the distractor settings nor on the background: distractors and
texture come from a separate random stream.

Each record of ``meta/evidence.json`` keeps the keys ``start_s``, ``end_s``,
``low_hz``, ``high_hz`` and ``category`` (the evidence) and adds
``distractors``: a list of {"kind", "start_s", "end_s", "low_hz",
"high_hz"}, one per distractor event (a tone's band is its frequency +- 50 Hz).

Why distractors: with the evidence the only loud thing in a clip, a mask that
needs no classifier (an energy threshold) scores like the oracle, so the
localisation metrics would reward loudness rather than the class evidence.
Measured on the recipe's 16 kHz log1p |STFT| (4 classes x 8 clips x 5
folds, seeds 0 and 1): the threshold mask X > 0.35 max X puts 1.00 of its
mass on the evidence box of the first version's data, like the oracle, and
0.34-0.37 on the default data; the loudest bin lies on the evidence in every
first-version clip and in 0-10% of the default clips. The tiny conv2d
classifier of the tests (emb_dim 16) still reaches a test accuracy of 1.0 on
the default data in 15 epochs (8 test clips, both seeds; 0.92 on 24 clips of
another seed). Why 1.5 s of evidence: with 1.0 s that classifier needed about
30 epochs, with 1.25 s it reached 0.88-1.0 in 15.

Run:
    python synthetic_esc50.py /tmp/synthetic_esc50 --n_classes 4 --clips_per_fold 8
    python synthetic_esc50.py /tmp/first_version_data --first_version
"""

import argparse
import csv
import json
import os

import numpy as np
import scipy.signal
import soundfile as sf

from fileio import write_atomically

CSV_FIELDS = (
    "filename",
    "fold",
    "target",
    "category",
    "esc10",
    "src_file",
    "take",
)
MAX_CLASSES = 6  # every class tone stays below 8 kHz
KINDS = ("tone", "noise", "chirp")  # distractor kinds, drawn uniformly
BACKGROUNDS = ("textured", "white")
TONE_MARGIN_HZ = 300.0  # distractor tones keep this far from every class band
TOP_HZ = 7800.0  # no distractor energy above (16 kHz front end: 8 kHz Nyquist)
TONE_S = (0.3, 1.5)  # duration ranges (s) of the distractor kinds
NOISE_S = (0.1, 0.4)
NOISE_BAND_HZ = (300.0, 2000.0)  # width of a band-limited noise burst
CHIRP_S = (0.3, 1.0)
CHIRP_MIN_SPAN_HZ = 2000.0
MAX_PEAK = 0.99  # a louder clip is scaled down as a whole
# The settings that give the first version's clips (``generate(**FIRST_VERSION)``)
FIRST_VERSION = {"n_distractors": 0, "background": "white", "evidence_s": 1.0}
# (b, a) of a pinking filter (J. O. Smith, "Spectral Audio Signal Processing":
# -3 dB/octave within 1 dB over 50 Hz - 8 kHz at 44.1 kHz)
PINK_FILTER = (
    [0.049922035, -0.095993537, 0.050612699, -0.004408786],
    [1.0, -2.494956002, 2.017265875, -0.522189400],
)


def class_frequency(k):
    """Lower tone (Hz) of class k: 500, 1700, 2900, ... (below 8 kHz for k <= 5)."""
    return 500.0 + 1200.0 * k


def class_band(k):
    """(low, high) Hz of class k's evidence box: f_k - 100 .. f_k + 300."""
    f0 = class_frequency(k)
    return f0 - 100.0, f0 + 300.0


def top_frequency(sample_rate):
    """Highest frequency (Hz) of any distractor at ``sample_rate``."""
    return min(TOP_HZ, 0.45 * sample_rate)


def distractor_tone_ranges(sample_rate):
    """The (low, high) Hz intervals where a distractor tone may lie: at least
    ``TONE_MARGIN_HZ`` from the band of every class 0..MAX_CLASSES-1 (not
    only those in use, so that the pool is the same whatever ``n_classes``),
    above the lowest band and below ``top_frequency``."""
    top = top_frequency(sample_rate)
    bands = [class_band(k) for k in range(MAX_CLASSES)]
    lows = [b[1] + TONE_MARGIN_HZ for b in bands]
    highs = [b[0] - TONE_MARGIN_HZ for b in bands[1:]] + [top]
    return [
        (lo, min(hi, top)) for lo, hi in zip(lows, highs) if min(hi, top) > lo
    ]


def _taper(m):
    """The onset/offset taper of every event, the evidence's: hann ** 0.25."""
    return np.hanning(m) ** 0.25


def _rms(x):
    return float(np.sqrt(np.mean(np.square(x))))


def _band_noise(rng, m, sample_rate, low_hz, high_hz):
    """m samples of white noise kept to [low_hz, high_hz] (FFT mask)."""
    spec = np.fft.rfft(rng.standard_normal(m))
    f = np.fft.rfftfreq(m, 1.0 / sample_rate)
    spec[(f < low_hz) | (f > high_hz)] = 0.0
    return np.fft.irfft(spec, m)


def draw_distractor(rng, sample_rate, n, kinds=KINDS):
    """One distractor event, drawn from ``rng`` alone (never from the class).

    Arguments
    ---------
    rng : numpy.random.Generator
        The distractor stream.
    sample_rate, n : int
        Hz, and the clip's length in samples.
    kinds : sequence of str
        The kinds to draw from, uniformly (``KINDS``).

    Returns
    -------
    tuple
        (onset sample, signal [m] of unit RMS, record {"kind", "start_s",
        "end_s", "low_hz", "high_hz"}).
    """
    kind = kinds[int(rng.integers(len(kinds)))]
    top = top_frequency(sample_rate)
    if kind == "tone":
        m = int(rng.uniform(*TONE_S) * sample_rate)
        ranges = distractor_tone_ranges(sample_rate)
        widths = np.array([hi - lo for lo, hi in ranges])
        lo, hi = ranges[int(rng.choice(len(ranges), p=widths / widths.sum()))]
        freq = rng.uniform(lo, hi)
        t = np.arange(m) / sample_rate
        signal = np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
        low_hz, high_hz = freq - 50.0, freq + 50.0
    elif kind == "noise":
        m = int(rng.uniform(*NOISE_S) * sample_rate)
        if rng.random() < 0.5:
            low_hz, high_hz = 50.0, top
        else:
            width = rng.uniform(*NOISE_BAND_HZ)
            low_hz = rng.uniform(50.0, top - width)
            high_hz = low_hz + width
        signal = _band_noise(rng, m, sample_rate, low_hz, high_hz)
    elif kind == "chirp":
        m = int(rng.uniform(*CHIRP_S) * sample_rate)
        span = min(CHIRP_MIN_SPAN_HZ, 0.5 * (top - 200.0))
        while True:
            f1, f2 = rng.uniform(200.0, top, size=2)
            if abs(f2 - f1) >= span:
                break
        t = np.arange(m) / sample_rate
        sweep = f1 * t + (f2 - f1) * t**2 / (2 * t[-1])
        signal = np.sin(2 * np.pi * sweep + rng.uniform(0, 2 * np.pi))
        low_hz, high_hz = min(f1, f2), max(f1, f2)
    else:
        raise ValueError(f"Distractor kind {kind!r} is not one of {KINDS}.")
    signal = _taper(m) * signal
    signal /= _rms(signal)
    onset = int(rng.integers(0, n - m + 1))
    record = {
        "kind": kind,
        "start_s": onset / sample_rate,
        "end_s": (onset + m) / sample_rate,
        "low_hz": float(low_hz),
        "high_hz": float(high_hz),
    }
    return onset, signal, record


def textured_background(white, sample_rate, rng):
    """``white`` noise made pink (power falling 3 dB per octave from ~50 Hz
    to 8 kHz at 44.1 kHz: J. O. Smith's pinking filter ``PINK_FILTER``) and
    slowly amplitude-modulated (0.25-2 Hz, depth 0.5-0.9, from ``rng``), at
    the RMS of ``white``."""
    pink = scipy.signal.lfilter(*PINK_FILTER, white)
    t = np.arange(len(white)) / sample_rate
    rate, depth = rng.uniform(0.25, 2.0), rng.uniform(0.5, 0.9)
    pink *= 1.0 + depth * np.sin(
        2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)
    )
    return pink * (_rms(white) / max(_rms(pink), 1e-12))


def generate(
    folder,
    n_classes=4,
    clips_per_fold=8,
    n_folds=5,
    sample_rate=44100,
    duration_s=5.0,
    evidence_s=1.5,
    noise_level=0.02,
    seed=0,
    n_distractors=3,
    distractor_db=6.0,
    background="textured",
    distractor_kinds=KINDS,
):
    """Writes ``audio/*.wav``, ``meta/esc50.csv`` and ``meta/evidence.json``.

    Arguments
    ---------
    folder : str
        Destination (created).
    n_classes : int
        Number of classes (at most 6 so that every tone stays below 8 kHz).
    clips_per_fold : int
        Clips per fold, spread over the classes in turn.
    n_folds, sample_rate, duration_s, evidence_s, noise_level, seed
        Fold count, Hz, s (clip), s (evidence burst), background RMS,
        random seed.
    n_distractors : int
        Distractor events per clip (0: none).
    distractor_db : float
        20 log10(RMS of each distractor / RMS of the evidence burst), each
        over its own span: +6 makes distractors twice as loud as the evidence.
    background : str
        ``textured`` (pink, amplitude-modulated) or ``white`` (first version).
    distractor_kinds : sequence of str
        The kinds drawn from, uniformly (a subset of ``KINDS``).

    Returns
    -------
    dict
        filename -> {"start_s", "end_s", "low_hz", "high_hz", "category",
        "distractors": [{"kind", "start_s", "end_s", "low_hz", "high_hz"}]}.
    """
    if not 1 <= n_classes <= MAX_CLASSES:
        raise ValueError(
            f"n_classes={n_classes}: give 1..{MAX_CLASSES} (tones must stay "
            "below 8 kHz)."
        )
    if background not in BACKGROUNDS:
        raise ValueError(
            f"background={background!r}: give one of {BACKGROUNDS}."
        )
    if n_distractors < 0:
        raise ValueError(f"n_distractors={n_distractors}: give 0 or more.")
    unknown = set(distractor_kinds) - set(KINDS)
    if unknown or not distractor_kinds:
        raise ValueError(
            f"distractor_kinds={distractor_kinds!r}: give some of {KINDS}."
        )
    kinds = tuple(distractor_kinds)
    # Evidence and white noise, drawn as in the first version; distractors
    # and texture from their own stream, which never sees the class.
    rng = np.random.default_rng(seed)
    rng_d = np.random.default_rng([seed, 1])  # distractors and texture
    gain = 10.0 ** (distractor_db / 20.0)
    os.makedirs(os.path.join(folder, "audio"), exist_ok=True)
    os.makedirs(os.path.join(folder, "meta"), exist_ok=True)
    n, n_ev = int(sample_rate * duration_s), int(sample_rate * evidence_s)
    t = np.arange(n_ev) / sample_rate
    rows, evidence = [], {}
    for fold in range(1, n_folds + 1):
        for i in range(clips_per_fold):
            k = (i + fold) % n_classes
            f0 = class_frequency(k)
            wav = noise_level * rng.standard_normal(n)
            if background == "textured":
                wav = textured_background(wav, sample_rate, rng_d)
            onset = int(
                rng.integers(
                    int(0.2 * sample_rate), n - n_ev - int(0.2 * sample_rate)
                )
            )
            burst = np.sin(2 * np.pi * f0 * t + rng.uniform(0, 2 * np.pi))
            burst += 0.7 * np.sin(
                2 * np.pi * (f0 + 200.0) * t + rng.uniform(0, 2 * np.pi)
            )
            burst *= 0.5 * _taper(n_ev)
            wav[onset : onset + n_ev] += burst
            distractors = []
            if n_distractors:
                level = gain * _rms(burst)
                for _ in range(n_distractors):
                    start, signal, record = draw_distractor(
                        rng_d, sample_rate, n, kinds
                    )
                    wav[start : start + len(signal)] += level * signal
                    distractors.append(record)
            peak = np.abs(wav).max()
            if peak > MAX_PEAK:
                wav *= MAX_PEAK / peak
            filename = f"{fold}-{1000 * fold + i}-A-{k}.wav"
            sf.write(
                os.path.join(folder, "audio", filename),
                np.clip(wav, -1, 1),
                sample_rate,
                subtype="PCM_16",
            )
            category = f"tone_{int(f0)}hz"
            rows.append(
                (filename, fold, k, category, False, 1000 * fold + i, "A")
            )
            low_hz, high_hz = class_band(k)
            evidence[filename] = {
                "start_s": onset / sample_rate,
                "end_s": (onset + n_ev) / sample_rate,
                "low_hz": low_hz,
                "high_hz": high_hz,
                "category": category,
                "distractors": distractors,
            }

    def write_csv(f):
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        writer.writerows(rows)

    write_atomically(
        os.path.join(folder, "meta", "evidence.json"),
        lambda f: json.dump(evidence, f, indent=1),
    )
    write_atomically(os.path.join(folder, "meta", "esc50.csv"), write_csv)
    return evidence


def read_evidence(data_folder):
    """The planted-evidence record of a data folder, by clip id.

    Arguments
    ---------
    data_folder : str
        An ESC-50-layout folder.

    Returns
    -------
    dict or None
        clip id (file name without extension) -> its entry of
        ``meta/evidence.json``; None when the folder has no such record (real
        ESC-50), so that localisation is not reported at all.
    """
    path = os.path.join(data_folder, "meta", "evidence.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        evidence = json.load(f)
    return {os.path.splitext(name)[0]: box for name, box in evidence.items()}


def evidence_records(evidence, ids, data_folder):
    """The records of the clips ``ids`` in ``evidence`` (``read_evidence`` of
    ``data_folder``), in order; KeyError naming the clips that have none."""
    missing = [i for i in ids if i not in evidence]
    if missing:
        raise KeyError(
            f"Clips {missing} have no entry in {data_folder}/meta/"
            "evidence.json: regenerate the data with synthetic_esc50.py, or "
            "remove that file to run without the localisation metrics."
        )
    return [evidence[i] for i in ids]


def parse_args(argv=None):
    """The command line (``--help`` describes the data)."""
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("folder", help="destination (created)")
    parser.add_argument("--n_classes", type=int, default=4, help="1..6")
    parser.add_argument("--clips_per_fold", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--n_distractors",
        type=int,
        default=3,
        help="distractor events per clip; 0: none (default 3)",
    )
    parser.add_argument(
        "--distractor_db",
        type=float,
        default=6.0,
        help="20 log10(RMS of each distractor / RMS of the evidence), each "
        "over its own span; +6: distractors twice as loud (default 6)",
    )
    parser.add_argument(
        "--background",
        choices=BACKGROUNDS,
        default="textured",
        help="textured: pink, amplitude-modulated noise; white: the first "
        "version's (default textured)",
    )
    parser.add_argument(
        "--noise_level",
        type=float,
        default=0.02,
        help="RMS of the background (default 0.02)",
    )
    parser.add_argument(
        "--evidence_s",
        type=float,
        default=1.5,
        help="duration (s) of the evidence burst (default 1.5)",
    )
    parser.add_argument(
        "--first_version",
        action="store_true",
        help="the first version's data: no distractors, white background, "
        "1.0 s of evidence (overrides those three options)",
    )
    return parser.parse_args(argv)


def main(argv=None):
    """Generates the data the command line asks for; returns ``generate``'s
    records."""
    args = vars(parse_args(argv))
    if args.pop("first_version"):
        args.update(FIRST_VERSION)
    return generate(**args)


if __name__ == "__main__":
    main()
