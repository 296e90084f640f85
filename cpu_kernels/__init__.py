"""Optional CPU speed-ups of the interpreters' transposed-convolution
decoders (psi of PIQ, L2I and L-MAC), part of no method (``README.md`` here):

* ``fast_convt``: faster CPU kernels for psi's transposed convolutions;
* ``chunked_decoder``: psi's last full-resolution block a few clips at a
  time, and ``speed_up``, which gives a module both;
* ``folded_batchnorm``: that block's BatchNorm folded into the last
  convolution.

``speed_up_if_cpu`` applies them where they were made for: on a CPU, in
fp32 (on CUDA psi keeps speechbrain's layers, so cuDNN's kernels).

Authors: the ESC-50 interpretability recipe developers.
"""

import torch
from speechbrain.utils.logger import get_logger

from cpu_kernels.chunked_decoder import speed_up

__all__ = ["applies", "speed_up", "speed_up_if_cpu"]
logger = get_logger(__name__)


def applies(device, precision, eval_precision):
    """Whether the CPU kernels are for a Brain on ``device`` (``"cpu"``,
    ``"cuda:0"``, a ``torch.device``) that trains in ``precision`` and
    evaluates in ``eval_precision`` (``"fp32"``, ``"fp16"``, ``"bf16"``):
    on a CPU, both in fp32."""
    on_cpu = torch.device(device).type == "cpu"
    return on_cpu and precision == eval_precision == "fp32"


def speed_up_if_cpu(module, piece, device, precision, eval_precision):
    """``speed_up(module, piece)`` when the kernels apply (``applies``);
    otherwise ``module`` keeps speechbrain's layers, which is logged (at
    info level on a CPU, where only the precision rules them out). Returns
    ``module``."""
    if applies(device, precision, eval_precision):
        return speed_up(module, piece)
    if torch.device(device).type == "cpu":
        logger.info(
            f"fast_decoder: speechbrain's decoder layers, the CPU kernels "
            f"are fp32 only (--precision={precision}, "
            f"--eval_precision={eval_precision})"
        )
    else:
        logger.debug(f"fast_decoder: speechbrain's decoder layers on {device}")
    return module
