"""What every interpretation method of the recipe shares.

* ``Interpretation`` (``interpretation.py``, imported from here): the one
  typed result that every method's ``interpret`` returns, so metrics, plots
  and saved files never unpack method-specific tuples.
* ``InterpreterBrain``: a ``speechbrain.Brain`` running the front end
  (``front_end.py``) and the frozen classifier (``pretrained.py``) once per
  batch, accumulating the metrics (``metrics.py``) over validation and test,
  selecting the checkpoint on ONE stored key, writing ``test_metrics.json``
  and the saved interpretations. A method subclasses it and writes
  ``interpret`` and ``interpreter_loss``.

Command line, YAML, datasets and the scripts' ``main``: ``experiment.py``.

Authors: the ESC-50 interpretability recipe developers.
"""

import os

import speechbrain as sb
import torch
import torch.nn.functional as F
from speechbrain.utils.distributed import if_main_process
from speechbrain.utils.logger import get_logger

import metrics
from checkpoint_policy import save_epoch_checkpoint
from contamination import InputContamination, ideal_binary_mask
from cpu_kernels import speed_up_if_cpu
from distributed import ShardedEvaluation, sum_over_processes, world_size
from fileio import write_json
from front_end import interpretation_wavs, log_spectrogram
from interpretation import Interpretation, pad_to_input
from synthetic_esc50 import evidence_records, read_evidence

__all__ = ["Interpretation", "InterpreterBrain"]
logger = get_logger(__name__)


