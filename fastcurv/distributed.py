r"""Dask backend: a GLM whose rows are spread over Dask workers (``pip install fastcurv[dask]``).

``fastcurv.GLM(X, y, ...)`` with ``X`` a ``dask.array.Array`` returns a :class:`DaskGLM`: the
same problem API (``value_and_grad``, ``hvp``, ``hessian_diag``, ``value_along``, ...), so
:func:`fastcurv.newton_cg` and the curvature operators run on it unchanged.

Going beyond RAM
----------------
* **One machine, data on disk: numpy.memmap.** ``fc.GLM(np.load("X.npy", mmap_mode="r"), y)``
  (or any ``numpy.memmap``) goes through the ordinary in-memory path and is never copied:
  ``X`` need not fit in RAM, the operating system pages it in as each pass streams through
  it. Whatever the page cache cannot hold is read from disk again by every pass (one
  sequential read of the file per product, and one at construction for validation), so
  the disk's read speed becomes the speed limit. The process itself allocates only the
  ``O(n K)`` per-sample state (at two points θ) and ``O(P)`` vectors.
* **Several machines: Dask.** Chunk ``X`` by rows (``X.chunks[1]`` is made a single chunk)
  into a ``dask.array`` of dense numpy blocks or scipy.sparse CSR blocks, start a
  ``dask.distributed.Client`` and call ``fc.GLM(X, y, ...)``. Each row chunk becomes an
  ordinary in-memory :class:`fastcurv.GLM` on a worker, built where the chunk is computed,
  so the same Numba kernels read the rows where they live. Only length-``P`` vectors and
  per-chunk scalars travel. The memory of all workers together must hold ``X`` (plus the
  ``O(n K)`` state at two points, as in memory). Pass ``y`` and ``sample_weight`` as Dask
  arrays too when ``n`` is large: numpy arrays are embedded in the task graph and sent
  through the scheduler once.

What lives where
----------------
* **Workers**: one :class:`fastcurv.GLM` per row chunk ``c`` with ``l2 = 0`` and the chunk's
  own sample weights, so its products are normalized by ``W_c = Σ_{i∈c} w_i``; it keeps its
  per-θ state (linear predictor, residuals, curvature weights) between products at one θ,
  exactly as in memory. The chunk problems are Dask futures computed from the graph of
  ``X``: if a worker dies, Dask recomputes the lost chunks elsewhere. By default
  (``transport="actors"``) each worker also runs one Dask actor that holds references to its
  chunks and serves every operation in one call, outside the scheduler's task machinery
  (see "Latency" below).
* **Driver**: the parameters, the L2 penalty (added once), the chunk shares
  ``s_c = W_c / W`` and the fixed-order sum ``Σ_c s_c · result_c`` (chunk 0, 1, 2, ... whatever
  worker computed it), which is the in-memory objective
  ``(1/W) Σ_i w_i ℓ_i + λ/2 ‖coef‖²`` and its derivatives up to rounding: each chunk's
  products carry the factor ``w_i / W_c`` and ``(w_i / W_c)(W_c / W) = w_i / W``. Results are
  bitwise reproducible: the same for any placement of the chunks and any worker count.

Round trips (driver ↔ workers) per operation, with ``transport="actors"``:

===========================================================  ==============================
operation                                                    round trips
===========================================================  ==============================
``value``, ``grad``, ``value_and_grad``                      1
``hvp``, ``ggn_vp``, ``fisher_vp`` (also blocks ``(P, m)``)  1 (so one per CG iteration)
``hessian_diag``, ``ggn_diag``, ``fisher_diag``              1 (no pass over X at a θ whose
                                                             value-and-gradient pass fused
                                                             it)
``value_along(θ, d)``                                        0; then 1 per trial step ``α``
``jvp``, ``vjp``, ``per_sample_grads``, ``hessian``          1
influence scores (:class:`fastcurv.Influence`)               1 per block of scored rows
                                                             (after the factors)
``subset(rows)`` (rows gathered to the driver)               1
construction                                                 6 (+1 to infer ``n_classes``)
===========================================================  ==============================

A line-search Newton iteration of :func:`fastcurv.newton_cg` takes 1 (value and gradient at
the trial point) + 1 per CG iteration + 1 per backtracking step, + 1 for
``preconditioner="diag"``, + 1 when ``l2 = 0`` for a logistic or multinomial model (the
separability check).

Bytes per HVP: the driver sends ``θ`` and ``v`` (``2 P`` values of the data dtype) to each
worker that holds chunks and receives one ``P``-vector per chunk (``m P`` values for a block
of ``m`` vectors), plus some message framing: for ``W`` workers and ``C`` chunks
``(2 W + C) P`` values (P = 501, 2 workers, 8 chunks: 48 kB; 52 kB measured on the wire).
A default ``Client`` relays actor calls through the scheduler, so those bytes cross the
network twice (driver → scheduler → worker and back); ``Client(...,
direct_to_workers=True)`` sends them straight to the workers when the driver can reach
them. :attr:`DaskGLM.stats` counts round trips and payload bytes.

Latency
-------
Measured on a 2-core machine with a local cluster (bench/bench_distributed.py), per round
trip of an HVP on tiny chunks, back to back as CG issues them: 5 ms through actors (4.7 ms
with ``direct_to_workers=True``), 21 ms as tasks (the scheduler's task bookkeeping: ~10 ms
plus ~2 ms per task). On an 800 MB dense problem that makes the HVP 1.2x (actors) or 1.45x
(tasks) the in-memory time, so actors are the default. ``transport="tasks"`` submits one
task per worker and operation instead (no actors). Either way: use few, large chunks (a few
per worker, 100 MB or more each), since latency is paid per round trip and not per byte.

Faults
------
If a worker dies, the actor calls to it fail fast; that operation's lost chunks are then
run as ordinary tasks, which wait for Dask to recompute the chunk problems from the graph of
``X`` (their cached per-θ state is recomputed as needed), and the actors are rebuilt on the
new placement before the next operation. (An actor that vanishes from a live worker, e.g.
one restarted at the same address, leaves Dask's call pending forever; a call without reply
for 2 s makes the driver ask the worker whether it still runs that very actor.) After a
restart the lost chunks live on the surviving workers; a restarted worker stays idle for
this problem. The answer is the same as without the failure (chunk results do not depend
on where they are computed). When Dask gives up (a chunk's task killed its workers too
often), the operation raises ``RuntimeError`` naming the cause.

Threads
-------
On a worker, fastcurv kernels run one at a time per process (a process-wide lock: Numba's
workqueue threading layer must not be entered from two threads at once, and memory-bound
passes gain nothing side by side), each with as many Numba threads as the worker has task
threads (``--nthreads``). Give the worker a thread per
core it may use: one process with ``--nthreads 4`` runs each chunk's pass on 4 cores.

Influence functions
-------------------
:class:`fastcurv.Influence` runs on a DaskGLM: the inverse-curvature factors of the test
points come from the distributed products (``method="cg"``: one round trip per block-CG
iteration for all test points; ``"direct"``: one round trip for the dense Hessian), and
scoring sends the (m, P) factors to the workers, whose chunks return the ``m`` scores of each
of their rows (``Σ_k ℓ'_ik x̃_iᵀ s_k``): one round trip per block of scored rows, never a
per-sample gradient on the wire. Test points are usually few: ``p.with_data(X_test,
y_test)`` with numpy or scipy data gives an in-memory :class:`fastcurv.GLM` of the same
model. ``subset(rows)`` gathers the rows into an in-memory GLM (for small row sets, e.g.
LiSSA minibatches, which therefore cost a transfer per step).

Not available on a DaskGLM: K-FAC operators (and the ``"kfac"`` / ``"ekfac"`` influence
methods), which need every row's layer input in one process.
"""

