"""Explicit 256-bit vectors for register tiles, wide vectors for streaming loops, a software
prefetch, and a hint that lets LLVM's loop vectorizer use whole AVX-512 registers.

LLVM vectorizes plain loops well, but not register tiles: a tile written as scalar
accumulators (``s00 += x0 * v0`` for 2 rows x 5 columns) is left to the SLP vectorizer,
which packed the GLM's backward tile so badly that it spilled to the stack and ran 2x slower
than the scalar loop it replaced. Here a tile holds its accumulators as values of type
:class:`Vec` (an LLVM ``<4 x double>`` or ``<8 x float>``, one AVX register): they are SSA
values, so LLVM keeps them in registers and emits one FMA per :func:`vfma`.

All functions take a 2-D float32 or float64 array and two integer indices; the vector is
``X[i, j : j + W]`` with ``W = vwidth(X)`` lanes (32 bytes: 4 float64 or 8 float32). The
indices must be non-negative and the caller keeps ``j + W`` within the row: there is no
wraparound and no bounds check. Other arrays, non-integer indices and (for :func:`vstore`)
read-only arrays are refused when the calling function is compiled. Arrays whose rows are not
contiguous in Numba's type (layout ``'F'`` or ``'A'``) are read and written lane by lane
through their strides: slower, but the same values.

:func:`vfma` is ``llvm.fmuladd``: one fused multiply-add where the CPU has FMA (as the
project's ``contract`` fast-math flag allows everywhere), a multiply and an add elsewhere.
:func:`vsum` adds the lanes pairwise in a fixed order, so results do not depend on the
thread count.

The ``w*`` functions (:func:`wwidth`, :func:`wzero`, :func:`wload`, :func:`wstore`,
:func:`wbcast`) are the same with ``WIDE_BYTES`` per vector: 64 (a whole AVX-512 register,
8 float64 or 16 float32) where the code is compiled for AVX-512F, else 32. Numba's on-disk
cache is keyed by the CPU's name and features, so cached code always has the width of the
CPU it was compiled for.
"""

from llvmlite import binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic, models, register_model

#: bytes per vector (AVX2) of the ``v*`` functions
VECTOR_BYTES = 32


def _features():
    """The CPU features the code is compiled for: the host's, unless ``NUMBA_CPU_FEATURES``
    says otherwise."""
    feats = config.CPU_FEATURES
    if feats is None:
        feats = llvm.get_host_cpu_features().flatten()
    return set(feats.split(","))


def _wide_bytes():
    """64 where the code is compiled for a CPU with AVX-512F, else ``VECTOR_BYTES``."""
    return 64 if "+avx512f" in _features() else VECTOR_BYTES


def _vector_registers():
    """Vector registers a 256-bit tile may use: 32 with AVX-512VL (``ymm16``-``ymm31``), else
    16 (AVX2)."""
    return 32 if "+avx512vl" in _features() else 16


#: bytes per vector of the ``w*`` ("wide") functions: a whole AVX-512 register where there is
#: one. Streaming loops with few accumulators gain from it (fewer instructions in flight per
#: byte read: the single-output dense GLM pass ran 10% faster in float64 on an AVX-512 Xeon);
#: register tiles keep ``VECTOR_BYTES`` (their accumulators fill the registers already).
WIDE_BYTES = _wide_bytes()
#: 256-bit registers available to a register tile (its accumulators, operands and temporaries
#: must fit, or LLVM spills them to the stack in the inner loop)
VECTOR_REGISTERS = _vector_registers()


class Vec(types.Type):
    """A vector of ``nbytes // itemsize`` floats of ``dtype`` (float32 or float64)."""

    def __init__(self, dtype, nbytes=VECTOR_BYTES):
        self.dtype = dtype
        self.lanes = nbytes // (dtype.bitwidth // 8)
        super().__init__(name=f"Vec({dtype} x {self.lanes})")


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        elt = ir.DoubleType() if fe_type.dtype == types.float64 else ir.FloatType()
        super().__init__(dmm, fe_type, ir.VectorType(elt, fe_type.lanes))


_I32 = ir.IntType(32)


def _vec_of(arr, *indices, writable=False, nbytes=VECTOR_BYTES):
    """The vector type of ``arr`` (``nbytes`` per vector); refuses what the intrinsics cannot
    index correctly."""
    if (not isinstance(arr, types.Array) or arr.ndim != 2
            or arr.dtype not in (types.float32, types.float64)):
        raise TypeError(f"simd: a 2-D float32 or float64 array is needed, not {arr}")
    if writable and not arr.mutable:
        raise TypeError(f"simd: cannot store into a read-only array ({arr})")
    for k in indices:
        if not isinstance(k, types.Integer):
            raise TypeError(f"simd: indices must be integers, not {k}")
    return Vec(arr.dtype, nbytes)


def _item_ptr(context, builder, aryty, ary, i, j):
    a = context.make_array(aryty)(context, builder, ary)
    return cgutils.get_item_pointer(context, builder, aryty, a, [i, j], wraparound=False)


