"""Instance norm: op registration (opcheck, compile), errors, backend choice and the nn modules."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan
from fastgan import _backend
from fastgan.ops import norm_kernels
from fastgan.ops.norm_kernels import kernel_ops

from conftest import devices


def kernel_impls(device):
    return [i for i in _backend.live_impls("instance_norm_fwd", device) if i != "ref"]


def impl_params():
    return [pytest.param(d, i, id=f"{d}-{i}") for d in devices() for i in kernel_impls(d)]


def _op_samples(device):
    """Arguments for the three kernel ops, contiguous and channels_last, float32 and float64."""
    for dtype in (torch.float32, torch.float64):
        for cl in (False, True):
            x = torch.randn(2, 3, 4, 5, device=device, dtype=dtype)
            if cl:
                x = x.to(memory_format=torch.channels_last)
            scale = torch.randn(2, 3, device=device, dtype=dtype)
            shift = torch.randn(2, 3, device=device, dtype=dtype)
            yield x, scale, shift


@pytest.mark.parametrize("device,impl", impl_params())
def test_opcheck_kernel_ops(device, impl):
    ops = kernel_ops(impl)
    for x, scale, shift in _op_samples(device):
        x.requires_grad_()
        scale.requires_grad_()
        shift.requires_grad_()
        torch.library.opcheck(ops.fwd, (x, scale, shift, 1e-5))
        with torch.no_grad():
            _, mean, rstd = ops.fwd(x, scale, shift, 1e-5)
        gy = torch.randn_like(x, requires_grad=True)
        torch.library.opcheck(ops.bwd, (gy, x, mean, rstd, scale, 1e-5))
        ggx = torch.randn_like(x, requires_grad=True)
        uw, ub = torch.randn_like(scale), torch.randn_like(shift)
        torch.library.opcheck(ops.dbwd, (ggx, uw, ub, gy, x, mean, rstd, scale, 1e-5))


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = fastgan.nn.InstanceNorm2d(8, affine=True)

    def forward(self, x):
        return F.leaky_relu(self.norm(self.conv(x)), 0.2)


@pytest.mark.parametrize("device", devices())
def test_compile_fullgraph_forward_and_backward(device):
    torch._dynamo.reset()
    model = _Block().to(device)
    x = torch.randn(2, 3, 9, 11, device=device, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True)
    y_eager = model(x)
    y_comp = compiled(x)
    torch.testing.assert_close(y_comp, y_eager, rtol=1e-4, atol=1e-5)
    (g_eager,) = torch.autograd.grad(y_eager.square().sum(), x)
    (g_comp,) = torch.autograd.grad(y_comp.square().sum(), x)
    torch.testing.assert_close(g_comp, g_eager, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device,impl", impl_params())
def test_compile_fullgraph_each_impl(device, impl):
    if impl == "triton" and device == "cpu":
        pytest.skip("Triton under the interpreter cannot be compiled (BUILD-FACTS); compile is tested on the GPU")
    torch._dynamo.reset()
    fn = torch.compile(lambda t, w: fastgan.ops.instance_norm(t, w, impl=impl), fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 4, 6, 6, device=device, requires_grad=True)
    w = torch.randn(4, device=device, requires_grad=True)
    torch.testing.assert_close(fn(x, w), F.instance_norm(x, weight=w), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("impl", ["ref"] + kernel_impls("cpu"))
def test_bad_input_gives_clear_errors(impl):
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="3-D, 4-D or 5-D"):
        fastgan.ops.instance_norm(torch.randn(2, 3), impl=impl)
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\)"):
        fastgan.ops.instance_norm(x, torch.randn(4), impl=impl)
    with pytest.raises(ValueError, match="bias is on meta but x is on cpu"):
        fastgan.ops.instance_norm(x, torch.randn(3), torch.randn(3, device="meta"), impl=impl)
    with pytest.raises(TypeError, match="must be float16, bfloat16, float32 or float64"):
        fastgan.ops.instance_norm(torch.ones(2, 3, 4, 4, dtype=torch.int64), impl=impl)
    with pytest.raises(ValueError, match="empty"):
        fastgan.ops.instance_norm(torch.randn(0, 3, 4, 4), impl=impl)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        fastgan.ops.instance_norm(x, eps=-1.0, impl=impl)


@pytest.mark.skipif("cpp" not in kernel_impls("cpu"), reason="compiled extension not loaded")
def test_compiled_op_checks_its_arguments():
    x = torch.randn(2, 3, 4, 4)
    ops = torch.ops.fastgan
    with pytest.raises(RuntimeError, match=r"scale must have shape \(2, 3\)"):
        ops.instance_norm_fwd(x, torch.ones(3), torch.zeros(2, 3), 1e-5)
    with pytest.raises(RuntimeError, match="shift must be Float for Half input"):
        ops.instance_norm_fwd(x.half(), torch.ones(2, 3), torch.zeros(2, 3, dtype=torch.half), 1e-5)
    with pytest.raises(RuntimeError, match="grad_y must have x's shape"):
        ops.instance_norm_bwd(torch.randn(2, 3, 4), x, torch.ones(2, 3), torch.ones(2, 3), torch.ones(2, 3), 1e-5)
    with pytest.raises(RuntimeError, match="must be 3-D, 4-D or 5-D"):
        ops.instance_norm_fwd(torch.randn(2, 3), torch.ones(2, 3), torch.zeros(2, 3), 1e-5)


def test_impl_selection_and_pinning():
    x = torch.randn(2, 3, 4, 4)
    assert _backend.select("instance_norm_fwd", x.device) == kernel_impls("cpu")[0] if kernel_impls("cpu") else "ref"
    with fastgan.use_impl("ref"):
        assert _backend.select("instance_norm_fwd", x.device) == "ref"
    with pytest.raises(RuntimeError, match="impl='cuda' of instance_norm_fwd cannot run on a cpu tensor"):
        fastgan.ops.instance_norm(x, impl="cuda")
    with pytest.raises(ValueError, match="impl must be one of"):
        fastgan.ops.instance_norm(x, impl="fast")


def test_info_command_lists_backends(capsys):
    from fastgan.cli import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "instance_norm" in out and "torch" in out and "cpu:" in out
    if _backend.extension_error() is None:
        assert f"CPU kernels: {_backend.cpu_kernel_isa()} code" in out
        assert ("Triton on CUDA through the extension's ops (no custom-op wrapper): bias_act, grad_penalty, group_norm, "
                "diffusion step") in out


def test_a_stale_extension_is_refused_with_a_rebuild_message(monkeypatch):
    """An extension built from older source (no ABI_VERSION, or another one) is not used at all, since its kernels
    could read new inputs the old way (the diffusion step's table changed layout once): the ops take the reference
    and the warning, and `fastgan info`, say to rebuild."""
    import types

    assert _backend.stale_extension_error(types.SimpleNamespace(ABI_VERSION=_backend.EXTENSION_ABI)) is None
    for old in (types.SimpleNamespace(), types.SimpleNamespace(ABI_VERSION=_backend.EXTENSION_ABI - 1)):
        assert "rebuild it" in _backend.stale_extension_error(old)
    monkeypatch.setattr(_backend, "_state", {})
    monkeypatch.setattr(_backend, "_warned", set())
    monkeypatch.setattr(_backend, "_available_cache", {})
    monkeypatch.setattr(_backend, "importlib", types.SimpleNamespace(import_module=lambda name: types.SimpleNamespace()))
    with pytest.warns(RuntimeWarning, match="does not match this source .an unversioned build.*rebuild it"):
        assert not _backend.has_kernel("instance_norm_fwd", "CPU")
    assert "does not match this source" in _backend.extension_error()
    with pytest.raises(RuntimeError, match="extension is not in use: fastgan._C does not match this source"):
        fastgan.ops.instance_norm(torch.randn(1, 2, 3, 3), impl="cpp")


@pytest.mark.parametrize("impl", [i for i in ("cpp", "ref") if i in _backend.live_impls("instance_norm_fwd", "cpu")])
@pytest.mark.parametrize("trainable", [False, True])
def test_weight_updated_in_place_before_backward(impl, trainable):
    """Neither weight nor bias is saved for backward (a frozen one is read into a fresh (N, C) tensor, a trainable
    one goes through the recorded fold, whose nodes save none), so updating them in place between forward and
    backward passes autograd's version check, as with F.instance_norm: an EMA of a frozen affine, or a GAN's
    discriminator step before a generator loss's backward through the same network."""
    x = torch.randn(1, 3, 4, 4, requires_grad=True)
    w, b = (torch.rand(3) + 0.5).requires_grad_(trainable), torch.randn(3).requires_grad_(trainable)
    y = fastgan.ops.instance_norm(x, w, b, impl=impl)
    with torch.no_grad():
        w.add_(1.0)
        b.add_(1.0)
    y.square().sum().backward()
    assert x.grad is not None and x.grad.isfinite().all()
    assert (w.grad is not None and b.grad is not None) == trainable


# ---------------------------------------------------------------------------------------------- modules
@pytest.mark.parametrize("cls_name,shape", [("InstanceNorm1d", (3, 5, 17)), ("InstanceNorm2d", (3, 5, 7, 6)),
                                            ("InstanceNorm3d", (2, 5, 3, 4, 5))])
@pytest.mark.parametrize("affine,track", [(False, False), (True, False), (True, True), (False, True)])
def test_modules_are_drop_in(cls_name, shape, affine, track):
    ours = getattr(fastgan.nn, cls_name)(5, affine=affine, track_running_stats=track, momentum=0.3)
    theirs = getattr(nn, cls_name)(5, affine=affine, track_running_stats=track, momentum=0.3)
    assert isinstance(ours, getattr(nn, cls_name))
    if affine:
        with torch.no_grad():
            theirs.weight.normal_()
            theirs.bias.normal_()
    ours.load_state_dict(theirs.state_dict())
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for step in range(2):  # two training steps move the running stats twice
        x = torch.randn(shape) * 2 + 1
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    for k, v in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, rtol=1e-5, atol=1e-6, msg=k)
    ours.eval()
    theirs.eval()
    x = torch.randn(shape)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours(x[0]), theirs(x[0]), rtol=1e-5, atol=1e-5)  # unbatched input


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("training", [True, False])
def test_tracked_stats_with_other_channel_count_is_an_error(channels, training):
    # affine=False lets torch's module accept any C (it only warns); its F.instance_norm then refuses running stats
    # of another size. Ours broadcast C=1 silently: eval gave a (2, 4, 5, 5) output, training averaged the one
    # channel's mean into all four running means; C=3 was an opaque broadcasting error.
    m = fastgan.nn.InstanceNorm2d(4, track_running_stats=True).train(training)
    before = m.running_mean.clone()
    with pytest.warns(UserWarning, match="num_features"), pytest.raises(ValueError, match="running_mean"):
        m(torch.randn(2, channels, 5, 5) + 1)
    torch.testing.assert_close(m.running_mean, before)


