"""Fits the polynomials of the CPU kernel's vectorised normal CDF (csrc/vec_math.h, ``normal_tail_*``).

For u >= 0, erfc(u) = t * exp(-u^2) * Q(t) with t = 1 / (1 + u * 5/16), where Q(t) = erfcx(u) / t is smooth and
positive on t in (0, 1]. Q is interpolated at Chebyshev nodes of t in [t_min, 1] (t_min from u = U_MAX; erfc(11)
~ 1e-54, below the smallest float, so larger u only has to stay tiny) in the variable x = (2t - 1 - t_min) /
(1 - t_min) in [-1, 1], and written as monomials in x for Horner's rule. Values come from mpmath at 40 digits.

    python tools/fit_gelu_cdf.py    # prints both coefficient sets (C++ literals) and their max relative error

Degree 10 is for float math (max relative error ~1.2e-9, below a float ulp); degree 14 for double (~7e-13, far below
the float ulp that the gradients are rounded to). mpmath comes with torch (through sympy); this is a developer tool,
not a runtime dependency.
"""
import mpmath as mp
import numpy as np

P = 0.3125  # exactly representable: t is computed with this P, and Q(t) is only right for the same t
U_MAX = 11.0
DEGREES = {"float": 10, "double": 14}


def q_of_t(t):
    u = (1 / t - 1) / P
    return mp.erfc(u) * mp.exp(u * u) / t


def fit(degree: int):
    """Returns (monomial coefficients in x, lowest first; t_min; max relative error on a grid of u)."""
    t_min = 1 / (1 + P * mp.mpf(U_MAX))
    nodes = [mp.cos(mp.pi * (k + mp.mpf(0.5)) / (degree + 1)) for k in range(degree + 1)]
    values = [q_of_t((x * (1 - t_min) + 1 + t_min) / 2) for x in nodes]
    cheb = np.polynomial.chebyshev.chebfit(np.array(nodes, dtype=float), np.array(values, dtype=float), degree)
    mono = np.polynomial.chebyshev.cheb2poly(cheb)
    worst = 0.0
    for u in np.linspace(0.0, U_MAX, 2201):
        t = 1 / (1 + P * mp.mpf(u))
        x = float((2 * t - 1 - t_min) / (1 - t_min))
        q = q_of_t(t)
        worst = max(worst, abs(np.polynomial.polynomial.polyval(x, mono) - float(q)) / float(q))
    return mono, float(t_min), worst


def main():
    for name, degree in DEGREES.items():
        mono, t_min, worst = fit(degree)
        suffix = "f" if name == "float" else ""
        print(f"// {name}: degree {degree}, t_min = {t_min!r}, max relative error {worst:.2e}")
        print(f"//   x = t * {2 / (1 - t_min)!r} - {(1 + t_min) / (1 - t_min)!r}")
        print("  highest first: " + ", ".join(f"{float(c)!r}{suffix}" for c in mono[::-1]))


if __name__ == "__main__":
    main()
