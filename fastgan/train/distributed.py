"""Data-parallel training helpers: process-group set-up from ``torchrun``'s environment, gradient averaging,
weight broadcast and an end-of-run check that every rank holds the same weights.

Why gradients are averaged by hand instead of wrapping the networks in ``DistributedDataParallel``: a StarGAN v2
iteration calls the same network several times before one ``backward`` (the discriminator on real and fake images,
the generator for the translation and the cycle, the style encoder twice), and the discriminator loss contains an R1
penalty, a double backward through the discriminator. DDP's reducer expects one forward per backward and marks each
parameter ready once; several forwards need ``static_graph`` tricks that depend on the torch version, and double
backward through DDP's hooks is not supported in all versions. Averaging the gradients with one ``all_reduce`` per
bucket after ``backward`` (:func:`all_reduce_grads`) is what DDP computes, works with any graph, and costs the same
communication — only without DDP's overlap of communication with the backward pass.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

BUCKET_ELEMENTS = 1 << 24  # 64 MB of float32 per all_reduce: bounds the temporary flat buffer


@dataclass
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, its ``device``, and whether a group is live."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str | None = None) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1), else run single-process.

    Args:
        device: "cpu", "cuda" or "cuda:K" (default: CUDA when available). Under torchrun, CUDA means
            ``cuda:LOCAL_RANK`` and the NCCL backend; CPU uses gloo.
    Returns:
        :class:`DistInfo`.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    from ..metrics.inception import resolve_device
    dev = resolve_device(device)  # ValueError naming --device: not a device, or no CUDA here
    if world <= 1:
        return DistInfo(device=dev)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)  # one GPU per process
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", init_method="env://")
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev, enabled=True)


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op single-process)."""
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo, ok: bool = True) -> None:
    """Barrier, then leave the process group (so no rank exits while another still talks to it).

    Args:
        info: from :func:`setup`.
        ok: False after an error: skip the barrier, which ranks that did not fail might never reach.
    """
    if info.enabled and dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_grads(modules, info: DistInfo) -> None:
    """Average the gradients of ``modules``' parameters over all ranks (DDP's arithmetic, done after backward).

    Parameters whose ``.grad`` is None are skipped; every rank runs the same code, so the set is the same everywhere
    and a skipped parameter stays "no gradient" for the optimiser, exactly as in a single-process run.
    """
    if not info.enabled:
        return
    grads = [p.grad for m in modules for p in m.parameters() if p.grad is not None]
    bucket: list[torch.Tensor] = []
    size = 0
    for g in grads + [None]:
        if g is not None:
            bucket.append(g)
            size += g.numel()
        if bucket and (g is None or size >= BUCKET_ELEMENTS):
            flat = torch.cat([t.reshape(-1) for t in bucket])
            dist.all_reduce(flat)
            flat.div_(info.world_size)
            offset = 0
            for t in bucket:
                t.copy_(flat[offset: offset + t.numel()].view_as(t))
                offset += t.numel()
            bucket, size = [], 0


def broadcast_modules(modules, info: DistInfo, src: int = 0) -> None:
    """Copy parameters and buffers of ``modules`` from rank ``src`` to all ranks (start in sync)."""
    if not info.enabled:
        return
    with torch.no_grad():
        for m in modules:
            for t in list(m.parameters()) + list(m.buffers()):
                dist.broadcast(t.data, src)


def weights_digest(modules) -> str:
    """SHA-256 of the exact bytes of every parameter and buffer (equal digests = bitwise-equal weights)."""
    h = hashlib.sha256()
    for m in modules:
        for name, t in list(m.named_parameters()) + list(m.named_buffers()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def gather_digests(modules, info: DistInfo) -> list[str]:
    """Every rank's :func:`weights_digest` (a one-element list single-process)."""
    mine = weights_digest(modules)
    if not info.enabled:
        return [mine]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, mine)
    return out


def all_gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj`` (picklable), in rank order."""
    if not info.enabled:
        return [obj]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
