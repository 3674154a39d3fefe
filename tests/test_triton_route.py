"""The Triton impl's route on CUDA tensors: through the extension's ops, with the Triton launchers registered as their
CUDA kernels (autograd in C++), instead of the ``fastgan::*_triton`` custom ops (autograd in Python).

On CPU only the registration itself is checked (the dispatcher has the CUDA kernels; fastgan does not report them
as CUDA C++ kernels). On a GPU the routed ops must give the custom ops' results bit for bit, to second order, since
both run the same Triton kernels; the per-op tests (test_bias_act, test_grad_penalty_op) run the routed ops against
the reference with opcheck."""
from __future__ import annotations

import pytest
import torch

from fastgan import _backend
from fastgan.ops import bias_act_kernels, grad_penalty_kernels

FAMILIES = {"bias_act": bias_act_kernels.FAMILY, "grad_penalty": grad_penalty_kernels.FAMILY}

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
    monkeypatch.setenv("FASTGAN_TRITON_ROUTE", "custom_op")
    assert not _backend.route_cuda_to_triton({"bias_act_fwd": lambda *a: None})


def test_families_with_a_cuda_cpp_kernel_are_not_routed():
    if not _backend.has_kernel("instance_norm_fwd", "CUDA"):
        pytest.skip("the extension has no CUDA C++ instance norm here")
    assert not _backend.route_cuda_to_triton({"instance_norm_fwd": lambda *a: None})


def _bias_act_chain(ops, x, b):
    y = ops.fwd(x, b, bias_act_kernels.ACT_CODES["silu"], 0.2, 1.3, -1.0, 1)
    gx, gb = torch.autograd.grad((y * y).sum(), (x, b), create_graph=True)
    return [y, gx, gb, *torch.autograd.grad((gx * gx).sum() + gb.sum(), (x, b))]


def _grad_penalty_chain(ops, g, _unused):
    p, _norm = ops.fwd(g, 0, 0.9)
    (gg,) = torch.autograd.grad((p * p).sum(), g, create_graph=True)
    return [p, gg, *torch.autograd.grad((gg * gg).sum(), g)]


@needs_ext
@needs_cuda_triton
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_routed_ops_equal_custom_ops_on_cuda(family):
    fam = FAMILIES[family]
    x = torch.randn(3, 5, 7, 9, device="cuda").to(memory_format=torch.channels_last)
    b = torch.randn(5, device="cuda")
    chain = _bias_act_chain if family == "bias_act" else _grad_penalty_chain
    outs = {}
    for route, ops in (("dispatcher", fam.ops("triton", "cuda")), ("custom_op", fam.triton)):
        xs, bs = x.clone().requires_grad_(), b.clone().requires_grad_()
        outs[route] = chain(ops, xs, bs)
        if route == "dispatcher":
            assert "CppNode" in outs[route][0].grad_fn.name()  # the extension's C++ autograd, not Python's
    for a, c in zip(outs["dispatcher"], outs["custom_op"]):
        torch.testing.assert_close(a, c, rtol=0, atol=0)
