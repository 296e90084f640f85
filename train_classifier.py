#!/usr/bin/env python3
"""Trains an ESC-50 classifier that the interpreter configs can load.

Run:
    python train_classifier.py hparams/classifier_conv2d.yaml --data_folder=/data/ESC50

It trains the conv2d classifier of METHODS.md §3 (Conv2dEncoder_v2 + ECAPA
cosine classifier, additive angular margin loss), keeps the checkpoint with the
lowest validation error, tests it, and exports it as
``<output_folder>/embedding_model.ckpt``, ``classifier.ckpt`` and
``label_encoder.txt``. Point an interpreter at them with
``--embedding_model_path=<output_folder>/embedding_model.ckpt
--classifier_model_path=<output_folder>/classifier.ckpt --out_n_neurons=<classes>``.
Read ``main`` first.

Authors: the ESC-50 interpretability recipe developers.
"""

import os
import sys

import speechbrain as sb
import torch
from speechbrain.utils.distributed import if_main_process
from speechbrain.utils.logger import get_logger

from checkpoint_policy import save_epoch_checkpoint
from experiment import (
    fit_and_test,
    make_brain,
    make_datasets,
    prepare_manifests,
    setup_experiment,
)
from fileio import write_atomically
from front_end import log_spectrogram
from pretrained import label_encoder_from_manifest

logger = get_logger(__name__)


class ClassifierBrain(sb.Brain):
    """Trains embedding_model + classifier on log1p STFT magnitudes."""

    def compute_forward(self, batch, stage):
        """wavs -> cosine scores [B, C]."""
        batch = batch.to(self.device)
        X, _ = log_spectrogram(self.hparams.compute_stft, batch.sig.data)
        return self.modules.backbone(X)[1]

    def compute_objectives(self, logits, batch, stage):
        """Additive angular margin loss; error rate tracked outside training."""
        labels = batch.label_encoded.data.to(self.device)
        if stage != sb.Stage.TRAIN:
            self.error_metrics.append(batch.id, logits.unsqueeze(1), labels)
        return self.hparams.compute_cost(logits.unsqueeze(1).float(), labels)

    def on_stage_start(self, stage, epoch=None):
        """New error-rate tracker."""
        self.error_metrics = self.hparams.error_stats()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs; checkpoints on validation error_rate; exports the tested model."""
        if stage == sb.Stage.TRAIN:
            self.train_stats = {"loss": stage_loss}
            return
        stats = {
            "loss": stage_loss,
            "error_rate": float(self.error_metrics.summarize("average")),
        }
        if stage == sb.Stage.VALID:
            old_lr, new_lr = self.hparams.lr_annealing(
                [self.optimizer], epoch, stats["error_rate"]
            )
            sb.nnet.schedulers.update_learning_rate(self.optimizer, new_lr)
            self.hparams.train_logger.log_stats(
                {"epoch": epoch, "lr": old_lr}, self.train_stats, stats
            )
            save_epoch_checkpoint(self.checkpointer, stats, "error_rate")
        else:
            self.hparams.train_logger.log_stats(
                {"Epoch loaded": self.hparams.epoch_counter.current},
                test_stats=stats,
            )
            if if_main_process():
                self.export()

    def export(self):
        """Writes the loaded (best) model for the interpreters, atomically."""
        folder = self.hparams.output_folder
        for name in ("embedding_model", "classifier"):
            state = getattr(self.hparams, name).state_dict()
            write_atomically(
                os.path.join(folder, f"{name}.ckpt"),
                lambda f, s=state: torch.save(s, f),
                mode="wb",
            )
        self.hparams.label_encoder.save(
            os.path.join(folder, "label_encoder.txt")
        )
        logger.info(
            f"Classifier exported to {folder}/{{embedding_model,classifier}}.ckpt"
        )


def main(argv):
    """Parse, prepare data, train, test the best checkpoint, export it."""
    hparams, run_opts = setup_experiment(argv)
    prepare_manifests(hparams)
    label_encoder = label_encoder_from_manifest(hparams["train_annotation"])
    if len(label_encoder) != hparams["out_n_neurons"]:
        raise ValueError(
            f"The training folds hold {len(label_encoder)} classes but out_n_neurons="
            f"{hparams['out_n_neurons']}. Set --out_n_neurons {len(label_encoder)}."
        )
    label_encoder.expect_len(len(label_encoder))
    hparams["label_encoder"] = label_encoder
    datasets = make_datasets(hparams, label_encoder)
    brain = make_brain(ClassifierBrain, hparams, run_opts)
    fit_and_test(brain, datasets, min_key="error_rate")


if __name__ == "__main__":
    main(sys.argv[1:])
