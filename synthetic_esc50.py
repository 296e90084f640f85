#!/usr/bin/env python3
"""Synthetic data in the ESC-50 layout, with class evidence at known places.

Each clip is 5 s of quiet white noise at 44.1 kHz (16-bit PCM, like ESC-50)
with one burst of class evidence: two tones at ``f_k`` and ``f_k + 200`` Hz,
``f_k`` depending on the class, lasting ``evidence_s`` seconds from a random
onset. Where the evidence is (start/end in s, low/high in Hz) is recorded per
clip in ``meta/evidence.json``; every interpreter's test run then reports how
much of its masks lies there (``metrics.localisation_metrics``).

Run:
    python synthetic_esc50.py /tmp/synthetic_esc50 --n_classes 4 --clips_per_fold 8
"""

import argparse
import csv
import json
import os

import numpy as np
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


def class_frequency(k):
    """Lower tone (Hz) of class k: 500, 1700, 2900, ... (below 8 kHz for k <= 5)."""
    return 500.0 + 1200.0 * k


def generate(
    folder,
    n_classes=4,
    clips_per_fold=8,
    n_folds=5,
    sample_rate=44100,
    duration_s=5.0,
    evidence_s=1.0,
    noise_level=0.02,
    seed=0,
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
        Fold count, Hz, s, s, noise amplitude, random seed.

    Returns
    -------
    dict
        filename -> evidence {"start_s", "end_s", "low_hz", "high_hz", "category"}.
    """
    if not 1 <= n_classes <= 6:
        raise ValueError(
            f"n_classes={n_classes}: give 1..6 (tones must stay below 8 kHz)."
        )
    rng = np.random.default_rng(seed)
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
            onset = int(
                rng.integers(
                    int(0.2 * sample_rate), n - n_ev - int(0.2 * sample_rate)
                )
            )
            burst = np.sin(2 * np.pi * f0 * t + rng.uniform(0, 2 * np.pi))
            burst += 0.7 * np.sin(
                2 * np.pi * (f0 + 200.0) * t + rng.uniform(0, 2 * np.pi)
            )
            wav[onset : onset + n_ev] += 0.5 * np.hanning(n_ev) ** 0.25 * burst
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
            evidence[filename] = {
                "start_s": onset / sample_rate,
                "end_s": (onset + n_ev) / sample_rate,
                "low_hz": f0 - 100.0,
                "high_hz": f0 + 300.0,
                "category": category,
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--n_classes", type=int, default=4)
    parser.add_argument("--clips_per_fold", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    generate(args.folder, args.n_classes, args.clips_per_fold, seed=args.seed)
