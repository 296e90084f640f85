"""Multi-process (DDP) evaluation for a ``speechbrain.Brain``.

Under ``torchrun``, speechbrain trains on every process but validates and
tests every clip on every process. ``ShardedEvaluation`` splits validation
and test across processes instead (each clip evaluated once), and
``sum_over_processes`` adds up what each process accumulated, so metrics are
computed over the whole split. Without DDP both do nothing special.

Authors: the ESC-50 interpretability recipe developers.
"""

import os

import speechbrain as sb
import torch
from speechbrain.utils.distributed import ddp_all_reduce
from torch.nn.parallel import DistributedDataParallel as DDP


class ShardedEvaluation:
    """Mixin, placed before ``sb.Brain``: validation and test sharded across
    processes; on CPU (gloo), DDP without SyncBatchNorm."""

    def make_dataloader(
        self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs
    ):
        """Under DDP, process r of W evaluates clips r, r + W, r + 2W, ..."""
        if stage != sb.Stage.TRAIN and self.distributed_launch:
            world = int(os.environ["WORLD_SIZE"])
            clips = list(range(len(dataset)))
            loader_kwargs["sampler"] = clips[self.rank :: world]
        return super().make_dataloader(
            dataset, stage, ckpt_prefix, **loader_kwargs
        )

    def _wrap_distributed(self):
        """SpeechBrain converts BatchNorm to SyncBatchNorm before wrapping in
        DDP, and SyncBatchNorm only runs on GPU. On CPU (gloo) the trainable
        modules are wrapped as they are: BatchNorm statistics stay per
        process."""
        if not (self.distributed_launch and self.device == "cpu"):
            return super()._wrap_distributed()
        for name, module in self.modules.items():
            if any(p.requires_grad for p in module.parameters()):
                self.modules[name] = DDP(
                    module, find_unused_parameters=self.find_unused_parameters
                )


def world_size():
    """Number of processes (1 without DDP)."""
    if torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def sum_over_processes(values, device):
    """name -> scalar (tensor or number) summed over all processes.

    Every value is put on ``device`` (the Brain's: NCCL reduces CUDA tensors
    only) before they are stacked, whatever device it was computed on.

    Returns
    -------
    dict
        name -> float, the sum over processes (the value itself without DDP).
    """
    names = sorted(values)
    stacked = torch.stack(
        [
            torch.as_tensor(values[n], dtype=torch.float64, device=device)
            for n in names
        ]
    )
    total = ddp_all_reduce(stacked, torch.distributed.ReduceOp.SUM)
    return dict(zip(names, total.tolist()))
