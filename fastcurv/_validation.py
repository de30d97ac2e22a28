"""Input validation shared by the problem classes.

Everything a kernel relies on is checked here first (shapes, dtypes, finite values, sparse
index structure, label ranges), and every error names the argument and says how to fix it.
Checks on the data never allocate anything of the data's size.
"""

import math
import numbers

import numpy as np
import scipy.sparse as sp

from .kernels import reduce, validate

FLOAT_DTYPES = (np.float32, np.float64)


def as_float_scalar(value, name, *, low=None, allow_equal=True):
    """A finite Python float, optionally bounded below.

    ``TypeError`` for anything but a real number or a 0-d array of one (bools and strings
    included: ``rtol=True`` is not 1.0); ``ValueError`` for inf, NaN, a Python int beyond
    float64's range (``10**400``) or a value below ``low``."""
    if isinstance(value, np.ndarray):
        if value.ndim != 0:
            raise TypeError(f"{name} must be a real number, got an array of shape {value.shape}")
        if value.dtype.kind not in "iuf":
            raise TypeError(f"{name} must be a real number, got {value!r}")
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    try:
        value = float(value)
    except OverflowError:
        raise ValueError(f"{name} must be finite, got an integer beyond float64's "
                         "range") from None
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value < low or (value == low and not allow_equal)):
        bound = ">=" if allow_equal else ">"
        raise ValueError(f"{name} must be {bound} {low}, got {value}")
    return value


#: the largest count :func:`as_int` takes: every count here (probes, samples, iterations,
#: rows per block) is far below it, and a count of 2**63 was looped over "for ever" or
#: overflowed deep inside NumPy
MAX_COUNT = 2**31 - 1


def as_int(value, name, *, low=1, none_ok=False):
    """``int(value)`` for an integer in ``[low, MAX_COUNT]`` (``None`` passed through if
    ``none_ok``).

    ``TypeError`` for anything that is not an integer (bools and integral floats such as
    ``2.0`` included: a count is never silently truncated), ``ValueError`` outside the
    range."""
    if value is None and none_ok:
        return None
    what = ("a positive integer" if low == 1 else "a non-negative integer" if low == 0
            else f"an integer >= {low}") + (" or None" if none_ok else "")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {what}, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    if value > MAX_COUNT:
        raise ValueError(f"{name} must be at most {MAX_COUNT} (a count), got {value!r}")
    return int(value)


def as_flag(value, name):
    """``bool(value)`` for ``True``/``False`` (NumPy's too); anything else is a TypeError
    (``helpful=None`` silently ranked the harmful rows, ``progress="no"`` turned it on)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_damping_fits(damping, dtype):
    """Refuse a damping the operator's dtype cannot hold (a float32 operator multiplied every
    vector by inf from 3.4e38 on, with only numpy's RuntimeWarning)."""
    top = float(np.finfo(dtype).max)
    if damping > top:
        raise ValueError(f"damping={damping:g} exceeds the largest {np.dtype(dtype).name} "
                         f"({top:.3g}) of this operator; use a smaller damping or float64 data")


def plain_array(a, name):
    """``np.asarray(a)``, refusing what it would silently misread: a masked array (its mask
    would be dropped) and a scipy.sparse matrix (it becomes a 0-d object array)."""
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(
            f"{name} is a masked array, whose mask fastcurv would ignore; pass a plain array "
            f"({name}.filled(value), or the data without the masked rows)"
        )
    if sp.issparse(a):
        raise TypeError(
            f"{name} must be a dense array, got a scipy.sparse {a.format.upper()} matrix; "
            f"pass {name}.toarray()"
        )
    return np.asarray(a)


def check_finite_1d(a, name):
    """Raise ``ValueError`` naming the first NaN/inf entry of a 1-D float array."""
    if a.size == 0:
        return
    starts = reduce.row_partition(a.shape[0])
    bad = np.empty(len(starts) - 1, dtype=np.int64)
    validate.first_nonfinite(a, starts, bad)
    hits = bad[bad >= 0]
    if hits.size:
        i = int(hits[0])
        raise ValueError(
            f"{name} contains a non-finite value ({a[i]!r} at position {i}); "
            "remove or impute NaN/inf entries before building the problem"
        )


