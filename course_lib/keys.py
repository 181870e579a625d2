"""Keys of a compiled circuit: generated once, then cached on disk, one folder per circuit.

Key generation makes the secret key (which never leaves the client) and the evaluation
keys (bootstrap and key-switching keys, which the server needs to compute on ciphertexts).
It takes tens of seconds and the keys weigh hundreds of megabytes, so the course keeps
them on disk and loads them on the next run.

The cache is keyed by a fingerprint of the circuit: a SHA-256 of its MLIR (the
program, its table contents included) and of its client specs (the cryptographic
parameters and encodings). A circuit that differs in anything gets other keys.

Where: ``$COURSE_KEY_CACHE`` if set, else ``~/.cache/fhe-gpt2-course/keys``. The folder
holds **secret keys**: it is for your own machine, never for a server or a repository.
The cached files are concrete's own serialization, unencrypted.

**Memory.** Loaded keys take about their file's size in memory, but during its first run
concrete decompresses the evaluation keys and keeps them so, several times their compressed
size (``benchmarks/results/attention_fhe.json`` records both sizes per circuit). A process that
runs several circuits in turn (generation, notebook 04) therefore keeps their keys on disk and
loads each circuit's for its run only (:func:`keys_loaded`, :func:`unload_keys`).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from concrete import fhe

from .progress import progress_bar

#: Environment variable that moves the key cache.
KEY_CACHE_ENV = "COURSE_KEY_CACHE"
KEYS_FILE = "keys.bin"


def key_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The key cache folder: ``cache_dir`` if given, else ``$COURSE_KEY_CACHE``, else ``~/.cache/...``."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get(KEY_CACHE_ENV):
        return Path(os.environ[KEY_CACHE_ENV])
    return Path.home() / ".cache" / "fhe-gpt2-course" / "keys"


def circuit_fingerprint(circuit: fhe.Circuit) -> str:
    """A SHA-256 (hex, 16 characters) of the circuit's MLIR and client specs."""
    digest = hashlib.sha256()
    digest.update(circuit.mlir.encode())
    digest.update(circuit.client.specs.serialize())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class KeyReport:
    """What :func:`ensure_keys` did.

    Attributes:
        fingerprint: the circuit's fingerprint (the cache folder's name).
        path: the cached keys file.
        generated: True if the keys were generated now, False if loaded from the cache.
        seconds: time spent generating or loading.
        evaluation_key_bytes: size of the serialized evaluation keys (what a server receives).
    """

    fingerprint: str
    path: Path
    generated: bool
    seconds: float
    evaluation_key_bytes: int

    def __str__(self) -> str:
        action = "generated and cached" if self.generated else "loaded from the cache"
        return (
            f"keys {action} (took {self.seconds:.1f} s) for circuit {self.fingerprint}; "
            f"evaluation keys {self.evaluation_key_bytes / 1e6:,.1f} MB"
        )


def ensure_keys(circuit: fhe.Circuit, cache_dir: str | Path | None = None, *, progress: bool = True) -> KeyReport:
    """Load the circuit's keys from the cache, or generate them (with a progress timer) and cache them.

    Args:
        circuit: a compiled concrete circuit (e.g. ``HeadCircuit(...).circuit``).
        cache_dir: the cache folder (default: :func:`key_cache_dir`).
        progress: show a tqdm timer while keys are generated or loaded (the same bar either way, so that
            a notebook's outputs do not depend on the state of the cache).
    """
    fingerprint = circuit_fingerprint(circuit)
    folder = key_cache_dir(cache_dir) / fingerprint
    path = folder / KEYS_FILE
    start = time.perf_counter()
    if path.exists():
        _with_timer(lambda: circuit.keys.load(path), progress)
        generated = False
    else:
        _with_timer(lambda: circuit.keygen(force=True), progress)
        folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.unlink(missing_ok=True)  # left over from an interrupted run
        circuit.keys.save(partial)  # written completely before it becomes visible to the next run
        partial.replace(path)
        generated = True
    seconds = time.perf_counter() - start
    evaluation_key_bytes = len(circuit.keys.evaluation.serialize())
    return KeyReport(fingerprint, path, generated, seconds, evaluation_key_bytes)


def _with_timer(work: Callable[[], object], progress: bool) -> None:
    """``work()`` in a thread, with a tqdm timer ticking while it runs (key generation reports no progress)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as error:  # re-raised in the caller's thread
            errors.append(error)

    worker = threading.Thread(target=run, name="keys")
    worker.start()
    with progress_bar(desc="keys", bar_format="{desc}: {elapsed} elapsed", show=progress) as timer:
        while worker.is_alive():
            worker.join(timeout=0.5)
            timer.update(0)
            timer.refresh()
    if errors:
        raise errors[0]


def cached_keys_path(circuit: fhe.Circuit, cache_dir: str | Path | None = None) -> Path | None:
    """The circuit's keys file in the cache, or None if :func:`ensure_keys` has not made it yet."""
    path = key_cache_dir(cache_dir) / circuit_fingerprint(circuit) / KEYS_FILE
    return path if path.exists() else None


def unload_keys(circuit: fhe.Circuit | fhe.Module) -> None:
    """Forget the circuit's (or module's) keys in this process (the cache on disk keeps them).

    This frees the memory of the keys, decompressed ones included; :func:`ensure_keys`
    loads them again in about a second.
    """
    # concrete-python 2.10 has no public call to forget keys: give the client an empty key
    # set for the same specs, as a freshly compiled circuit has. A module's client sits in its runtime.
    client = circuit.client if isinstance(circuit, fhe.Circuit) else circuit.execution_runtime.val.client
    client._keys = fhe.Keys(client.specs)  # noqa: SLF001


@contextmanager
def keys_loaded(circuit: fhe.Circuit, cache_dir: str | Path | None = None) -> Iterator[None]:
    """Within the block the circuit has its keys; if they had to be loaded from the cache, they are forgotten after.

    Keys already in memory are used and kept as they are.

    Raises:
        RuntimeError: the keys are neither in memory nor in the cache.
    """
    if circuit.keys.are_generated:
        yield
        return
    path = cached_keys_path(circuit, cache_dir)
    if path is None:
        raise RuntimeError(
            f"circuit {circuit_fingerprint(circuit)} has no keys in memory or in the cache "
            f"({key_cache_dir(cache_dir)}): generate them first with course_lib.keys.ensure_keys(circuit)"
        )
    circuit.keys.load(path)
    try:
        yield
    finally:
        unload_keys(circuit)
