"""The heads of one attention layer as Dask tasks: several machines (or processes) share the encrypted work.

The heads of a layer share nothing, so each is its own FHE computation: one compiled
:class:`~course_lib.fhe.HeadCircuit` per head, each with its own keys. :class:`DistributedHeads`
runs them on the workers of a Dask cluster (https://distributed.dask.org), an existing
engine that schedules tasks, moves data, retries the tasks of a worker that died and shows
a live dashboard.

**Who holds what.** This process (the client) keeps every secret key: it encrypts each
head's ``q, k, v`` and decrypts each head's output. A worker receives, for each head it
runs, a :class:`HeadServerPayload` (concrete's server artifact and the head's *evaluation*
keys, the same things :mod:`course_lib.server` receives over HTTP) and then ciphertexts.

**Once, not per token.** The payloads become Dask data when :class:`DistributedHeads` is
created: each one is sent to a worker once and stays there, and the tasks of every later
run (every token of a generation) go to the worker that holds their head's payload, with
only ciphertexts attached. A worker deserializes a payload on its first run and keeps the
result for the next ones (:func:`run_head_on_worker`).

**Memory.** The scheduler keeps every payload as long as :class:`DistributedHeads` is open (the
recipe below): with a local cluster it runs in this process, so this process holds the payloads'
size once more. Each worker holds the payloads of its heads, and their evaluation keys
decompressed after its first run.

**Failures.** A payload is delivered by a small task whose input is the payload itself,
not by ``Client.scatter``: Dask keeps a task's inputs until its result is released, so
when a worker dies with a payload in its memory, the scheduler delivers it again to
another worker, then retries the runs that were lost, and the result is the same, bit
for bit. (Scattered data has no such recipe: it is lost with its worker.)

**Where.** By default an embedded ``LocalCluster`` of worker processes on this machine,
started on demand; ``scheduler=`` or ``$COURSE_DASK_SCHEDULER`` points to an existing
scheduler instead (``dask scheduler`` on one machine, ``dask worker ADDRESS`` on the others,
each with the course installed). A scheduler that cannot be reached is reported within
``connect_timeout`` seconds.

**What it gains.** concrete already runs the PBS of one circuit on every core of its
machine, so more worker processes on the *same* cores gain little or nothing: the gain
comes from workers on other machines, each bringing its own cores (notebook 04, section 6).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from concrete import fhe

from .checks import check_integer
from .contract import SERVER_FILE, CircuitDescription
from .fhe import HeadCircuit, head_columns
from .keys import keys_loaded
from .progress import progress_bar
from .transport import pack, unpack

#: Environment variable: the address of an existing Dask scheduler (e.g. ``tcp://10.0.0.5:8786``).
SCHEDULER_ENV = "COURSE_DASK_SCHEDULER"
#: Seconds to wait for a scheduler to answer, and for a cluster to have its first worker.
CONNECT_TIMEOUT = 5.0


class SchedulerUnreachableError(ConnectionError):
    """No Dask scheduler answered at the given address, or it has no workers."""


# -- what a worker receives ------------------------------------------------------------------------
@dataclass(frozen=True, repr=False)
class HeadServerPayload:
    """Everything a worker needs to run one head on ciphertexts, and nothing more: no secret key.

    Attributes:
        head: the head's index in the layer.
        description: the circuit's description (:attr:`HeadCircuit.description`), what a server publishes.
        server_zip: concrete's server artifact (the compiled circuit, no keys).
        evaluation_keys: the head's evaluation keys, serialized (compressed).
        keys_digest: SHA-256 of ``evaluation_keys``: names the payload on the workers.
    """

    head: int
    description: CircuitDescription
    server_zip: bytes
    evaluation_keys: bytes
    keys_digest: str

    @property
    def fingerprint(self) -> str:
        """The circuit's fingerprint (:attr:`HeadCircuit.fingerprint`)."""
        return self.description.fingerprint

    @property
    def nbytes(self) -> int:
        """The payload's size in bytes (what one worker receives for this head)."""
        return len(self.server_zip) + len(self.evaluation_keys)

    def __repr__(self) -> str:
        return (
            f"HeadServerPayload(head={self.head}, circuit {self.fingerprint}, "
            f"{self.nbytes / 1e6:,.1f} MB: server artifact and evaluation keys)"
        )


