#!/usr/bin/env python3
"""Interpret your own recordings with a trained interpreter of this recipe.

Run:
    python interpret_file.py results/piq/1234 dog.wav street.mp3 \\
        --output_folder my_interpretations

The first argument is the output folder of a PIQ or L2I run (it holds the
trained checkpoint) or of an AMT run (nothing trained), or a Hugging Face hub
repository with the same files. Any file soundfile reads (wav, flac, ogg,
mp3), at any sample rate, mono or stereo (downmixed), of any length: a file
shorter than 5 s is padded; a longer one is cut into 5 s windows, 2.5 s
apart, whose masks are averaged where they overlap, so the whole file is
explained. For each file, ``<output_folder>/<file name>/`` gets
``interpretation.wav`` (the file's duration, 16 kHz), ``mask.npy`` (float32
[frames, 513]), ``spectra.png`` and ``classes.json`` (the top classes and
their probabilities, averaged over the windows), and the top classes are
logged. The windows of all the files go through the interpreter
``--batch_size`` at a time (default 16), so a long file does not need its
whole length in one forward pass; ``--device`` defaults to ``cuda:0`` when
CUDA is available, else ``cpu``. In Python::

    from interpret_file import AudioInterpreter
    interpreter = AudioInterpreter.from_hparams(source="results/piq/1234")
    result = interpreter.interpret_file("dog.wav")  # or interpret_batch([wav])

Authors: the ESC-50 interpretability recipe developers.
"""

import argparse
import importlib
import logging
import os
import sys

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.logger import get_logger

from experiment import check_device, read_plain_yaml
from fileio import write_json
from front_end import (
    check_audio_file,
    interpretation_wavs,
    load_audio,
    log_spectrogram,
    peak_normalize,
)
from pretrained import load_weights, read_label_file

logger = get_logger(__name__)
# windows per forward pass: bounds the memory a long file needs (a 5 s
# window is a [431, 513] spectrogram through the classifier and the decoder)
BATCH_SIZE = 16


def default_device():
    """``cuda:0`` when CUDA is available, else ``cpu``."""
    return "cuda:0" if torch.cuda.is_available() else "cpu"


# script a run folder holds -> the Brain class of its method
METHODS = {
    "train_piq.py": ("train_piq", "PIQBrain"),
    "train_l2i.py": ("train_l2i", "L2IBrain"),
    "train_lmac.py": ("train_lmac", "LMACBrain"),
    "interpret_amt.py": ("interpret_amt", "AMTBrain"),
    "interpret_gradients.py": ("interpret_gradients", "GradientBrain"),
}


# what to do about a bad sound file or run folder of one's own
FILE_ADVICE = (
    "Check the path, or give another sound file (wav, flac, ogg, mp3)."
)
RUN_ADVICE = (
    "Give the --output_folder of a finished run of train_piq.py, "
    "train_l2i.py, train_lmac.py, interpret_amt.py or interpret_gradients.py "
    "(it holds hyperparams.yaml), or a Hugging Face hub repository owner/name."
)


def fetch_run(source, savedir=None):
    """The local copy of the run ``source`` names when it is no local
    folder: a Hugging Face hub repository ``owner/name`` (downloaded to
    ``savedir``). A path that is no folder, or a repository that cannot be
    fetched, is an error of one line naming ``source``."""
    source = str(source)
    if os.path.exists(source):
        raise NotADirectoryError(
            f"{source} is a file, not a run folder. {RUN_ADVICE}"
        )
    first = source.split("/")[0]
    if (
        source.count("/") != 1
        or source.startswith((".", "/", "~"))
        or os.path.isdir(first)
    ):
        raise FileNotFoundError(f"{source}: no such run folder. {RUN_ADVICE}")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(source, local_dir=savedir)
    except Exception as err:
        reason = (str(err).strip().splitlines() or [""])[0]
        reason = reason.split(". ")[0].rstrip(".")[:200]  # its first sentence
        raise RuntimeError(
            f"{source}: no such local folder, and no Hugging Face hub "
            f"repository could be fetched ({type(err).__name__}: {reason}). "
            f"{RUN_ADVICE}"
        ) from None


def check_files(paths):
    """Every sound file checked (``front_end.check_audio_file``: it exists,
    is no folder, holds bytes and samples) and no two of one name (their
    results would share ``<output_folder>/<name>``), before any work."""
    seen = {}
    for path in paths:
        check_audio_file(path, FILE_ADVICE)
        name = os.path.basename(path)
        if name in seen:
            raise ValueError(
                f"{seen[name]} and {path} are both named {name}: their "
                f"results would share the folder <output_folder>/{name}. "
                "Rename one, or interpret them in two runs."
            )
        seen[name] = path


