"""The one place Numba options live.

* ``cache=True``: compiled code is kept on disk, so a new process does not recompile.
* ``error_model="numpy"``: division by zero gives inf/NaN like NumPy instead of raising
  (and lets LLVM vectorize divisions).
* fastmath flags ``nsz, arcp, contract, reassoc`` allow vectorized reductions and FMA; never
  ``nnan``/``ninf`` (NaN checks must keep working) and never ``afn`` (``exp``/``log`` stay
  correctly rounded, as the loss values must be exact to the last digits).
"""

import numba

FASTMATH = frozenset({"nsz", "arcp", "contract", "reassoc"})
#: for elementwise kernels whose formulas depend on the order of operations (Cody-Waite
#: argument reduction in ``exp``: ``(t − k c1) − k c2`` must not become ``t − k (c1 + c2)``):
#: FMA contraction only, no reassociation and no reciprocal approximation
FASTMATH_STRICT = frozenset({"nsz", "contract"})

_OPTIONS = dict(cache=True, nogil=True, error_model="numpy", fastmath=set(FASTMATH))


def jit(fn=None, *, parallel=False, inline=False, strict=False):
    """Compile ``fn`` with the project's Numba options.

    ``parallel=True`` enables ``prange``; ``inline=True`` asks Numba to inline a small helper
    into its callers at the IR level (it then takes the caller's options); ``strict=True``
    uses :data:`FASTMATH_STRICT` (elementwise loops still vectorize without reassociation).
    """
    opts = dict(_OPTIONS, parallel=parallel)
    if strict:
        opts["fastmath"] = set(FASTMATH_STRICT)
    if inline:
        opts["inline"] = "always"

    def wrap(f):
        return numba.njit(**opts)(f)

    return wrap(fn) if fn is not None else wrap
