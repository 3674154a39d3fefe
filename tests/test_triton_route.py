"""The Triton impl's route on CUDA tensors: through the extension's ops, with the Triton launchers registered as their
CUDA kernels (autograd in C++), instead of the ``fastgan::*_triton`` custom ops (autograd in Python).

On CPU: the registration itself (the dispatcher has the CUDA kernels; fastgan does not report them as CUDA C++
kernels), and the route as a whole with the launchers registered as the ops' *CPU* kernels for the test (Triton's
interpreter): the extension's C++ autograd driving the Triton launchers must give the custom ops' results bit for
bit, to second order, since both run the same Triton kernels. On a GPU the same comparison runs on the real CUDA
route; the per-op tests (test_bias_act, test_grad_penalty_op, test_group_norm*) run the routed ops against the
reference with opcheck."""
from __future__ import annotations

import warnings

import pytest
import torch

from fastgan import _backend
from fastgan.diffusion import step_kernels
from fastgan.ops import bias_act_kernels, grad_penalty_kernels, group_norm_kernels

FAMILIES = {"bias_act": bias_act_kernels.FAMILY, "grad_penalty": grad_penalty_kernels.FAMILY}
LAUNCHERS = {"bias_act": bias_act_kernels.FAMILY.launchers, "grad_penalty": grad_penalty_kernels.FAMILY.launchers,
             "group_norm": group_norm_kernels.LAUNCHERS, "diffusion_step": step_kernels.LAUNCHERS}

needs_ext = pytest.mark.skipif(_backend.extension_error() is not None, reason="the compiled extension is not loaded")
needs_cuda_triton = pytest.mark.skipif(not (torch.cuda.is_available() and _backend.triton_available()),
                                       reason="needs a CUDA device and Triton")


@needs_ext
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_routing_registers_cuda_kernels_not_reported_as_cuda_cpp(family):
    fam = FAMILIES[family]
    assert fam._route_triton()
    for name in fam.op_names:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastgan::{name}", "CUDA"), name
        assert not _backend.has_kernel(name, "CUDA"), name  # a Triton launcher, not a CUDA C++ kernel
    assert "cuda" not in _backend.live_impls(fam.op_names[0], "cuda")
    assert fam.ops("triton", "cuda") is fam.compiled()
    assert fam.ops("triton", "cpu") is fam.triton  # the interpreter on CPU tensors keeps the custom ops


def test_route_env_switch_keeps_custom_ops(monkeypatch):
    # instance_norm_wb: an extension op that nothing routes, so a regression here cannot replace a routed kernel
    monkeypatch.setenv("FASTGAN_TRITON_ROUTE", "custom_op")
    assert not _backend.route_cuda_to_triton({"instance_norm_wb": lambda *a: None})
    assert "instance_norm_wb" not in _backend._triton_routed


def test_routing_is_decided_at_import():
    """The route is registered by the families' register_compiled at import, so a first CUDA call inside a
    torch.compile(fullgraph=True) trace does not meet the registration (Dynamo cannot trace it)."""
    if _backend.extension_error() is not None:
        pytest.skip("the compiled extension is not loaded")
    assert {"bias_act_fwd", "grad_penalty_fwd", "group_norm_fwd", "diffusion_step", "diffusion_step_philox"} \
        <= _backend._triton_routed
    assert all(fam._routed for fam in FAMILIES.values()) and group_norm_kernels._routed == [True]


def test_families_with_a_cuda_cpp_kernel_are_not_routed():
    if not _backend.has_kernel("instance_norm_fwd", "CUDA"):
        pytest.skip("the extension has no CUDA C++ instance norm here")
    assert not _backend.route_cuda_to_triton({"instance_norm_fwd": lambda *a: None})


def test_group_norm_is_routed_and_keeps_its_composite_maps_double_backward():
    if _backend.extension_error() is not None:
        pytest.skip("the compiled extension is not loaded")
    group_norm_kernels.kernel_ops("triton", "cuda")  # routes on first use
    for name in group_norm_kernels.LAUNCHERS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastgan::{name}", "CUDA"), name
        assert not _backend.has_kernel(name, "CUDA"), name
    assert group_norm_kernels.kernel_ops("triton", "cuda") is group_norm_kernels._compiled_ops()
    assert group_norm_kernels.kernel_ops("triton", "cpu") is group_norm_kernels._TRITON
    assert not group_norm_kernels._has_dbwd_maps_kernel("cuda")  # no Triton kernel: the composite runs


def _bias_act_chain(ops, x, b):
    y = ops.fwd(x, b, bias_act_kernels.ACT_CODES["silu"], 0.2, 1.3, -1.0, 1)
    gx, gb = torch.autograd.grad((y * y).sum(), (x, b), create_graph=True)
    return [y, gx, gb, *torch.autograd.grad((gx * gx).sum() + gb.sum(), (x, b))]


def _grad_penalty_chain(ops, g, _unused):
    p, _norm = ops.fwd(g, 0, 0.9)
    (gg,) = torch.autograd.grad((p * p).sum(), g, create_graph=True)
    return [p, gg, *torch.autograd.grad((gg * gg).sum(), g)]