def _lane_ptrs(context, builder, aryty, ary, i, j, lanes):
    """Pointers to ``ary[i, j + k]`` for every lane k (through the strides)."""
    out = []
    for k in range(lanes):
        jk = builder.add(j, ir.Constant(j.type, k))
        out.append(_item_ptr(context, builder, aryty, ary, i, jk))
    return out


def _cast_index(context, builder, val, ty):
    return context.cast(builder, val, ty, types.intp)


def _width(arr, nbytes):
    vt = _vec_of(arr, nbytes=nbytes)

    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, vt.lanes)

    return types.intp(arr), codegen


def _zero(arr, nbytes):
    vt = _vec_of(arr, nbytes=nbytes)

    def codegen(context, builder, sig, args):
        return ir.Constant(context.get_value_type(vt), None)

    return vt(arr), codegen


def _load(arr, i, j, nbytes):
    vt = _vec_of(arr, i, j, nbytes=nbytes)

    def codegen(context, builder, sig, args):
        aryty = sig.args[0]
        ii = _cast_index(context, builder, args[1], sig.args[1])
        jj = _cast_index(context, builder, args[2], sig.args[2])
        ll = context.get_value_type(vt)
        if aryty.layout == "C":
            p = _item_ptr(context, builder, aryty, args[0], ii, jj)
            return builder.load(builder.bitcast(p, ll.as_pointer()), align=vt.dtype.bitwidth // 8)
        v = ir.Constant(ll, ir.Undefined)
        for k, p in enumerate(_lane_ptrs(context, builder, aryty, args[0], ii, jj, vt.lanes)):
            v = builder.insert_element(v, builder.load(p), ir.Constant(_I32, k))
        return v

    return vt(arr, i, j), codegen


def _store(arr, i, j, v, nbytes):
    vt = _vec_of(arr, i, j, writable=True, nbytes=nbytes)
    if v != vt:
        raise TypeError(f"simd: cannot store {v} into {arr}")

    def codegen(context, builder, sig, args):
        aryty = sig.args[0]
        ii = _cast_index(context, builder, args[1], sig.args[1])
        jj = _cast_index(context, builder, args[2], sig.args[2])
        if aryty.layout == "C":
            p = _item_ptr(context, builder, aryty, args[0], ii, jj)
            builder.store(args[3], builder.bitcast(p, args[3].type.as_pointer()),
                          align=vt.dtype.bitwidth // 8)
        else:
            for k, p in enumerate(_lane_ptrs(context, builder, aryty, args[0], ii, jj,
                                             vt.lanes)):
                builder.store(builder.extract_element(args[3], ir.Constant(_I32, k)), p)
        return context.get_dummy_value()

    return types.void(arr, i, j, v), codegen


def _bcast(arr, i, j, nbytes):
    vt = _vec_of(arr, i, j, nbytes=nbytes)

    def codegen(context, builder, sig, args):
        ii = _cast_index(context, builder, args[1], sig.args[1])
        jj = _cast_index(context, builder, args[2], sig.args[2])
        x = builder.load(_item_ptr(context, builder, sig.args[0], args[0], ii, jj))
        ll = context.get_value_type(vt)
        v = builder.insert_element(ir.Constant(ll, ir.Undefined), x, ir.Constant(_I32, 0))
        mask = ir.Constant(ir.VectorType(_I32, vt.lanes), [0] * vt.lanes)
        return builder.shuffle_vector(v, ir.Constant(ll, ir.Undefined), mask)

    return vt(arr, i, j), codegen


@intrinsic
def vwidth(typingctx, arr):
    """The number of lanes of a vector of ``arr``'s dtype (a compile-time constant)."""
    return _width(arr, VECTOR_BYTES)


@intrinsic
def vzero(typingctx, arr):
    """A vector of zeros in ``arr``'s dtype."""
    return _zero(arr, VECTOR_BYTES)


@intrinsic
def vload(typingctx, arr, i, j):
    """``arr[i, j : j + W]`` as a vector."""
    return _load(arr, i, j, VECTOR_BYTES)


@intrinsic
def vstore(typingctx, arr, i, j, v):
    """``arr[i, j : j + W] = v``."""
    return _store(arr, i, j, v, VECTOR_BYTES)


@intrinsic
def vbcast(typingctx, arr, i, j):
    """``arr[i, j]`` in every lane."""
    return _bcast(arr, i, j, VECTOR_BYTES)


# the same with WIDE_BYTES per vector (``vfma`` and ``vsum`` take either width)
@intrinsic
def wwidth(typingctx, arr):
    """The number of lanes of a wide vector of ``arr``'s dtype (a compile-time constant)."""
    return _width(arr, WIDE_BYTES)


@intrinsic
def wzero(typingctx, arr):
    """A wide vector of zeros in ``arr``'s dtype."""
    return _zero(arr, WIDE_BYTES)


@intrinsic
def wload(typingctx, arr, i, j):
    """``arr[i, j : j + WW]`` as a wide vector (``WW = wwidth(arr)``)."""
    return _load(arr, i, j, WIDE_BYTES)


@intrinsic
def wstore(typingctx, arr, i, j, v):
    """``arr[i, j : j + WW] = v`` for a wide vector ``v``."""
    return _store(arr, i, j, v, WIDE_BYTES)


@intrinsic
def wbcast(typingctx, arr, i, j):
    """``arr[i, j]`` in every lane of a wide vector."""
    return _bcast(arr, i, j, WIDE_BYTES)


@intrinsic
def vfma(typingctx, a, b, c):
    """``a * b + c``, lane by lane (fused where the CPU has FMA)."""
    if not (isinstance(a, Vec) and a == b == c):
        raise TypeError("simd: vfma needs three vectors of one type")

    def codegen(context, builder, sig, args):
        ll = args[0].type
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ll, [ll, ll, ll]),
            f"llvm.fmuladd.v{a.lanes}f{a.dtype.bitwidth}")
        return builder.call(fn, list(args))

    return a(a, b, c), codegen


