#!/usr/bin/env python3
"""Learns the NMF dictionary that L2I explains with (amortised NMF).

Run:
    python train_nmf.py hparams/nmf.yaml --data_folder=/data/ESC50
    python train_nmf.py hparams/nmf.yaml --data_folder=/data/ESC50 --test_only

An encoder maps the log1p STFT magnitude X [B, T, F] (16 kHz, the front end of
every method, METHODS.md §2) to activations H >= 0 [B, K, T]; the decoder's
dictionary W >= 0 [F, K] reconstructs X as W H; the loss is the MSE. The best
decoder is exported as ``<output_folder>/nmf_decoder.ckpt``, which the L2I
configs load with ``--nmf_decoder_path`` as is. The test stage writes the
reconstruction error to ``test_metrics.json`` and ``reconstructions.png``.
Read ``main`` first.

Authors: the ESC-50 interpretability recipe developers.
"""

import os
import sys

import speechbrain as sb
import torch
import torch.nn.functional as F
from speechbrain.utils.distributed import if_main_process

from checkpoint_policy import save_epoch_checkpoint
from experiment import (
    fit_and_test,
    make_brain,
    make_datasets,
    prepare_manifests,
    setup_experiment,
)
from fileio import write_atomically, write_json
from front_end import log_spectrogram
from pretrained import label_encoder_from_manifest


class NMFBrain(sb.Brain):
    """Amortised NMF: X ~ W H, with H = encoder(X)."""

    def compute_forward(self, batch, stage):
        """Returns (X [B, F, T], X_hat = W H [B, F, T])."""
        batch = batch.to(self.device)
        X, _ = log_spectrogram(self.hparams.compute_stft, batch.sig.data)
        X = X.transpose(1, 2)
        return X, self.modules.nmf_decoder(self.modules.nmf_encoder(X))

    def compute_objectives(self, predictions, batch, stage):
        """MSE between X and W H; keeps the first test batch for the figure."""
        X, X_hat = predictions
        if stage == sb.Stage.TEST and self.figure_batch is None:
            self.figure_batch = (
                X[:4].detach().float().cpu(),
                X_hat[:4].detach().float().cpu(),
                batch.id[:4],
            )
        return F.mse_loss(X_hat.float(), X.float())

    def on_stage_start(self, stage, epoch=None):
        """Nothing kept from a previous stage."""
        self.figure_batch = None

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Checkpoints on validation reconstruction error; reports the test one."""
        stats = {"reconstruction_error": float(stage_loss)}
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
        elif stage == sb.Stage.VALID:
            self.hparams.train_logger.log_stats(
                {"epoch": epoch}, self.train_stats, stats
            )
            save_epoch_checkpoint(
                self.checkpointer, stats, "reconstruction_error"
            )
        else:
            self.hparams.train_logger.log_stats(
                {"Epoch loaded": self.hparams.epoch_counter.current},
                test_stats=stats,
            )
            if if_main_process():
                self.export(stats)

    def export(self, stats):
        """Writes nmf_decoder.ckpt, test_metrics.json and reconstructions.png."""
        import plotting

        folder = self.hparams.output_folder
        # the YAML's module, not self.modules' entry: under torchrun or
        # --compile that is a wrapper whose keys carry a "module." or
        # "_orig_mod." prefix, which L2I's strict loading would reject
        state = self.hparams.nmf_decoder.state_dict()
        write_atomically(
            os.path.join(folder, "nmf_decoder.ckpt"),
            lambda f: torch.save(state, f),
            mode="wb",
        )
        write_json(os.path.join(folder, "test_metrics.json"), stats)
        X, X_hat, ids = self.figure_batch
        plotting.plot_reconstructions(
            os.path.join(folder, "reconstructions.png"),
            X.numpy(),
            X_hat.numpy(),
            ids,
            self.hparams.sample_rate,
            self.hparams.compute_stft.hop_length,
        )


def main(argv):
    """Parse, prepare data, train, test the best checkpoint, export the decoder."""
    hparams, run_opts = setup_experiment(argv)
    prepare_manifests(hparams)
    # NMF uses no labels; the data's classes are saved for the record, as
    # every run of the recipe leaves save/label_encoder.txt
    splits = ("train", "valid", "test")
    encoder = label_encoder_from_manifest(
        *(hparams[f"{split}_annotation"] for split in splits)
    )
    if if_main_process():
        encoder.save(os.path.join(hparams["save_folder"], "label_encoder.txt"))
    datasets = make_datasets(hparams, encoder)
    brain = make_brain(NMFBrain, hparams, run_opts)
    fit_and_test(brain, datasets, min_key="reconstruction_error")


if __name__ == "__main__":
    main(sys.argv[1:])