def _float_dtype_of(arr, name):
    kind = arr.dtype.kind
    if kind == "f" and arr.dtype.itemsize in (4, 8):  # native or byte-swapped float32/64
        return np.dtype(np.float32 if arr.dtype.itemsize == 4 else np.float64)
    if kind in "biu":
        return np.dtype(np.float64)
    if kind == "f":  # float16, longdouble
        return np.dtype(np.float64)
    raise TypeError(
        f"{name} must hold real numbers (float32 or float64), got dtype {arr.dtype}; "
        "convert it with X.astype(np.float64)"
    )


def check_dense_X(X):
    """A 2-D float32/float64 ndarray view of ``X`` (no copy for float data, memmaps included)."""
    arr = plain_array(X, "X")
    if arr.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"X must have at least one row and one column, got shape {arr.shape}")
    dtype = _float_dtype_of(arr, "X")
    if arr.dtype != dtype:
        arr = arr.astype(dtype)
    starts = reduce.row_partition(arr.shape[0])
    bad = np.empty(len(starts) - 1, dtype=np.int64)
    validate.count_nonfinite_rows(arr, starts, bad)
    hits = bad[bad >= 0]
    if hits.size:
        i = int(hits[0])
        j = int(np.flatnonzero(~np.isfinite(arr[i]))[0])
        raise ValueError(
            f"X contains a non-finite value ({arr[i, j]!r} at row {i}, column {j}); "
            "remove or impute NaN/inf entries before building the problem"
        )
    return arr


def _check_other_sparse(X):
    """Bounds of a CSC/BSR/COO matrix before scipy converts it to CSR: its C++ conversion
    trusts the index arrays, and a broken matrix could crash the interpreter."""
    fmt = X.format
    try:
        if fmt in ("csc", "bsr"):
            X.check_format(full_check=True)
        elif fmt == "coo":
            n, d = X.shape
            row, col = X.coords if hasattr(X, "coords") else (X.row, X.col)
            if row.shape != col.shape or row.shape[0] != X.data.shape[0]:
                raise ValueError("row, column and data arrays differ in length")
            if row.size and (row.min() < 0 or row.max() >= n or col.min() < 0
                             or col.max() >= d):
                raise ValueError("a row or column index is outside the shape")
    except ValueError as exc:
        raise ValueError(f"X is a broken {fmt.upper()} matrix ({exc}); check how it was "
                         "built") from None


