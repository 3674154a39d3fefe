"""``fastgan eval`` on bad options and on checkpoints of both families, with a stand-in feature extractor (no
Inception: the plumbing is under test, not the network).

Options are checked, and a ``--fake`` checkpoint is opened, before any feature is extracted: the tests assert that
the extractor saw no image when the command fails.
"""
import json
import os

import pytest
import torch

from fastgan.cli import main

from conftest import assert_one_line_error, stand_in_inception

pytestmark = pytest.mark.usefixtures("one_thread")

DDPM_TINY = ["--data", "digits", "--batch", "8", "--base-channels", "8", "--num-res-blocks", "1", "--timesteps", "10",
             "--sample-n", "0", "--device", "cpu", "--quiet"]


class CountingExtractor:
    """Mean pixel of each channel -> 4 features; counts the images it saw."""

    name = "counting-test-extractor"

    def __init__(self):
        self.images = 0

    def __call__(self, images, value_range=(0.0, 1.0)):
        self.images += images.shape[0]
        lo, hi = value_range
        x = (images.float() - lo) / (hi - lo)
        x = x.mean(1, keepdim=True)
        x = torch.nn.functional.interpolate(x, size=(2, 2), mode="area")
        return x.flatten(1)


@pytest.fixture
def ext(monkeypatch, tmp_path):
    return stand_in_inception(monkeypatch, tmp_path, CountingExtractor())


@pytest.fixture(scope="module")
def ddpm_run(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("ddpm")
    assert main(["train", "ddpm", "--out", str(out), "--steps", "2", "--cfg"] + DDPM_TINY) == 0
    return out


def _eval(*argv):
    return main(["eval", "--quiet", "--no-kid"] + list(argv))


@pytest.mark.parametrize("argv, message", [
    (["--n", "0"], "--n must be >= 2, got 0"),
    (["--n", "1"], "--n must be >= 2, got 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--resolution", "-4"], "--resolution must be >= 1"),
    (["--kid-subset-size", "1"], "--kid-subset-size must be >= 2"),
    (["--device", "gpu"], "--device 'gpu' is not a device"),
    (["--sample-steps", "5"], "--sample-steps applies to a --fake DDPM checkpoint only"),
])
def test_bad_options_exit_2_with_one_line(ext, capsys, argv, message):
    assert _eval("--real", "digits", "--fake", "digits:test", *argv) == 2
    assert_one_line_error(capsys, "eval", message)
    assert ext.images == 0


def test_cuda_without_cuda_is_a_message(ext, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert _eval("--real", "digits", "--fake", "digits:test", "--device", "cuda") == 2
    assert capsys.readouterr().err == "fastgan eval: --device cuda: no CUDA device is available here\n"


def test_eval_scores_a_ddpm_run_dir_and_file(ext, ddpm_run, capsys):
    for fake in (str(ddpm_run), os.path.join(ddpm_run, "checkpoint.pt")):
        assert _eval("--real", "digits", "--fake", fake, "--n", "6", "--batch-size", "4", "--sample-steps", "2",
                     "--json") == 0
        res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert res["n_fake"] == 6 and res["n_real"] == 6 and res["fid"] >= 0
    from fastgan.train.generate import checkpoint_stats
    stats = checkpoint_stats(str(ddpm_run), n=4, device="cpu", batch_size=4, extractor=CountingExtractor())
    assert stats.meta["family"] == "ddpm" and stats.meta["sample_steps"] == 10  # default 50, capped at T = 10


def test_bad_checkpoints_fail_before_feature_extraction(ext, ddpm_run, tmp_path, capsys):
    assert _eval("--real", "digits", "--fake", str(ddpm_run), "--sample-steps", "11") == 2
    assert "--sample-steps must be in [1, 10]" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert _eval("--real", "digits", "--fake", str(junk)) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err
    assert _eval("--real", str(ddpm_run), "--fake", "digits") == 2
    assert "only --fake takes a checkpoint" in capsys.readouterr().err
    assert _eval("--real", "digits", "--fake", str(tmp_path / "no-such-folder")) == 2
    assert "neither a folder nor a dataset name" in capsys.readouterr().err
    assert ext.images == 0


def test_ddpm_file_constants_match_the_trainer():
    # fastgan.train.checkpoint names the DDPM format without importing the diffusion package; keep them equal.
    from fastgan.diffusion import train_cli
    from fastgan.train import checkpoint as ck
    assert (ck.DDPM_FORMAT, ck.DDPM_FILENAME) == (train_cli.FORMAT, train_cli.CHECKPOINT)
