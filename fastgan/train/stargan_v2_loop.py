"""The StarGAN v2 training loop behind ``fastgan train stargan-v2``: data, resume, checkpoints, grids, FID, logs.

Reproducibility is by construction, so that ``--resume`` continues *equivalently* (bitwise on CPU): every random
draw of an iteration — the latents ``z_trg, z_trg2`` and the random flips — comes from a generator seeded by
``(seed, rank, iteration)``, the data order is a pure function of ``(seed, epoch)`` with the position saved in the
checkpoint (:mod:`fastgan.train.data`), and the diversity weight is a function of the iteration. A checkpoint
additionally stores the global RNG states (of every rank) and restores them, for anything in user code that draws
from them.

Under ``torchrun --nproc_per_node=K`` each process trains on its shard of every epoch with batch ``--batch`` and
gradients are averaged after every backward (:mod:`fastgan.train.distributed`); rank 0 alone prints, logs, writes
checkpoints, grids and FID. At the end all ranks compare weight digests (written to ``ddp_sync.json``) and meet at a
barrier before leaving.
"""
from __future__ import annotations

import json
import math
import os
import time

import torch

from . import checkpoint as ck
from . import distributed as fdist
from .data import DataError, _seed_of, build_loaders, fixed_examples, random_flip
from .generate import latent_grid, reference_grid, translation_sampler
from .images import Progress, save_grid
from .stargan_v2_trainer import StarGANv2Trainer

FAMILY = "stargan-v2"
DEFAULTS = {"batch": 8, "seed": 0}


def _check_img_size(size: int) -> None:
    if size < 32 or size & (size - 1):
        raise DataError(f"fastgan: StarGAN v2 trains at a power-of-two size >= 32 (the generator halves it "
                        f"log2(S) - 4 times, at least once), got {size}; pass --img-size 32, 64, ..., 256")


def _resolve_resume(args) -> dict | None:
    """The checkpoint to continue from (loaded on CPU), or None for a fresh run; refuses to clobber a run."""
    latest = ck.find_latest(args.out)
    if args.resume is None:
        if latest is not None:
            raise ck.CheckpointError(f"fastgan: run directory {args.out!r} already has checkpoints (latest {latest}); pass "
                                   "--resume to continue it, or choose another --out")
        return None
    path = latest if args.resume == "latest" else args.resume
    if path is None:
        return None  # --resume on an empty run dir: start fresh, so one command serves first start and restarts
    return ck.load_checkpoint(path)


def _build_config(args, classes: list[str], img_size: int, ckpt: dict | None, log):
    from ..models.stargan_v2 import StarGANv2Config
    if ckpt is not None:
        cfg = StarGANv2Config.from_dict(ckpt["config"])
        given = [k for k in list(_model_keys()) + ["impl"] if getattr(args, k, None) is not None
                 and getattr(args, k) != getattr(cfg, k, None)]
        if given:
            log(f"note: resuming keeps the checkpoint's model options; ignored: "
                f"{', '.join('--' + k.replace('_', '-') for k in given)}")
        if cfg.num_domains != len(classes):
            raise DataError(f"fastgan: the checkpoint has {cfg.num_domains} domains, the data {len(classes)}")
        if getattr(args, "channels_last", None):  # a memory format, not a model option: a resumed run may switch
            cfg.channels_last = True
        return cfg
    over = {k: getattr(args, k) for k in _model_keys() if getattr(args, k, None) is not None}
    if args.impl is not None:
        over["impl"] = args.impl
    if getattr(args, "channels_last", None):
        over["channels_last"] = True
    if over.get("w_hpf", 0.0) > 0:
        raise DataError("fastgan: --w-hpf > 0 needs the FAN face-landmark network (CelebA-HQ masks), which fastgan "
                        "does not ship; train with --w-hpf 0")
    try:
        return StarGANv2Config(img_size=img_size, num_domains=len(classes), **over)
    except ValueError as e:  # the config names the bad field; say it is about the command line
        raise DataError(f"fastgan: bad model option: {e}") from None


def _model_keys():
    from .stargan_v2 import MODEL_OPTIONS
    return MODEL_OPTIONS.keys()


def _step_generator(seed: int, rank: int, iteration: int) -> torch.Generator:
    # Per-iteration stream: no RNG state has to survive a restart for the latents and flips to repeat.
    return torch.Generator().manual_seed(_seed_of(seed, 1000 + rank, iteration))


