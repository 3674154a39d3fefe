"""Generating from trained checkpoints: loading the EMA networks, translations, sample grids, ``fastgan sample
stargan-v2`` (:func:`run_sample`), and the images ``fastgan eval --fake CKPT`` scores (:func:`checkpoint_stats`).

StarGAN v2 generates by translation: a source image ``x`` and a target domain ``y`` give ``G(x, s)`` with the style
``s = F(z, y)`` for a random latent ``z`` (*latent-guided*) or ``s = E(x_ref, y)`` from a reference image of domain
``y`` (*reference-guided*). As in the paper, the EMA copies of the networks are used for every output.

``fastgan sample stargan-v2``: latent-guided (no ``--ref``), every source goes into ``--domain`` (or every domain)
with ``--n`` random styles; reference-guided (``--ref``), every source takes the style of every reference, whose
domain is ``--domain`` or else the name of the folder the references sit in (``afhq/val/dog/x.png`` -> ``dog``).
A ``.png``/``.jpg`` output gets one grid, a row per source (the source, then its translations); any other path is a
folder of single images named ``<source>_<domain>_<k>.png``.
"""
from __future__ import annotations

import os
from typing import Callable

import torch

from .checkpoint import (DDPM_FILENAME, DDPM_FORMAT, CheckpointError, check_checkpoint, find_latest, load_checkpoint,
                         read_checkpoint)
from .images import list_images, load_image, save_grid

FAMILY = "stargan-v2"
GRID_SUFFIXES = (".png", ".jpg", ".jpeg")


def resolve_checkpoint(path: str) -> str:
    """A checkpoint file as given, or the one of a run directory: the latest ``checkpoints/ckpt_*.pt``
    (stargan-v2), else ``checkpoint.pt`` (``fastgan train ddpm``)."""
    if os.path.isdir(path):
        latest = find_latest(path)
        if latest is None:
            single = os.path.join(path, DDPM_FILENAME)
            if os.path.isfile(single):
                return single
            raise CheckpointError(f"fastgan: run directory {path!r} holds no checkpoints (checkpoints/ckpt_*.pt "
                                  f"of stargan-v2, or {DDPM_FILENAME} of ddpm)")
        return latest
    return path


def is_run_checkpoint(path: str) -> bool:
    """Whether ``path`` is a run directory of ``fastgan train`` (either family); checkpoint files are told by
    their suffix where it matters (``fastgan eval``)."""
    return os.path.isdir(path) and (find_latest(path) is not None or
                                    os.path.isfile(os.path.join(path, DDPM_FILENAME)))


def load_stargan_v2(path: str, device="cpu"):
    """Load a StarGAN v2 checkpoint's EMA networks for generation.

    Args:
        path: checkpoint file or run directory (latest checkpoint).
        device: where the networks go.
    Returns:
        ``(cfg, nets_ema, meta)``: the config, the EMA ``ModuleDict`` (generator, mapping_network, style_encoder) in
        eval mode, and the run's metadata (``classes``, ``img_size``, ``data``, ...).
    Raises:
        CheckpointError: unreadable file, or a checkpoint of another family.
    """
    return _stargan_v2_from(load_checkpoint(resolve_checkpoint(path)), path, device)


def _stargan_v2_from(ckpt: dict, path: str, device):
    family = ckpt.get("family")
    if family != FAMILY:
        raise CheckpointError(f"fastgan: {path!r} is a {family!r} checkpoint, not {FAMILY!r}")
    from ..models import stargan_v2 as model
    cfg = model.StarGANv2Config.from_dict(ckpt["config"])
    _, nets_ema = model.build_model(cfg)
    for name, net in nets_ema.items():
        net.load_state_dict(ckpt["nets_ema"][name])
    nets_ema = nets_ema.to(device).eval()
    meta = dict(ckpt.get("meta", {}))
    meta.setdefault("classes", [str(k) for k in range(cfg.num_domains)])
    meta.setdefault("img_size", cfg.img_size)
    meta["step"] = int(ckpt["step"])
    return cfg, nets_ema, meta