@intrinsic
def vsum(typingctx, a):
    """The sum of the lanes: halves added pairwise, ``((v0 + v2) + (v1 + v3))`` for 4 lanes."""
    if not isinstance(a, Vec):
        raise TypeError("simd: vsum needs a vector")

    def codegen(context, builder, sig, args):
        v, n = args[0], a.lanes
        while n > 1:
            h = n // 2
            lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, h), list(range(h))))
            hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, h),
                                                          list(range(h, n))))
            v = builder.fadd(lo, hi)
            n = h
        return builder.extract_element(v, ir.Constant(_I32, 0))

    return a.dtype(a), codegen


@intrinsic
def prefetch(typingctx, arr, i, j):
    """Ask the CPU to bring the cache line of ``arr[i, j]`` into the outer caches (LLVM's
    locality 1, emitted as ``prefetcht2`` on x86, as the GLM kernels' assembly shows):
    a hint, never a fault, so ``(i, j)`` may lie past the data the caller reads next (it must
    still be inside the array). A no-op for arrays not C-contiguous in Numba's type."""
    _vec_of(arr, i, j)

    def codegen(context, builder, sig, args):
        aryty = sig.args[0]
        if aryty.layout == "C":
            ii = _cast_index(context, builder, args[1], sig.args[1])
            jj = _cast_index(context, builder, args[2], sig.args[2])
            p = _item_ptr(context, builder, aryty, args[0], ii, jj)
            i8p = builder.bitcast(p, ir.IntType(8).as_pointer())
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p.type, _I32, _I32, _I32]),
                "llvm.prefetch.p0")
            # read, locality 1 (outer cache levels), data cache
            builder.call(fn, [i8p, ir.Constant(_I32, 0), ir.Constant(_I32, 1),
                              ir.Constant(_I32, 1)])
        return context.get_dummy_value()

    return types.void(arr, i, j), codegen


@intrinsic
def is_float32(typingctx, arr):
    """True if ``arr`` is a float32 array: a constant of the compiled code, so a branch on it
    is compiled out (a test of ``arr.itemsize`` is a load at run time, and one such test per
    stored value slowed the multinomial HVP from 27 to 46 ms)."""
    if not isinstance(arr, types.Array):
        raise TypeError(f"simd: is_float32 needs an array, not {arr}")
    val = arr.dtype == types.float32

    def codegen(context, builder, sig, args):
        return context.get_constant(types.boolean, val)

    return types.boolean(arr), codegen


#: the LLVM function attribute behind :func:`prefer_wide_vectors`
_WIDE_ATTRIBUTE = f'"prefer-vector-width"="{8 * WIDE_BYTES}"'


@intrinsic
def prefer_wide_vectors(typingctx):
    """Let LLVM's loop vectorizer use ``WIDE_BYTES`` vectors (whole AVX-512 registers) in the
    function that calls this; a no-op where ``WIDE_BYTES`` is 32.

    On AVX-512 CPUs LLVM prefers 256-bit vectors unless a function says otherwise (clang's
    ``-mprefer-vector-width=512``: the function attribute ``"prefer-vector-width"="512"``,
    set here on the caller). Elementwise loops with long arithmetic chains (the activations'
    ``exp`` and ``tanh``) then do twice the lanes per instruction: float32 ``tanh`` rows of a
    128 x 64 block took 6.6 µs against 8.8, float64 17.8 against 21.6 (bench/README.md).

    llvmlite's attribute set only takes a fixed list of names, none of them key-value
    attributes, so the attribute is added to the set as text (the set is rendered as written
    into the function's definition, which LLVM then parses)."""

    def codegen(context, builder, sig, args):
        if WIDE_BYTES > VECTOR_BYTES:
            set.add(builder.function.attributes, _WIDE_ATTRIBUTE)
        return context.get_dummy_value()

    return types.void(), codegen