import contextlib
import copy
import threading

import numba
import numpy as np
import scipy.sparse as sp

from . import _validation as val
from .kernels.losses import LOGISTIC, MULTINOMIAL
from .problems import families
from .problems.glm import GLM, _half_sq_penalty, _penalty_along, flatten_layer

_INSTALL = "pip install fastcurv[dask]"

try:
    import dask
    import dask.array as da
except ImportError as exc:  # pragma: no cover - exercised without dask installed
    raise ImportError(
        f"fastcurv's Dask backend needs dask[array,distributed]: {_INSTALL}") from exc

__all__ = ["DaskGLM"]

#: the transports between driver and workers
TRANSPORTS = ("actors", "tasks")
#: operations whose results are weighted by the chunk shares s_c (zero-weight chunks skipped)
_WEIGHTED = {"vg", "value", "hvp", "fisher_vp", "mc_fisher_vp", "hessian_diag", "ggn_diag",
             "fisher_diag", "hessian", "phi", "separable"}


# =============================================================================== worker side
_KERNEL_LOCK = threading.RLock()


def _worker_threads():
    """The task-thread count of the Dask worker running this code, or None off a worker."""
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except Exception:  # not on a worker (local mode), or distributed missing
        return None


@contextlib.contextmanager
def _kernel_section():
    """Run fastcurv kernels alone in this process, with the worker's thread budget."""
    with _KERNEL_LOCK:
        n = _worker_threads()
        if n is None:
            yield
            return
        before = numba.get_num_threads()
        numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
        try:
            yield
        finally:
            numba.set_num_threads(before)