def _trim_log(path: str, step: int) -> None:
    """Drop log lines past ``step`` (written by the killed run after its last checkpoint)."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        lines = [ln for ln in f if ln.strip() and json.loads(ln).get("step", 0) <= step]
    with open(path, "w") as f:
        f.writelines(lines)


def run(args) -> int:
    """Train StarGAN v2 as ``args`` (from :func:`fastgan.train.stargan_v2.add_train_arguments`) say.

    Returns:
        0 when ``--steps`` are done. Raises :class:`DataError` / :class:`CheckpointError` for unusable input
        (the CLI prints them) and ``FloatingPointError`` if a loss becomes NaN/inf (the last checkpoint is kept).
    """
    info = fdist.setup(args.device)
    ok = False
    try:
        code = _run(args, info)
        ok = True
        return code
    finally:
        fdist.cleanup(info, ok)


def _run(args, info: fdist.DistInfo) -> int:
    main = info.is_main
    log = (lambda msg: print(msg, flush=True)) if (main and not args.quiet) else (lambda msg: None)
    ckpt = _resolve_resume(args)
    meta_old = dict(ckpt.get("meta", {})) if ckpt else {}
    data_spec = args.data or meta_old.get("data")
    if not data_spec:
        raise DataError("fastgan: --data is required (a folder root/<domain>/ or a dataset name)")
    args.data = data_spec
    batch = args.batch if args.batch is not None else meta_old.get("batch", DEFAULTS["batch"])
    seed = args.seed if args.seed is not None else meta_old.get("seed", DEFAULTS["seed"])
    img_size = meta_old.get("img_size") or args.img_size  # a resumed model is fixed to its training size
    if ckpt is not None and args.img_size and args.img_size != img_size:
        log(f"note: resuming at the checkpoint's size {img_size}; --img-size {args.img_size} ignored")
    if ckpt is not None and meta_old.get("world_size", 1) * meta_old.get("batch", batch) != info.world_size * batch:
        log("warning: the global batch differs from the checkpoint's; the data order will not match the old run")

    data = build_loaders(data_spec, img_size, batch, seed, info.rank, info.world_size, args.workers,
                         pin_memory=info.device.type == "cuda")
    img_size = data.img_size
    _check_img_size(img_size)
    cfg = _build_config(args, data.classes, img_size, ckpt, log)

    torch.manual_seed(seed)  # identical initial weights on every rank (and broadcast anyway)
    trainer = StarGANv2Trainer(cfg, info.device, info)
    start = 0
    if ckpt is not None:
        trainer.load_state_dict(ckpt)
        data.load_state_dict(ckpt["data"])
        start = int(ckpt["step"])
        rngs = ckpt.get("rng_ranks") or [ckpt.get("rng")]
        if len(rngs) == info.world_size and rngs[info.rank] is not None:
            ck.set_rng_state(rngs[info.rank])
        log(f"resumed from step {start} ({data_spec}, {len(data.classes)} domains, {img_size}x{img_size})")
    del ckpt  # the state dicts are loaded; free the CPU copy

    meta = {"family": FAMILY, "data": data_spec, "img_size": img_size, "classes": data.classes, "batch": batch,
            "seed": seed, "world_size": info.world_size, "steps": args.steps}
    os.makedirs(args.out, exist_ok=True)
    log_path = os.path.join(args.out, "log.jsonl")
    if main:
        with open(os.path.join(args.out, "config.json"), "w") as f:
            json.dump({"config": cfg.to_dict(), "meta": meta}, f, indent=1)
        _trim_log(log_path, start)
    if start >= args.steps:
        log(f"already at step {start} >= --steps {args.steps}; nothing to do")
        return 0

    fixed_src = fixed_ref = None
    if main and args.sample_every:
        per = max(1, -(-8 // len(data.classes)))  # about 8 images, at least one per domain
        fixed_src = [t.to(info.device) for t in fixed_examples(data.dataset, per, seed)]
        fixed_ref = [t.to(info.device) for t in fixed_examples(data.dataset, per, seed + 1)]
    log(f"training StarGAN v2: {data_spec} ({len(data.dataset)} images, domains {data.classes}), {img_size}x"
        f"{img_size}, batch {batch} x {info.world_size} process(es) on {info.device}, steps {start}->{args.steps}")
    progress = Progress(args.steps, start, args.log_every, enabled=main and not args.quiet,
                        use_tqdm=not args.no_tqdm)
    from ..metrics import training_fid_logger  # lazily, as the metrics package is only needed here

    fid = training_fid_logger(args.data, every=args.fid_every, n=args.fid_n, real_n=args.fid_real_n,
                              batch_size=args.fid_batch, resolution=img_size, device=info.device,
                              log=progress.write) if main else None
    window: dict[str, list[float]] = {}
    t_window = time.perf_counter()

    def save(step: int) -> None:
        # Collective (RNG states of all ranks), so every rank calls it; rank 0 writes.
        rngs = fdist.all_gather_objects(ck.rng_state(), info)
        if main:
            state = dict(trainer.state_dict(), family=FAMILY, meta=meta, data=data.state_dict(), rng=rngs[0])
            if info.world_size > 1:
                state["rng_ranks"] = rngs
            path = ck.save_checkpoint(args.out, step, state, keep=args.keep)
            progress.write(f"step {step}: checkpoint {path}")

    for it in range(start, args.steps):
        x_real, y_org = next(data.source)
        x_ref, x_ref2, y_trg = next(data.reference)
        g = _step_generator(seed, info.rank, it)
        x_real, x_ref, x_ref2 = random_flip(x_real, g), random_flip(x_ref, g), random_flip(x_ref2, g)
        z_trg = torch.randn(x_real.shape[0], cfg.latent_dim, generator=g)
        z_trg2 = torch.randn(x_real.shape[0], cfg.latent_dim, generator=g)
        dev = info.device
        x_real, y_org, x_ref, x_ref2, y_trg, z_trg, z_trg2 = (
            t.to(dev, non_blocking=True) for t in (x_real, y_org, x_ref, x_ref2, y_trg, z_trg, z_trg2))
        losses = trainer.train_step(it, x_real, y_org, x_ref, x_ref2, y_trg, z_trg, z_trg2)
        step = it + 1
        if not (math.isfinite(losses["D"]) and math.isfinite(losses["G"])):
            raise FloatingPointError(f"fastgan: loss became {losses['D']}/{losses['G']} (D/G) at step {step}; "
                                     f"the last checkpoint in {ck.checkpoint_dir(args.out)} is intact (lower --lr?)")
        for k, v in losses.items():
            window.setdefault(k, []).append(v)
        progress.update(step, losses)
        if main and (step % max(1, args.log_every) == 0 or step == args.steps):
            now = time.perf_counter()
            rec = {"step": step, "it_per_s": len(window["D"]) / max(1e-9, now - t_window)}
            rec.update({k: sum(v) / len(v) for k, v in window.items()})
            with open(log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            window, t_window = {}, now
        if (args.save_every and step % args.save_every == 0) or step == args.steps:
            save(step)
        if main and args.sample_every and step % args.sample_every == 0:
            ema = trainer.nets_ema
            sdir = os.path.join(args.out, "samples")
            save_grid(latent_grid(ema, fixed_src[0], cfg.num_domains, cfg.latent_dim, 1, seed),
                      os.path.join(sdir, f"step_{step:08d}_latent.png"))
            save_grid(reference_grid(ema, fixed_src[0], fixed_ref[0], fixed_ref[1]),
                      os.path.join(sdir, f"step_{step:08d}_reference.png"))
        if fid is not None and fid.due(step):
            fn = translation_sampler(trainer.nets_ema, data.dataset, cfg.latent_dim, cfg.num_domains, info.device,
                                     seed)
            result = fid(step, fn)
            with open(log_path, "a") as f:
                f.write(json.dumps({"step": step, **result}) + "\n")
    progress.close()

    if info.enabled:
        digests = fdist.gather_digests(trainer.all_modules(), info)
        if main:
            with open(os.path.join(args.out, "ddp_sync.json"), "w") as f:
                json.dump({"world_size": info.world_size, "step": args.steps, "digests": digests}, f)
        if len(set(digests)) != 1:
            raise RuntimeError(f"fastgan: ranks ended with different weights: {digests}")
        log(f"weights identical on all {info.world_size} ranks")
    log(f"done: {args.steps} steps; checkpoints in {ck.checkpoint_dir(args.out)}")
    return 0