def head_payload(circuit: HeadCircuit, head: int, cache_dir: str | Path | None = None) -> HeadServerPayload:
    """The payload of ``circuit`` (one head's compiled circuit, its keys in memory or in the key cache)."""
    with tempfile.TemporaryDirectory(prefix="course-head-") as folder:
        folder = circuit.save_server(folder)
        server_zip = (folder / SERVER_FILE).read_bytes()
        description = CircuitDescription.load(folder)
    with keys_loaded(circuit.circuit, cache_dir):
        evaluation_keys = circuit.circuit.keys.evaluation.serialize()
    digest = hashlib.sha256(evaluation_keys).hexdigest()
    return HeadServerPayload(head, description, server_zip, evaluation_keys, digest)


# -- the worker's side -----------------------------------------------------------------------------
#: On a worker: the payloads it has deserialized, by ``keys_digest`` (kept for the next runs).
_LOADED: dict[str, tuple[fhe.Server, fhe.EvaluationKeys, Path]] = {}
_LOADING = threading.Lock()  # a worker with several threads loads each payload once


def deliver(payload: HeadServerPayload) -> HeadServerPayload:
    """The task that makes a payload Dask data on a worker (and can make it again, see the module's text)."""
    return payload


def _server_and_keys(payload: HeadServerPayload) -> tuple[fhe.Server, fhe.EvaluationKeys, bool]:
    """The payload's server and keys, deserialized on the first call in this process; True if that was now."""
    with _LOADING:
        loaded_now = payload.keys_digest not in _LOADED
        if loaded_now:
            folder = Path(tempfile.mkdtemp(prefix=f"course-head-{payload.head}-"))
            (folder / SERVER_FILE).write_bytes(payload.server_zip)
            server = fhe.Server.load(folder / SERVER_FILE)
            keys = fhe.EvaluationKeys.deserialize(payload.evaluation_keys)
            _LOADED[payload.keys_digest] = (server, keys, folder)
        server, keys, _ = _LOADED[payload.keys_digest]
    return server, keys, loaded_now


@dataclass(frozen=True)
class HeadRun:
    """One head's run on a worker.

    Attributes:
        head: the head's index.
        worker: the worker's address.
        pid: the worker's process id.
        seconds: time of the FHE run on the worker (its PBS), the payload's deserialization excluded.
        loaded_payload: True if this run deserialized the head's payload (the worker's first run of
            this head), False if the worker had it from an earlier run.
    """

    head: int
    worker: str
    pid: int
    seconds: float
    loaded_payload: bool


def run_head_on_worker(payload: HeadServerPayload, message: bytes) -> tuple[bytes, HeadRun]:
    """A worker's task: run one head on the ciphertexts in ``message``; the encrypted output and what it took.

    Uses ``fhe.Server``, ``fhe.EvaluationKeys`` and ``fhe.Value`` only: there is no key on a worker
    that could decrypt anything.
    """
    from distributed import get_worker

    server, keys, loaded_now = _server_and_keys(payload)
    inputs = len(payload.description.inputs)
    args = [fhe.Value.deserialize(part) for part in unpack(message, expected_parts=inputs)]
    start = time.perf_counter()
    result = server.run(*args, evaluation_keys=keys)
    seconds = time.perf_counter() - start
    run = HeadRun(payload.head, get_worker().address, os.getpid(), seconds, loaded_now)
    return pack([result.serialize()]), run


def forget_payloads(digests: Sequence[str]) -> int:
    """On a worker: drop the deserialized payloads named by ``digests``; how many it held."""
    dropped = 0
    for digest in digests:
        loaded = _LOADED.pop(digest, None)
        if loaded is not None:
            shutil.rmtree(loaded[2], ignore_errors=True)
            dropped += 1
    return dropped