def test_eval_with_running_stats_rejects_negative_eps_as_training_does():
    # Training mode (the kernels) refused eps < 0; eval with tracked stats (plain elementwise torch) computed
    # rsqrt(running_var + eps) with it: eps=-0.5 silently scaled by sqrt(2), eps=-1 gave all NaN.
    m = fastgan.nn.InstanceNorm2d(3, eps=-0.5, track_running_stats=True)
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="eps"):
        m(x)
    with pytest.raises(ValueError, match="eps"):
        m.eval()(x)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64])
def test_eval_with_running_stats_rejects_non_float_input_as_training_does(dtype):
    # Eval with tracked stats normalised in float32 and cast back to x's dtype: an int64 input came back as
    # truncated int64 values (bool as all True, complex with a zero imaginary part), where training mode and
    # torch's module raise.
    m = fastgan.nn.InstanceNorm2d(3, track_running_stats=True)
    x = torch.randint(0, 5, (2, 3, 4, 4)).to(dtype)
    with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
        m(x)
    with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
        m.eval()(x)


# ----------------------------------------------------------------------------- torch.nn's weight/bias form
WB_IMPLS = [pytest.param(d, i, id=f"{d}-{i}") for d in devices() for i in _backend.live_impls("instance_norm_fwd", d)
            if i in ("cpp", "cuda")]
