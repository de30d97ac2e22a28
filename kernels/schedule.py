"""Which thread runs which chunk: chunks handed out one at a time, first come first served.

A parallel kernel loops over the chunks of a fixed partition (:mod:`.reduce`). ``prange`` over
the chunks splits them evenly and ahead of time (Numba's schedule is static: thread 0 gets
chunks ``0 .. C/2 − 1``, thread 1 the rest, whatever ``set_parallel_chunksize`` says), so a
call lasts as long as the slower thread's half. On a virtual machine one core is often slower
than the other for a whole call (a busy neighbour on the host): over 40 CSR HVPs (500,000 x
50,000, 60 nonzeros per row, 72 chunks, two threads) the threads ran 31 and 41 chunks in a
third of the calls when each took the next chunk as it finished the last. So every kernel
does that::

    counter = np.zeros(1, dtype=np.int64)
    for _ in prange(n_chunks):
        while True:
            c = claim(counter)
            if c >= n_chunks:
                break
            ...  # chunk c, writing only chunk c's buffers

``prange`` still splits its ``n_chunks`` iterations evenly, but the first iteration a thread
runs keeps claiming chunks until none is left; its other iterations then find the counter
spent and end at once. (The loop needs no thread count: ``numba.get_num_threads()`` in a
kernel would keep it out of Numba's on-disk cache.)

Chunk ``c`` computes the same thing whichever thread runs it, into its own buffers, and the
buffers are added in chunk order afterwards: the result stays bitwise the same for every
thread count and every run. In the serial twin of a kernel (``prange`` compiled as ``range``)
the first iteration claims every chunk in order.
"""

from llvmlite import ir
from numba import types
from numba.extending import intrinsic


@intrinsic
def claim(typingctx, counter):
    """Atomically ``counter[0] += 1`` and return the value before: the next chunk to run.

    ``counter`` is a 1-D int64 array, 0 when the parallel loop starts. Relaxed ("monotonic")
    ordering is enough: a chunk's results are published by the barrier at the end of the
    parallel region, not through the counter.
    """
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64
            and counter.ndim == 1):
        raise TypeError(f"schedule: claim needs a 1-D int64 array, not {counter}")

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        return builder.atomic_rmw("add", ary.data, ir.Constant(ir.IntType(64), 1),
                                  "monotonic")

    return types.int64(counter), codegen