# -- the cluster -----------------------------------------------------------------------------------
def connect(
    workers: int | None = None,
    scheduler: str | None = None,
    *,
    connect_timeout: float = CONNECT_TIMEOUT,
    dashboard: bool = True,
):
    """A Dask ``Client``: to the scheduler at ``scheduler`` (or ``$COURSE_DASK_SCHEDULER``), else to a local cluster.

    Args:
        workers: worker processes of the local cluster (default: the number of cores). Not
            allowed with a scheduler address: that cluster has its own workers.
        scheduler: an existing scheduler's address, e.g. ``tcp://10.0.0.5:8786``.
        connect_timeout: seconds to wait for the scheduler and for its first worker.
        dashboard: serve the local cluster's dashboard (on a free port; see ``client.dashboard_link``).

    The local cluster has one task thread per worker, and each worker's runs use its share of the
    cores (:func:`cores_per_local_worker`; concrete parallelizes each run with OpenMP); no memory
    limit per worker (Dask's default share of the machine's memory would kill a worker while it
    decompresses its evaluation keys) and no work stealing (see the code). It is closed with the
    client's ``close()``. For a cluster of your own, start the scheduler with
    ``DASK_DISTRIBUTED__SCHEDULER__WORK_STEALING=False dask scheduler`` (a warning says when it
    steals work) and each worker with ``OMP_NUM_THREADS=<its cores> dask worker ADDRESS --nthreads 1
    --memory-limit 0`` (Dask's default OMP_NUM_THREADS=1 would run every head on one core).

    Raises:
        SchedulerUnreachableError: no scheduler answered within ``connect_timeout`` seconds, or it has no worker.
        ValueError: ``workers`` is not a positive integer, or is given with a scheduler address.
    """
    from distributed import Client

    address = scheduler or os.environ.get(SCHEDULER_ENV) or None
    if address is not None:
        if workers is not None:
            raise ValueError(
                f"workers={workers!r} sizes a local cluster; the scheduler at {address!r} brings its own workers "
                f"(pass one or the other)"
            )
        source = "scheduler=" if scheduler else f"${SCHEDULER_ENV}"
        try:
            client = Client(address, timeout=connect_timeout, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as error:
            raise SchedulerUnreachableError(
                f"no Dask scheduler answered at {address!r} (from {source}) within {connect_timeout:g} s: {error}. "
                f"Start one with `dask scheduler` and workers with `dask worker {address}`, or leave "
                f"{SCHEDULER_ENV} unset to run on a local cluster"
            ) from None
        try:
            client.wait_for_workers(1, timeout=connect_timeout)
        except TimeoutError:
            client.close()
            raise SchedulerUnreachableError(
                f"the Dask scheduler at {address!r} has no worker after {connect_timeout:g} s: start some with "
                f"`dask worker {address}` (each machine needs the course installed)"
            ) from None
        if client.run_on_scheduler(_steals_work):
            warnings.warn(
                f"the Dask scheduler at {address!r} steals work: it may copy a head's payload (server artifact and "
                f"evaluation keys) to an idle worker instead of waiting for the worker that holds it. Start it with "
                f"DASK_DISTRIBUTED__SCHEDULER__WORK_STEALING=False",
                stacklevel=2,
            )
        return client

    if workers is None:
        workers = os.cpu_count() or 1
    check_integer(workers, "workers", unit="worker processes")
    import dask

    # Client() with cluster arguments starts a LocalCluster that it owns: closing the client closes it.
    # Work stealing off: a run waits for the worker that holds its head's payload instead of having
    # the payload copied to an idle worker (the delivery already spread the heads evenly).
    # OpenMP threads: Dask starts workers with OMP_NUM_THREADS=1 (right for NumPy tasks), which
    # would leave concrete's runtime one thread; each worker gets its share of the cores instead,
    # set in the worker process only (a "pre-spawn" variable would also be left in this process).
    settings = {
        "distributed.scheduler.work-stealing": False,
        "distributed.nanny.pre-spawn-environ.OMP_NUM_THREADS": None,
    }
    with dask.config.set(settings):
        client = Client(
            n_workers=int(workers),
            threads_per_worker=1,
            processes=True,
            memory_limit=0,
            dashboard_address=":0" if dashboard else None,
            silence_logs=logging.ERROR,
            set_as_default=False,
            env={"OMP_NUM_THREADS": str(cores_per_local_worker(int(workers)))},
        )
    try:
        client.wait_for_workers(int(workers), timeout=max(connect_timeout, 60))
    except TimeoutError:
        client.close()
        raise
    return client


def _steals_work(dask_scheduler) -> bool:
    """On the scheduler: is work stealing on?"""
    return "stealing" in dask_scheduler.extensions


def cores_per_local_worker(workers: int) -> int:
    """The OpenMP threads of each of ``workers`` local workers: this machine's cores shared out, at least one."""
    return max(1, (os.cpu_count() or 1) // workers)


# -- the client's side -----------------------------------------------------------------------------
@dataclass(frozen=True)
class DistributedRun:
    """One run of every head on the cluster, seen from the client.

    Attributes:
        heads: each head's run on its worker.
        wall_seconds: from the first encryption to the last decryption.
        encrypt_seconds, decrypt_seconds: the client's share.
    """

    heads: tuple[HeadRun, ...]
    wall_seconds: float
    encrypt_seconds: float
    decrypt_seconds: float

    @property
    def workers_used(self) -> int:
        """How many distinct worker processes ran a head."""
        return len({(run.worker, run.pid) for run in self.heads})

    def __str__(self) -> str:
        busiest = max(sum(r.seconds for r in self.heads if r.worker == w) for w in {r.worker for r in self.heads})
        return (
            f"{len(self.heads)} heads on {self.workers_used} worker{'s' * (self.workers_used > 1)} in "
            f"{self.wall_seconds:.1f} s (the busiest worker ran for {busiest:.1f} s; encrypting took "
            f"{self.encrypt_seconds:.2f} s, decrypting {self.decrypt_seconds:.2f} s)"
        )


@dataclass(frozen=True)
class SubmittedRun:
    """Tasks on their way (from :meth:`DistributedHeads.submit`): one future per head, and the encryption's time."""

    futures: list
    encrypt_seconds: float


class DistributedHeads:
    """Every head of a layer on a Dask cluster: one compiled circuit per head, one task per head and run.

    Args:
        circuits: one :class:`HeadCircuit` per head (each of one head), in head order, compiled for
            the same length, with their keys generated or cached (:func:`course_lib.keys.ensure_keys`).
        workers: worker processes of a local cluster (see :func:`connect`).
        scheduler: the address of an existing scheduler instead (or ``$COURSE_DASK_SCHEDULER``).
        cache_dir: the key cache, when the keys are not in memory.
        connect_timeout: seconds to wait for a scheduler (see :func:`connect`).

    ``run(q, k, v)`` takes the integers of every head in GPT-2's layout, ``(T, n_heads * head_dim)``
    (as :meth:`encode` makes them, or an all-heads :class:`HeadCircuit`'s ``encode(x, pad=False)``),
    and returns the output integers in the same layout: those of the heads' circuits run one after
    the other in this process, bit for bit.
    """

    def __init__(
        self,
        circuits: Sequence[HeadCircuit],
        *,
        workers: int | None = None,
        scheduler: str | None = None,
        cache_dir: str | Path | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.circuits = list(circuits)
        _check_circuits(self.circuits)
        self.cache_dir = cache_dir
        self.head_dim = self.circuits[0].head_dim
        self.length = self.circuits[0].length
        payloads = [head_payload(c, h, cache_dir) for h, c in enumerate(self.circuits)]  # before any cluster starts
        #: The bytes one worker receives per head it runs (server artifact and evaluation keys).
        self.payload_bytes = [p.nbytes for p in payloads]
        self._digests = [p.keys_digest for p in payloads]
        self.client = connect(workers, scheduler, connect_timeout=connect_timeout)
        try:
            self._payloads = self._deliver(payloads)
        except BaseException:
            self.client.close()
            raise

    def _deliver(self, payloads: list[HeadServerPayload]) -> list:
        """Submit one delivery task per head, spread round-robin over the workers (the scheduler may move them)."""
        import dask

        workers = sorted(self.client.scheduler_info()["workers"])
        futures = []
        # The payloads are large task inputs on purpose (see the module's text): no "large graph" warning.
        with dask.config.set({"distributed.admin.large-graph-warning-threshold": "64GB"}):
            for payload in payloads:
                futures.append(
                    self.client.submit(
                        deliver,
                        payload,
                        key=f"head-{payload.head}-payload-{payload.keys_digest[:12]}",
                        workers=[workers[payload.head % len(workers)]],
                        allow_other_workers=True,
                    )
                )
        return futures

    @property
    def dashboard_link(self) -> str | None:
        """The address of the cluster's live dashboard (tasks, workers, memory), if it serves one."""
        try:
            return self.client.dashboard_link
        except (KeyError, AttributeError):
            return None

    @property
    def worker_count(self) -> int:
        """The cluster's workers now."""
        return len(self.client.scheduler_info()["workers"])

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Float attention input ``(T, n_embd)`` to every head's integer ``q, k, v``, ``(T, n_heads * head_dim)``."""
        per_head = [c.encode(x, pad=False) for c in self.circuits]
        return tuple(np.concatenate([p[i] for p in per_head], axis=1) for i in range(3))

    def _blocks(self, a: np.ndarray) -> list[np.ndarray]:
        a = np.asarray(a)
        width = len(self.circuits) * self.head_dim
        if a.ndim != 2 or a.shape[1] != width:
            raise ValueError(
                f"q, k and v hold every head side by side: shape (T, {width}) for {len(self.circuits)} heads of "
                f"dimension {self.head_dim}; got shape {a.shape}"
            )
        return head_columns(a, len(self.circuits), self.head_dim)

    def submit(self, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> SubmittedRun:
        """Check and encrypt every head's inputs here, then submit one task per head (:meth:`collect` waits for them).

        Raises:
            ValueError: ``q, k, v`` not of shape ``(T, n_heads * head_dim)``; the circuits' own checks
                (:meth:`HeadCircuit.prepare`) follow, before anything is encrypted.
        """
        if self.client is None:
            raise RuntimeError("this DistributedHeads is closed: create a new one to run the heads again")
        blocks = list(zip(*map(self._blocks, (q, k, v)), strict=True))
        padded = [c.prepare(*qkv) for c, qkv in zip(self.circuits, blocks, strict=True)]  # checks before encrypting
        start = time.perf_counter()
        messages = []
        for circuit, inputs in zip(self.circuits, padded, strict=True):
            with keys_loaded(circuit.circuit, self.cache_dir):  # one head's keys in memory at a time
                messages.append(circuit.encrypt_message(inputs))
        encrypt_seconds = time.perf_counter() - start
        run_id = uuid.uuid4().hex[:8]
        futures = [
            self.client.submit(run_head_on_worker, payload, message, key=f"head-{h}-run-{run_id}", pure=False)
            for h, (payload, message) in enumerate(zip(self._payloads, messages, strict=True))
        ]
        return SubmittedRun(futures, encrypt_seconds)

    def collect(self, submitted: SubmittedRun, *, progress: bool = True) -> tuple[np.ndarray, DistributedRun]:
        """Wait for the tasks of :meth:`submit`, decrypt each head's output, join them (``(length, n_heads * d)``)."""
        from distributed import as_completed

        futures, encrypt_seconds = submitted.futures, submitted.encrypt_seconds
        start = time.perf_counter()
        answers: dict[int, tuple[bytes, HeadRun]] = {}
        index = {future.key: h for h, future in enumerate(futures)}
        with progress_bar(total=len(futures), desc="heads", unit="head", show=progress) as bar:
            for future in as_completed(futures, loop=self.client.loop):
                answers[index[future.key]] = future.result()
                bar.update(1)
        wait_seconds = time.perf_counter() - start
        start = time.perf_counter()
        outputs = []
        for h, circuit in enumerate(self.circuits):
            with keys_loaded(circuit.circuit, self.cache_dir):
                outputs.append(circuit.decrypt_message(answers[h][0]))
        decrypt_seconds = time.perf_counter() - start
        runs = tuple(answers[h][1] for h in range(len(self.circuits)))
        run = DistributedRun(runs, encrypt_seconds + wait_seconds + decrypt_seconds, encrypt_seconds, decrypt_seconds)
        return np.concatenate(outputs, axis=1), run

    def run(
        self, q: np.ndarray, k: np.ndarray, v: np.ndarray, *, progress: bool = True
    ) -> tuple[np.ndarray, DistributedRun]:
        """Encrypt here, run every head on the cluster, decrypt here: the output integers and the run's times."""
        return self.collect(self.submit(q, k, v), progress=progress)

    def clear(self, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        """The same integers computed in the clear in this process, head after head (what :meth:`run` must return)."""
        blocks = zip(*map(self._blocks, (q, k, v)), strict=True)
        return np.concatenate([c.clear(*qkv) for c, qkv in zip(self.circuits, blocks, strict=True)], axis=1)

    def dequantize(self, q_out: np.ndarray, tokens: int | None = None) -> np.ndarray:
        """The output integers as reals ``(tokens, n_heads * head_dim)``, padding rows dropped."""
        blocks = self._blocks(q_out)
        return np.concatenate([c.dequantize(b, tokens) for c, b in zip(self.circuits, blocks, strict=True)], axis=1)

    def close(self) -> None:
        """Release the payloads on the workers and close the client (and the local cluster it started)."""
        if self.client is None:
            return
        try:
            self.client.run(forget_payloads, self._digests)
        except Exception:  # noqa: BLE001 (a cluster already gone has nothing to forget)
            pass
        finally:
            self.client.close()
            self.client = None

    def __enter__(self) -> DistributedHeads:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.client is None else f"{self.worker_count} workers"
        return f"DistributedHeads({len(self.circuits)} heads, length={self.length}, {state})"


def _check_circuits(circuits: list[HeadCircuit]) -> None:
    if not circuits or not all(isinstance(c, HeadCircuit) for c in circuits):
        raise ValueError("DistributedHeads takes a non-empty list of HeadCircuit, one per head")
    if any(len(c.heads) != 1 for c in circuits):
        raise ValueError(
            "each circuit must hold one head (HeadCircuit(swap.heads[h], ...)): a task runs one circuit, "
            "so a circuit of several heads cannot be spread over workers"
        )
    shapes = {(c.length, c.queries, c.head_dim) for c in circuits}
    if len(shapes) != 1:
        raise ValueError(
            "the heads' circuits must share their length, queries and head dimension, got "
            + ", ".join(f"(length={n}, queries={q}, head_dim={d})" for n, q, d in sorted(shapes))
        )


# -- on paper --------------------------------------------------------------------------------------
def layer_seconds_on_cluster(
    head_pbs: int, heads: int, core_seconds_per_pbs: float, workers: int, cores_per_worker: int
) -> float:
    """Seconds of one layer's heads on ``workers`` workers of ``cores_per_worker`` cores, one task per head.

    A worker runs its heads one after the other, each on all of its cores; the heads go to the
    workers in rounds, so the layer takes ``ceil(heads / workers)`` head times. One head takes
    ``head_pbs * core_seconds_per_pbs / cores_per_worker``: a PBS costs ``core_seconds_per_pbs``
    seconds of one core (measured: a run's seconds times the cores that ran it, over its PBS), and
    assumed to share the cores perfectly, an optimistic bound. Keys and payloads travel once, before
    the first token, and are left out.
    """
    for name, value in (
        ("head_pbs", head_pbs),
        ("heads", heads),
        ("workers", workers),
        ("cores_per_worker", cores_per_worker),
    ):
        check_integer(value, name)
    if not core_seconds_per_pbs > 0:
        raise ValueError(f"core_seconds_per_pbs must be a positive number of seconds, got {core_seconds_per_pbs!r}")
    rounds = -(-int(heads) // int(workers))
    return rounds * head_pbs * core_seconds_per_pbs / cores_per_worker