class AudioInterpreter:
    """A trained interpreter, applied to sound files or waveforms.

    Arguments
    ---------
    brain : interpreter_brain.InterpreterBrain
        The method's Brain, its interpreter loaded and in eval mode.
    labels : speechbrain.dataio.encoder.CategoricalEncoder
        The classifier's label mapping.
    batch_size : int
        Windows per forward pass (all files' windows, in order).
    """

    def __init__(self, brain, labels, batch_size=BATCH_SIZE):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: give at least 1.")
        self.brain = brain
        self.batch_size = batch_size
        self.hparams = brain.hparams
        self.labels = labels
        self.sample_rate = self.hparams.sample_rate
        self.window = int(
            round(self.sample_rate * self.hparams.signal_length_s)
        )
        hop = self.hparams.compute_stft.hop_length
        # windows start on STFT frames, half a window apart
        self.window_hop = (self.window // 2 // hop) * hop

    @classmethod
    def from_hparams(
        cls, source, savedir=None, device=None, batch_size=BATCH_SIZE
    ):
        """The interpreter of a run folder (``source``: a local output folder
        of train_piq.py, train_l2i.py or interpret_amt.py) or of a Hugging
        Face hub repository holding the same files (downloaded to
        ``savedir``), on ``device`` (default: ``default_device()``),
        ``batch_size`` windows per forward pass."""
        device = device or default_device()
        check_device(device)
        folder = source
        if not os.path.isdir(source):
            folder = fetch_run(source, savedir)
        script = [
            name for name in METHODS if os.path.isfile(f"{folder}/{name}")
        ]
        if not script or not os.path.isfile(f"{folder}/hyperparams.yaml"):
            raise FileNotFoundError(
                f"{source} is not the output folder of a run of this recipe "
                "(it needs hyperparams.yaml and the method's script, e.g. "
                "train_piq.py). Give the --output_folder of a finished run."
            )
        with open(f"{folder}/hyperparams.yaml", encoding="utf-8") as f:
            text = f.read()
        # the run's paths, moved to where the folder is now
        # (read as YAML: a long path is written on the line after its key)
        old = str(read_plain_yaml(text)["output_folder"])
        text = text.replace(old, os.path.abspath(folder))
        # one's own recordings are interpreted as they are: no noise added
        clean = {"add_wham_noise": False, "eval_contamination": "none"}
        hparams = load_hyperpyyaml(text, clean)
        module, name = METHODS[script[0]]
        brain_class = getattr(importlib.import_module(module), name)
        if hparams["use_pretrained"]:
            load_weights(hparams)
        labels = f"{folder}/save/label_encoder.txt"
        if not os.path.isfile(labels):
            raise FileNotFoundError(
                f"{labels} not found: {source} is not a complete run folder "
                "(its first run writes it). Give the --output_folder of a "
                "finished run, or copy that file back."
            )
        hparams["label_encoder"] = read_label_file(labels)
        brain = brain_class(
            modules=hparams.get("modules"),
            hparams=hparams,
            run_opts={"device": device, "noprogressbar": True},
            checkpointer=hparams.get("checkpointer"),
        )
        if brain.checkpointer is not None:
            found = brain.checkpointer.find_checkpoint(min_key=brain.best_key)
            if found is None:
                raise FileNotFoundError(
                    f"{folder}/save holds no trained checkpoint: train first "
                    f"(python {script[0]} ...), then point at its folder."
                )
            brain.checkpointer.recover_if_possible(min_key=brain.best_key)
        brain.modules.eval()
        return cls(brain, hparams["label_encoder"], batch_size)

    def windows(self, wav):
        """wav [N] -> ([W, window] peak-normalised windows, their start
        samples); the last window is zero-padded."""
        n = max(wav.numel(), 1)
        starts = list(range(0, max(n - self.window, 0) + 1, self.window_hop))
        if starts[-1] + self.window < n:
            starts.append(starts[-1] + self.window_hop)
        padded = torch.nn.functional.pad(
            wav, (0, starts[-1] + self.window - wav.numel())
        )
        chunks = torch.stack([padded[s : s + self.window] for s in starts])
        return peak_normalize(chunks), starts

    @torch.no_grad()
    def interpret_batch(self, wavs, top_k=5):
        """Interprets several waveforms at once: all their windows, in
        order, ``batch_size`` at a time.

        Arguments
        ---------
        wavs : list of torch.Tensor
            Mono waveforms [N_i] at the recipe's rate, any lengths.
        top_k : int
            How many classes to report.

        Returns
        -------
        list of dict
            Per waveform: ``mask`` (float32 [T_i, F] over the whole file),
            ``X`` ([T_i, F] log1p magnitude), ``interpretation`` ([N_i]
            waveform), ``top_classes`` (list of (class, probability)).
        """
        brain, hp = self.brain, self.hparams
        pieces = [self.windows(wav) for wav in wavs]
        windows = torch.cat([chunks for chunks, _ in pieces])
        masks, probs = [], []
        for batch in windows.split(self.batch_size):
            batch = batch.to(brain.device)
            X, stft = log_spectrogram(hp.compute_stft, batch)
            hidden, logits = brain.classify(X)
            mask = brain.interpret(X, stft, hidden, logits, sb.Stage.TEST).mask
            masks.append(mask.float().cpu())
            probs.append(torch.softmax(logits.float(), dim=1).cpu())
        masks, probs = torch.cat(masks), torch.cat(probs)
        hop, results, first = hp.compute_stft.hop_length, [], 0
        for wav, (chunks, starts) in zip(wavs, pieces):
            rows = slice(first, first + len(starts))
            first += len(starts)
            whole = peak_normalize(wav).unsqueeze(0).to(brain.device)
            X_file, stft_file = log_spectrogram(hp.compute_stft, whole)
            total = torch.zeros(X_file.shape[1:])
            count = torch.zeros(X_file.shape[1], 1)
            for mask, start in zip(masks[rows], starts):
                frame = start // hop
                frames = min(mask.shape[0], total.shape[0] - frame)
                total[frame : frame + frames] += mask[:frames]
                count[frame : frame + frames] += 1
            mask = total / count.clamp(min=1)
            audio = interpretation_wavs(
                hp.compute_istft,
                mask.to(X_file) * X_file,
                stft_file,
                wav.numel(),
            )
            p = probs[rows].mean(0)
            top = p.topk(min(top_k, p.numel()))
            results.append(
                {
                    "mask": mask.numpy().astype("float32"),
                    "X": X_file[0].float().cpu().numpy(),
                    "interpretation": audio[0].float().cpu(),
                    "top_classes": [
                        (self.labels.ind2lab[int(k)], float(v))
                        for v, k in zip(top.values, top.indices)
                    ],
                }
            )
        return results

    def interpret_file(self, path, top_k=5):
        """``interpret_batch`` of one file; see ``interpret_files``."""
        return self.interpret_files([path], top_k)[0]

    def interpret_files(self, paths, top_k=5):
        """Loads the files (``front_end.load_audio``) and interprets them
        (``interpret_batch``). A missing, unreadable or empty file (0 bytes
        or 0 samples) is an error of one line naming it."""
        wavs = [load_audio(p, self.sample_rate, FILE_ADVICE) for p in paths]
        return self.interpret_batch(wavs, top_k)

    def save(self, result, folder, name):
        """Writes ``result`` (one item of ``interpret_batch``) to
        ``folder``: interpretation.wav, mask.npy, spectra.png, classes.json."""
        import plotting  # matplotlib only when something is saved

        plotting.save_clip(
            folder,
            audios={"interpretation.wav": result["interpretation"]},
            X=result["X"],
            mask=result["mask"],
            true_class="unknown",
            predicted_class=result["top_classes"][0][0],
            sample_rate=self.sample_rate,
            hop_length=self.hparams.compute_stft.hop_length,
        )
        write_json(
            f"{folder}/classes.json",
            {
                "file": name,
                "top_classes": [
                    {"class": c, "probability": p}
                    for c, p in result["top_classes"]
                ],
            },
        )


def main(argv):
    """Parse, load the interpreter, interpret every file, save, log."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", help="run folder (or hub repository)")
    parser.add_argument("files", nargs="+", help="sound files")
    parser.add_argument("--output_folder", default="interpretations")
    parser.add_argument(
        "--device",
        default=default_device(),
        help="default: cuda:0 if CUDA is available, else cpu",
    )
    parser.add_argument("--top_k", type=int, default=5)
    parser.add_argument(
        "--batch_size",
        type=int,
        default=BATCH_SIZE,
        help="5 s windows per forward pass (all files' windows, in order)",
    )
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch_size {args.batch_size}: give at least 1")
    if args.top_k < 1:
        parser.error(f"--top_k {args.top_k}: give at least 1")
    if os.path.isfile(args.output_folder):
        parser.error(
            f"--output_folder {args.output_folder} is a file: give a folder"
        )
    check_files(args.files)  # before the interpreter is loaded
    interpreter = AudioInterpreter.from_hparams(
        args.source, device=args.device, batch_size=args.batch_size
    )
    results = interpreter.interpret_files(args.files, args.top_k)
    for path, result in zip(args.files, results):
        name = os.path.basename(path)
        folder = os.path.join(args.output_folder, name)
        interpreter.save(result, folder, name)
        top = ", ".join(f"{c} {p:.3f}" for c, p in result["top_classes"])
        logger.info(f"{path}: {top} -> {folder}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main(sys.argv[1:])
