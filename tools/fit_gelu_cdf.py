"""Fits the polynomials of the CPU kernel's vectorised normal CDF (csrc/vec_math.h, ``normal_tail_*``).

For u >= 0, erfc(u) = t * exp(-u^2) * Q(t) with t = 1 / (1 + u * 5/16), where Q(t) = erfcx(u) / t is smooth and
positive on t in (0, 1]. Q is interpolated at Chebyshev nodes of t in [t_min, 1] (t_min from u = U_MAX; erfc(11)
~ 1e-54, below the smallest float, so larger u only has to stay tiny) in the variable x = (2t - 1 - t_min) /
(1 - t_min) in [-1, 1], and written as monomials in x for Horner's rule. Values come from mpmath at 40 digits.

    python tools/fit_gelu_cdf.py    # prints the coefficient sets (C++ literals) and their max relative errors

Degree 10 is for float math: 1.2e-9 with double coefficients, ~7.5e-8 once they are rounded to float (printed as
"float32 Horner", numpy float32 arithmetic), so near t = 1 (small |z|), where Q's error is amplified, the float forward
uses the small-|z| form below; degree 14 for double (~7e-13, far below the float ulp that the gradients are rounded
to).

Small |z| (float forward, |z| < Z_SMALL): Phi(z) = 1/2 + z P(z^2) with P(s) = erf(sqrt(s/2)) / (2 sqrt s), a
polynomial of degree 7 in s interpolated at Chebyshev nodes of s in [0, Z_SMALL^2]. It pins Phi(0) to 1/2 and keeps
the forward within a few ulps where eager's is (the tail form alone was 7.8 ulps off near 0, eager 1.6).

mpmath comes with torch (through sympy); this is a developer tool, not a runtime dependency.
"""
import mpmath as mp
import numpy as np

P = 0.3125  # exactly representable: t is computed with this P, and Q(t) is only right for the same t
U_MAX = 11.0
DEGREES = {"float": 10, "double": 14}
Z_SMALL = 1.5
SMALL_DEGREE = 7


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


def small_p(s):
    return 1 / mp.sqrt(2 * mp.pi) if s == 0 else mp.erf(mp.sqrt(s / 2)) / (2 * mp.sqrt(s))


def fit_small(degree: int, z_max: float):
    """Returns (monomial coefficients in s = z^2, lowest first; max relative error of P with double and with
    float32 coefficients and arithmetic, s = z * z rounded to float)."""
    s_max = mp.mpf(z_max) ** 2
    nodes = [mp.cos(mp.pi * (k + mp.mpf(0.5)) / (degree + 1)) for k in range(degree + 1)]
    values = [small_p((x + 1) * s_max / 2) for x in nodes]
    cheb = np.polynomial.chebyshev.chebfit(np.array(nodes, dtype=float), np.array(values, dtype=float), degree)
    in_x = np.polynomial.Polynomial(np.polynomial.chebyshev.cheb2poly(cheb))
    coef = in_x(np.polynomial.Polynomial([-1.0, 2 / float(s_max)])).coef  # x = 2 s / s_max - 1
    c32 = coef.astype(np.float32)
    worst = worst32 = 0.0
    for z in np.linspace(0.0, z_max, 3001)[1:]:
        ref = float(small_p(mp.mpf(float(z)) ** 2))
        worst = max(worst, abs(np.polynomial.polynomial.polyval(z * z, coef) - ref) / ref)
        s32 = np.float32(z) * np.float32(z)
        q = c32[-1]
        for c in c32[-2::-1]:
            q = np.float32(q * s32 + c)
        worst32 = max(worst32, abs(float(q) - ref) / ref)
    return coef, worst, worst32


def float32_horner_error(mono, t_min: float) -> float:
    """Max relative error of Q with the coefficients and Horner's rule in float32 (x from t in float32)."""
    c32 = np.asarray(mono, dtype=np.float32)
    a32, b32 = np.float32(2 / (1 - t_min)), np.float32(-(1 + t_min) / (1 - t_min))
    worst = 0.0
    for u in np.linspace(0.0, U_MAX, 2201):
        t = 1 / (1 + P * mp.mpf(u))
        x = np.float32(np.float32(t) * a32 + b32)
        q = c32[-1]
        for c in c32[-2::-1]:
            q = np.float32(q * x + c)
        worst = max(worst, abs(float(q) - float(q_of_t(t))) / float(q_of_t(t)))
    return worst


def main():
    for name, degree in DEGREES.items():
        mono, t_min, worst = fit(degree)
        suffix = "f" if name == "float" else ""
        extra = f", float32 Horner {float32_horner_error(mono, t_min):.2e}" if name == "float" else ""
        print(f"// {name}: degree {degree}, t_min = {t_min!r}, max relative error {worst:.2e}{extra}")
        print(f"//   x = t * {2 / (1 - t_min)!r} - {(1 + t_min) / (1 - t_min)!r}")
        print("  highest first: " + ", ".join(f"{float(c)!r}{suffix}" for c in mono[::-1]))
    coef, worst, worst32 = fit_small(SMALL_DEGREE, Z_SMALL)
    print(f"// small |z| < {Z_SMALL}: P(s) of degree {SMALL_DEGREE}, max relative error {worst:.2e}, "
          f"float32 Horner {worst32:.2e}")
    print("  highest first: " + ", ".join(f"{float(c)!r}f" for c in coef[::-1]))


if __name__ == "__main__":
    main()
