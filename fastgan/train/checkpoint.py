"""Training checkpoints: atomic writes, loading, finding the latest in a run directory, keeping the last k.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python values (dicts, lists, numbers,
strings), so it loads with ``torch.load(weights_only=True)`` — no pickled code runs when a file from elsewhere is
opened. The trainer decides the content; the convention used by :mod:`fastgan.train.stargan_v2` is::

    {"format": "fastgan-checkpoint", "version": 1, "family": "stargan-v2", "step": <completed steps>,
     "config": <model config dict>, "nets": {...}, "nets_ema": {...}, "optims": {...},
     "rng": <rng_state()>, "data": <loader positions>, "meta": {...}}

Files are named ``ckpt_<step:08d>.pt`` inside ``<run dir>/checkpoints``. A write goes to a temporary file in the same
directory, is flushed and fsync'ed, then renamed over the final name with ``os.replace`` (atomic on POSIX and
Windows), and the directory is fsync'ed so the rename itself survives a power cut. A run killed mid-write therefore
leaves either the previous checkpoint or the new one, never a truncated file under a checkpoint name; stale
temporary files (``.tmp-*``) are ignored by :func:`find_latest` and removed by :func:`prune`.
"""
from __future__ import annotations

import os
import random
import re
import tempfile

import numpy as np
import torch

FORMAT = "fastgan-checkpoint"
DDPM_FORMAT = "fastgan-ddpm-v1"  # fastgan.diffusion.train_cli.FORMAT: one file, RUN_DIR/checkpoint.pt
DDPM_FILENAME = "checkpoint.pt"
VERSION = 1
CKPT_DIRNAME = "checkpoints"
_NAME_RE = re.compile(r"^ckpt_(\d+)\.pt$")


class CheckpointError(ValueError):
    """A file is not a readable fastgan checkpoint, or a run directory holds none."""


def checkpoint_dir(run_dir: str) -> str:
    """The folder holding a run's checkpoints: ``<run_dir>/checkpoints``."""
    return os.path.join(run_dir, CKPT_DIRNAME)


def checkpoint_path(run_dir: str, step: int) -> str:
    """Path of the checkpoint of ``step`` in ``run_dir``."""
    return os.path.join(checkpoint_dir(run_dir), f"ckpt_{int(step):08d}.pt")


def _fsync_dir(path: str) -> None:
    # Makes the rename durable; not possible on every platform/file system (e.g. Windows), where it is skipped.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj, path: str) -> str:
    """``torch.save(obj)`` to ``path`` atomically: temp file in the same directory, fsync, ``os.replace``.

    Args:
        obj: anything ``torch.save`` accepts (keep to tensors and plain values for ``weights_only`` loading).
        path: final file name; its directory is created.
    Returns:
        ``path``.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # Same directory as the target: os.replace is only atomic within one file system.
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Includes KeyboardInterrupt: never leave the half-written temp file behind.
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(folder)
    return path


def read_checkpoint(path: str, map_location="cpu") -> dict:
    """Read any fastgan checkpoint file as a dict (``weights_only``), without checking which kind it is.

    :func:`load_checkpoint` adds the check; readers that accept several kinds (``fastgan eval --fake``, which also
    takes ``fastgan train ddpm``'s files) dispatch on the dict's ``format``.

    Raises:
        CheckpointError: missing or unreadable file, or not a dict.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"fastgan: checkpoint {path!r} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated file, another program's pickle, ...: one clear message
        first = (str(e).strip().splitlines() or [""])[0]  # weights_only errors run to a dozen lines
        raise CheckpointError(f"fastgan: cannot read checkpoint {path!r}: {type(e).__name__}: {first}") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"fastgan: {path!r} is not a fastgan training checkpoint (not a dict)")
    return ckpt


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only`` loading: no code is unpickled).

    Args:
        path: the ``.pt`` file.
        map_location: where tensors go (default CPU; the trainer moves them).
    Returns:
        The checkpoint dict.
    Raises:
        CheckpointError: missing file, unreadable file, or not a fastgan checkpoint.
    """
    return check_checkpoint(read_checkpoint(path, map_location), path)


def check_checkpoint(ckpt: dict, path: str) -> dict:
    """``ckpt`` (from :func:`read_checkpoint`) if it is of this module's format and a version this fastgan reads,
    else a :class:`CheckpointError` naming ``path``."""
    if ckpt.get("format") == DDPM_FORMAT:
        raise CheckpointError(f"fastgan: {path!r} is a `fastgan train ddpm` checkpoint, not a {FORMAT!r} one "
                              "(stargan-v2); use it with `fastgan sample ddpm` or `fastgan eval --fake`")
    if ckpt.get("format") != FORMAT:
        raise CheckpointError(f"fastgan: {path!r} is not a fastgan training checkpoint "
                              f"(no format={FORMAT!r} entry)")
    if int(ckpt.get("version", 0)) > VERSION:
        raise CheckpointError(f"fastgan: {path!r} has checkpoint version {ckpt['version']}; this fastgan reads "
                              f"up to {VERSION} (upgrade fastgan)")
    return ckpt


def list_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """``(step, path)`` of every complete checkpoint in ``run_dir``, oldest first (temp files excluded)."""
    folder = checkpoint_dir(run_dir)
    if not os.path.isdir(folder):
        return []
    found = []
    for name in os.listdir(folder):
        m = _NAME_RE.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(folder, name)))
    return sorted(found)


def find_latest(run_dir: str) -> str | None:
    """Path of the checkpoint with the highest step in ``run_dir``, or None when there is none."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def prune(run_dir: str, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` checkpoints (``keep <= 0`` keeps all) and stale temp files.

    Returns:
        The deleted paths.
    """
    removed = []
    folder = checkpoint_dir(run_dir)
    if os.path.isdir(folder):
        # Temp files are leftovers of a killed write (a live write belongs to this process, which is not writing).
        for name in os.listdir(folder):
            if name.startswith(".tmp-"):
                os.remove(os.path.join(folder, name))
                removed.append(os.path.join(folder, name))
    if keep > 0:
        for _, path in list_checkpoints(run_dir)[:-keep]:
            os.remove(path)
            removed.append(path)
    return removed


def save_checkpoint(run_dir: str, step: int, state: dict, keep: int = 0) -> str:
    """Write ``state`` as the checkpoint of ``step`` (atomically), then keep only the last ``keep``.

    Args:
        run_dir: the run directory (checkpoints go to ``run_dir/checkpoints``).
        step: completed training steps; also stored as ``state["step"]``.
        state: the trainer's state (see the module doc); ``format``/``version`` are added.
        keep: checkpoints to keep (0: all).
    Returns:
        The path written.
    """
    state = dict(state, format=FORMAT, version=VERSION, step=int(step))
    path = atomic_save(state, checkpoint_path(run_dir, step))
    prune(run_dir, keep)
    return path


# --- RNG state -------------------------------------------------------------------------------------------------

def rng_state() -> dict:
    """Python, NumPy, torch CPU (and CUDA when initialised) RNG states as ``weights_only``-loadable values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only when the device count matches)."""
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        s = state["numpy"]
        keys = s["keys"].numpy().astype(np.uint32)
        np.random.set_state((s["kind"], keys, s["pos"], s["has_gauss"], s["cached_gaussian"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
