"""``python -m fastgan eval``: FID and KID between two image sets, offline.

Examples::

    python -m fastgan eval --real mnist --fake samples/ --n 10000
    python -m fastgan eval --real mnist:train --fake mnist:test --n 2000 --dtype fp16
    python -m fastgan eval --real data/celeba/ --fake out/ --resolution 64 --json

``--real``/``--fake`` take a dataset name (``NAME`` or ``NAME:SPLIT``, see ``fastgan.data``), an image folder
(``DIR/*.png`` or ``DIR/<domain>/*.png``), or (``--real`` only) a statistics ``.npz``. ``--fake`` may also be a
checkpoint written by ``fastgan train`` (or its run directory): ``--n`` images (default 10,000) are generated from
it (:func:`fastgan.train.generate.open_generator`; StarGAN v2: latent-guided translations of the run's training
images, else of ``--real``'s, into random other domains; DDPM: DDIM samples, ``--sample-steps``, default 50). The
checkpoint is opened and the options are checked before any feature is extracted. Reference statistics of named
datasets are cached (``$FASTGAN_CACHE_DIR`` or ``~/.cache/fastgan``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .. import data as fdata
from .features import CHECKPOINT_SUFFIXES, CheckpointNotSupported, ProgressBar, open_source
from .inception import InceptionWeightsMissing, default_device, resolve_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``eval`` options on ``parser`` (an argparse sub-parser)."""
    parser.description = "Compute FID and KID between real and generated images (no network access)."
    parser.add_argument("--real", required=True, metavar="DIR|NAME|NPZ",
                        help=f"reference images: folder, dataset name[:split] ({', '.join(fdata.DATASETS)}) "
                             "or a statistics .npz")
    parser.add_argument("--fake", required=True, metavar="DIR|NAME|CKPT",
                        help="images to score: folder, dataset name[:split], or a checkpoint / run dir of `fastgan "
                             "train stargan-v2` or `fastgan train ddpm` (generates --n images, default 10000, "
                             "with the EMA weights)")
    parser.add_argument("--n", type=int, default=None, metavar="N",
                        help="use at most N images per side, N >= 2 (default: all; named datasets draw a seeded "
                             "subset)")
    parser.add_argument("--sample-steps", type=int, default=None, metavar="S",
                        help="--fake DDPM checkpoint: DDIM steps per image (default 50, at most the model's T)")
    parser.add_argument("--resolution", type=int, default=None, metavar="R",
                        help="resize both sides to RxR first (match the model's training size)")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"],
                        help="Inception precision (fp16/bf16 for GPU speed; fp32 is the reference)")
    parser.add_argument("--kid-subsets", type=int, default=100)
    parser.add_argument("--kid-subset-size", type=int, default=1000)
    parser.add_argument("--no-kid", action="store_true", help="FID only")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write cached reference stats")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for image folders")
    parser.add_argument("--seed", type=int, default=0, help="seed of KID subsets and feature sampling")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


# Option -> smallest value. FID needs a covariance (2 images per side); KID's unbiased MMD needs 2 per subset.
_MINIMA = {"n": 2, "resolution": 1, "batch_size": 1, "kid_subsets": 0, "kid_subset_size": 2, "workers": 0,
           "sample_steps": 1}


def _is_checkpoint(spec: str) -> bool:
    from ..train.generate import is_run_checkpoint
    return is_run_checkpoint(spec) or (os.path.isfile(spec) and spec.lower().endswith(CHECKPOINT_SUFFIXES))


def _check(args) -> None:
    """Reject bad options and sources before anything slow runs (ValueError/FileNotFoundError: the message)."""
    for name, low in _MINIMA.items():
        value = getattr(args, name)
        if value is not None and value < low:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    resolve_device(args.device)
    if args.fake.endswith(".npz"):
        raise ValueError("--fake must be images (a folder, a dataset name or a checkpoint), not statistics")
    if _is_checkpoint(args.real):
        raise ValueError(f"--real {args.real}: a model checkpoint or run directory; --real takes images (a "
                         "dataset name, an image folder or a statistics .npz), only --fake takes a checkpoint")
    if args.sample_steps is not None and not _is_checkpoint(args.fake):
        raise ValueError("--sample-steps applies to a --fake DDPM checkpoint only")
    for role, spec in (("real", args.real), ("fake", args.fake)):
        if not (os.path.exists(spec) or fdata.is_dataset_name(spec)):
            open_source(spec)  # raises its message: neither a folder nor a dataset name