@torch.no_grad()
def translate_latent(nets_ema, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``G(x, F(z, y))``: latent-guided translation of ``x`` into domains ``y``."""
    return nets_ema["generator"](x, nets_ema["mapping_network"](z, y))


@torch.no_grad()
def translate_reference(nets_ema, x: torch.Tensor, x_ref: torch.Tensor, y_ref: torch.Tensor) -> torch.Tensor:
    """``G(x, E(x_ref, y_ref))``: reference-guided translation (style of ``x_ref``, domain ``y_ref``)."""
    return nets_ema["generator"](x, nets_ema["style_encoder"](x_ref, y_ref))


@torch.no_grad()
def latent_grid(nets_ema, x_src: torch.Tensor, num_domains: int, latent_dim: int, z_per_domain: int = 1,
                seed: int = 0) -> list[list[torch.Tensor]]:
    """Rows of a latent-guided grid: the sources, then per domain and latent one row of translations.

    The latents are drawn from ``seed`` and shared by all sources, so a row shows one style across inputs and the
    grids of successive steps are comparable.
    """
    g = torch.Generator().manual_seed(int(seed))
    dev = x_src.device
    rows = [list(x_src)]
    for k in range(num_domains):
        for _ in range(z_per_domain):
            z = torch.randn(1, latent_dim, generator=g).to(dev).expand(x_src.shape[0], -1)
            y = torch.full((x_src.shape[0],), k, dtype=torch.int64, device=dev)
            rows.append(list(translate_latent(nets_ema, x_src, y, z)))
    return rows


@torch.no_grad()
def reference_grid(nets_ema, x_src: torch.Tensor, x_ref: torch.Tensor, y_ref: torch.Tensor
                   ) -> list[list[torch.Tensor | None]]:
    """Rows of a reference-guided grid: top row the references, then per source its translation with each style."""
    rows: list[list[torch.Tensor | None]] = [[None] + list(x_ref)]
    for x in x_src:
        xs = x[None].expand(x_ref.shape[0], -1, -1, -1)
        rows.append([x] + list(translate_reference(nets_ema, xs, x_ref, y_ref)))
    return rows


def translation_sampler(nets_ema, dataset, latent_dim: int, num_domains: int, device, seed: int = 0
                        ) -> Callable[[int], torch.Tensor]:
    """``sample_fn(b)``: latent-guided translations of random images of ``dataset`` into random other domains.

    Used for FID: each call draws ``b`` source images, a target domain different from each source's (the official
    evaluation translates between distinct domains) and latents, all from one seeded generator.

    Args:
        nets_ema: EMA networks; dataset: items ``(image (3, S, S) in [-1, 1], label)``.
        latent_dim, num_domains: of the model; device: where to run; seed: generator seed.
    Returns:
        ``sample_fn(b) -> (b, 3, S, S)`` in [-1, 1].
    """
    g = torch.Generator().manual_seed(int(seed))

    def sample_fn(b: int) -> torch.Tensor:
        idx = torch.randint(0, len(dataset), (b,), generator=g).tolist()
        items = [dataset[i] for i in idx]
        x = torch.stack([it[0] for it in items]).to(device)
        y_src = torch.tensor([it[1] for it in items], dtype=torch.int64)
        shift = torch.randint(1, max(2, num_domains), (b,), generator=g) if num_domains > 1 else torch.zeros(b)
        y = ((y_src + shift.long()) % num_domains).to(device)
        z = torch.randn(b, latent_dim, generator=g).to(device)
        return translate_latent(nets_ema, x, y, z)

    return sample_fn


def _open_sources(meta: dict, fallback: str | None):
    """The dataset to translate from: the run's training data, else ``fallback`` (``fastgan eval --real``)."""
    from .data import DataError, open_domains
    tried = []
    for spec in (meta.get("data"), fallback):
        if not spec or spec.endswith(".npz"):
            continue
        try:
            return open_domains(spec, int(meta["img_size"]))
        except DataError as e:
            tried.append(f"{spec}: {e}")
    raise CheckpointError("fastgan: generating from a StarGAN v2 checkpoint needs source images to translate; "
                          "neither the run's training data nor --real could be opened"
                          + ("".join(f"\n  {t}" for t in tried) if tried else "") +
                          "\npass --real as an image folder root/<domain>/ or a dataset name")


DDPM_EVAL_STEPS = 50  # DDIM steps per image when scoring a DDPM checkpoint (`fastgan sample ddpm --ddim`'s default)


