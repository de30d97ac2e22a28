"""Fixed row partition and fixed-order reductions.

Every parallel kernel runs ``prange`` over the chunks of a partition that depends only on the
data (never on the thread count), writes chunk ``c``'s partial sum into ``buf[c]`` and then
adds the chunks in the order ``0, 1, ..., C-1``. The result is therefore bitwise identical for
any number of threads and on every run.
"""

import numpy as np

#: upper bound on the number of chunks of a partition
MAX_CHUNKS = 32
#: rows (dense) or nonzeros (CSR) below which a chunk is not split further
MIN_ROWS_PER_CHUNK = 512
MIN_NNZ_PER_CHUNK = 32768
#: a CSR partition has at most nnz / (NNZ_PER_CHUNK_COLUMN d) chunks: each chunk's float64
#: accumulator of d columns is zeroed, filled at random and reduced, and on wide data those
#: buffers cost more than the pass they save (see :func:`nnz_partition`)
NNZ_PER_CHUNK_COLUMN = 8


def row_partition(n_rows):
    """Chunk boundaries ``starts`` (int64, length C+1) splitting ``range(n_rows)`` evenly."""
    n_chunks = int(min(MAX_CHUNKS, max(1, n_rows // MIN_ROWS_PER_CHUNK)))
    return np.linspace(0, n_rows, n_chunks + 1).round().astype(np.int64)


def nnz_partition(indptr, n_cols):
    """Chunk boundaries over CSR rows with about the same number of nonzeros per chunk.

    At most ``nnz / (NNZ_PER_CHUNK_COLUMN · n_cols)`` chunks, so that the chunks' float64
    accumulators (``n_cols`` each) cost little next to the pass over the nonzeros: on a
    1,000,000 x 1,000,000 matrix with 30 nonzeros per row a logistic HVP took 249 ms in 32
    chunks, 199 in 16, 177 in 8, 159 in 4 and 153 in 2 (two threads). The chunk count
    depends on the data's shape only, never on the thread count."""
    n_rows = len(indptr) - 1
    nnz = int(indptr[-1])
    n_chunks = int(min(MAX_CHUNKS, max(1, nnz // MIN_NNZ_PER_CHUNK), max(1, n_rows),
                       max(1, nnz // (NNZ_PER_CHUNK_COLUMN * max(1, n_cols)))))
    targets = np.linspace(0, nnz, n_chunks + 1)[1:-1]
    inner = np.searchsorted(np.asarray(indptr, dtype=np.int64), targets, side="left")
    starts = np.concatenate(([0], inner, [n_rows])).astype(np.int64)
    return np.maximum.accumulate(starts)
