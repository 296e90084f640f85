"""The base of the interpreters that train nothing (AMT, gradient
baselines, reference masks): validation logged, test written, no checkpoint.

``experiment.run_without_training`` is their ``main``.

Authors: the ESC-50 interpretability recipe developers.
"""

import speechbrain as sb
import torch

from interpreter_brain import InterpreterBrain


class TrainingFreeBrain(InterpreterBrain):
    """An ``InterpreterBrain`` with no training objective: ``Brain.evaluate``
    runs the validation folds (logged as VALID in train_log.txt, nothing
    saved, no contamination) and the test folds (the shared
    test_metrics.json and interpretations). A subclass writes ``interpret``.
    """

    validating = False

    def interpreter_loss(self, result, batch, stage):
        """Nothing is trained: 0."""
        return torch.zeros((), device=result.X.device)

    def evaluate_valid(self, dataset):
        """The validation folds through ``Brain.evaluate``, computed and
        logged as validation (no contamination, nothing saved, metrics in
        train_log.txt)."""
        self.validating = True
        try:
            self.evaluate(
                dataset,
                test_loader_kwargs=dict(self.hparams.test_dataloader_opts),
            )
        finally:
            self.validating = False

    def evaluate_batch(self, batch, stage):
        """``Brain.evaluate`` runs the TEST stage: while validating, VALID."""
        return super().evaluate_batch(
            batch, sb.Stage.VALID if self.validating else stage
        )

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Validation: logs the metrics (no learning rate to anneal, no
        checkpoint to keep). Test: the shared test_metrics.json."""
        if not self.validating:
            return super().on_stage_end(stage, stage_loss, epoch)
        self.hparams.train_logger.log_stats(
            stats_meta={"folds": "valid"},
            valid_stats=self.reduce_metrics(stage_loss),
        )
