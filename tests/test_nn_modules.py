"""fastgan.nn modules as drop-ins for their torch.nn counterparts: constructor arguments and state_dicts."""
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