def _ddpm_sampler(ckpt: dict, device: torch.device, seed: int, steps: int | None) -> tuple[Callable, dict]:
    """``sample_fn(b)`` of a ``fastgan train ddpm`` checkpoint: DDIM (eta 0) from the EMA weights, through the code
    ``fastgan sample ddpm --ddim`` runs; a class-conditional model cycles through its classes (no guidance)."""
    from ..diffusion.train_cli import generate, make_schedule
    from ..models.unet import UNet
    cfg = ckpt["model_config"]
    model = UNet(**cfg)
    model.load_state_dict(ckpt["ema"]["module"] if ckpt.get("ema") is not None else ckpt["model"])
    model.to(device)
    schedule = make_schedule(ckpt["schedule"], ckpt["timesteps"])
    total = schedule.num_steps
    if steps is None:
        steps = min(DDPM_EVAL_STEPS, total)
    elif not 1 <= steps <= total:
        raise CheckpointError(f"fastgan: --sample-steps must be in [1, {total}] (the model's T), got {steps}")
    classes = len(ckpt["classes"]) if cfg.get("num_classes") is not None else 0
    g = torch.Generator().manual_seed(int(seed))
    drawn = [0]

    def sample_fn(b: int) -> torch.Tensor:
        labels = None
        if classes:  # every class equally often over the whole stream, not per batch
            labels = ((drawn[0] + torch.arange(b)) % classes).to(device)
        drawn[0] += b
        # generate() seeds its own generators from one int; a fresh draw per batch keeps batches independent.
        batch_seed = int(torch.randint(0, 2**62, (1,), generator=g))
        return generate(model, schedule, b, prediction=ckpt["prediction"], steps=steps, ddim=True, eta=0.0,
                        labels=labels, seed=batch_seed, device=device)

    return sample_fn, {"family": "ddpm", "step": int(ckpt["step"]), "sample_steps": steps}


def open_generator(path: str, *, real_spec: str | None = None, seed: int = 0, device=None,
                   sample_steps: int | None = None) -> tuple[Callable[[int], torch.Tensor], dict]:
    """Load a checkpoint of either family for scoring: ``(sample_fn, meta)``, ``sample_fn(b)`` giving ``b`` images
    in [-1, 1]. Everything that can fail on bad input (file, family, source images, steps) fails here, before any
    feature is extracted.

    Args:
        path: checkpoint file or run directory (see :func:`resolve_checkpoint`).
        real_spec: stargan-v2: source images when the run's training data is not reachable (``--real``).
        seed: sampling seed; device: where to generate (default CUDA if available).
        sample_steps: ddpm: DDIM steps per image (default :data:`DDPM_EVAL_STEPS`, capped at the model's T);
            refused for stargan-v2, which has no steps.
    Returns:
        ``(sample_fn, meta)``; ``meta`` has ``family``, ``step`` and ``source``.
    Raises:
        CheckpointError: unreadable file, unknown kind, no source images, bad ``sample_steps``.
    """
    from ..metrics.inception import resolve_device
    device = resolve_device(device)
    file = resolve_checkpoint(path)
    ckpt = read_checkpoint(file)
    if ckpt.get("format") == DDPM_FORMAT:
        fn, meta = _ddpm_sampler(ckpt, device, seed, sample_steps)
    else:
        if sample_steps is not None:
            raise CheckpointError(f"fastgan: --sample-steps is for ddpm checkpoints; {path!r} is not one")
        cfg, nets_ema, info = _stargan_v2_from(check_checkpoint(ckpt, file), path, device)
        del ckpt
        dataset = _open_sources(info, real_spec)
        fn = translation_sampler(nets_ema, dataset, cfg.latent_dim, cfg.num_domains, device, seed)
        meta = {"family": FAMILY, "step": info["step"]}
    return fn, dict(meta, source=path)


def checkpoint_stats(path: str, *, n: int | None, real_spec: str | None = None, seed: int = 0, device=None,
                     batch_size: int = 50, sample_steps: int | None = None, generator=None, **stats_kw):
    """Feature statistics of ``n`` images generated from a checkpoint (``fastgan eval --fake CKPT``).

    StarGAN v2: latent-guided translations of the run's training images (else ``real_spec``'s) into random other
    domains. DDPM: DDIM samples (``sample_steps``, default 50) from the EMA weights, classes cycled.

    Args:
        path: checkpoint file or run directory.
        n: images to generate (default 10,000).
        real_spec: source images used when the run's training data is not reachable (``--real``).
        seed: sampling seed; device: generation and Inception device (default CUDA if available).
        batch_size: images per generator call and Inception pass.
        sample_steps: DDPM only, see :func:`open_generator`.
        generator: ``open_generator(path, ...)``'s result, when the caller opened it already (to fail early).
        **stats_kw: other :func:`fastgan.metrics.compute_stats` options (``dtype``, ``max_features``,
            ``progress``, ``resolution``, ``extractor``).
    Returns:
        :class:`fastgan.metrics.FeatureStats` with ``meta`` naming the checkpoint.
    """
    from ..metrics.inception import resolve_device
    from ..metrics.scoring import sample_stats
    device = resolve_device(device)
    fn, meta = generator or open_generator(path, real_spec=real_spec, seed=seed, device=device,
                                           sample_steps=sample_steps)
    stats = sample_stats(fn, int(n or 10_000), batch_size=batch_size, value_range=(-1.0, 1.0), device=device,
                         **stats_kw)
    stats.meta = dict(stats.meta or {}, **meta)
    return stats


