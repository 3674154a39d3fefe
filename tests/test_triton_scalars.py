"""Float scalars reach compiled Triton kernels as float32, so the kernels take a float64 scalar as three float32
parts (fastgan.kernels._params.split64 / join64): the parts must be float32 values and add back to the double."""
import math
import random
import struct

import pytest

pytest.importorskip("triton")
from fastgan.kernels._params import split64  # noqa: E402


def _is_f32(v: float) -> bool:
    return math.isnan(v) or struct.unpack("f", struct.pack("f", v))[0] == v


def _join(parts) -> float:
    hi, mid, lo = parts
    return (hi + mid) + lo  # join64's order, in float64


def test_split64_round_trips_doubles_exactly():
    """Exact for 2^-78 <= |v| < 2^128 (below, the last part falls under float32's normal range)."""
    rng = random.Random(0)
    values = [0.2, 0.6, 1 / 3, math.pi, -7.5, 1e-5, 3.0e38, -2.5e-20, 0.0, -0.0, 1.0, 2.0**-78]
    values += [rng.uniform(-1, 1) * 10 ** rng.randint(-23, 38) for _ in range(2000)]
    for v in values:
        parts = split64(v)
        assert all(_is_f32(p) for p in parts), (v, parts)
        assert _join(parts) == v, (v, parts)
        assert parts[0] == struct.unpack("f", struct.pack("f", v))[0]  # hi: what float32 math uses
    for v in (1e-30, -3.3630640246370174e-31, 2.0**-126):  # tinier: still within float32's subnormal steps
        assert abs(_join(split64(v)) - v) <= 2.0**-149, v


def test_split64_keeps_the_sign_of_zero():
    for z in (0.0, -0.0):
        assert all(math.copysign(1, p) == math.copysign(1, z) for p in split64(z))
        assert math.copysign(1, _join(split64(z))) == math.copysign(1, z)


def test_split64_passes_non_finite_and_out_of_range_values():
    assert split64(math.inf) == (math.inf, 0.0, 0.0) and split64(-math.inf) == (-math.inf, 0.0, 0.0)
    assert math.isnan(split64(math.nan)[0]) and split64(math.nan)[1:] == (0.0, 0.0)
    assert split64(1e300) == (1e300, 0.0, 0.0)  # beyond float32: arrives as inf, documented


def test_bias_act_scalars_memo_is_split64_by_bits():
    """bias_act's launcher memoises its 15 scalar arguments by the bits of (alpha, gain, clamp): equal floats with
    different bits (0.0 and -0.0) get their own entries, and every entry is what split64 gives."""
    from fastgan.kernels import bias_act

    consts = (math.sqrt(0.5), 1.0 / math.sqrt(2 * math.pi))
    for args in ((0.2, 1.0, -1.0), (0.0, 1.0, -1.0), (-0.0, 1.0, -1.0), (0.2, math.sqrt(2), 256.0), (0.2, 1.0, -1.0)):
        want = tuple(v for s in args + consts for v in split64(s))
        got = bias_act._scalars(*args)
        assert struct.pack("15d", *got) == struct.pack("15d", *want), args
