"""Feature-extraction throughput of the FID Inception network: ``python -m fastgan.metrics.throughput``.

Reports images/s per precision, end to end as the metrics run it (8-bit quantisation, grayscale->RGB, antialiased
resize to 299 and the network; images already on the device), and how far fp16/bf16 features and FID move from
fp32 on the same images.

Example (GPU)::

    python -m fastgan.metrics.throughput --device cuda --dtypes fp32 fp16 bf16 --batch-size 200
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from .inception import load_inception
from .stats import FeatureStats, fid_from_stats


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(device="cpu", dtype="fp32", batch_size: int = 50, batches: int = 5, warmup: int = 1,
            size: int = 28, channels: int = 1, seed: int = 0) -> dict:
    """Time feature extraction.

    Args:
        device, dtype: where and in which precision the network runs.
        batch_size: images per forward pass; batches: timed passes; warmup: untimed passes first (cuDNN autotuning,
            lazy initialisation).
        size, channels: synthetic input images ``(batch_size, channels, size, size)`` in [0, 1].
        seed: input seed.
    Returns:
        dict with ``images_per_s``, ``seconds``, ``images`` and the settings; ``features`` holds the last batch's
        ``(batch_size, 2048)`` float32 features on CPU (for precision comparisons).
    """
    net = load_inception(device, dtype)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch_size, channels, size, size, generator=g).to(net.device)
    for _ in range(warmup):
        net(x)
    _sync(net.device)
    t0 = time.perf_counter()
    for _ in range(batches):
        feats = net(x)
    _sync(net.device)
    dt = time.perf_counter() - t0
    return {"device": str(net.device), "dtype": str(net.dtype).replace("torch.", ""), "batch_size": batch_size,
            "images": batch_size * batches, "seconds": dt, "images_per_s": batch_size * batches / dt,
            "features": feats.cpu()}


def compare_precisions(device="cuda", dtypes=("fp32", "fp16", "bf16"), n: int = 1000, batch_size: int = 100,
                       size: int = 28) -> dict:
    """FID between fp32 features and each other precision's features of the same ``n`` random-digit-like images.

    The images are random smooth blobs (not noise) so that features look like those of real images; the returned
    FID measures only the precision's error (0 would be perfect).
    """
    g = torch.Generator().manual_seed(1)
    imgs = torch.nn.functional.interpolate(torch.rand(n, 1, 7, 7, generator=g), size=(size, size), mode="bilinear")
    stats = {}
    for dt in dtypes:
        net = load_inception(device, dt)
        s = FeatureStats()
        for i in range(0, n, batch_size):
            s.update(net(imgs[i: i + batch_size].to(net.device)))
        stats[dt] = s
    ref = stats[dtypes[0]]
    return {dt: {"fid_vs_" + dtypes[0]: fid_from_stats(ref, s),
                 "max_abs_mean_diff": float((ref.mean - s.mean).abs().max())} for dt, s in stats.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "fp16"])
    p.add_argument("--batch-size", type=int, nargs="+", default=[50])
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--size", type=int, default=28, help="input side before the resize to 299")
    p.add_argument("--compare", type=int, default=0, metavar="N", help="also compare precisions on N images")
    args = p.parse_args(argv)
    if torch.device(args.device).type == "cuda":
        torch.backends.cudnn.benchmark = True
    rows = []
    for bs in args.batch_size:
        for dt in args.dtypes:
            r = measure(args.device, dt, batch_size=bs, batches=args.batches, warmup=2, size=args.size)
            r.pop("features")
            rows.append(r)
            print(json.dumps(r), flush=True)
    if args.compare:
        print(json.dumps(compare_precisions(args.device, tuple(args.dtypes), n=args.compare)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
