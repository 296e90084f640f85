"""What every interpretation method of the recipe shares.

* ``Interpretation``: the one typed result that every method's ``interpret``
  returns, so metrics, plots and saved files never unpack method-specific tuples.
* ``InterpreterBrain``: a ``speechbrain.Brain`` holding the front end (log1p
  STFT magnitude, METHODS.md §2), the frozen classifier (METHODS.md §3), the
  metrics of METHODS.md §5 accumulated over validation and test, DDP reduction,
  checkpoint selection on ONE stored key, ``test_metrics.json`` and the saved
  interpretations. A method subclasses it and writes ``interpret`` and
  ``interpreter_loss``.
The frozen classifier is loaded by ``pretrained.py``, the audio front end is
``front_end.py``; command line, YAML, datasets and the scripts' ``main`` are
in ``experiment.py``.

Authors: the ESC-50 interpretability recipe developers.
"""

import json
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import speechbrain as sb
from speechbrain.utils.distributed import ddp_all_reduce, if_main_process
from speechbrain.utils.logger import get_logger

import metrics
from contamination import check_mode, contaminate
from fileio import write_atomically
from front_end import interpretation_wavs, log_spectrogram
from wham_prepare import load_wham, mix_at_0db

logger = get_logger(__name__)


@dataclass
class Interpretation:
    """What an interpreter returns for a batch of B clips (T frames, F bins).

    Attributes
    ----------
    X : torch.Tensor
        [B, T, F] log1p STFT magnitude of the input.
    stft : torch.Tensor
        [B, T, F, 2] complex STFT (real, imaginary) of the input: its phase
        makes the interpretation listenable.
    logits : torch.Tensor
        [B, C] frozen classifier output on X (no gradient).
    mask : torch.Tensor or None
        [B, T, F] interpretation mask M in [0, 1]; the interpretation is M * X.
        A method whose training loss does not use the mask may leave it None
        in the training stage; it is always set in validation and test.
    aux : dict
        Method-specific tensors the method's loss needs (e.g. PIQ's mask
        logits and quantised codes); empty when there are none.
    wav : torch.Tensor or None
        [B, N] the waveforms as interpreted (after any contamination); set by
        the brain, not by the method.
    """

    X: torch.Tensor
    stft: torch.Tensor
    logits: torch.Tensor
    mask: Optional[torch.Tensor]
    aux: dict = field(default_factory=dict)
    wav: Optional[torch.Tensor] = None

    @property
    def class_pred(self):
        """[B] class predicted by the frozen classifier on X."""
        return self.logits.argmax(1)

    @property
    def X_int(self):
        """[B, T, F] the interpretation M * X."""
        return self.mask * self.X