def parse_domain(spec: str, classes: list[str]) -> int:
    """Domain index of ``spec`` (a name in ``classes`` or an index), or a ValueError listing the domains."""
    if spec in classes:
        return classes.index(spec)
    if spec.lstrip("-").isdigit() and 0 <= int(spec) < len(classes):
        return int(spec)
    raise ValueError(f"fastgan: unknown domain {spec!r}; this checkpoint's domains: "
                     + ", ".join(f"{i}={c}" for i, c in enumerate(classes)))


def _ref_domain(paths: list[str], domain: str | None, classes: list[str]) -> int:
    if domain is not None:
        return parse_domain(domain, classes)
    parents = {os.path.basename(os.path.dirname(os.path.abspath(p))) for p in paths}
    if len(parents) == 1 and next(iter(parents)) in classes:
        return classes.index(parents.pop())
    raise ValueError("fastgan: --ref needs the references' domain: pass --domain (one of "
                     f"{', '.join(classes)}) or keep the references in a folder named after it")


@torch.no_grad()
def run_sample(args) -> int:
    """Write translations as ``args`` (see ``add_sample_arguments``) say. Returns 0."""
    from ..metrics.inception import resolve_device
    device = resolve_device(args.device)
    if args.n < 1:
        raise ValueError(f"fastgan: --n must be >= 1, got {args.n}")
    cfg, nets, meta = load_stargan_v2(args.ckpt, device)
    classes, size = list(meta["classes"]), int(meta["img_size"])
    src_paths = list_images(args.src)
    x_src = torch.stack([load_image(p, size) for p in src_paths]).to(device)
    g = torch.Generator().manual_seed(int(args.seed))

    # outputs[i] = [(domain index, image), ...] for source i
    outputs: list[list[tuple[int, torch.Tensor]]] = [[] for _ in src_paths]
    if args.ref is not None:
        ref_paths = list_images(args.ref)
        k = _ref_domain(ref_paths, args.domain, classes)
        x_ref = torch.stack([load_image(p, size) for p in ref_paths]).to(device)
        y_ref = torch.full((len(ref_paths),), k, dtype=torch.int64, device=device)
        for i in range(len(src_paths)):
            out = translate_reference(nets, x_src[i: i + 1].expand(len(ref_paths), -1, -1, -1), x_ref, y_ref)
            outputs[i] = [(k, o) for o in out]
    else:
        domains = [parse_domain(args.domain, classes)] if args.domain is not None else range(len(classes))
        for k in domains:
            for _ in range(args.n):
                # One latent per (domain, k) shared by all sources: a column shows one style.
                z = torch.randn(1, cfg.latent_dim, generator=g).to(device).expand(len(src_paths), -1)
                y = torch.full((len(src_paths),), k, dtype=torch.int64, device=device)
                for i, o in enumerate(translate_latent(nets, x_src, y, z)):
                    outputs[i].append((k, o))

    if args.out.lower().endswith(GRID_SUFFIXES):
        rows = [[x_src[i]] + [o for _, o in outputs[i]] for i in range(len(src_paths))]
        save_grid(rows, args.out, min_cell=0)
        print(f"wrote {args.out} ({len(src_paths)} x {len(outputs[0])} translations, step {meta['step']})")
        return 0
    from ..data import save_images
    written = 0
    for i, path in enumerate(src_paths):
        stem = os.path.splitext(os.path.basename(path))[0]
        for j, (k, o) in enumerate(outputs[i]):
            name = f"{stem}_{classes[k]}".replace(os.sep, "_")
            # save_images names files <prefix>_<index>.png; the generator has no tanh, so values are clamped there
            save_images(o[None], args.out, value_range=(-1.0, 1.0), prefix=name, start=j)
            written += 1
    print(f"wrote {written} images to {args.out} (step {meta['step']})")
    return 0