needs_wb = pytest.mark.skipif(norm_kernels.compiled_wb() is None, reason="the extension has no instance_norm_wb")


def _wb_inputs(device, dtype, with_w=True, with_b=True, layout="contiguous"):
    x = torch.randn(3, 4, 6, 5, device=device, dtype=dtype)
    x = x.to(memory_format=torch.channels_last) if layout == "channels_last" else x
    w = (torch.rand(4, device=device, dtype=dtype) + 0.5).requires_grad_() if with_w else None
    b = torch.randn(4, device=device, dtype=dtype).requires_grad_() if with_b else None
    return x.requires_grad_(), w, b


@needs_wb
@pytest.mark.parametrize("device,impl", WB_IMPLS)
def test_wb_op_opcheck(device, impl):
    for dtype in (torch.float32, torch.float64):
        for with_w, with_b in ((True, True), (True, False), (False, True), (False, False)):
            for layout in ("contiguous", "channels_last"):
                torch.library.opcheck(norm_kernels.compiled_wb(), (*_wb_inputs(device, dtype, with_w, with_b, layout),
                                                                   1e-5))


@needs_wb
@pytest.mark.parametrize("device,impl", WB_IMPLS)
@pytest.mark.parametrize("with_w,with_b", [(True, True), (True, False), (False, True)])
def test_wb_op_equals_the_python_fold_to_second_order(device, impl, with_w, with_b):
    """instance_norm_wb gives what per_plane_affine + instance_norm_fwd gave (the same fold, the same float64 N-sum
    of the weight/bias gradients): outputs and first- and second-order gradients, bit for bit."""
    from fastgan.ops.instance_norm import per_plane_affine

    def python_fold(x, w, b):
        scale, shift = per_plane_affine(x, w, b)
        return kernel_ops(impl).fwd(x, scale, shift, 1e-5)[0]

    def wb(x, w, b):
        return norm_kernels.compiled_wb()(x, w, b, 1e-5)[0]

    x, w, b = _wb_inputs(device, torch.float32, with_w, with_b)
    results = []
    for f in (python_fold, wb):
        ins = [t.detach().clone().requires_grad_() for t in (x, w, b) if t is not None]
        args = iter(ins)
        y = f(next(args), next(args) if with_w else None, next(args) if with_b else None)
        g1 = torch.autograd.grad((y * y).sum(), ins, create_graph=True)
        g2 = torch.autograd.grad(sum((g * g).sum() for g in g1), ins)
        results.append([y, *g1, *g2])
    for a, c in zip(*results):
        torch.testing.assert_close(a, c, rtol=0, atol=0)


