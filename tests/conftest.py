"""Test setup shared by every test file.

TRITON_INTERPRET must be set before anything imports the module defining @triton.jit kernels, so it is set here,
at the top of the first file pytest imports. Tests run against the *installed* fastgan (see README); the header
says which files and which backends were picked up, and FASTGAN_REQUIRE_EXT=1 (set by CI) turns a missing
compiled extension into a failure instead of a silent fallback to the reference.
"""
import os
import zlib

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import fastgan  # noqa: E402
from fastgan import _backend  # noqa: E402


def pytest_report_header(config):
    live = {d: _backend.live_impls("instance_norm_fwd", d) for d in ("cpu", "cuda")}
    return [
        f"fastgan {fastgan.__version__} from {os.path.dirname(fastgan.__file__)}",
        f"torch {torch.__version__}; live instance_norm impls: cpu={live['cpu']} cuda={live['cuda']}",
        f"extension error: {_backend.extension_error()}",
    ]


def pytest_sessionstart(session):
    if os.environ.get("FASTGAN_REQUIRE_EXT") == "1" and _backend.extension_error() is not None:
        raise pytest.UsageError(f"FASTGAN_REQUIRE_EXT=1 but fastgan._C did not load: {_backend.extension_error()}")


def devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def op_impl_params(op: str, kernels_only: bool = False) -> list:
    """(device, impl) parameters for every live implementation of ``op`` (e.g. "bias_act_fwd") on every device;
    kernels_only drops the float64 reference."""
    return [pytest.param(d, i, id=f"{d}-{i}") for d in devices() for i in _backend.live_impls(op, d)
            if not (kernels_only and i == "ref")]


def to_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """x with the same values in another memory layout: "contiguous", "channels_last" (channels innermost; 1-D and
    2-D tensors stay contiguous) or "strided" (a slice of a wider tensor: neither layout, not dense)."""
    if layout == "channels_last" and x.dim() >= 3:
        perm = (0,) + tuple(range(2, x.dim())) + (1,)
        return x.permute(perm).contiguous().permute([perm.index(d) for d in range(x.dim())])
    if layout == "strided":
        return torch.cat([x, torch.randn_like(x)], dim=-1)[..., : x.shape[-1]]
    return x.contiguous()


def third_order_grad(fn, x: torch.Tensor) -> torch.Tensor:
    """A third derivative of ``fn`` at ``x`` that mixes every element: d/dx <d/dx |d/dx |fn(x)|^2|^2, w> with fixed
    weights ``w`` (a ramp over -1..1 on x's device), built by three nested autograd passes. The third-order tests
    compare it between an op and its reference."""
    x = x.clone().requires_grad_()
    (g1,) = torch.autograd.grad((fn(x) ** 2).sum(), x, create_graph=True)
    (g2,) = torch.autograd.grad((g1 ** 2).sum(), x, create_graph=True)
    w = torch.linspace(-1, 1, g2.numel(), dtype=g2.dtype, device=g2.device).view_as(g2)
    return torch.autograd.grad((g2 * w).sum(), x)[0]


@pytest.fixture(autouse=True)
def _seed_from_test_name(request):
    """Fresh random inputs per test, reproducible: the seed is a hash of the test's id. FASTGAN_TEST_SEED=k draws
    another set (soak runs: for k in 1 2 3; do FASTGAN_TEST_SEED=$k pytest tests; done)."""
    seed = zlib.crc32(request.node.nodeid.encode()) ^ int(os.environ.get("FASTGAN_TEST_SEED", "0"))
    torch.manual_seed(seed)
    request.node.user_properties.append(("torch_seed", seed))


def stand_in_inception(monkeypatch, tmp_path, extractor):
    """``extractor`` in place of Inception (the metrics' plumbing is under test, not the network) and a private
    feature cache under tmp_path; skips the test when the zero-set-up digits dataset, which every caller scores, is
    missing. Returns the extractor."""
    from fastgan import data as fdata
    from fastgan.metrics import scoring

    try:
        fdata.load_digits()
    except fdata.DatasetMissingError as e:
        pytest.skip(str(e))
    monkeypatch.setattr(scoring, "load_inception", lambda *a, **k: extractor)
    monkeypatch.setenv("FASTGAN_CACHE_DIR", str(tmp_path / "cache"))
    return extractor


def assert_one_line_error(capsys, command, message):
    """The command line's rule for a bad option (the caller asserts exit status 2): one line on stderr,
    "fastgan <command>: ...", that contains message."""
    err = capsys.readouterr().err
    assert err.startswith(f"fastgan {command}: ") and message in err and err.count("\n") == 1, err


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module. Model tests run many tiny convolutions; with the default thread count
    their OpenMP workers spin against each other on a loaded 2-core machine (measured 3 ms vs 360 ms per tiny UNet
    forward). Use as ``pytestmark = pytest.mark.usefixtures("one_thread")``; a module-scoped fixture that runs a
    model must request it too, so that it runs under the same thread count as the tests."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