class _Chunk:
    """One row block on a worker: an in-memory :class:`fastcurv.GLM` (``l2 = 0``, the
    block's own sample weights) and what the driver needs to weight its results."""

    def __init__(self, index, start, X, y, w, family, fit_intercept, n_classes):
        self.index = int(index)
        self.start = int(start)
        self._phi = None
        self.moved = False
        wz = None if w is None else np.asarray(w)
        # an all-zero block has no weight in F; it is built with unit weights (a GLM needs a
        # positive weight) and the driver gives it the share 0
        self.zero = bool(wz is not None and wz.ndim == 1 and wz.size > 0
                         and wz.dtype.kind in "biuf" and not np.any(wz != 0))
        extra = {"n_classes": n_classes} if family == "multinomial" else {}
        try:
            self.glm = GLM(X, y, family=family, l2=0.0, fit_intercept=fit_intercept,
                           sample_weight=None if self.zero else w, **extra)
        except (ValueError, TypeError) as e:
            raise type(e)(f"{e} [in row chunk {index} of the Dask array, which starts at row "
                          f"{start}; positions above count from that row]") from None
        g = self.glm
        if self.zero:
            self.wmax, self.wsum = 0.0, 0.0
        else:
            # as GLM does: weights scaled by their maximum, so the sum cannot overflow
            self.wmax = float(g._w.max())
            self.wsum = float((g._w / self.wmax).sum())

    def __sizeof__(self):
        # Dask's memory accounting and transfer-cost model (sys.getsizeof would say ~50 bytes)
        g = self.glm
        X = g.X
        nx = (X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) if sp.issparse(X) \
            else X.nbytes
        return int(nx + g._y2.nbytes + 2 * g._w.nbytes + 1000)

    def __getstate__(self):
        # sent or spilled without the per-θ caches (recomputed on demand; the line-search
        # closure is not picklable)
        state = self.__dict__.copy()
        g = copy.copy(self.glm)
        g._states = []
        state["glm"] = g
        state["_phi"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.moved = True

    def meta(self):
        g = self.glm
        if self.zero:  # no row of positive weight: no side of any target range is reached
            support = (np.zeros(g.n_outputs, dtype=bool),) * 2
        else:
            support = g._target_support()
        return dict(n=g.n_samples, d=g.n_features, K=g.n_outputs, dtype=g.dtype.str,
                    sparse=g.is_sparse, wmax=self.wmax, wsum=self.wsum, zero=self.zero,
                    support=support, nbytes=self.__sizeof__())

    def phi(self, theta, d, alpha):
        """``F_c(θ + α d)`` from the closure of :meth:`GLM.value_along`, kept per (θ, d)."""
        cached = self._phi
        if cached is None or not (np.array_equal(cached[0], theta)
                                  and np.array_equal(cached[1], d)):
            cached = (theta.copy(), d.copy(), self.glm.value_along(theta, d))
            self._phi = cached
        return cached[2](alpha)

    def call(self, op, args, fuse):
        g = self.glm
        g.fuse_diag = fuse
        if op == "vg":
            return g.value_and_grad(*args)
        if op == "value":
            return g.value(*args)
        if op == "hvp":
            return g.hvp(*args)
        if op == "fisher_vp":
            return g.fisher_vp(*args)
        if op == "mc_fisher_vp":
            return g._mc_fisher_vp(*args)
        if op == "hessian_diag":
            return g.hessian_diag(*args)
        if op == "ggn_diag":
            return g.ggn_diag(*args)
        if op == "fisher_diag":
            return g.fisher_diag(*args)
        if op == "hessian":
            return g.hessian(*args)
        if op == "jvp":
            return g.jvp(*args)
        if op == "vjp":
            return g.vjp(*args)
        if op == "psg":
            theta, rows = args
            if self.zero and rows is not None:
                # unit weights stand in for the block's zeros: only the rows asked for may
                # take part (another row's overflow must not fail this call, as in GLM)
                return g._rows_problem(rows).per_sample_grads(theta)
            return g.per_sample_grads(theta, rows)
        if op == "phi":
            return self.phi(*args)
        if op == "separable":
            return g._diverging_message(*args)
        if op == "grad_dots":
            theta, S, local = args
            run = (local.size and local[-1] - local[0] == local.size - 1
                   and np.all(np.diff(local) == 1))  # sorted, distinct and contiguous
            if run and not self.zero:
                return g._grad_dots(theta, S, int(local[0]), int(local[-1]) + 1)
            return g._rows_problem(local)._grad_dots(theta, S, 0, local.size)
        if op == "row_weights":
            return g._a[args[0]]
        if op == "rows":
            local = args[0]
            y = g._y2[local]
            w = np.zeros(local.size) if self.zero else g._w[local]
            return g._design.take(local), (y[:, 0] if y.shape[1] == 1 else y), w
        if op == "meta":
            return self.meta()
        raise ValueError(f"unknown chunk operation {op!r}")


def _build_chunk(index, start, X, y, w, family, fit_intercept, n_classes):
    """Task: the chunk problem of one row block (runs where the block is computed)."""
    with _kernel_section():
        return _Chunk(index, start, X, y, w, family, fit_intercept, n_classes)


def _run_chunks(chunks, op, args, per_chunk, fuse):
    """``[(index, result)]`` of ``op`` on each chunk (those in ``per_chunk``, if given, with
    their own extra arguments appended), in the order given."""
    out = []
    with _kernel_section():
        for c in chunks:
            if per_chunk is not None:
                if c.index not in per_chunk:
                    continue
                a = tuple(args) + tuple(per_chunk[c.index])
            else:
                a = tuple(args)
            out.append((c.index, c.call(op, a, fuse)))
    return out


def _run_task(chunks, op, args, per_chunk, fuse):
    """Task form of :func:`_run_chunks`; also reports whether a chunk had been copied here
    from another worker (the driver then re-reads the placement once)."""
    moved = any(c.moved for c in chunks)
    for c in chunks:
        c.moved = False
    return _run_chunks(chunks, op, args, per_chunk, fuse), moved


class _Agent:
    """Dask actor on one worker: holds that worker's chunk problems (the very objects Dask
    stores for the chunk futures) and runs each operation on all of them in one call."""

    def __init__(self, chunks):
        import uuid

        self.chunks = list(chunks)
        self.token = uuid.uuid4().hex  # tells this actor from a re-created one
        self.active = 0  # calls running now

    def run(self, op, args, per_chunk, fuse):
        self.active += 1
        try:
            return _run_chunks(self.chunks, op, args, per_chunk, fuse)
        finally:
            self.active -= 1


def _agents_here(dask_worker=None):
    """``{actor key: (token, calls running)}`` of the agents on this worker (``client.run``)."""
    actors = getattr(dask_worker.state, "actors", {})
    return {k: (a.token, a.active) for k, a in list(actors.items()) if isinstance(a, _Agent)}


# =============================================================================== driver side
#: exceptions raised by the computation itself (bad input, a refused dense Hessian, ...):
#: re-raised as they are; any other failure of an actor call is taken for a lost worker
_GENUINE = (ValueError, TypeError, ArithmeticError, MemoryError, NotImplementedError)


def _nbytes(obj):
    """Payload bytes of the arrays in ``obj`` (nested tuples, lists, dicts; not scalars)."""
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if sp.issparse(obj):
        return obj.data.nbytes + obj.indices.nbytes + obj.indptr.nbytes
    if isinstance(obj, (tuple, list)):
        return sum(_nbytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(_nbytes(o) for o in obj.values())
    return 0  # scalars and chunk indices: a few bytes, left out


class _Stats:
    """Counters of the driver's traffic: operations, round trips and payload bytes."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.operations = 0
        self.round_trips = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.recoveries = 0

    def as_dict(self):
        return dict(operations=self.operations, round_trips=self.round_trips,
                    bytes_sent=self.bytes_sent, bytes_received=self.bytes_received,
                    recoveries=self.recoveries)

    def __repr__(self):
        return f"DaskGLM stats {self.as_dict()}"


def _subset(per_chunk, indices):
    if per_chunk is None:
        return None
    return {i: per_chunk[i] for i in indices if i in per_chunk}


class _LocalBackend:
    """The chunk problems in this process (computed with Dask's threaded scheduler)."""

    name = "local"

    def __init__(self, delayeds, stats):
        self.stats = stats
        self.chunks = list(dask.compute(*delayeds, scheduler="threads"))

    def run(self, op, args, per_chunk, fuse):
        res = _run_chunks(self.chunks, op, args, per_chunk, fuse)
        self.stats.round_trips += 1
        return dict(res)

    def close(self):
        self.chunks = []


class _ClientBackend:
    """The chunk problems as futures on a ``dask.distributed`` cluster."""

    name = "distributed"

    def __init__(self, client, delayeds, transport, stats):
        self.client = client
        self.transport = transport
        self.stats = stats
        self.futures = client.compute(list(delayeds))
        self._groups = None  # [(worker address, [chunk indices])]
        self._agents = None  # [(Actor, creation future, worker address, [chunk indices])]
        self._tokens = {}  # actor key -> token of the actor created for it
        self._dead = False  # the chunk problems were cancelled: every call raises

    # ------------------------------------------------------------------ placement
    def _wait(self):
        """Block until every chunk problem is in memory; raise the first build error."""
        from concurrent.futures import CancelledError

        from distributed import wait

        if self._dead:
            raise _cancelled_error()
        try:
            wait(self.futures)
        except CancelledError:  # distributed raises it here itself (2026.8)
            self._dead = True
            self.futures = []
            raise _cancelled_error() from None
        error = cancelled = None
        for f in self.futures:
            if f.status == "error" and error is None:
                exc = f.exception()  # the worker's exception (validation errors name the chunk)
                error = (type(exc), str(exc))
            cancelled = cancelled or f.status == "cancelled"
        if error is not None or cancelled:
            # drop every reference to the futures: the chunks built so far leave the workers.
            # A copy of the exception is raised, never the future's own object: our frames on
            # its traceback would tie the futures to it for as long as the client lives.
            self.futures = []
            del f
            if error is not None:
                try:
                    new = error[0](error[1])
                except Exception:  # an exception type that takes other arguments
                    new = RuntimeError(f"{error[0].__name__}: {error[1]}")
                raise new from None
            self._dead = True
            raise _cancelled_error()

    def _placement(self):
        """Chunk indices grouped by the worker holding them (chunk order within a group)."""
        if self._groups is None:
            self._wait()
            who = self.client.who_has(self.futures)
            groups = {}
            for i, f in enumerate(self.futures):
                holders = sorted(who.get(f.key, ()))
                groups.setdefault(holders[0] if holders else None, []).append(i)
            self._groups = sorted(groups.items(), key=lambda kv: kv[1][0])
        return self._groups

    def _ensure_agents(self):
        """One actor per worker holding chunks: ``[(Actor, creation future, worker address,
        [chunk indices])]``, built on first use and after every failure."""
        if self._agents is None:
            from distributed.actor import Actor

            groups = self._placement()
            if any(w is None for w, _ in groups):
                raise OSError("a chunk problem has no holder yet")
            # loose restriction: if the worker died meanwhile, the actor starts elsewhere
            # (and fetches copies of its chunks) instead of waiting for a worker forever
            futs = [self.client.submit(_Agent, [self.futures[i] for i in idx], actor=True,
                                       workers=[w], allow_other_workers=True, pure=False)
                    for w, idx in groups]
            from distributed import wait

            wait(futs)
            for f in futs:
                if f.status != "finished":
                    f.result()  # raises why the actor could not be created
            where = self.client.who_has(futs)
            agents = []
            for f, (_, idx) in zip(futs, groups, strict=True):
                addr = sorted(where.get(f.key, ()))
                if not addr:
                    raise OSError("an actor has no worker")
                # Handles made under our client: Dask binds a handle to the *current* client
                # (the default one otherwise). The creation future is kept: it keeps the
                # actor alive, and it is how a lost actor is detected (see _result).
                with self.client.as_current():
                    handle = Actor(_Agent, addr[0], f.key)
                agents.append((handle, f, addr[0], idx))
            here = self._agents_on([a[2] for a in agents])
            self._tokens = {f.key: here.get(addr, {}).get(f.key, (None,))[0]
                            for _, f, addr, _ in agents}
            self._agents = agents
        return self._agents

    def _agents_on(self, addresses):
        """``{address: {actor key: (token, active calls)}}`` (one ``client.run``)."""
        got = self.client.run(_agents_here, workers=sorted(set(addresses)), on_error="return")
        return {a: v for a, v in got.items() if isinstance(v, dict)}

    #: seconds between liveness checks while an actor call is outstanding
    POLL_S = 2.0

    def _result(self, call, creation, addr):
        """The result of an actor call, or OSError if the actor was lost.

        Dask leaves a call pending forever when its actor has vanished from a live worker
        (a worker restarted at the same address, calls proxied by the scheduler). So every
        ``POLL_S`` seconds without a reply, the worker is asked whether it still runs this
        very actor (same token) and whether a call is in progress there: a missing worker,
        a missing or re-created actor, or two idle checks in a row count as lost (the
        operation is then recomputed as tasks: never a wrong answer, at worst extra work).
        """
        idle = 0
        while True:
            try:
                return call.result(timeout=self.POLL_S)
            except TimeoutError:
                state = self._agents_on([addr]).get(addr, {}).get(creation.key)
                if state is None or state[0] != self._tokens.get(creation.key):
                    raise OSError(f"the actor on {addr} was lost") from None
                idle = idle + 1 if state[1] == 0 else 0
                if idle >= 2:
                    raise OSError(f"the call to the actor on {addr} was lost") from None

    # ------------------------------------------------------------------ operations
    def run(self, op, args, per_chunk, fuse):
        if self.transport == "tasks":
            return self._run_tasks(op, args, per_chunk, fuse, self._placement())
        try:
            agents = self._ensure_agents()
        except _GENUINE:
            raise
        except Exception:  # a worker went away while the actors were placed
            self._agents = None
            self._groups = None
            return self._run_tasks(op, args, per_chunk, fuse, self._placement(), recovery=True)
        calls = []
        failed = []
        for actor, creation, addr, idx in agents:
            sub = _subset(per_chunk, idx)
            if sub is not None and not sub:
                continue
            self.stats.bytes_sent += _nbytes(args) + _nbytes(sub)
            try:
                calls.append((actor.run(op, args, sub, fuse), creation, addr, idx))
            except Exception:  # "Worker holding Actor was lost"
                failed.extend(idx)
        self.stats.round_trips += 1
        out = {}
        for call, creation, addr, idx in calls:
            try:
                res = self._result(call, creation, addr)
            except _GENUINE:
                raise  # an error of the computation itself, not of the cluster
            except Exception:  # the worker died or lost the actor: recompute below
                failed.extend(idx)
                continue
            self.stats.bytes_received += _nbytes(res)
            out.update(res)
        if failed:
            self._agents = None  # rebuilt on the new placement before the next operation
            self._groups = None
            out.update(self._run_tasks(op, args, _subset(per_chunk, failed)
                                       if per_chunk is not None else {i: () for i in failed},
                                       fuse,
                                       [(None, sorted(failed))], recovery=True))
        return out

    def _run_tasks(self, op, args, per_chunk, fuse, groups, recovery=False):
        """One task per group, pinned (loosely) to the group's worker; Dask recomputes lost
        chunk problems first. Tasks that keep killing workers end in a RuntimeError."""
        from concurrent.futures import CancelledError

        from distributed import KilledWorker

        if recovery:
            self.stats.recoveries += 1
        tasks = []
        for w, idx in groups:
            sub = _subset(per_chunk, idx)
            if sub is not None and not sub:
                continue
            self.stats.bytes_sent += _nbytes(args) + _nbytes(sub)
            chunks = [self.futures[i] for i in idx]
            fn = dask.delayed(_run_task, pure=False)
            if w is None:
                tasks.append(fn(chunks, op, args, sub, fuse))
            else:
                with dask.annotate(workers=[w], allow_other_workers=True):
                    tasks.append(fn(chunks, op, args, sub, fuse))
        self.stats.round_trips += 1
        futs = self.client.compute(tasks)
        try:
            results = self.client.gather(futs)
        except CancelledError:  # the chunk problems are gone (a restarted client or cluster)
            self._dead = True
            self.futures, self._groups, self._agents = [], None, None
            raise _cancelled_error() from None
        except KilledWorker as e:
            raise RuntimeError(
                f"the Dask cluster lost the workers running fastcurv's {op!r} operation too "
                f"often ({e}); no result was produced. Check the workers' memory and logs, "
                "then retry (the problem object is still usable)") from e
        out = {}
        for res, moved in results:
            self.stats.bytes_received += _nbytes(res)
            out.update(res)
            if moved:
                self._groups = None  # a chunk was copied to another worker: re-read placement
                self._agents = None
        return out

    def close(self):
        self._agents = None
        self.futures = []


def _cancelled_error():
    return RuntimeError("the chunk problems were cancelled (was the client or the cluster "
                        "restarted?); build the problem again")


def _resolve_client(client):
    """The ``dask.distributed`` client to use: the given one, or the default one."""
    try:
        import distributed
    except ImportError as e:
        raise ImportError(f"a GLM over a Dask array needs dask.distributed: {_INSTALL} "
                          "(or pass client='local' to compute the chunks in this process)"
                          ) from e
    if client is None:
        try:
            return distributed.default_client()
        except ValueError:
            raise ValueError(
                "fastcurv.GLM over a Dask array needs a running dask.distributed client, and "
                "none was found. Start one first, e.g. `from dask.distributed import Client; "
                "client = Client()` (a local cluster) or `Client('scheduler-address:8786')`, "
                "or pass client='local' to build every chunk in this process with Dask's "
                "threaded scheduler (all of X then has to fit in this process's memory)"
            ) from None
    if not isinstance(client, distributed.Client):
        raise TypeError(f"client must be None, 'local' or a dask.distributed.Client, got "
                        f"{client!r}")
    return client


def _row_chunked(X):
    """``X`` with known row-chunk sizes and a single column chunk."""
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_features), got {X.ndim} dimensions")
    if any(np.isnan(c) for c in X.chunks[0]) or any(np.isnan(c) for c in X.chunks[1]):
        X = X.compute_chunk_sizes()
    if X.numblocks[1] != 1:
        X = X.rechunk({1: X.shape[1]})
    rows = tuple(int(c) for c in X.chunks[0] if c > 0)
    if rows and len(rows) < X.numblocks[0]:  # empty row chunks (from a boolean mask, say)
        X = X.rechunk({0: rows})
    return X


def _aligned(a, X, name):
    """``a`` (a Dask or numpy array of X's row count) as a Dask array with X's row chunks."""
    if a is None:
        return None
    n = X.shape[0]
    if isinstance(a, da.Array):
        if any(np.isnan(c) for c in a.chunks[0]):
            a = a.compute_chunk_sizes()
    else:
        a = np.asarray(a)
    if a.ndim not in (1, 2) or a.shape[0] != n:
        raise ValueError(f"{name} must have {n} rows to match X, got shape {a.shape}")
    if name == "sample_weight" and a.ndim != 1:
        raise ValueError(f"sample_weight must have shape ({n},) to match X, got {a.shape}")
    chunks = (X.chunks[0],) + ((a.shape[1],) if a.ndim == 2 else ())
    if isinstance(a, da.Array):
        return a.rechunk(chunks)
    return da.from_array(a, chunks=chunks)


class DaskGLM:
    r"""A :class:`fastcurv.GLM` whose rows are row chunks of a Dask array on Dask workers.

    Built by ``fastcurv.GLM(X, y, ...)`` when ``X`` is a ``dask.array.Array``; same
    objective, parameters and methods (see :class:`fastcurv.GLM` and this module's
    docstring for what runs where and what each call costs).

    Parameters
    ----------
    X : dask.array.Array (n, d)
        Row chunks of dense numpy blocks or scipy.sparse blocks (converted to CSR on the
        worker; e.g. ``da.from_array(X_csr, chunks=(rows, d), asarray=False)``). Several
        column chunks are merged into one first.
    y : dask.array.Array or array_like
        Targets as for :class:`fastcurv.GLM`; rechunked (or split) to X's row chunks.
    family, l2, fit_intercept, sample_weight, n_classes
        As for :class:`fastcurv.GLM`. ``sample_weight`` may be a Dask or numpy array.
        For the multinomial without ``n_classes``, ``max(y) + 1`` is computed first.
    client : None, "local" or dask.distributed.Client
        None: the default client (``distributed.default_client()``; an error says how to
        start one if there is none). ``"local"``: compute the chunk problems in this process
        with Dask's threaded scheduler and run every operation here (all of X in this
        process's memory: useful for tests and small data).
    transport : {"actors", "tasks"}
        How each operation reaches the workers: one direct call to an actor per worker
        (default, ~3-5 ms per round trip), or one task per worker through the scheduler
        (~10-20 ms).

    Attributes
    ----------
    n_chunks, chunk_starts
        Number of row chunks and their first rows (length ``n_chunks + 1``).
    stats
        Counters of operations, round trips and payload bytes sent and received
        (``stats.reset()`` zeroes them).
    fuse_diag : bool
        As for :class:`fastcurv.GLM` (passed to the chunk problems with every call).
    """

    def __init__(self, X, y, family="logistic", l2=0.0, fit_intercept=True, sample_weight=None,
                 *, n_classes=None, client=None, transport="actors"):
        self.family = family
        self._fam = families.family_code(family)
        self.l2 = l2
        self.fit_intercept = val.as_flag(fit_intercept, "fit_intercept")
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
        if not isinstance(X, da.Array):
            raise TypeError(f"X must be a dask.array.Array, got {type(X).__name__}")
        self.fuse_diag = False
        self.stats = _Stats()

        X = _row_chunked(X)
        n = int(X.shape[0])
        y = _aligned(y, X, "y")
        w = _aligned(sample_weight, X, "sample_weight")
        local = isinstance(client, str) and client == "local"
        if not local and isinstance(client, str):
            raise ValueError(f"client must be None, 'local' or a dask.distributed.Client, got "
                             f"{client!r}")
        cl = None if local else _resolve_client(client)
        if n_classes is not None and self._fam != MULTINOMIAL:
            raise ValueError("n_classes is only used by family='multinomial'")
        if self._fam == MULTINOMIAL and n_classes is None:
            n_classes = self._infer_classes(y, cl)
        starts = np.concatenate(([0], np.cumsum(X.chunks[0]))).astype(np.int64)
        xb = X.to_delayed().ravel()
        yb = y.to_delayed().ravel()
        wb = w.to_delayed().ravel() if w is not None else [None] * len(xb)
        build = dask.delayed(_build_chunk, pure=True)
        delayeds = [build(i, int(starts[i]), xb[i], yb[i], wb[i], family, self.fit_intercept,
                          n_classes) for i in range(len(xb))]
        if local:
            self._backend = _LocalBackend(delayeds, self.stats)
        else:
            self._backend = _ClientBackend(cl, delayeds, transport, self.stats)
        self.transport = None if local else transport
        self.chunk_starts = starts
        self.n_chunks = len(xb)
        self._scale = np.ones(self.n_chunks)  # set from the chunks' weights below
        self._active = list(range(self.n_chunks))
        self._init_from_meta(self._run("meta", (), fuse=False), n)

    @property
    def l2(self):
        """The L2 penalty strength λ ≥ 0 (may be reassigned; checked as in the constructor,
        as :attr:`fastcurv.GLM.l2`)."""
        return self._l2

    @l2.setter
    def l2(self, value):
        self._l2 = val.as_float_scalar(value, "l2", low=0.0)

    # ------------------------------------------------------------------ construction
    def _infer_classes(self, y, client):
        """``max(y) + 1`` (at least 2), refused as fastcurv.GLM refuses it when most of the
        (more than ``SPARSE_LABELS_ABOVE``) classes it implies would be empty (one pass: the
        distinct labels). Non-finite labels are left to the chunks' checks, which name their
        row and chunk."""
        u = da.unique(y)
        u = np.asarray(u.compute(scheduler="threads") if client is None
                       else client.compute(u).result(), dtype=np.float64)
        if u.size == 0:
            raise ValueError("y is empty")
        u = u[np.isfinite(u)]
        if u.size == 0:
            return 2
        K = max(int(u.max()) + 1, 2)
        if K > families.SPARSE_LABELS_ABOVE and 2 * u.size < K:
            raise ValueError(
                f"the labels go up to {K - 1} but only {u.size} distinct values occur: most "
                f"of the {K} classes this implies would be empty; relabel with "
                "np.unique(y, return_inverse=True)[1], or pass n_classes")
        return K

    def _init_from_meta(self, meta, n):
        ms = [meta[i] for i in range(self.n_chunks)]
        first = ms[0]
        for key in ("d", "K", "dtype", "sparse"):
            vals = {m[key] for m in ms}
            if len(vals) != 1:
                raise ValueError(f"the row chunks of X disagree on {key}: {sorted(vals)}")
        if sum(m["n"] for m in ms) != n:
            raise ValueError("the row chunks of X do not add up to its row count")
        self._d, self._K = first["d"], first["K"]
        self._dtype = np.dtype(first["dtype"])
        self._sparse = first["sparse"]
        self._n = n
        wmax = np.array([m["wmax"] for m in ms])
        if not np.any(wmax > 0):
            raise ValueError("sample_weight is zero everywhere; at least one sample needs a "
                             "weight > 0")
        # s_c = W_c / W, from weights scaled by the global maximum (no overflow)
        rel = np.array([(m["wmax"] / wmax.max()) * m["wsum"] for m in ms])
        total = 0.0
        for r in rel:  # fixed order
            total += r
        self._scale = rel / total
        self._active = [i for i in range(self.n_chunks) if self._scale[i] > 0]
        self.nbytes = int(sum(m["nbytes"] for m in ms))
        # a side of an output's target range is reached iff some chunk reaches it
        above = np.logical_or.reduce([m["support"][0] for m in ms])
        below = np.logical_or.reduce([m["support"][1] for m in ms])
        self._runaway = (families.runaway_intercept_message(self._fam, above, below)
                         if self.fit_intercept else None)

    # ------------------------------------------------------------------ attributes
    @property
    def n_samples(self):
        return self._n

    @property
    def n_features(self):
        return self._d

    @property
    def n_outputs(self):
        """K: 1 for single-output families, the number of classes for the multinomial."""
        return self._K

    @property
    def n_params(self):
        return (self._d + int(self.fit_intercept)) * self._K

    @property
    def dtype(self):
        return self._dtype

    @property
    def is_sparse(self):
        return self._sparse

    def __repr__(self):
        kind = "CSR" if self.is_sparse else "dense"
        where = "local" if self.transport is None else f"dask.distributed ({self.transport})"
        return (f"DaskGLM(family={self.family!r}, n_samples={self.n_samples}, "
                f"n_features={self.n_features}, n_outputs={self.n_outputs}, l2={self.l2}, "
                f"fit_intercept={self.fit_intercept}, {kind} {self.dtype}, "
                f"{self.n_chunks} row chunks, {where})")

    def close(self):
        """Release the chunk problems and the actors (the object is unusable afterwards)."""
        self._backend.close()
        self._closed = True

    # ------------------------------------------------------------------ parameters
    def init(self, seed=0):
        """Starting parameters: zeros of length ``n_params`` (``seed`` is accepted for the API)."""
        return np.zeros(self.n_params, dtype=self.dtype)

    def unflatten(self, theta):
        """``[W~]``: a one-element list holding the (d + 1, K) augmented weights (a view)."""
        theta = self._check_theta(theta)
        return [theta.reshape(self._d + int(self.fit_intercept), self._K)]

    def flatten(self, parts):
        """Inverse of :meth:`unflatten`."""
        return flatten_layer(parts, self._d + int(self.fit_intercept), self._K, self.dtype)

    def _check_theta(self, theta):
        return val.check_vector(theta, self.n_params, self.dtype, "theta")

    def _penalty_mask(self):
        mask = np.zeros(self.n_params)
        mask[: self._d * self._K] = 1.0
        return mask

    # ------------------------------------------------------------------ plumbing
    def _run(self, op, args, per_chunk=None, fuse=None):
        """``{chunk index: result}`` of one operation on the chunks (one round trip).

        Weighted operations skip chunks of zero total weight.
        """
        if getattr(self, "_closed", False):
            raise RuntimeError("this DaskGLM was closed (p.close() released its chunks); build "
                               "the problem again")
        if op in _WEIGHTED and len(self._active) < self.n_chunks:
            if per_chunk is None:
                per_chunk = {i: () for i in self._active}
            else:
                per_chunk = {i: a for i, a in per_chunk.items() if self._scale[i] > 0}
        self.stats.operations += 1
        return self._backend.run(op, args, per_chunk,
                                 self.fuse_diag if fuse is None else fuse)

    def _weighted_sum(self, res):
        """``Σ_c s_c r_c`` in float64, in chunk order."""
        acc = None
        for i in sorted(res):
            term = self._scale[i] * np.asarray(res[i], dtype=np.float64)
            acc = term if acc is None else acc + term
        return acc

    # ------------------------------------------------------------------ objective
    def value(self, theta):
        """``F(θ)``, a Python float (one round trip): ``+inf`` where it overflows, as
        :meth:`fastcurv.GLM.value`."""
        theta = self._check_theta(theta)
        res = self._run("value", (theta,))
        loss = 0.0
        for i in sorted(res):
            loss += self._scale[i] * float(res[i])
        value = loss + _half_sq_penalty(self.l2, theta[: self._d * self._K].astype(np.float64))
        return val.inf_if_overflow(value)

    def grad(self, theta):
        """``∇F(θ)``, shape (P,) (one round trip)."""
        return self.value_and_grad(theta)[1]

    def value_and_grad(self, theta):
        """``(F(θ), ∇F(θ))``: one pass over every chunk, one round trip."""
        theta = self._check_theta(theta)
        res = self._run("vg", (theta,))
        loss = 0.0
        for i in sorted(res):
            loss += self._scale[i] * float(res[i][0])
        g = self._weighted_sum({i: r[1] for i, r in res.items()})
        W64 = theta[: self._d * self._K].astype(np.float64)
        value = loss + _half_sq_penalty(self.l2, W64)
        with np.errstate(over="ignore"):
            g[: self._d * self._K] += self.l2 * W64
        if not (np.isfinite(value) and np.isfinite(g).all()):
            raise FloatingPointError(
                f"At these parameters the {self.family} objective or its gradient overflows "
                "(each row chunk's is finite, their weighted sum with the L2 penalty is not). "
                "Start from smaller parameters, standardize the features, or lower l2.")
        return value, g.astype(self.dtype, copy=False)

    # ------------------------------------------------------------------ curvature
    def _check_v(self, v):
        return val.check_vector(v, self.n_params, self.dtype, "v", allow_block=True)

    def _curv(self, op, theta, v, penalty, extra=()):
        theta = self._check_theta(theta)
        v = self._check_v(v)
        out = self._weighted_sum(self._run(op, (theta, v) + tuple(extra)))
        if penalty and self.l2 != 0.0:
            mask = self._penalty_mask()
            out += self.l2 * (mask if v.ndim == 1 else mask[:, None]) * v.astype(np.float64)
        return out.astype(self.dtype, copy=False)

    def hvp(self, theta, v):
        """Hessian-vector product ``∇²F(θ) v`` for v (P,) or (P, m): one round trip."""
        return self._curv("hvp", theta, v, True)

    def ggn_vp(self, theta, v):
        """Gauss-Newton-vector product; equal to :meth:`hvp` for canonical-link GLMs."""
        return self._curv("hvp", theta, v, True)

    def fisher_vp(self, theta, v):
        """Empirical Fisher product ``(1/W) Σ w_i g_i g_iᵀ v`` (no penalty): one round trip."""
        return self._curv("fisher_vp", theta, v, False)

    def _chunk_seeds(self, seed):
        """Independent integer seeds per chunk, drawn from ``seed`` (Monte Carlo methods).

        The draws differ from the in-memory GLM's with the same seed (its streams run over
        the rows in one piece); the same seed gives the same result here.
        """
        s = val.make_rng(seed).integers(0, 2**63 - 1, size=self.n_chunks)
        return [int(x) for x in s]

    def _mc_fisher_vp(self, theta, v, mc_samples, seed):
        """Monte Carlo Fisher product (see :meth:`fastcurv.GLM._mc_fisher_vp`), each chunk
        with its own seed from ``seed``."""
        theta = self._check_theta(theta)
        v = self._check_v(v)
        seeds = self._chunk_seeds(seed)
        res = self._run("mc_fisher_vp", (theta, v, int(mc_samples)),
                        {i: (seeds[i],) for i in range(self.n_chunks)})
        return self._weighted_sum(res).astype(self.dtype, copy=False)

    def _diag(self, op, theta, penalty, per_chunk=None, extra=()):
        theta = self._check_theta(theta)
        out = self._weighted_sum(self._run(op, (theta,) + tuple(extra), per_chunk))
        if penalty and self.l2 != 0.0:
            out += self.l2 * self._penalty_mask()
        return out.astype(self.dtype, copy=False)

    def hessian_diag(self, theta):
        """Exact Hessian diagonal (one round trip; no pass over X when it was fused into the
        value-and-gradient pass at ``θ``)."""
        return self._diag("hessian_diag", theta, True)

    def ggn_diag(self, theta, mc_samples=None, seed=None):
        """Diagonal of the Gauss-Newton matrix: exact (= :meth:`hessian_diag`) by default; with
        ``mc_samples`` the Monte Carlo estimate, each chunk seeded from ``seed``."""
        if mc_samples is None:
            return self._diag("hessian_diag", theta, True)
        mc_samples = val.as_int(mc_samples, "mc_samples", none_ok=True)
        seeds = self._chunk_seeds(seed)
        return self._diag("ggn_diag", theta, True,
                          {i: (seeds[i],) for i in range(self.n_chunks)},
                          extra=(int(mc_samples),))

    def fisher_diag(self, theta):
        """Diagonal of the empirical Fisher (no penalty): one round trip."""
        return self._diag("fisher_diag", theta, False)

    def hessian(self, theta):
        """The dense (P, P) Hessian (small problems): ``P²`` values from every chunk."""
        theta = self._check_theta(theta)
        H = self._weighted_sum(self._run("hessian", (theta,)))
        if self.l2 != 0.0:
            H[np.diag_indices(self.n_params)] += self.l2 * self._penalty_mask()
        return H.astype(self.dtype, copy=False)

    # ------------------------------------------------------------------ Jacobians
    def jvp(self, theta, v):
        """``η̇ = x_i V + v_b`` for every row, (n, K) or (n, K, m), gathered on the driver."""
        theta = self._check_theta(theta)
        v = self._check_v(v)
        res = self._run("jvp", (theta, v))
        return np.concatenate([res[i] for i in range(self.n_chunks)], axis=0)

    def vjp(self, theta, u):
        """``Σ_i x̃_i ⊗ u_i`` (unweighted), shape (P,) or (P, m); each chunk gets its rows of u."""
        theta = self._check_theta(theta)
        n, K = self._n, self._K
        U = np.asarray(u)
        if U.dtype.kind not in "biuf":
            raise TypeError(f"u must be a real array, got dtype {U.dtype}")
        if U.ndim == 1 and K == 1:
            U = U.reshape(n if U.shape[0] == n else -1, 1)
        if not (U.ndim in (2, 3) and U.shape[0] == n and U.shape[1] == K):
            raise ValueError(f"u must have shape ({n}, {K}) or ({n}, {K}, m), got {np.shape(u)}")
        s = self.chunk_starts
        per = {i: (U[s[i]:s[i + 1]],) for i in range(self.n_chunks)}
        res = self._run("vjp", (theta,), per)
        out = None
        for i in range(self.n_chunks):
            r = np.asarray(res[i], dtype=np.float64)
            out = r if out is None else out + r
        return out.astype(self.dtype, copy=False)

    def _split_rows(self, idx):
        """``({chunk: (local rows,)}, {chunk: positions in idx})`` for global rows ``idx``."""
        chunk_of = np.searchsorted(self.chunk_starts, idx, side="right") - 1
        per, positions = {}, {}
        for c in np.unique(chunk_of):
            pos = np.flatnonzero(chunk_of == c)
            per[int(c)] = (idx[pos] - self.chunk_starts[c],)
            positions[int(c)] = pos
        return per, positions

    def per_sample_grads(self, theta, rows=None):
        """Per-sample loss gradients ``g_i = x̃_i ⊗ ℓ'_i`` of ``rows`` (default all), (m, P)
        (CSR for CSR data); each chunk computes and sends its own rows."""
        theta = self._check_theta(theta)
        idx = val.check_rows(rows, self._n)
        per, positions = self._split_rows(idx)
        if not per:  # no rows: chunk 0 gives the empty result of the right kind
            per, positions = {0: (idx,)}, {0: idx}
        res = self._run("psg", (theta,), per)
        parts = [res[c] for c in sorted(per)]
        order = np.concatenate([positions[c] for c in sorted(per)])
        if sp.issparse(parts[0]):
            stacked = sp.vstack(parts, format="csr")
            return stacked[np.argsort(order, kind="stable")]
        out = np.empty((idx.size, self.n_params), dtype=self.dtype)
        out[order] = np.concatenate(parts, axis=0)
        return out

    # ------------------------------------------------------------------ influence
    def _kfac_layout(self):
        """One layer: ``(n_in, n_out, has_bias_row)`` and its parameter offsets (as
        :meth:`fastcurv.GLM._kfac_layout`)."""
        return [(self._d, self._K, self.fit_intercept)], [0, self.n_params]

    def _grad_dots_rows(self, theta, S, idx):
        """``S @ g_iᵀ`` for the global rows ``idx``: (m, len(idx)) float64 (see
        :meth:`fastcurv.GLM._grad_dots`). One round trip: ``S`` goes to the workers holding
        those rows, each chunk returns the dot products of its rows (never their
        gradients)."""
        theta = self._check_theta(theta)
        S = np.ascontiguousarray(S, dtype=np.float64)
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((S.shape[0], idx.size))
        if idx.size == 0:
            return out
        per, positions = self._split_rows(idx)
        res = self._run("grad_dots", (theta, S), per)
        for c, pos in positions.items():
            out[:, pos] = res[c]
        return out

    def _grad_dots(self, theta, S, lo, hi):
        """``S @ g_iᵀ`` for the rows ``lo:hi`` (one round trip)."""
        return self._grad_dots_rows(theta, S, np.arange(lo, hi))

    def _row_weights(self, rows):
        """``w_i / W`` of the global rows ``rows`` (one round trip)."""
        idx = val.check_rows(rows, self._n)
        out = np.zeros(idx.size)
        if idx.size == 0:
            return out
        per, positions = self._split_rows(idx)
        res = self._run("row_weights", (), per)
        for c, pos in positions.items():
            out[pos] = self._scale[c] * np.asarray(res[c], dtype=np.float64)
        return out

    def subset(self, rows):
        """The same model and penalty on the rows ``rows``, as an in-memory
        :class:`fastcurv.GLM` in this process (the rows of ``X`` are sent to the driver: one
        round trip; keep ``rows`` small)."""
        idx = val.check_rows(rows, self._n)
        if idx.size == 0:
            raise ValueError("subset needs at least one row")
        per, positions = self._split_rows(idx)
        res = self._run("rows", (), per)
        order = np.concatenate([positions[c] for c in sorted(per)])
        inv = np.argsort(order, kind="stable")
        Xs = [res[c][0] for c in sorted(per)]
        X = (sp.vstack(Xs, format="csr") if sp.issparse(Xs[0]) else np.concatenate(Xs))[inv]
        y = np.concatenate([res[c][1] for c in sorted(per)])[inv]
        w = np.concatenate([res[c][2] for c in sorted(per)])[inv]
        val.check_subset_weights(w, np.arange(w.size))
        return self.with_data(X, y, sample_weight=w)

    def with_data(self, X, y, sample_weight=None):
        """The same model and penalty on other data (the class count is kept): a
        :class:`DaskGLM` on the same client when ``X`` is a Dask array, else an in-memory
        :class:`fastcurv.GLM` (e.g. a few test points for :class:`fastcurv.Influence`)."""
        val.check_n_features(X, self._d, "the model's feature count")
        extra = {"n_classes": self._K} if self._fam == MULTINOMIAL else {}
        if isinstance(X, da.Array):
            client = "local" if self.transport is None else self._backend.client
            return DaskGLM(X, y, family=self.family, l2=self.l2,
                           fit_intercept=self.fit_intercept, sample_weight=sample_weight,
                           client=client, transport=self.transport or "actors", **extra)
        return GLM(X, y, family=self.family, l2=self.l2, fit_intercept=self.fit_intercept,
                   sample_weight=sample_weight, **extra)

    # ------------------------------------------------------------------ line search
    def value_along(self, theta, direction):
        """``α ↦ F(θ + α d)`` for line searches: each call is one round trip in which every
        chunk evaluates its O(n_c K) closure of :meth:`fastcurv.GLM.value_along` (built on
        the first call at ``(θ, d)`` and kept on the worker)."""
        theta = self._check_theta(theta)
        d = val.check_vector(direction, self.n_params, self.dtype, "direction")
        dk = self._d * self._K
        pen = _penalty_along(self.l2, theta[:dk].astype(np.float64), d[:dk].astype(np.float64))

        def phi(alpha):
            alpha = float(alpha)
            res = self._run("phi", (theta, d, alpha))
            loss = 0.0
            for i in sorted(res):
                loss += self._scale[i] * float(res[i])
            f = loss + pen(alpha)
            return val.inf_if_overflow(f)

        return phi

    def _diverging_message(self, theta):
        """As :meth:`fastcurv.GLM._diverging_message` (one round trip when ``l2 = 0`` for a
        logistic or multinomial model, none otherwise): the runaway intercept comes from the
        chunks' target support gathered at construction; separable iff every chunk is."""
        if self._runaway is not None:
            return self._runaway
        if self.l2 != 0.0 or self._fam not in (LOGISTIC, MULTINOMIAL):
            return None
        res = self._run("separable", (self._check_theta(theta),))
        msgs = [res[i] for i in sorted(res)]
        return msgs[0] if msgs and all(m is not None for m in msgs) else None