def _side(spec: str, role: str, args, scoring, generator=None):
    """Statistics of one side; dataset names go through the reference-stats cache."""
    kid_on = not args.no_kid and args.kid_subsets > 0
    max_features = max(scoring.DEFAULT_MAX_FEATURES, args.kid_subset_size) if kid_on else 0
    progress = None if args.quiet else ProgressBar(role)
    common = dict(device=args.device, dtype=args.dtype, batch_size=args.batch_size, max_features=max_features,
                  progress=progress)
    if spec.endswith(".npz"):
        return scoring.compute_stats(spec)
    if generator is not None:
        # A trained model (checkpoint file or run dir): generate --n images (default 10,000) and score those.
        from ..train.generate import checkpoint_stats
        stats = checkpoint_stats(spec, n=args.n, seed=args.seed, resolution=args.resolution, generator=generator,
                                 **common)
        if progress is not None:
            progress.close()
        return stats
    if fdata.is_dataset_name(spec):
        stats = scoring.reference_stats(spec, resolution=args.resolution, n=args.n,
                                             use_cache=not args.no_cache, **common)
    else:
        stats = scoring.compute_stats(spec, n=args.n, resolution=args.resolution, seed=args.seed,
                                           num_workers=args.workers, label=role, **common)
    if progress is not None:
        progress.close()
    return stats


def run(args: argparse.Namespace) -> int:
    """Run ``fastgan eval``; prints FID and KID. Returns the exit code (0 ok, 2 bad input or missing package)."""
    from . import scoring  # deferred: argument parsing and --help stay fast
    from ..train.checkpoint import CheckpointError

    def fail(e: BaseException) -> int:
        print("fastgan eval: " + str(e).strip("'\"").removeprefix("fastgan: "), file=sys.stderr)
        return 2

    try:
        _check(args)
        generator = None
        if _is_checkpoint(args.fake):
            # Opened before the real side is extracted, so a bad checkpoint fails in seconds, not after minutes.
            from ..train.generate import open_generator
            generator = open_generator(args.fake, real_spec=args.real, seed=args.seed, device=args.device,
                                       sample_steps=args.sample_steps)
    except (ValueError, FileNotFoundError, CheckpointError, fdata.DatasetMissingError) as e:
        return fail(e)
    try:
        real = _side(args.real, "real", args, scoring)
        fake = _side(args.fake, "fake", args, scoring, generator)
    except (InceptionWeightsMissing, CheckpointNotSupported, CheckpointError, fdata.DatasetMissingError,
            FileNotFoundError, KeyError) as e:
        return fail(e)
    try:
        fid = scoring.fid_from_stats(real, fake)
    except ValueError as e:  # a folder of one image: no covariance
        return fail(ValueError(f"{str(e).removeprefix('fastgan: ')}; FID needs at least 2 images per side"))
    out = {"real": args.real, "fake": args.fake, "n_real": real.n, "n_fake": fake.n,
           "fid": fid, "kid_mean": None, "kid_std": None,
           "device": str(args.device or default_device()), "dtype": args.dtype}
    if not args.no_kid and args.kid_subsets > 0:
        try:
            out["kid_mean"], out["kid_std"] = scoring.kid_from_stats(real, fake, args.kid_subsets,
                                                                          args.kid_subset_size, args.seed)
        except ValueError as e:  # e.g. a pytorch-fid .npz holds no raw features
            print(f"KID skipped: {e}", file=sys.stderr)
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"real: {args.real} ({real.n} images)   fake: {args.fake} ({fake.n} images)")
    print(f"FID  {out['fid']:.4f}")
    if out["kid_mean"] is not None:
        size = min(args.kid_subset_size, real.features.shape[0], fake.features.shape[0])
        print(f"KID  {out['kid_mean']:.6f} +- {out['kid_std']:.6f}  ({args.kid_subsets} subsets of {size})")
    return 0
