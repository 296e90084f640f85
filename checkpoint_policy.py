"""Which end-of-epoch checkpoints the recipe's Brains keep on disk, and the
check that a run folder holds one before ``--test_only`` tests it.

Normal runs keep speechbrain's policy: the new checkpoint is written first,
then every checkpoint but the best (lowest ``min_key``) and the most recent
one is deleted, so a failed write never loses the last good state.

Under ``--debug`` (without ``--debug_persistently``) speechbrain checkpoints
into a temporary folder that is deleted when the run exits: nothing can be
resumed from it, its only use is loading the best checkpoint for the test
stage. There only a new best is written, after the previous best is deleted,
so one checkpoint is on disk at a time. This matters for the big decoders:
an L2I or L-MAC CNN14 checkpoint (237.6 M parameters and their Adam moments)
is 2.8 GB, and keeping best and latest while writing a third needs up to
8.4 GB of temporary disk.

Authors: the ESC-50 interpretability recipe developers.
"""

from speechbrain.utils.logger import get_logger

logger = get_logger(__name__)


def in_temporary_folder(checkpointer):
    """True when speechbrain's ``--debug`` moved ``checkpointer`` to a
    temporary folder that is deleted at exit."""
    return getattr(checkpointer, "tempdir", None) is not None


def save_epoch_checkpoint(checkpointer, meta, min_key):
    """Saves the end-of-epoch checkpoint with ``meta`` (dict of floats) and
    deletes those no longer needed (see the module docstring); the best one is
    the lowest ``meta[min_key]``. Returns whether a checkpoint was written.

    Every process of a DDP run must call it with the same ``meta`` (the
    reduced metrics): the decision is taken from ``meta`` and values kept in
    memory, never from the folder, which only the main process writes."""
    if not in_temporary_folder(checkpointer):
        checkpointer.save_and_keep_only(meta=meta, min_keys=[min_key])
        return True
    best = getattr(checkpointer, "debug_best", float("inf"))
    if not meta[min_key] < best:  # not better (or NaN): the old best stays
        logger.info(
            f"--debug: {min_key} {meta[min_key]:.4g} is not below the best "
            f"{best:.4g}; no checkpoint written (the temporary folder keeps "
            "only the best)"
        )
        return False
    checkpointer.debug_best = meta[min_key]
    checkpointer.delete_checkpoints(num_to_keep=0)
    checkpointer.save_checkpoint(meta=meta)
    return True


def require_checkpoint(checkpointer, min_key):
    """For ``--test_only``: raises a clear error unless ``checkpointer`` holds
    a checkpoint whose meta has ``min_key`` (the key the run selects on)."""
    if checkpointer.find_checkpoint(min_key=min_key) is None:
        raise RuntimeError(
            f"--test_only: no checkpoint with '{min_key}' in "
            f"{checkpointer.checkpoints_dir}. Train first (run without "
            "--test_only), or point --output_folder at the folder of a "
            "finished run."
        )
