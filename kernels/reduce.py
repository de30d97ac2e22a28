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


def row_partition(n_rows):
    """Chunk boundaries ``starts`` (int64, length C+1) splitting ``range(n_rows)`` evenly."""
    n_chunks = int(min(MAX_CHUNKS, max(1, n_rows // MIN_ROWS_PER_CHUNK)))
    return np.linspace(0, n_rows, n_chunks + 1).round().astype(np.int64)


def nnz_partition(indptr):
    """Chunk boundaries over CSR rows with about the same number of nonzeros per chunk."""
    n_rows = len(indptr) - 1
    nnz = int(indptr[-1])
    n_chunks = int(min(MAX_CHUNKS, max(1, nnz // MIN_NNZ_PER_CHUNK), max(1, n_rows)))
    targets = np.linspace(0, nnz, n_chunks + 1)[1:-1]
    inner = np.searchsorted(np.asarray(indptr, dtype=np.int64), targets, side="left")
    starts = np.concatenate(([0], inner, [n_rows])).astype(np.int64)
    return np.maximum.accumulate(starts)
