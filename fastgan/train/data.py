"""Input pipeline for multi-domain image translation (StarGAN v2 and later families).

Data come from an image folder laid out as ``root/<domain>/*.png|jpg`` (AFHQ, CelebA-HQ) or from a named dataset
of :mod:`fastgan.data` (``digits``, ``emoji``, ``fashion-mnist``, ...; each class is a domain). Images are resized
to the training size, grayscale is repeated to 3 channels and values are mapped to ``[-1, 1]``.

Two loaders feed the trainer, as in the official StarGAN v2 code: a *source* loader of ``(x, y)`` and a *reference*
loader of ``(x_ref, x_ref2, y_ref)`` — two different images of the same domain. Both sample domains in balance
(each image drawn with probability proportional to ``1 / size of its domain``, with replacement, like the official
``_make_balanced_sampler``), so a small domain is seen as often as a big one.

Resumability is built in rather than bolted on. The samplers are pure functions of ``(seed, stream, epoch)``, shard
an epoch across ranks the way ``DistributedSampler`` does (every rank draws the same epoch order, rank ``r`` takes
items ``r, r + world, ...``), and can start mid-epoch; :class:`InfiniteLoader` counts the batches the training loop
has consumed (not what worker processes prefetched), so ``state_dict()`` is the exact position. Items carry no
randomness of their own — the random flip is applied to whole batches in the main process with an explicit
generator (:func:`random_flip`) — so a resumed run sees exactly the batches an uninterrupted one would, whatever
``num_workers`` is. (``torch.utils.data.DistributedSampler`` itself is not used because it can neither weight
domains nor start mid-epoch.)
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .. import data as fdata
from ..data.image_folder import IMAGE_EXTENSIONS

VALUE_RANGE = (-1.0, 1.0)


class DataError(ValueError):
    """The training data cannot be used as given; the message says what to change."""


def _seed_of(*parts: int) -> int:
    # Hash the tuple into one well-mixed 63-bit seed (nearby tuples give unrelated streams).
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


# --- datasets ---------------------------------------------------------------------------------------------------

class DomainImages(torch.utils.data.Dataset):
    """A labelled image set prepared for training: ``ds[i] -> ((3, S, S) float32 in [-1, 1], label)``.

    Args:
        base: a :class:`fastgan.data.LabeledImages` or :class:`fastgan.data.ImageFolder` with values in [-1, 1].
        img_size: output side length ``S`` (images of another size are resized, antialiased bilinear).
    Attributes:
        classes: domain names; labels: ``(N,)`` int64 tensor; img_size: ``S``; name: data source.
    """

    def __init__(self, base, img_size: int, name: str):
        self.base, self.img_size, self.name = base, int(img_size), name
        self.classes = list(base.classes)
        self.labels = torch.as_tensor(base.labels, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y = self.base[int(i)]
        if tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            x = F.interpolate(x[None], size=(self.img_size, self.img_size), mode="bilinear", antialias=True,
                              align_corners=False)[0].clamp(*VALUE_RANGE)
        if x.shape[0] == 1:  # grayscale: the networks take RGB
            x = x.expand(3, -1, -1)
        return x.contiguous(), int(y)


class ReferencePairs(torch.utils.data.Dataset):
    """Pairs of images of one domain: ``ds[i] -> (x_i, x_j, y_i)`` with ``j`` a fixed partner of ``i``.

    The partner is a seeded permutation within each domain (the official code pairs files the same way), so item
    ``i`` is deterministic and a resumed run reads the same pairs.

    Args:
        base: a :class:`DomainImages`.
        seed: seed of the pairing.
    """

    def __init__(self, base: DomainImages, seed: int = 0):
        self.base = base
        self.labels = base.labels
        g = torch.Generator().manual_seed(_seed_of(seed, 7))
        partner = torch.arange(len(base))
        for k in range(len(base.classes)):
            idx = torch.nonzero(base.labels == k).flatten()
            if len(idx) > 1:
                # A derangement would guarantee j != i; a shifted permutation does and stays cheap.
                perm = idx[torch.randperm(len(idx), generator=g)]
                partner[perm] = perm.roll(1)
        self.partner = partner

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y = self.base[int(i)]
        x2, _ = self.base[int(self.partner[int(i)])]
        return x, x2, y


def _folder_sizes(paths: list[str]) -> dict[tuple[int, int], str]:
    """Distinct ``(width, height)`` of image files -> one example path (reads headers only)."""
    try:
        from PIL import Image  # Pillow is needed to read the folder anyway
    except ImportError:
        raise DataError("fastgan: reading image folders needs Pillow: pip install pillow") from None
    sizes: dict[tuple[int, int], str] = {}
    for p in paths:
        with Image.open(p) as im:
            sizes.setdefault(tuple(im.size), p)
    return sizes


def _open_folder(root: str, img_size: int | None) -> DomainImages:
    domains = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not domains:
        raise DataError(f"fastgan: {root!r} has no domain sub-folders; expected {root}/<domain>/*.png|jpg "
                        "(e.g. afhq/train/cat, afhq/train/dog)")
    files = {}
    for d in domains:
        folder = os.path.join(root, d)
        files[d] = [os.path.join(folder, f) for f in sorted(os.listdir(folder))
                    if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, f))]
        if not files[d]:
            raise DataError(f"fastgan: domain folder {folder!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    if len(domains) < 2:
        raise DataError(f"fastgan: {root!r} has only one domain ({domains[0]!r}); image translation needs at "
                        "least 2 domain sub-folders")
    if img_size is None:
        sizes = _folder_sizes([p for d in domains for p in files[d]])
        if len(sizes) > 1:
            (a, pa), (b, pb) = list(sizes.items())[:2]
            raise DataError(f"fastgan: images differ in size ({pa} is {a[0]}x{a[1]}, {pb} is {b[0]}x{b[1]}); "
                            "pass --img-size to resize them all")
        (w, h), path = next(iter(sizes.items()))
        if w != h:
            raise DataError(f"fastgan: images are not square ({path} is {w}x{h}); pass --img-size to resize "
                            "and center-crop them")
        img_size = w
    try:
        base = fdata.ImageFolder(root, resolution=img_size, crop="center", mode="RGB", value_range=VALUE_RANGE)
    except fdata.DatasetMissingError as e:  # Pillow missing
        raise DataError(str(e)) from e
    return DomainImages(base, img_size, name=os.path.abspath(root))


def open_domains(spec: str, img_size: int | None = None) -> DomainImages:
    """Open training data by folder path or dataset name.

    Args:
        spec: ``root`` with ``root/<domain>/*.png|jpg``, or a :mod:`fastgan.data` name (``"digits"``,
            ``"fashion-mnist:train"``); an existing path wins over a name.
        img_size: training side length; None keeps the native size (images must then all be square and equal).
    Returns:
        :class:`DomainImages`.
    Raises:
        DataError: missing folder/unknown name, empty domain, fewer than 2 domains, unequal sizes, package missing.
    """
    if img_size is not None and int(img_size) < 1:
        raise DataError(f"fastgan: --img-size must be positive, got {img_size}")
    if os.path.isdir(spec):
        return _open_folder(spec, img_size)
    if os.path.exists(spec):
        raise DataError(f"fastgan: --data {spec!r} is a file; expected a folder root/<domain>/*.png or a dataset "
                        f"name ({', '.join(fdata.DATASETS)})")
    try:
        base = fdata.load_dataset(spec, value_range=VALUE_RANGE)
    except fdata.UnknownDatasetError:
        if os.sep in spec or "/" in spec or spec.startswith("."):  # meant as a path
            raise DataError(f"fastgan: data directory {spec!r} does not exist (expected root/<domain>/*.png|jpg, "
                            f"or a dataset name: {', '.join(fdata.DATASETS)})") from None
        raise DataError(f"fastgan: --data {spec!r} is neither an existing folder nor a known dataset name "
                        f"(known: {', '.join(fdata.DATASETS)})") from None
    except fdata.DatasetMissingError as e:
        raise DataError(str(e)) from e
    if len(base.classes) < 2:
        raise DataError(f"fastgan: dataset {spec!r} has only one class; image translation needs >= 2 domains")
    return DomainImages(base, img_size or base.resolution[0], name=spec)


# --- sampling ---------------------------------------------------------------------------------------------------

class BalancedSampler(torch.utils.data.Sampler):
    """Domain-balanced sampling with replacement, sharded across ranks, resumable mid-epoch.

    Each epoch draws ``ceil(N / world) * world`` indices with probability ``1 / count(domain)`` per image from a
    generator seeded by ``(seed, stream, epoch)`` (identical on every rank) and yields this rank's share, starting
    at ``offset``.

    Args:
        labels: ``(N,)`` domain labels.
        seed, stream: seed of the run and an id telling the source and reference streams apart.
        rank, world_size: this process's share.
    """

    def __init__(self, labels: torch.Tensor, seed: int = 0, stream: int = 0, rank: int = 0, world_size: int = 1):
        counts = torch.bincount(labels).double()
        self.weights = (1.0 / counts.clamp(min=1))[labels]
        self.seed, self.stream, self.rank, self.world = int(seed), int(stream), int(rank), int(world_size)
        self.per_rank = -(-len(labels) // self.world)
        self.epoch, self.offset = 0, 0

    def set_position(self, epoch: int, offset: int) -> None:
        """Start the next iteration at item ``offset`` of ``epoch`` (this rank's share)."""
        self.epoch, self.offset = int(epoch), int(offset)

    def __len__(self) -> int:
        return self.per_rank - self.offset

    def __iter__(self):
        g = torch.Generator().manual_seed(_seed_of(self.seed, self.stream, self.epoch))
        idx = torch.multinomial(self.weights, self.per_rank * self.world, replacement=True, generator=g)
        return iter(idx[self.rank::self.world][self.offset:].tolist())


class InfiniteLoader:
    """Endless batches from a dataset with a :class:`BalancedSampler`, with an exact, restorable position.

    Args:
        dataset: map-style dataset.
        sampler: its :class:`BalancedSampler`.
        batch_size: per-rank batch size (incomplete batches at epoch ends are dropped, as in the official code).
        num_workers: DataLoader workers (kept alive across epochs).
        pin_memory: pin batches for faster host-to-GPU copies.
    """

    def __init__(self, dataset, sampler: BalancedSampler, batch_size: int, num_workers: int = 0,
                 pin_memory: bool = False):
        if sampler.per_rank < batch_size:
            raise DataError(f"fastgan: {len(dataset)} images are fewer than one batch ({batch_size} per process x "
                            f"{sampler.world} processes); lower --batch")
        self.sampler, self.batch_size = sampler, int(batch_size)
        self.batches_per_epoch = sampler.per_rank // self.batch_size
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True,
                                                  num_workers=num_workers, persistent_workers=num_workers > 0,
                                                  pin_memory=pin_memory)
        self.epoch, self.batch = 0, 0
        self._it = None

    def state_dict(self) -> dict:
        """Position after the batches consumed so far: ``{"epoch", "batch"}``."""
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a position returned by :meth:`state_dict`."""
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self._it = None

    def _restart(self) -> None:
        # The sampler is iterated in the main process, so moving it here positions the workers too.
        self.sampler.set_position(self.epoch, self.batch * self.batch_size)
        self._it = iter(self.loader)

    def __iter__(self):
        return self

    def __next__(self):
        if self._it is None or self.batch >= self.batches_per_epoch:
            if self.batch >= self.batches_per_epoch:
                self.epoch, self.batch = self.epoch + 1, 0
            self._restart()
        out = next(self._it)
        self.batch += 1
        return out


def random_flip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Flip each image of ``(N, C, H, W)`` horizontally with probability ``p`` (draws from ``generator``, on CPU)."""
    flip = (torch.rand(x.shape[0], generator=generator) < p).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


@dataclass
class TrainData:
    """What :func:`build_loaders` returns: the dataset, both loaders and the facts the model needs."""
    dataset: DomainImages
    source: InfiniteLoader
    reference: InfiniteLoader

    @property
    def classes(self) -> list[str]:
        return self.dataset.classes

    @property
    def img_size(self) -> int:
        return self.dataset.img_size

    def state_dict(self) -> dict:
        return {"source": self.source.state_dict(), "reference": self.reference.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.source.load_state_dict(state["source"])
        self.reference.load_state_dict(state["reference"])


def build_loaders(spec: str, img_size: int | None, batch_size: int, seed: int = 0, rank: int = 0,
                  world_size: int = 1, num_workers: int = 0, pin_memory: bool = False) -> TrainData:
    """Open the data and make the source and reference loaders.

    Args:
        spec: folder or dataset name (see :func:`open_domains`).
        img_size: training size (None: native).
        batch_size: per-process batch size.
        seed: run seed (sampling order and reference pairing).
        rank, world_size: distributed position (1 process: 0, 1).
        num_workers: DataLoader workers per loader.
        pin_memory: pin host memory (CUDA).
    Returns:
        :class:`TrainData`.
    """
    if batch_size < 1:
        raise DataError(f"fastgan: --batch must be >= 1, got {batch_size}")
    ds = open_domains(spec, img_size)
    src = InfiniteLoader(ds, BalancedSampler(ds.labels, seed, 0, rank, world_size), batch_size, num_workers,
                         pin_memory)
    ref = InfiniteLoader(ReferencePairs(ds, seed), BalancedSampler(ds.labels, seed, 1, rank, world_size), batch_size,
                         num_workers, pin_memory)
    return TrainData(ds, src, ref)


def fixed_examples(dataset: DomainImages, per_domain: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, seeded pick of ``per_domain`` images from every domain (for sample grids): ``(x, y)``."""
    g = torch.Generator().manual_seed(_seed_of(seed, 11))
    xs, ys = [], []
    for k in range(len(dataset.classes)):
        idx = torch.nonzero(dataset.labels == k).flatten()
        for i in idx[torch.randperm(len(idx), generator=g)[:per_domain]].tolist():
            x, y = dataset[i]
            xs.append(x)
            ys.append(y)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)