class InterpreterBrain(sb.Brain):
    """Base Brain of every interpreter: front end, frozen classifier, metrics.

    Subclasses implement:
    * ``interpret(X, stft, hidden, logits, stage) -> Interpretation``
    * ``interpreter_loss(result, batch, stage) -> torch.Tensor`` (scalar)

    Expected hparams: ``compute_stft``, ``compute_istft``, ``backbone``
    (``backbones.py``), ``pretrainer``, ``label_encoder`` (set by the script), ``sample_rate``,
    ``output_folder``, ``save_interpretations``, ``train_logger``,
    ``lr_annealing``, ``channels_last``.

    The checkpoint kept as best, the one ``--test_only`` and the test stage
    load, is selected on ONE key stored in its meta: ``best_key``, the
    validation loss of the interpreter (lower is better). Masks that keep
    everything score the best fidelity, so fidelity only drives the learning
    rate schedule (METHODS.md §4).
    """

    best_key = "loss"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        memory_format = torch.channels_last if self.hparams.channels_last else torch.preserve_format
        for frozen in self.hparams.pretrainer.loadables.values():  # classifier (and e.g. NMF decoder)
            frozen.to(self.device, memory_format=memory_format).eval().requires_grad_(False)
        self.modules.to(memory_format=memory_format)
        self.contamination = self.hparams.eval_contamination
        check_mode(self.contamination)
        self.noise_generator = torch.Generator().manual_seed(self.hparams.seed)
        self.wham = load_wham(self.hparams) if self.contamination == "wham" or self.hparams.add_wham_noise else None

    # ---- front end and frozen classifier -------------------------------
    def front_end(self, wavs):
        """wavs [B, N] -> (X [B, T, F] log1p magnitude, stft [B, T, F, 2])."""
        return log_spectrogram(self.hparams.compute_stft, wavs)

    def classify(self, X):
        """X [B, T, F] -> (hidden representation, logits [B, C]) of the frozen
        classifier, whatever its architecture (``backbones.py``)."""
        return self.hparams.backbone(X)

    # ---- method hooks -----------------------------------------------------
    def interpret(self, X, stft, hidden, logits, stage):
        """Returns the method's ``Interpretation`` of a batch."""
        raise NotImplementedError

    def interpreter_loss(self, result, batch, stage):
        """Returns the method's scalar training loss for ``result``."""
        raise NotImplementedError

    # ---- Brain hooks --------------------------------------------------------
    def compute_forward(self, batch, stage):
        """One front-end pass, one gradient-free classifier pass, then the
        method's interpretation. Returns an ``Interpretation``."""
        batch = batch.to(self.device)
        wavs = self.input_wavs(batch, stage)
        X, stft = self.front_end(wavs)
        with torch.no_grad():
            hidden, logits = self.classify(X)
        result = self.interpret(X, stft, hidden, logits, stage)
        result.wav = wavs
        return result

    def input_wavs(self, batch, stage):
        """The clips as interpreted: WHAM!-contaminated in training with
        ``add_wham_noise``, contaminated at test time with
        ``eval_contamination`` (contamination.py), else as loaded."""
        wavs = batch.sig.data
        if stage == sb.Stage.TRAIN and self.hparams.add_wham_noise:
            return mix_at_0db(wavs, self.wham.sample_batch(len(wavs), self.noise_generator))
        if stage == sb.Stage.TEST and self.contamination != "none":
            interferers = batch.interferer_sig.data if self.contamination == "mixtures" else None
            return contaminate(self.contamination, wavs, interferers, self.wham, self.noise_generator)
        return wavs

    def compute_objectives(self, result, batch, stage):
        """The method's loss; in validation and test also accumulates the
        metrics (and, at test, saves interpretations if asked)."""
        loss = self.interpreter_loss(result, batch, stage)
        if stage != sb.Stage.TRAIN:
            labels = batch.label_encoded.data.to(self.device).squeeze(-1)
            self.accumulate_metrics(result, labels)
            if stage == sb.Stage.TEST and self.hparams.save_interpretations:
                self.save_interpretations(result, batch, labels)
        return loss

    def method_metrics(self, result):
        """Extra per-clip figures a method logs beside the shared metrics
        (validation and test): dict name -> [B] tensor. None by default."""
        return {}

    def accumulate_metrics(self, result, labels):
        """Adds the batch's per-clip metrics to the running sums. The masked-in
        and masked-out inputs go through the classifier in one batched pass."""
        with torch.no_grad():
            M, X = result.mask.detach(), result.X.detach()
            _, io_logits = self.classify(torch.cat([M * X, (1 - M) * X]))
            p = F.softmax(result.logits.float(), dim=1)
            p_in, p_out = F.softmax(io_logits.float(), dim=1).chunk(2)
            values = metrics.per_clip_metrics(p, p_in, p_out, M.float(), labels)
            values.update(self.method_metrics(result))
            values["n_clips"] = torch.ones_like(labels)
            values["n_defined_masks"] = (~torch.isnan(values["SPS"])).double()
            for name, value in values.items():
                self.metric_sums[name] = self.metric_sums.get(name, 0.0) + value.detach().double().nansum()

    def on_stage_start(self, stage, epoch=None):
        """Resets the metric sums."""
        self.metric_sums = {}

    def reduce_metrics(self, stage_loss):
        """Sums over processes, then means: returns a dict of plain floats
        (``SPS``/``COMP`` over clips whose mask is not all zero, None if none)."""
        names = sorted(self.metric_sums)
        sums = torch.stack([self.metric_sums[name] for name in names] + [torch.tensor(float(stage_loss)).to(self.device)])
        sums = dict(zip(names + ["loss"], ddp_all_reduce(sums, torch.distributed.ReduceOp.SUM).tolist()))
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        n_clips, n_defined = sums.pop("n_clips"), sums.pop("n_defined_masks")
        stats = {"loss": sums.pop("loss") / world, "n_clips": int(n_clips), "n_empty_masks": int(n_clips - n_defined)}
        for name in list(metrics.HIGHER_IS_BETTER) + sorted(set(sums) - set(metrics.HIGHER_IS_BETTER)):
            total = sums[name]
            denominator = n_defined if name in ("SPS", "COMP") else n_clips
            stats[name] = total / denominator if denominator else None
        return stats

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs; after validation, anneals the learning rate and checkpoints;
        after test, writes ``test_metrics.json``."""
        if stage == sb.Stage.TRAIN:
            self.train_stats = {"loss": stage_loss}
            return
        stats = self.reduce_metrics(stage_loss)
        if stage == sb.Stage.VALID:
            old_lr, _ = self.hparams.lr_annealing([self.optimizer], epoch, 1.0 - stats["fidelity_in"])
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": old_lr},
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            self.checkpointer.save_and_keep_only(meta=stats, min_keys=[self.best_key])
        else:
            self.hparams.train_logger.log_stats(
                stats_meta={"Epoch loaded": self.hparams.epoch_counter.current}, test_stats=stats
            )
            if if_main_process():
                stats["contamination"] = self.contamination
                names = ["test_metrics.json"] + ([f"test_metrics_{self.contamination}.json"] if self.contamination != "none" else [])
                for name in names:
                    path = os.path.join(self.hparams.output_folder, name)
                    write_atomically(path, lambda f: json.dump(stats, f, indent=2))
                    logger.info(f"Test metrics written to {path}")

    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        """Under DDP, validation and test are split across processes (each clip
        evaluated once); their metric sums are then reduced."""
        if stage != sb.Stage.TRAIN and self.distributed_launch:
            world = int(os.environ["WORLD_SIZE"])
            loader_kwargs["sampler"] = list(range(len(dataset)))[self.rank :: world]
        return super().make_dataloader(dataset, stage, ckpt_prefix, **loader_kwargs)

    def _wrap_distributed(self):
        """SpeechBrain converts BatchNorm to SyncBatchNorm before wrapping in
        DDP, and SyncBatchNorm only runs on GPU. On CPU (gloo) the trainable
        modules are wrapped as they are: BatchNorm statistics stay per process."""
        if not (self.distributed_launch and self.device == "cpu"):
            return super()._wrap_distributed()
        for name, module in self.modules.items():
            if any(p.requires_grad for p in module.parameters()):
                self.modules[name] = DDP(module, find_unused_parameters=self.find_unused_parameters)

    # ---- saved interpretations ------------------------------------------------
    def save_interpretations(self, result, batch, labels):
        """Writes, for every clip, ``interpretations/<clip id>/`` (or
        ``interpretations_<contamination>/``) with original.wav (the input as
        interpreted), interpretation.wav (ISTFT of expm1(M*X) with the original
        phase), mask.npy (float32 [T, F]) and spectra.png; for mixtures also
        target.wav and interferer.wav."""
        import plotting  # matplotlib/librosa are imported only when needed

        wavs = result.wav.float().cpu()
        sources = {}
        if self.contamination == "mixtures":
            sources = {"target.wav": batch.sig.data.float().cpu(), "interferer.wav": batch.interferer_sig.data.float().cpu()}
        subfolder = "interpretations" + ("" if self.contamination == "none" else f"_{self.contamination}")
        wavs_int = interpretation_wavs(self.hparams.compute_istft, result.X_int, result.stft, wavs.shape[1]).cpu()
        encoder = self.hparams.label_encoder
        for i, clip_id in enumerate(batch.id):
            plotting.save_clip(
                os.path.join(self.hparams.output_folder, subfolder, clip_id),
                audios={"original.wav": wavs[i], "interpretation.wav": wavs_int[i], **{n: a[i] for n, a in sources.items()}},
                X=result.X[i].detach().float().cpu().numpy(),
                mask=result.mask[i].detach().float().cpu().numpy().astype(np.float32),
                true_class=encoder.ind2lab[int(labels[i])],
                predicted_class=encoder.ind2lab[int(result.class_pred[i])],
                sample_rate=self.hparams.sample_rate,
                hop_length=self.hparams.compute_stft.hop_length,
            )
