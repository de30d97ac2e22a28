"""Pure Numba kernels on arrays (installed as ``fastcurv.kernels``).

Nothing here validates input: the Python layer in :mod:`fastcurv` checks shapes, dtypes,
finiteness and index ranges before any kernel runs. Kernels write into caller-provided
outputs and reduce over a fixed row partition (:mod:`fastcurv.kernels.reduce`), so results
do not depend on the number of threads.
"""
