"""The project's tolerance rule, as one assertion.

DEVELOPERS.md: our error against a float64 reference is at most 2x eager PyTorch's error in the same dtype.
Errors are max-abs over the tensor. A floor of one machine epsilon of the reference's magnitude is added because
eager can be exact by luck on degenerate inputs (a 1x1 plane normalises to exactly the bias), and a 0 bound would
then fail on a last-bit difference that no kernel design can control. The floor is far below any real bug.
"""
import torch


def max_err(t: torch.Tensor, ref64: torch.Tensor) -> float:
    diff = (t.detach().to(torch.float64) - ref64.detach()).abs()
    if torch.isnan(diff).any():
        return float("inf")
    return diff.max().item() if diff.numel() else 0.0


def assert_rule(ours: torch.Tensor, eager: torch.Tensor, ref64: torch.Tensor, what: str = "") -> None:
    """Assert ``ours`` is within the rule, comparing with ``eager`` (same dtype) against ``ref64`` (float64)."""
    assert ours.shape == ref64.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref64.shape)}"
    e_ours, e_eager = max_err(ours, ref64), max_err(eager, ref64)
    floor = torch.finfo(ours.dtype).eps * max(1.0, ref64.abs().max().item())
    bound = 2.0 * e_eager + floor
    assert e_ours <= bound, f"{what}: error {e_ours:.3e} > 2 x eager's {e_eager:.3e} + floor {floor:.1e}"
