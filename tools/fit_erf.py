#!/usr/bin/env python3
"""Fits the polynomial coefficients of `erf_f32` (crates/cnclip-model/src/model/ops.rs) and checks
the function's error in ulps, evaluated as the Rust code does (f32, separate multiply and add).

    python3 tools/fit_erf.py

erf(x) = x + x·A(x²) for |x| < 1, and 1 − e^(−x²)·B(1/|x|) for 1 ≤ |x| < 3.92 (sign restored),
±1 beyond (erfc(3.92) = 1.6e-8 is less than half an ulp of 1). A and B are near-minimax
polynomials (relative error), fitted by least squares on Chebyshev nodes with Lawson reweighting;
the reference values are Python's math.erf / math.erfc in f64.
"""
import math

import numpy as np

f32 = np.float32


def fit(fun, lo, hi, degree, nodes=4000, rounds=60):
    t = np.cos(np.pi * (np.arange(nodes) + 0.5) / nodes)
    x = lo + (hi - lo) * (t + 1) / 2
    y = np.array([fun(v) for v in x])
    vander = np.vander(x, degree + 1, increasing=True)
    w = np.ones(nodes)
    for _ in range(rounds):
        scale = w / np.abs(y)
        c, *_ = np.linalg.lstsq(vander * scale[:, None], y * scale, rcond=None)
        err = np.abs(vander @ c - y) / np.abs(y)
        w = w * np.sqrt(err / err.max()) + 1e-12
        w /= w.sum()
    return [f32(v) for v in c], float(err.max())


def small(s):
    return math.erf(math.sqrt(s)) / math.sqrt(s) - 1 if s > 0 else 2 / math.sqrt(math.pi) - 1


def tail(u):
    return math.erfc(1 / u) * math.exp(1 / u**2)


def horner(cs, t):
    p = cs[-1]
    for c in reversed(cs[:-1]):
        p = f32(f32(p * t) + c)
    return p


def erf32(x, a_coef, b_coef):
    x = f32(x)
    a = f32(abs(x))
    if a < 1:
        return f32(x + f32(x * horner(a_coef, f32(a * a))))
    if a >= f32(3.92):
        return f32(math.copysign(1.0, x))
    r = horner(b_coef, f32(f32(1) / a))
    e = f32(math.exp(-float(f32(a * a))))
    return f32(math.copysign(f32(f32(1) - f32(e * r)), x))


def main():
    a_coef, a_err = fit(small, 0.0, 1.0, 6)
    b_coef, b_err = fit(tail, 1 / 3.92, 1.0, 9)
    print(f"A (degree 6 in x², relative fit error {a_err:.2e}):")
    print("  " + ", ".join(f"{float(c):.9e}" for c in a_coef))
    print(f"B (degree 9 in 1/|x|, relative fit error {b_err:.2e}):")
    print("  " + ", ".join(f"{float(c):.9e}" for c in b_coef))
    rng = np.random.default_rng(0)
    xs = np.concatenate(
        [np.linspace(0, 4, 100_001), rng.uniform(0, 4, 100_000), np.geomspace(1e-8, 1, 10_000)]
    ).astype(np.float32)
    worst = (0.0, 0.0)
    for x in xs:
        ref = math.erf(float(x))
        ulp = float(np.spacing(np.float32(abs(ref)))) if ref else 1e-45
        err = abs(float(erf32(x, a_coef, b_coef)) - ref) / ulp
        worst = max(worst, (err, float(x)))
    print(f"worst error with an exact e^(-x²): {worst[0]:.2f} ulp at x = {worst[1]}")


if __name__ == "__main__":
    main()