def check_csr_X(X):
    """Validated CSR version of a scipy.sparse ``X`` (converted once if not CSR)."""
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D, got a sparse array with {X.ndim} dimensions")
    if not (sp.isspmatrix_csr(X) or (hasattr(sp, "csr_array") and isinstance(X, sp.csr_array))):
        _check_other_sparse(X)
        X = sp.csr_matrix(X)
    n, d = X.shape
    if n < 1 or d < 1:
        raise ValueError(f"X must have at least one row and one column, got shape {X.shape}")
    data, indices, indptr = X.data, X.indices, X.indptr
    dtype = _float_dtype_of(data, "X")
    if indptr.ndim != 1 or indptr.shape[0] != n + 1:
        raise ValueError(
            f"X is a broken CSR matrix: indptr has length {indptr.shape[0]}, expected "
            f"n_rows + 1 = {n + 1}; rebuild it with "
            "scipy.sparse.csr_matrix((data, indices, indptr))"
        )
    if indptr.dtype.kind not in "iu" or indices.dtype.kind not in "iu":
        raise TypeError("X's indptr and indices must be integer arrays")
    # compared, not differenced: np.diff of an unsigned indptr wraps around and never goes below 0
    if indptr[0] != 0 or np.any(indptr[1:] < indptr[:-1]):
        raise ValueError(
            "X is a broken CSR matrix: indptr must start at 0 and never decrease; "
            "rebuild it with scipy.sparse.csr_matrix"
        )
    nnz = int(indptr[-1])
    if nnz > indices.shape[0] or nnz > data.shape[0]:
        raise ValueError(
            f"X is a broken CSR matrix: indptr[-1] = {nnz} but there are only "
            f"{min(indices.shape[0], data.shape[0])} stored entries"
        )
    data = np.ascontiguousarray(data[:nnz])
    indices = np.ascontiguousarray(indices[:nnz])
    if indices.dtype not in (np.dtype(np.int32), np.dtype(np.int64)):
        indices = indices.astype(np.int64)
    idx_t = np.int64 if indptr.dtype.itemsize > 4 else np.int32
    indptr = np.ascontiguousarray(indptr, dtype=idx_t)
    code, row, _ = validate.check_csr_rows(indptr, indices, d)
    if code == 1:
        raise ValueError(
            f"X is a broken CSR matrix: row {row} has a column index outside [0, {d}); "
            "check how the matrix was built"
        )
    if code == 2:
        raise ValueError(
            f"X has unsorted column indices (first in row {row}); call X.sort_indices() "
            "(or X.sum_duplicates(), which also sorts) before building the problem"
        )
    if code == 3:
        raise ValueError(
            f"X has duplicated column indices (first in row {row}); call X.sum_duplicates() "
            "to merge them before building the problem"
        )
    if data.dtype != dtype:
        data = data.astype(dtype)
    check_finite_1d(data, "X")
    return sp.csr_matrix((data, indices, indptr), shape=(n, d), copy=False)


def check_sample_weight(sample_weight, n, dtype=np.float64):
    """Float64 weights of shape (n,), finite, non-negative and not all zero."""
    if sample_weight is None:
        return np.ones(n, dtype=np.float64)
    w = plain_array(sample_weight, "sample_weight")
    if w.ndim != 1 or w.shape[0] != n:
        raise ValueError(
            f"sample_weight must have shape ({n},) to match X, got {np.shape(sample_weight)}"
        )
    if w.dtype.kind not in "biuf":
        raise TypeError(f"sample_weight must be numeric, got dtype {w.dtype}")
    w = np.array(w, dtype=np.float64, order="C", copy=True)  # later edits of the caller's
    check_finite_1d(w, "sample_weight")                     # array must not reach the model
    if np.any(w < 0):
        i = int(np.flatnonzero(w < 0)[0])
        raise ValueError(f"sample_weight must be >= 0, got {w[i]} at position {i}")
    if not np.any(w > 0):
        raise ValueError("sample_weight is zero everywhere; at least one sample needs a weight > 0")
    return w


def make_rng(seed, name="seed"):
    """``np.random.default_rng(seed)`` for None, an integer >= 0, a Generator, SeedSequence or
    BitGenerator; a legacy ``RandomState`` seeds a new Generator from one draw. Anything else
    is refused naming ``name``."""
    if isinstance(seed, np.random.RandomState):
        seed = int(seed.randint(0, 2**63 - 1, dtype=np.int64))
    ok = (np.random.Generator, np.random.SeedSequence, np.random.BitGenerator)
    if seed is not None and not isinstance(seed, ok):
        if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
            raise TypeError(
                f"{name} must be None, a non-negative integer or a numpy Generator, got {seed!r}")
        if seed < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {seed}")
    return np.random.default_rng(seed)


def check_n_features(X, d, what):
    """Refuse new data whose column count differs from the model's (``with_data``)."""
    shape = X.shape if hasattr(X, "shape") else np.shape(X)
    if len(shape) == 2 and shape[1] != d:
        raise ValueError(
            f"X has {shape[1]} features but the model was built for {d} ({what}); "
            f"with_data keeps the model, so pass data with {d} columns"
        )