def _group_norm_chain(ops, x, _unused, maps: bool):
    n, c = x.shape[:2]
    f64 = torch.float64  # the group-norm kernels take the folded (N, C) affine in float64 (fold_affine)
    scale = (1 + 0.1 * torch.randn(n, c, dtype=f64, device=x.device)).requires_grad_()
    shift = (0.1 * torch.randn(n, c, dtype=f64, device=x.device)).requires_grad_()
    gamma = beta = None
    ins = [x, scale, shift]
    if maps:
        gamma = (0.1 * torch.randn_like(x)).requires_grad_()
        beta = (0.1 * torch.randn_like(x)).requires_grad_()
        ins += [gamma, beta]
    y = ops.fwd(x, scale, shift, gamma, beta, 1, 1e-5, 5, 0.2)[0]
    grads = torch.autograd.grad((y * y).sum(), ins, create_graph=True)
    return [y, *grads, *torch.autograd.grad(sum((g * g).sum() for g in grads), ins)]


ROUTE_CASES = ["bias_act", "grad_penalty", "group_norm", "group_norm-maps"]


def _assert_routes_agree(family: str, routed, custom, device: str) -> None:
    """The same second-order chain through ``routed`` (the extension's ops) and ``custom`` (the Triton custom
    ops), from the same random inputs: bit-equal results, and the routed forward recorded by C++ autograd."""
    if family.startswith("group_norm"):
        chain = lambda ops, xs, bs: _group_norm_chain(ops, xs, bs, family.endswith("maps"))  # noqa: E731
    else:
        chain = _bias_act_chain if family == "bias_act" else _grad_penalty_chain
    x = torch.randn(2, 3, 5, 7, device=device).to(memory_format=torch.channels_last)
    b = torch.randn(3, device=device)
    seed = torch.randint(0, 2**31, ()).item()
    outs = {}
    for route, ops in (("routed", routed), ("custom_op", custom)):
        torch.manual_seed(seed)  # the chain's own random maps, the same for both routes
        outs[route] = chain(ops, x.clone().requires_grad_(), b.clone().requires_grad_())
    assert "CppNode" in outs["routed"][0].grad_fn.name()  # the extension's C++ autograd, not Python's
    assert len(outs["routed"]) == len(outs["custom_op"])
    for a, c in zip(outs["routed"], outs["custom_op"]):
        torch.testing.assert_close(a, c, rtol=0, atol=0)


def _route_pair(family: str, device_type: str):
    if family.startswith("group_norm"):
        return group_norm_kernels.kernel_ops("triton", device_type), group_norm_kernels._TRITON
    fam = FAMILIES[family]
    return fam.ops("triton", device_type), fam.triton


@needs_ext
@needs_cuda_triton
@pytest.mark.parametrize("family", ROUTE_CASES)
def test_routed_ops_equal_custom_ops_on_cuda(family):
    routed, custom = _route_pair(family, "cuda")
    assert routed is not custom
    _assert_routes_agree(family, routed, custom, "cuda")


@pytest.fixture
def launchers_as_cpu_kernels(monkeypatch):
    """The route on CPU: each family's launchers registered as its extension ops' CPU kernels (the Triton
    interpreter runs them), for the test only; destroying the library restores the C++ kernels. As on CUDA,
    group_norm_dbwd_maps (no Triton kernel) is left to the composite."""
    if _backend.extension_error() is not None or not (_backend.triton_available() and _backend.triton_interpret()):
        pytest.skip("needs the compiled extension and Triton's interpreter (TRITON_INTERPRET=1)")
    monkeypatch.setitem(group_norm_kernels._dbwd_maps_kernel, "cpu", False)
    lib = torch.library.Library("fastgan", "IMPL")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "overriding a previously registered kernel"
        for launchers in LAUNCHERS.values():
            for name, fn in launchers.items():
                lib.impl(name, fn, "CPU")
    yield
    lib._destroy()


@pytest.mark.parametrize("family", ROUTE_CASES)
def test_cpp_autograd_over_triton_launchers_equals_custom_ops(launchers_as_cpu_kernels, family):
    compiled = group_norm_kernels._compiled_ops() if family.startswith("group_norm") else FAMILIES[family].compiled()
    _assert_routes_agree(family, compiled, _route_pair(family, "cpu")[1], "cpu")


@needs_ext
def test_diffusion_step_is_routed_without_autograd_changes():
    """The diffusion step's two ops take the route too (the custom-op wrapper was most of a step's host time on
    the H200); their autograd stays the Python formula both paths share."""
    assert step_kernels._ROUTED[0]
    for name in step_kernels.LAUNCHERS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastgan::{name}", "CUDA"), name
        assert not _backend.has_kernel(name, "CUDA"), name
    assert "triton" in _backend.live_impls("diffusion_step", "cuda") or not _backend.triton_available()


def test_routed_diffusion_step_equals_custom_op(launchers_as_cpu_kernels):
    """The extension's ops running the launchers (as CPU kernels here) give the custom ops' results bit for bit:
    given noise, and in-kernel Philox noise from the same seed; with guidance and clipping."""
    g = torch.Generator().manual_seed(4)
    x, m, u, z = (torch.randn(3, 2, 5, 7, generator=g) for _ in range(4))
    coef = torch.randn(3, step_kernels.NUM_COEF, generator=g)
    seed = torch.tensor([1234], dtype=torch.int64)
    routed = torch.ops.fastgan.diffusion_step(x, m, u, z, coef, 1.5, 1.0)
    custom = step_kernels._step_triton(x, m, u, z, coef, 1.5, 1.0)
    torch.testing.assert_close(routed, custom, rtol=0, atol=0)
    routed = torch.ops.fastgan.diffusion_step_philox(x, m, None, seed, coef, 1.0, 0.0)
    custom = step_kernels._step_philox_triton(x, m, None, seed, coef, 1.0, 0.0)
    torch.testing.assert_close(routed, custom, rtol=0, atol=0)
