"""``fastgan.train``: training and sampling machinery shared by the model families.

* :mod:`~fastgan.train.checkpoint`: atomic checkpoint files, latest/keep-last-k in a run directory, RNG states.
* :mod:`~fastgan.train.data`: domain-labelled image data (folders or named datasets), balanced, resumable,
  rank-sharded loaders.
* :mod:`~fastgan.train.distributed`: ``torchrun`` set-up and gradient averaging.
* :mod:`~fastgan.train.stargan_v2`: ``fastgan train/sample stargan-v2`` (loop in ``stargan_v2_loop``, step in
  ``stargan_v2_trainer``); :mod:`~fastgan.train.generate`: translations from checkpoints (also ``fastgan eval
  --fake CKPT``).
* :mod:`~fastgan.train.cli`: the ``fastgan train`` / ``fastgan sample`` dispatch over :data:`FAMILIES`.

Nothing heavy is imported here; the model modules load when a trainer or sampler is built.
"""
from .checkpoint import (CheckpointError, atomic_save, find_latest, list_checkpoints, load_checkpoint, prune,
                         save_checkpoint)
from .cli import FAMILIES

__all__ = ["CheckpointError", "FAMILIES", "atomic_save", "find_latest", "list_checkpoints", "load_checkpoint",
           "prune", "save_checkpoint"]
