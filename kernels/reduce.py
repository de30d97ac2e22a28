"""Fixed row partition and fixed-order reductions.

Every parallel kernel runs the chunks of a partition that depends only on the data (never on
the thread count), each chunk on whichever thread claims it first (:mod:`.schedule`), writes
chunk ``c``'s partial sum into ``buf[c]`` and then adds the chunks in the order
``0, 1, ..., C-1`` (:func:`sum_chunks`). The result is therefore bitwise identical for any
number of threads and on every run.
"""

import numpy as np
from numba import prange

from ._jit import jit
from .schedule import claim

#: upper bound on the number of chunks of a partition
MAX_CHUNKS = 32
#: rows (dense) or nonzeros (CSR) below which a chunk is not split further
MIN_ROWS_PER_CHUNK = 512
MIN_NNZ_PER_CHUNK = 32768
#: a CSR partition has at most nnz / (NNZ_PER_CHUNK_COLUMN d) chunks (but MIN_CSR_CHUNKS where
#: the other limits allow): each chunk's float64 accumulator of d columns is zeroed, filled at
#: random and reduced, streaming 3 d values against the chunk's nnz / C random scatters (see
#: :func:`nnz_partition`)
NNZ_PER_CHUNK_COLUMN = 32
MIN_CSR_CHUNKS = 4
#: columns per block of :func:`sum_chunks` (32 chunks x 4,096 columns: 1 MB of float64)
SUM_BLOCK = 4096


def row_partition(n_rows):
    """Chunk boundaries ``starts`` (int64, length C+1) splitting ``range(n_rows)`` evenly."""
    n_chunks = int(min(MAX_CHUNKS, max(1, n_rows // MIN_ROWS_PER_CHUNK)))
    return np.linspace(0, n_rows, n_chunks + 1).round().astype(np.int64)


def nnz_partition(indptr, n_cols):
    """Chunk boundaries over CSR rows with about the same number of nonzeros per chunk.

    At most ``nnz / (NNZ_PER_CHUNK_COLUMN · n_cols)`` chunks (but ``MIN_CSR_CHUNKS`` where
    ``MIN_NNZ_PER_CHUNK``, the row count and ``4 n_cols`` nonzeros per chunk allow, so that a
    few threads still share the work), so that the chunks' float64 accumulators (``n_cols``
    each) cost little next to the pass over the nonzeros. On a 1,000,000 x 1,000,000 matrix
    with 30 nonzeros per row a logistic HVP took 249 ms in 32 chunks, 199 in 16, 177 in 8,
    159 in 4 and 153 in 2; on 500,000 x 50,000 with 60 per row, HVP / value+grad 43.7 / 62.8
    ms in 32 chunks, 42.1 / 58.9 in 16, 41.1 / 56.6 in 8 (two threads, Intel Xeon,
    alternating calls). The chunk count depends on the data's shape only, never on the
    thread count."""
    n_rows = len(indptr) - 1
    nnz = int(indptr[-1])
    cap = min(MAX_CHUNKS, max(1, nnz // MIN_NNZ_PER_CHUNK), max(1, n_rows))
    # MIN_CSR_CHUNKS only where each chunk still has 4 d nonzeros: on 1e5 x 1e7 with 10 per
    # row, four chunks' accumulators (zeroed, reduced: 4 x 80 MB) made a Hessian diagonal 10x
    # and a value+grad 5x scipy's products over the 1e6 nonzeros; one chunk there
    least = min(MIN_CSR_CHUNKS, max(1, nnz // (4 * max(1, n_cols))))
    wide = max(least, nnz // (NNZ_PER_CHUNK_COLUMN * max(1, n_cols)))
    n_chunks = int(min(cap, wide))
    targets = np.linspace(0, nnz, n_chunks + 1)[1:-1]
    inner = np.searchsorted(np.asarray(indptr, dtype=np.int64), targets, side="left")
    starts = np.concatenate(([0], inner, [n_rows])).astype(np.int64)
    return np.maximum.accumulate(starts)


def column_blocks(n_cols):
    """Boundaries (int64) of the column blocks of :func:`sum_chunks`: ``SUM_BLOCK`` columns
    each, the last one shorter; ``[0, 0]`` for no columns."""
    return np.append(np.arange(0, n_cols, SUM_BLOCK), n_cols).astype(np.int64)


@jit(parallel=True)
def sum_chunks(buf, starts, out):
    """``out[j] = (...((buf[0, j] + buf[1, j]) + buf[2, j]) + ...) + buf[C − 1, j]``.

    The chunks are added in their order for every column, as NumPy's ``buf.sum(axis=0)``
    adds the rows of a C-contiguous array (the same bits); the columns go in parallel in
    the blocks ``starts`` (:func:`column_blocks`). On a 32-chunk buffer of 50,000 float64
    columns (a CSR gradient's chunk accumulators, 12.8 MB) NumPy's single-threaded sum took
    1.5 ms, a few per cent of the pass that filled it. ``buf`` (C >= 1, N), ``out`` (N,).
    """
    C = buf.shape[0]
    n_blocks = starts.shape[0] - 1
    counter = np.zeros(1, dtype=np.int64)  # see schedule
    for _ in prange(n_blocks):
        while True:
            b = claim(counter)
            if b >= n_blocks:
                break
            j0 = starts[b]
            j1 = starts[b + 1]
            for j in range(j0, j1):
                out[j] = buf[0, j]
            for c in range(1, C):
                for j in range(j0, j1):
                    out[j] += buf[c, j]