def check_subset_weights(w, idx):
    """Refuse a row subset whose sample weights are all zero: its objective, a weighted mean
    over the rows, would divide by a zero total weight."""
    if not np.any(w[idx] > 0):
        raise ValueError(
            f"the {idx.size} rows selected all have sample_weight 0, so a problem on them "
            "alone has no objective (its weighted mean divides by zero); select at least one "
            "row with a positive weight"
        )


def check_vector(v, n_params, dtype, name, *, allow_block=False):
    """``v`` as a contiguous array of ``dtype``, shape (P,) or (P, m) if ``allow_block``."""
    arr = plain_array(v, name)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real array, got dtype {arr.dtype}")
    ok = arr.ndim == 1 or (allow_block and arr.ndim == 2)
    if not ok or arr.shape[0] != n_params:
        want = f"({n_params},)" + (f" or ({n_params}, m)" if allow_block else "")
        raise ValueError(f"{name} must have shape {want}, got {arr.shape}")
    return finite_as(arr, dtype, name)


def check_problem(problem, name="p", needs=()):
    """Refuse what is not a problem (fastcurv's, or an object with their API: ``n_params``,
    ``dtype``, the products, and the methods ``needs``) before its first attribute is looked
    up (``None`` gave an AttributeError about ``_check_theta``; the class ``fc.MLP`` itself a
    missing argument)."""
    needs = ("n_params", "dtype", *needs)
    if isinstance(problem, type) or not all(hasattr(problem, a) for a in needs):
        what = (f"the class {problem.__name__} (build one: {problem.__name__}(X, y, ...))"
                if isinstance(problem, type) else type(problem).__name__)
        api = "their API" if len(needs) == 2 else "their " + ", ".join(needs[2:])
        raise TypeError(f"{name} must be a problem (fastcurv.GLM, fastcurv.MLP, or an object "
                        f"with {api}), got {what}")
    return problem


def problem_theta(problem, theta, name="theta"):
    """``theta`` checked for ``problem``: its own ``_check_theta`` (fastcurv's problems), or,
    for any other object with the problem API, a finite (P,) vector of its dtype."""
    check_problem(problem, "problem")
    if hasattr(problem, "_check_theta"):
        try:
            return problem._check_theta(theta)
        except (ValueError, TypeError) as exc:  # the problems call it theta
            if name == "theta":
                raise
            raise type(exc)(str(exc).replace("theta", name, 1)) from None
    return check_vector(theta, problem.n_params, problem.dtype, name)


def finite_as(arr, dtype, name):
    """``arr`` as a C-contiguous array of ``dtype``, all finite. A non-finite entry is named
    with its index; so is a finite value that the cast to float32 overflows."""
    src = arr
    with np.errstate(over="ignore"):
        arr = np.ascontiguousarray(arr, dtype=dtype)
    if not np.all(np.isfinite(arr)):
        flat = int(np.flatnonzero(~np.isfinite(arr.ravel()))[0])
        idx = tuple(map(int, np.unravel_index(flat, arr.shape)))
        was = float(np.asarray(src).ravel()[flat])
        if np.isfinite(was):
            raise ValueError(
                f"{name} holds {was!r} at index {idx}, beyond the range of {np.dtype(dtype)} "
                f"(max {np.finfo(dtype).max:.3g}), the problem's dtype; rescale it or build the "
                "problem in float64"
            )
        raise ValueError(f"{name} contains a non-finite value ({was!r}) at index {idx}")
    return arr