@needs_wb
@pytest.mark.parametrize("device,impl", WB_IMPLS)
def test_wb_op_gradcheck_and_gradgradcheck(device, impl):
    x, w, b = _wb_inputs(device, torch.float64)
    x = x.detach()[:2, :, :3, :4].contiguous().requires_grad_()
    op = norm_kernels.compiled_wb()
    f = lambda x, w, b: op(x, w, b, 1e-5)[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


@needs_wb
def test_wb_op_checks_its_arguments():
    op, x = norm_kernels.compiled_wb(), torch.randn(2, 3, 4, 4)
    with pytest.raises(RuntimeError, match=r"instance_norm_wb: weight must have shape \(3,\)"):
        op(x, torch.ones(4), None, 1e-5)
    with pytest.raises(RuntimeError, match="instance_norm_wb: bias must be floating"):
        op(x, None, torch.ones(3, dtype=torch.int64), 1e-5)
    with pytest.raises(RuntimeError, match="instance_norm_wb: x must have at least 2 dims"):
        op(torch.randn(5), None, None, 1e-5)


@needs_wb
def test_wb_create_graph_after_an_in_place_update_matches_eager():
    """A trainable weight updated in place between forward and a create_graph backward: the gradients and the
    double backward use the forward's values, as F.instance_norm's (it saves its repeated weight)."""
    x, w, b = _wb_inputs("cpu", torch.float64)
    outs = []
    for f in (lambda x, w, b: fastgan.ops.instance_norm(x, w, b, impl="cpp"),
              lambda x, w, b: F.instance_norm(x, weight=w, bias=b)):
        xs, ws, bs = (t.detach().clone().requires_grad_() for t in (x, w, b))
        y = f(xs, ws, bs)
        with torch.no_grad():
            ws.mul_(1.5)
        gx, gw = torch.autograd.grad((y * y).sum(), (xs, ws), create_graph=True)
        outs.append([gx, gw, *torch.autograd.grad((gx * gx).sum() + (gw * gw).sum(), (xs, ws))])
    for a, c in zip(*outs):
        torch.testing.assert_close(a, c, rtol=1e-9, atol=1e-9)
