"""The tables and the figure of ``compare_interpreters.py``: every method's
metrics over several seeds as mean and 95% interval.

* ``summarise``: per method, the mean over seeds of every figure and the
  half-width of its 95% interval (Student's t with n - 1 degrees of freedom:
  mean +- t s / sqrt(n)).
* ``write_tables``: ``comparison.csv`` (every figure, ``<name>`` and
  ``<name>_ci95``), ``comparison.md`` (the columns a reader compares first,
  one table for the methods and references on the main classifier and one
  for AMT, which explains other classifiers) and ``comparison.json`` (every
  seed's figures, for anyone to recompute).
* ``plot_comparison``: each method's localisation (top-k IoU or ROC AUC
  against the ground truth) and its randomisation rank correlation, with
  intervals.

Authors: the ESC-50 interpretability recipe developers.
"""

import csv
import io
import json
import math
import os

from scipy.stats import t as student_t

from fileio import write_atomically
from metrics import HIGHER_IS_BETTER

# what a reader compares first (comparison.md); comparison.csv has all
MAIN_COLUMNS = (
    "topk_iou",
    "roc_auc",
    "evidence_mass",
    "pointing_game",
    "insertion_auc",
    "deletion_auc",
    "faithfulness",
    "fidelity_in",
    "randomisation_rank_corr",
    "accuracy",
    "n_empty_masks",
)
# directions beyond metrics.HIGHER_IS_BETTER: a mask that depends on the
# classifier changes when its weights are randomised
DIRECTIONS = {**HIGHER_IS_BETTER, "randomisation_rank_corr": False}


def mean_interval(values):
    """(mean, half-width of the 95% interval) of a list of numbers, None
    values left out; the half-width is None below 2 values."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None, None
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, student_t.ppf(0.975, n - 1) * std / math.sqrt(n)


def summarise(runs):
    """Rows of the tables from ``runs``: a list of dicts with ``method``,
    ``explains``, ``reference`` (bool) and ``seeds`` (list of dicts name ->
    number, one per seed). Returns one dict per method: method, explains,
    reference, seeds (count), and for every figure ``<name>`` (mean) and
    ``<name>_ci95``."""
    rows = []
    for run in runs:
        row = {
            "method": run["method"],
            "explains": run["explains"],
            "reference": run["reference"],
            "seeds": len(run["seeds"]),
        }
        names = sorted({k for seed in run["seeds"] for k in seed})
        for name in names:
            mean, ci = mean_interval([seed.get(name) for seed in run["seeds"]])
            row[name], row[f"{name}_ci95"] = mean, ci
        rows.append(row)
    return rows


def cell(row, name):
    """``mean ± ci`` of a row's figure as short text ('' when absent)."""
    mean, ci = row.get(name), row.get(f"{name}_ci95")
    if mean is None:
        return ""
    text = f"{mean:.3g}"
    return f"{text} ± {ci:.2g}" if ci is not None else text


def markdown(rows, columns):
    """A markdown table of ``rows`` with ``columns`` (direction arrows); the
    best non-reference value of each column with a direction in bold."""
    present = [
        c for c in columns if any(row.get(c) is not None for row in rows)
    ]
    arrows = {name: "↑" if up else "↓" for name, up in DIRECTIONS.items()}
    header = ["method", "explains", "seeds"]
    header += [f"{c} {arrows.get(c, '')}".strip() for c in present]
    best = {}
    for c in present:
        values = [
            r[c] for r in rows if not r["reference"] and r.get(c) is not None
        ]
        if c in DIRECTIONS and values:
            best[c] = max(values) if DIRECTIONS[c] else min(values)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["method"], row["explains"], str(row["seeds"])]
        for c in present:
            text = cell(row, c)
            bold = not row["reference"] and row.get(c) == best.get(c)
            cells.append(f"**{text}**" if text and bold else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(rows, runs, out, rank):
    """comparison.csv, comparison.md and comparison.json in ``out``; rows
    sorted by ``rank`` (best first), references after the methods. Returns
    the markdown text."""
    up = DIRECTIONS.get(rank, True)

    def order(row):
        value = row.get(rank)
        missing = value is None
        return (
            row["reference"],
            missing,
            -(value or 0) if up else (value or 0),
        )

    rows = sorted(rows, key=order)
    names = sorted(
        {k for r in rows for k in r}
        - {"method", "explains", "reference", "seeds"}
    )
    fields = ["method", "explains", "reference", "seeds", *names]

    def write_csv(f):
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)

    write_atomically(os.path.join(out, "comparison.csv"), write_csv)
    write_atomically(
        os.path.join(out, "comparison.json"),
        lambda f: json.dump(runs, f, indent=1),
    )
    main = [r for r in rows if not r["method"].startswith("AMT")]
    amt = [r for r in rows if r["method"].startswith("AMT")]
    text = (
        f"Ranked by {rank} (mean ± 95% interval over seeds; bold: the best "
        "method, references excluded).\n\n" + markdown(main, MAIN_COLUMNS)
    )
    if amt:
        text += (
            "\nAMT explains other classifiers (FocalNet, ViT; accuracy "
            "column): not ranked with the others.\n\n"
            + markdown(amt, MAIN_COLUMNS)
        )
    write_atomically(
        os.path.join(out, "comparison.md"), lambda f: f.write(text)
    )
    return text


def plot_comparison(rows, path, localisation="topk_iou"):
    """Two panels, one line per method (references grey): ``localisation``
    (chance 0.5 for ROC AUC) and the randomisation rank correlation, each
    mean with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (localisation, f"{localisation} against the ground truth (↑)"),
        (
            "randomisation_rank_corr",
            "rank correlation with the masks of a randomised classifier (↓)",
        ),
    ]
    panels = [p for p in panels if any(r.get(p[0]) is not None for r in rows)]
    shown = sorted(
        [r for r in rows if r.get(panels[0][0]) is not None],
        key=lambda r: r[panels[0][0]],
    )
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(5.5 * len(panels), 0.35 * len(shown) + 1.5),
        sharey=True,
        squeeze=False,
    )
    for ax, (name, title) in zip(axes[0], panels):
        for y, row in enumerate(shown):
            if row.get(name) is None:
                continue
            ax.errorbar(
                row[name],
                y,
                xerr=row.get(f"{name}_ci95") or 0,
                fmt="s" if row["reference"] else "o",
                color="grey" if row["reference"] else "C0",
                capsize=3,
            )
        if name == "roc_auc":
            ax.axvline(0.5, color="grey", linestyle=":", label="chance")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_title(title, fontsize=9)
    axes[0][0].set_yticks(
        range(len(shown)), [r["method"] for r in shown], fontsize=8
    )
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    write_atomically(path, lambda f: f.write(buffer.getvalue()), mode="wb")