class InterpreterBrain(ShardedEvaluation, sb.Brain):
    """Base Brain of every interpreter: front end, frozen classifier, metrics.

    Subclasses implement:
    * ``interpret(X, stft, hidden, logits, stage) -> Interpretation``
    * ``interpreter_loss(result, batch, stage) -> torch.Tensor`` (scalar)

    Expected hparams: ``compute_stft``, ``compute_istft``, ``backbone``
    (``backbones.py``), ``pretrainer``, ``label_encoder`` (set by the
    script), ``sample_rate``, ``output_folder``, ``save_interpretations``,
    ``train_logger``, ``lr_annealing``, ``channels_last``; optional:
    ``fast_decoder`` and ``decoder_piece`` (``cpu_kernels.speed_up_if_cpu``: CPU fp32 only),
    ``curve_steps`` (S of the deletion and insertion curves; 0 or absent:
    off) and speechbrain's ``compile``, which also compiles ``backbone``.

    The checkpoint kept as best, tested, and loaded by ``--test_only`` is the
    lowest ``best_key`` (the validation loss) stored in its meta. Masks that
    keep everything score the best fidelity, so fidelity only drives the
    learning rate schedule.
    """

    best_key = "loss"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        layout = torch.preserve_format
        if self.hparams.channels_last:
            layout = torch.channels_last
        # the frozen classifier (and e.g. NMF decoder)
        for frozen in self.hparams.pretrainer.loadables.values():
            frozen.to(self.device, memory_format=layout).eval()
            frozen.requires_grad_(False)
        self.modules.to(memory_format=layout)
        if getattr(self.hparams, "fast_decoder", False):
            speed_up_if_cpu(
                self.modules,
                getattr(self.hparams, "decoder_piece", 0),
                self.device,
                self.precision,
                self.eval_precision,
            )
        if self.compile:  # Brain compiles self.modules when fit starts
            self.hparams.backbone.compile(
                mode=self.compile_mode,
                dynamic=self.compile_using_dynamic_shape_tracing,
            )
        self.input_wavs = InputContamination(self.hparams)
        self.contamination = self.input_wavs.mode
        # ground truth of generated data: localisation is then reported too
        self.evidence = read_evidence(self.hparams.data_folder)

    def classify(self, X):
        """X [B, T, F] -> (hidden representation, logits [B, C]) of the frozen
        classifier, whatever its architecture (``backbones.py``)."""
        return self.hparams.backbone(X)

    def interpret(self, X, stft, hidden, logits, stage):
        """Returns the method's ``Interpretation`` of a batch."""
        raise NotImplementedError

    def interpreter_loss(self, result, batch, stage):
        """Returns the method's scalar training loss for ``result``."""
        raise NotImplementedError

    def compute_forward(self, batch, stage):
        """The clips as interpreted (``contamination.InputContamination``),
        one front-end pass, one gradient-free classifier pass, then the
        method's interpretation. Returns an ``Interpretation``. A
        contaminated test also sets ``self.ideal_mask`` [B, T, F] bool, the
        bins where the target dominates the interferer (None otherwise)."""
        batch = batch.to(self.device)
        wavs, target, interferer = self.input_wavs.parts(batch, stage)
        self.mixture_parts = None
        self.ideal_mask = None
        if interferer is not None:
            self.mixture_parts = target, interferer
            self.ideal_mask = ideal_binary_mask(
                self.hparams.compute_stft, target, interferer
            )
        X, stft = log_spectrogram(self.hparams.compute_stft, wavs)
        with torch.no_grad():
            hidden, logits = self.classify(X)
        result = self.interpret(X, stft, hidden, logits, stage)
        result.wav = wavs
        return result

    def compute_objectives(self, result, batch, stage):
        """The method's loss; in validation and test also accumulates the
        metrics (and, at test, saves interpretations if asked)."""
        loss = self.interpreter_loss(result, batch, stage)
        if stage != sb.Stage.TRAIN:
            labels = batch.label_encoded.data.to(self.device).squeeze(-1)
            values = self.accumulate_metrics(result, labels, batch.id)
            if stage == sb.Stage.TEST and self.hparams.save_interpretations:
                self.save_interpretations(result, batch, labels, values)
        return loss

    def method_metrics(self, result):
        """Extra per-clip figures a method logs beside the shared metrics
        (validation and test): dict name -> [B] tensor. None by default."""
        return {}

    def deletion_insertion(self, M, X, c, steps):
        """``deletion_auc`` and ``insertion_auc`` [B] of the masks M on the
        inputs X [B, T, F]: p_c (c [B], the class predicted on the clip) at
        q = 0, 1/S, ..., 1 with the top-q fraction of the bins by mask value
        set to 0 (deletion) or alone kept (insertion), S = ``steps``
        (``metrics.top_fraction_masks``), then the area under each curve
        (``metrics.curve_area``). One classifier pass over the batch per
        step and curve, 2 (S + 1) in all, each with the peak memory of one."""
        curves = {"deletion_auc": [], "insertion_auc": []}
        for top in metrics.top_fraction_masks(M, steps):
            top = top.to(X.dtype)
            inputs = {"deletion_auc": 1 - top, "insertion_auc": top}
            for name, keep in inputs.items():
                logits = self.classify(X * keep)[1]
                p = F.softmax(logits.float(), dim=1)
                curves[name].append(p.gather(1, c[:, None]).squeeze(1))
        return {
            name: metrics.curve_area(torch.stack(curve, dim=1))
            for name, curve in curves.items()
        }

    def accumulate_metrics(self, result, labels, ids):
        """Adds the batch's per-clip metrics (clips ``ids``) to the running
        sums and returns them (name -> [B]). The masked-in and masked-out
        inputs go through the classifier one after the other (together they
        would double the classifier's peak memory); so do the deletion and
        insertion inputs when ``curve_steps`` > 0 (``deletion_insertion``)."""
        with torch.no_grad():
            M, X = result.mask.detach(), result.X.detach()
            p_in, p_out = (
                F.softmax(self.classify(kept)[1].float(), dim=1)
                for kept in (M * X, (1 - M) * X)
            )
            p = F.softmax(result.logits.float(), dim=1)
            values = metrics.per_clip_metrics(p, p_in, p_out, M.float(), labels)
            values.update(self.method_metrics(result))
            if self.evidence is not None or self.ideal_mask is not None:
                values.update(self.localisation(M, ids))
            steps = getattr(self.hparams, "curve_steps", 0)
            if steps:
                values.update(self.deletion_insertion(M, X, p.argmax(1), steps))
            for name, value in metrics.batch_sums(values, ids).items():
                self.metric_sums[name] = self.metric_sums.get(name, 0) + value
        return values

    def localisation(self, M, ids):
        """``metrics.localisation_metrics`` of the masks M [B, T', F] of the
        clips ``ids`` against their ground truth (``ground_truth``)."""
        return metrics.localisation_metrics(
            M.float(), self.ground_truth(M, ids)
        )

    def ground_truth(self, M, ids):
        """[B, T', F] bool, where the class evidence of the clips ``ids``
        lies on the grid of the masks M [B, T', F] (T' <= T: a mask cropped
        to a decoder's first frames): under test contamination the ideal
        binary mask of the target (``self.ideal_mask``, any data), else the
        planted-evidence boxes of generated data."""
        if self.ideal_mask is not None:
            return self.ideal_mask[:, : M.shape[1]]
        stft = self.hparams.compute_stft
        return metrics.evidence_boxes(
            evidence_records(self.evidence, ids, self.hparams.data_folder),
            M.shape[1:],
            stft.sample_rate,
            stft.hop_length,
            stft.n_fft,
        ).to(M.device)

    def on_stage_start(self, stage, epoch=None):
        """Resets the metric sums."""
        self.metric_sums = {}

    def reduce_metrics(self, stage_loss):
        """Sums over processes, then means (``metrics.means_from_sums``):
        returns a dict of plain floats, the stage loss first."""
        sums = sum_over_processes(
            {**self.metric_sums, "loss": float(stage_loss)}, self.device
        )
        loss = sums.pop("loss") / world_size()
        return {"loss": loss, **metrics.means_from_sums(sums)}

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs; after validation, anneals the learning rate and checkpoints;
        after test, writes ``test_metrics.json`` (clean inputs) or
        ``test_metrics_<eval_contamination>.json``."""
        if stage == sb.Stage.TRAIN:
            self.train_stats = {"loss": stage_loss}
            return
        stats = self.reduce_metrics(stage_loss)
        if stage == sb.Stage.VALID:
            old_lr, new_lr = self.hparams.lr_annealing(
                [self.optimizer], epoch, 1.0 - stats["fidelity_in"]
            )
            sb.nnet.schedulers.update_learning_rate(self.optimizer, new_lr)
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": old_lr},
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            save_epoch_checkpoint(self.checkpointer, stats, self.best_key)
            return
        self.hparams.train_logger.log_stats(
            stats_meta={"Epoch loaded": self.hparams.epoch_counter.current},
            test_stats=stats,
        )
        if if_main_process():
            stats["contamination"] = self.contamination
            # test_metrics.json is always the clean result
            name = f"test_metrics{self.input_wavs.suffix}.json"
            path = os.path.join(self.hparams.output_folder, name)
            write_json(path, stats)
            logger.info(f"Test metrics written to {path}")

    def save_interpretations(self, result, batch, labels, values):
        """Writes, for every clip, ``interpretations/<clip id>/`` (or
        ``interpretations_<contamination>/``) with original.wav (the input as
        interpreted), interpretation.wav (ISTFT of expm1(M*X) with the
        original phase), mask.npy (float32 [T, F]), spectra.png and clip.json
        (classes and per-clip metrics ``values``); for a contaminated test
        also target.wav and interferer.wav (the two terms, as summed). A
        mask cropped to a decoder's first frames is padded with zeros to the
        whole clip first (``interpretation.pad_to_input``): nothing of the
        frames it does not reach is kept."""
        import plotting  # matplotlib is imported only when needed

        hp = self.hparams
        X, stft = log_spectrogram(hp.compute_stft, result.wav)
        if result.X.shape[1] < X.shape[1]:  # cropped to the decoder's frames
            result = pad_to_input(result, X, stft)
        audios = {"original.wav": result.wav}
        audios["interpretation.wav"] = interpretation_wavs(
            hp.compute_istft, result.X_int, result.stft, result.wav.shape[1]
        )
        if self.mixture_parts is not None:  # the two terms, as summed
            audios["target.wav"], audios["interferer.wav"] = self.mixture_parts
        folder = f"{hp.output_folder}/interpretations{self.input_wavs.suffix}"
        names = hp.label_encoder.ind2lab
        plotting.save_batch(
            folder,
            batch.id,
            audios,
            result.X,
            result.mask,
            true_classes=[names[int(k)] for k in labels],
            predicted_classes=[names[int(k)] for k in result.class_pred],
            clip_metrics=values,
            sample_rate=hp.sample_rate,
            hop_length=hp.compute_stft.hop_length,
        )
