"""fastgan.nn modules as drop-ins for their torch.nn counterparts: constructor arguments, state_dicts, errors."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan


def test_group_norm_takes_torchs_bias_keyword():
    # torch.nn.GroupNorm(..., bias=False) (an affine weight without a bias) was a TypeError for fastgan's subclass,
    # and such a module's state_dict (no "bias") could not be loaded into it.
    theirs = nn.GroupNorm(2, 4, bias=False)
    with torch.no_grad():
        theirs.weight.normal_()
    for act, fn in (("linear", lambda y: y), ("silu", F.silu)):
        ours = fastgan.nn.GroupNorm(2, 4, bias=False, act=act)
        assert ours.bias is None and ours.state_dict().keys() == theirs.state_dict().keys()
        ours.load_state_dict(theirs.state_dict())
        x = torch.randn(2, 4, 3, 5, requires_grad=True)
        y, ref = ours(x), fn(theirs(x))
        torch.testing.assert_close(y, ref)
        g = torch.randn_like(y)
        for a, b in zip(torch.autograd.grad(y, (x, ours.weight), g), torch.autograd.grad(ref, (x, theirs.weight), g)):
            torch.testing.assert_close(a, b)


def test_group_norm_without_torchs_bias_keyword(monkeypatch):
    """torch < 2.12 (2.11 on the lent H200) has no nn.GroupNorm(bias=...): the module still builds, with and
    without a bias, the same parameters as on newer torch (the UNet could not be built there)."""
    import fastgan.nn.group_norm as gn

    real_init = nn.GroupNorm.__init__

    def old_init(self, num_groups, num_channels, eps=1e-5, affine=True, device=None, dtype=None):
        real_init(self, num_groups, num_channels, eps, affine, device=device, dtype=dtype)

    monkeypatch.setattr(nn.GroupNorm, "__init__", old_init)
    monkeypatch.setattr(gn, "_TORCH_GROUPNORM_HAS_BIAS", False)
    for bias in (True, False):
        m = fastgan.nn.GroupNorm(2, 4, act="silu", bias=bias)
        assert list(m.state_dict()) == (["weight", "bias"] if bias else ["weight"])
        m.reset_parameters()
        assert m(torch.randn(2, 4, 3, 3)).shape == (2, 4, 3, 3)


def test_group_norm_rank_error_names_the_ranks_the_module_takes():
    # The module takes (N, C) and any higher rank (viewed as (N, C, L)); a 0-D or 1-D input got the op's message
    # "x must be 3-D, 4-D or 5-D", which names neither the module's argument nor what it accepts.
    m = fastgan.nn.GroupNorm(2, 4)
    for x in (torch.randn(4), torch.tensor(1.0)):
        with pytest.raises(ValueError, match=r"GroupNorm: input must be \(N, C, \*\) with at least 2 dims"):
            m(x)
    assert m(torch.randn(3, 4)).shape == (3, 4) and m(torch.randn(1, 4, 1, 1, 1, 2)).shape == (1, 4, 1, 1, 1, 2)


def test_modules_compile_with_dynamic_shapes():
    # torch.compile(dynamic=True, fullgraph=True) failed on BiasAct (math.isfinite of the symbolic alpha/gain) and on
    # AdaIN / GroupNorm with a scale (the (N, C) check, written `a in (1, b)`, was False for symbolic sizes).
    torch.manual_seed(0)
    cases = [
        (fastgan.nn.BiasAct(4, act="lrelu"), lambda n: (torch.randn(n, 4, 5, 3),), {}),
        (fastgan.nn.AdaIN(8, 4), lambda n: (torch.randn(n, 4, 5, 3), torch.randn(n, 8)), {}),
        (fastgan.nn.GroupNorm(2, 4, act="silu"), lambda n: (torch.randn(n, 4, 5, 3),),
         {"scale": lambda n: torch.randn(n, 4), "shift": lambda n: torch.randn(n, 4)}),
    ]
    for module, make, extra in cases:
        compiled = torch.compile(module, fullgraph=True, backend="eager", dynamic=True)
        for n in (2, 3):
            args = make(n)
            kw = {k: f(n) for k, f in extra.items()}
            torch.testing.assert_close(compiled(*args, **kw), module(*args, **kw))
    penalty = torch.compile(fastgan.ops.grad_penalty, fullgraph=True, backend="eager", dynamic=True)
    for n in (2, 3):
        g = torch.randn(n, 3, 4, 4)
        torch.testing.assert_close(penalty(g, "wgan-gp", 0.5), fastgan.ops.grad_penalty(g, "wgan-gp", 0.5))


def test_non_finite_act_settings_are_refused_under_compile_too():
    # Under torch.compile the Python check defers to the op's own (a dynamic float cannot be read at trace time).
    kernels = [i for i in fastgan._backend.live_impls("bias_act_fwd", "cpu") if i != "ref"]
    if not kernels:
        pytest.skip("no compiled or interpreted-Triton bias_act on CPU: the deferred check has nothing to run")
    for impl in kernels:
        f = torch.compile(lambda x, a: fastgan.ops.bias_act(x, None, "lrelu", alpha=a, impl=impl), fullgraph=True,
                          backend="eager", dynamic=True)
        with pytest.raises((ValueError, RuntimeError), match="finite"):
            f(torch.randn(2, 3), float("inf"))
