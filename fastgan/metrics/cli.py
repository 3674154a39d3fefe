"""``python -m fastgan eval``: FID and KID between two image sets, offline.

Examples::

    python -m fastgan eval --real mnist --fake samples/ --n 10000
    python -m fastgan eval --real mnist:train --fake mnist:test --n 2000 --dtype fp16
    python -m fastgan eval --real data/celeba/ --fake out/ --resolution 64 --json

``--real``/``--fake`` take a dataset name (``NAME`` or ``NAME:SPLIT``, see ``fastgan.data``), an image folder
(``DIR/*.png`` or ``DIR/<domain>/*.png``), or (``--real`` only) a statistics ``.npz``. ``--fake`` may also be a
checkpoint written by ``fastgan train`` (or its run directory): ``--n`` images are generated from it
(:mod:`fastgan.train.generate`; StarGAN v2: latent-guided translations of the run's training images, else of
``--real``'s, into random other domains). Reference statistics of named
datasets are cached (``$FASTGAN_CACHE_DIR`` or ``~/.cache/fastgan``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .. import data as fdata
from .features import CHECKPOINT_SUFFIXES, CheckpointNotSupported, ProgressBar
from .inception import InceptionWeightsMissing, default_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``eval`` options on ``parser`` (an argparse sub-parser)."""
    parser.description = "Compute FID and KID between real and generated images (no network access)."
    parser.add_argument("--real", required=True, metavar="DIR|NAME|NPZ",
                        help=f"reference images: folder, dataset name[:split] ({', '.join(fdata.DATASETS)}) "
                             "or a statistics .npz")
    parser.add_argument("--fake", required=True, metavar="DIR|NAME|CKPT",
                        help="images to score: folder, dataset name[:split], or a fastgan training checkpoint / run "
                             "dir (generates --n images, default 10000, from its EMA networks)")
    parser.add_argument("--n", type=int, default=None, metavar="N",
                        help="use at most N images per side (default: all; named datasets draw a seeded subset)")
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


def _side(spec: str, role: str, args, scoring):
    """Statistics of one side; dataset names go through the reference-stats cache."""
    kid_on = not args.no_kid and args.kid_subsets > 0
    max_features = max(scoring.DEFAULT_MAX_FEATURES, args.kid_subset_size) if kid_on else 0
    progress = None if args.quiet else ProgressBar(role)
    common = dict(device=args.device, dtype=args.dtype, batch_size=args.batch_size, max_features=max_features,
                  progress=progress)
    if spec.endswith(".npz"):
        return scoring.compute_stats(spec)
    if role == "fake" and (os.path.isdir(os.path.join(spec, "checkpoints")) or
                           (os.path.isfile(spec) and spec.lower().endswith(CHECKPOINT_SUFFIXES))):
        # A trained model (checkpoint file or run dir): generate --n images (default 10,000) and score those.
        from ..train.checkpoint import CheckpointError
        from ..train.generate import checkpoint_stats
        try:
            stats = checkpoint_stats(spec, n=args.n, real_spec=args.real, seed=args.seed,
                                     resolution=args.resolution, **common)
        except CheckpointError as e:
            raise CheckpointNotSupported(str(e)) from e
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

    if args.fake.endswith(".npz"):
        print("fastgan eval: --fake must be images (a folder or dataset name), not statistics", file=sys.stderr)
        return 2
    try:
        real = _side(args.real, "real", args, scoring)
        fake = _side(args.fake, "fake", args, scoring)
    except (InceptionWeightsMissing, CheckpointNotSupported, fdata.DatasetMissingError) as e:
        print(str(e), file=sys.stderr)
        return 2
    except (FileNotFoundError, KeyError) as e:
        print(str(e).strip("'\""), file=sys.stderr)
        return 2
    out = {"real": args.real, "fake": args.fake, "n_real": real.n, "n_fake": fake.n,
           "fid": scoring.fid_from_stats(real, fake), "kid_mean": None, "kid_std": None,
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
