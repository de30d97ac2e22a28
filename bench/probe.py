"""Bandwidth probe: the streaming limit that a memory-bound GLM pass is compared against.

A Numba parallel sum that reads every byte of ``X`` exactly once: the rows are cut into a
fixed number of contiguous chunks (independent of the thread count), ``prange`` runs over
the chunks and each chunk sums its bytes front to back as one flat run of memory, in the data
dtype (fastmath lets LLVM vectorize the reduction with several accumulators). Nothing is
written but one number per chunk, so the time is the time to stream ``X`` through the cores:
``GB/s = X.nbytes / time``.

Why a flat run and not rows: the access pattern, not only the byte count, sets the speed.
Reading four rows side by side (four streams, as the probe did until 2026-11-27) matched the
flat read on 200,000 x 500 float64 (4,000-byte rows: 40 ms both, 20 GB/s) but not on shorter
rows: 200,000 x 500 float32 (2,000-byte rows) took 25.7 ms against 17.5 ms flat, and the
multinomial benchmark's 100,000 x 300 float64 14.1 ms against 10.5 ms (interleaved medians,
two threads, the AMD EPYC machine). The hardware prefetcher follows one long stream better
than four short ones, so only the flat read is the limit for every shape. (A flat loop
written ``for i in range(lo, hi): s += flat[i]`` ran at ~12 GB/s: Numba's wraparound test
for a possibly negative index stops the vectorizer; slicing first and counting from 0 does
not.)

This is a baseline, not library code: it lives in bench/ and is compiled here without
Numba's on-disk cache (the warm-up call compiles it), so it leaves no files behind.
"""

import numba
import numpy as np
from numba import prange

#: fixed number of chunks (many more than threads, so two threads split them evenly)
N_CHUNKS = 64

_OPTS = dict(parallel=True, fastmath=True, nogil=True, cache=False, error_model="numpy")


@numba.njit(**_OPTS)
def _sum_flat(flat, d, starts, out):
    """``out[c]`` = sum of rows ``starts[c]:starts[c+1]`` of a C-contiguous array whose
    ``d``-long rows are laid end to end in ``flat``; each chunk is one run of memory."""
    for c in prange(starts.shape[0] - 1):
        seg = flat[starts[c] * d:starts[c + 1] * d]
        s = seg[0] - seg[0]  # zero in the data dtype (chunks are never empty: see chunk_starts)
        for j in range(seg.shape[0]):
            s += seg[j]
        out[c] = s


@numba.njit(**_OPTS)
def _sum_csr(data, indices, indptr, starts, out, iout):
    """Streams data, indices and indptr once each, row-chunked like a CSR pass."""
    for c in prange(starts.shape[0] - 1):
        r0 = starts[c]
        r1 = starts[c + 1]
        seg = data[indptr[r0]:indptr[r1]]
        idx = indices[indptr[r0]:indptr[r1]]
        s = seg[0] - seg[0] if seg.shape[0] > 0 else 0.0
        for p in range(seg.shape[0]):
            s += seg[p]
        t = 0
        for p in range(idx.shape[0]):
            t += idx[p]
        ptr = indptr[r0:r1 + 1]
        for r in range(ptr.shape[0]):
            t += ptr[r]
        out[c] = s
        iout[c] = t


def chunk_starts(n, n_chunks=N_CHUNKS):
    n_chunks = max(1, min(n_chunks, n))
    return np.linspace(0, n, n_chunks + 1).round().astype(np.int64)


class DenseProbe:
    """``probe()`` reads a C- or F-contiguous dense array once; ``nbytes`` is what it reads."""

    def __init__(self, X):
        if X.flags.c_contiguous:
            self.A = X
        elif X.flags.f_contiguous:
            self.A = X.T  # C-contiguous view: the same bytes in memory order
        else:
            raise ValueError("the probe needs a contiguous array")
        self.starts = chunk_starts(self.A.shape[0])
        self.out = np.zeros(len(self.starts) - 1)
        self.nbytes = X.nbytes

    def __call__(self):
        _sum_flat(self.A.reshape(-1), self.A.shape[1], self.starts, self.out)
        return self.out.sum()


class CSRProbe:
    """Reads ``data``, ``indices`` and ``indptr`` of a CSR matrix once."""

    def __init__(self, X):
        self.data, self.indices, self.indptr = X.data, X.indices, X.indptr
        nnz = X.indptr[-1]
        # rows split so that chunks hold about the same number of nonzeros
        targets = np.linspace(0, nnz, N_CHUNKS + 1)
        starts = np.searchsorted(X.indptr, targets, side="left")
        starts[0], starts[-1] = 0, X.shape[0]
        self.starts = np.maximum.accumulate(starts).astype(np.int64)
        self.out = np.zeros(N_CHUNKS, dtype=X.data.dtype)
        self.iout = np.zeros(N_CHUNKS, dtype=np.int64)
        self.nbytes = X.data.nbytes + X.indices.nbytes + X.indptr.nbytes

    def __call__(self):
        _sum_csr(self.data, self.indices, self.indptr, self.starts, self.out, self.iout)
        return self.out.sum(dtype=np.float64)


def probe(X):
    """A callable that streams ``X`` once (dense or CSR); it has ``.nbytes``."""
    import scipy.sparse as sp

    return CSRProbe(sp.csr_matrix(X)) if sp.issparse(X) else DenseProbe(X)


def check_probe(pr, X):
    """The probe's sum equals numpy's (it really read the whole array)."""
    import scipy.sparse as sp

    got = pr()
    want = float(X.data.sum(dtype=np.float64)) if sp.issparse(X) else float(
        X.sum(dtype=np.float64))
    scale = float(np.abs(X.data if sp.issparse(X) else X).max()) * np.sqrt(
        X.nnz if sp.issparse(X) else X.size)
    tol = (1e-3 if (X.dtype == np.float32) else 1e-9) * scale
    assert abs(got - want) <= tol, (got, want, tol)


if __name__ == "__main__":  # quick standalone use: python bench/probe.py [n] [d]
    import sys
    import time

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    d = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    X = np.random.default_rng(0).standard_normal((n, d))
    pr = probe(X)
    check_probe(pr, X)
    ts = []
    for _ in range(15):
        t0 = time.perf_counter()
        pr()
        ts.append(time.perf_counter() - t0)
    t = float(np.median(ts))
    print(f"{X.nbytes / 1e6:.0f} MB in {t * 1e3:.1f} ms: {X.nbytes / t / 1e9:.1f} GB/s "
          f"({numba.get_num_threads()} threads)")