def check_rows(rows, n, name="rows"):
    """Row selection (None, slice, boolean mask or integer indices) as int64 indices."""
    if rows is None:
        return np.arange(n, dtype=np.int64)
    if isinstance(rows, slice):
        return np.arange(n, dtype=np.int64)[rows]
    r = np.asarray(rows)
    if r.dtype == bool:
        if r.shape != (n,):
            raise ValueError(f"{name}: a boolean row mask must have shape ({n},), got {r.shape}")
        return np.flatnonzero(r).astype(np.int64)
    if r.ndim == 0:
        r = r.reshape(1)
    if r.ndim != 1 or (r.size and r.dtype.kind not in "iu"):
        raise ValueError(f"{name} must be None, a slice, a boolean mask or 1-D integer indices")
    if r.size and r.dtype.kind == "u" and r.max() >= n:  # before the cast: 2**64 - 1 is -1
        raise ValueError(f"{name} must be indices in [-{n}, {n}); got values outside that range")
    r = r.astype(np.int64)
    if r.size and (r.min() < -n or r.max() >= n):
        raise ValueError(f"{name} must be indices in [-{n}, {n}); got values outside that range")
    return np.where(r < 0, r + n, r)


def finite_result(out, what, advice=None):
    """``out`` (array or sparse matrix) if every value is finite, else FloatingPointError: with
    finite data and parameters (checked on the way in), a non-finite result is an overflow of
    the data, parameters or curvature, which no finite answer can represent. ``advice``
    replaces the default text that follows ``"{what} overflows {dtype}"``."""
    data = out.data if sp.issparse(out) else np.asarray(out)
    if not np.isfinite(data).all():
        if advice is None:
            advice = (" at these parameters: the values exceed its range (huge features, "
                      "targets or parameters). Standardize the features (and the targets of a "
                      "gaussian or poisson model), or start from smaller parameters.")
        raise FloatingPointError(f"{what} overflows {data.dtype.name}{advice}")
    return out


def add_damping(out, damping, V):
    """``out + δ V`` in ``out``'s dtype (a float64 ``V`` must not promote the result), refused
    with FloatingPointError where ``δ V`` or the sum exceeds that dtype (numpy would return
    inf with only a RuntimeWarning)."""
    with np.errstate(over="ignore"):
        out = out + damping * np.asarray(V, dtype=out.dtype)
    return finite_result(out, "the damped product", advice=(
        f": damping={damping:g} times v, plus the curvature product, exceeds its largest "
        f"value ({np.finfo(out.dtype).max:.3g}); scale v down (the product is linear in it) "
        "and the result up, or use a smaller damping or float64 data"))


def inf_if_overflow(x):
    """A float objective value, ``+inf`` where it is not finite: with finite data and
    parameters, NaN or inf there means the objective overflowed (it is never -inf)."""
    return x if math.isfinite(x) else math.inf


def penalty_overflow(l2, weights, v=None):
    """Why an L2 term overflows float64 because of ``l2``, or ``""``: the penalty value
    ``(λ/2)‖W‖²`` or the gradient's ``λ W`` (``v`` None), or a product's ``λ v`` (``v``: the
    direction's weight entries). Only a ``λ > 1`` can be the cause: with ``λ <= 1`` these terms
    overflow only where ``W`` or ``v`` do (the caller's usual message then applies). Named so
    that the message does not advise adding a penalty that is the problem."""
    if not l2 > 1.0:
        return ""
    if v is not None:
        m = float(np.max(np.abs(v))) if np.size(v) else 0.0
        with np.errstate(over="ignore"):
            over = not math.isfinite(l2 * m)
        return (f"the L2 term l2 * v alone overflows float64 (l2={l2:.3g}, max|v| = {m:.3g}): "
                "use a smaller l2, or a smaller v (products are linear in it)") if over else ""
    w = np.asarray(weights, dtype=np.float64).ravel()
    if w.size == 0:
        return ""
    norm = float(np.linalg.norm(w))  # scaled: finite unless ‖W‖ itself overflows
    m = float(np.max(np.abs(w)))
    with np.errstate(over="ignore"):
        unit_ok = math.isfinite(0.5 * norm * norm)
        over = not (math.isfinite((0.5 * l2 * norm) * norm) and math.isfinite(l2 * m))
    if unit_ok and over:
        return (f"its L2 penalty alone overflows float64 (l2={l2:.3g}, ||W|| = {norm:.3g}): "
                "use a smaller l2")
    return ""
