"""Fit the NCCL all-to-all size efficiency and fixed cost (``macssim.cost._engines``).

Reads aiconfigurator-core's measured NCCL table for H100 SXM converted to macssim's format
(``/tmp/tables/nccl.csv`` by default; columns op,system,framework,version,kernel,dtype,
collective,ranks,bytes_per_rank,latency_s) and fits, to the 8-rank all-to-all rows,

    t(S) = fixed_s + L + (G - 1) · m / (B · f(m)),   m = S / G bytes per GPU pair,
    f(m) = f_inf / (1 + (m_half / m) ** p)

with L = 10 µs (the preset NVLink latency) and B = 370 GB/s (the preset NVLink capacity),
by least squares on log time. Prints the constants and the relative error per size. The
package does not read the table: the constants are copied into ``_engines.py``.

    python benchmarks/fit_nccl_alltoall.py [--table PATH]
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

G, L, B = 8, 10e-6, 450e9 * 0.8222


def model(params: np.ndarray, m: np.ndarray) -> np.ndarray:
    fixed, f_inf, log_half, p = params
    f = f_inf / (1.0 + (np.exp(log_half) / m) ** p)
    return fixed + L + (G - 1) * m / (B * f)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--table", default="/tmp/tables/nccl.csv")
    ap.add_argument("--min-bytes", type=float, default=0.0)
    args = ap.parse_args()
    df = pd.read_csv(args.table)
    df = df[(df.collective == "alltoall") & (df.ranks == G) & (df.bytes_per_rank >= args.min_bytes)]
    df = df.groupby("bytes_per_rank", as_index=False).latency_s.mean()  # both dtypes
    size = df.bytes_per_rank.to_numpy(float)
    t = df.latency_s.to_numpy(float)
    m = size / G

    def resid(p):
        return np.log(model(p, m)) - np.log(t)

    fit = least_squares(resid, x0=[2e-6, 0.9, np.log(1e6), 1.0],
                        bounds=([0.0, 0.1, np.log(1e2), 0.2], [1e-4, 1.0, np.log(1e10), 4.0]))
    fixed, f_inf, log_half, p = fit.x
    print(f"fixed_s={fixed:.3e}  f_inf={f_inf:.4f}  m_half={np.exp(log_half):.4e}  p={p:.4f}")
    pred = model(fit.x, m)
    err = pred / t - 1
    for s, tt, pp, e in zip(size, t, pred, err, strict=True):
        print(f"{int(s):>12d} B/rank  measured {tt * 1e6:9.2f} us  model {pp * 1e6:9.2f} us  "
              f"{e:+7.1%}")
    big = size >= 1 << 20
    print(f"max |error| all sizes {np.abs(err).max():.1%}, >= 1 MiB/rank "
          f"{np.abs(err[big]).max():.1%}, rms {np.sqrt(np.mean(err ** 2)):.1%}")
    old = L + (G - 1) * m / B
    print("today's model (no efficiency, no fixed cost): errors "
          + ", ".join(f"{int(s) >> 20} MiB {o / tt - 1:+.0%}" for s, o, tt
                      in zip(size, old, t, strict=True) if s >= 1 << 20))


if __name__ == "__main__":
    main()
