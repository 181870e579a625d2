"""course_lib.distributed: the heads of a layer as Dask tasks on a local cluster of worker processes.

Small random heads (model width 16, head dimension 2, 2-bit activations, fast design), so that
compiling, key generation and a run each take about a second; the bundled model's heads run in
notebook 04.
"""

import os
import signal
import time

import numpy as np
import pytest
from circuits import never_run

from course_lib.attention import HeadWeights
from course_lib.distributed import (
    SCHEDULER_ENV,
    DistributedHeads,
    HeadServerPayload,
    SchedulerUnreachableError,
    connect,
)
from course_lib.fast_attention import FastHead
from course_lib.fhe import HeadCircuit
from course_lib.keys import ensure_keys

pytestmark = pytest.mark.dask  # every test here starts a cluster or reaches for a scheduler

LENGTH = 3
N_HEADS = 3
HEAD_DIM = 2


@pytest.fixture(scope="module")
def heads():
    inputs = HeadWeights.random_inputs(12, 16)
    heads = [FastHead(HeadWeights.random(16, HEAD_DIM, seed=seed), 2, lookup_bits=2) for seed in range(N_HEADS)]
    for head in heads:
        head.calibrate(inputs)
    return heads, inputs


@pytest.fixture(scope="module")
def keyed_circuits(heads, tmp_path_factory):
    """One circuit per head, their keys generated into a temporary cache and then forgotten in memory."""
    from course_lib.keys import unload_keys

    heads, inputs = heads
    cache = tmp_path_factory.mktemp("keys")
    circuits = [HeadCircuit(head, inputs, length=LENGTH) for head in heads]
    for circuit in circuits:
        ensure_keys(circuit.circuit, cache, progress=False)
        unload_keys(circuit.circuit)
    return circuits, cache


@pytest.fixture(scope="module")
def distributed(keyed_circuits):
    circuits, cache = keyed_circuits
    with DistributedHeads(circuits, workers=2, cache_dir=cache) as heads:
        yield heads


def test_distributed_run_equals_the_single_process_runs_bit_for_bit(heads, keyed_circuits, distributed):
    from course_lib.keys import keys_loaded

    heads, inputs = heads
    circuits, cache = keyed_circuits
    x = HeadWeights.random_inputs(1, 16, seed=5)[0][:LENGTH]
    qkv = distributed.encode(x)
    out, run = distributed.run(*qkv, progress=False)
    assert out.shape == (LENGTH, N_HEADS * HEAD_DIM)
    # The same integers as each head's circuit executed here, one after the other ...
    single = []
    for h, circuit in enumerate(circuits):
        with keys_loaded(circuit.circuit, cache):
            single.append(circuit.execute(*(a[:, HEAD_DIM * h : HEAD_DIM * (h + 1)] for a in qkv)))
    np.testing.assert_array_equal(out, np.concatenate(single, axis=1))
    # ... as the clear computation, and as one circuit of all the heads side by side.
    np.testing.assert_array_equal(out, distributed.clear(*qkv))
    all_heads = HeadCircuit(heads, inputs, length=LENGTH)
    np.testing.assert_array_equal(out, all_heads.clear(*all_heads.encode(x, pad=False)))
    np.testing.assert_allclose(distributed.dequantize(out, LENGTH), all_heads.dequantize(out, LENGTH))
    assert [r.head for r in run.heads] == list(range(N_HEADS))
    assert run.workers_used == 2  # the payloads were spread over both workers
    assert "3 heads on 2 workers" in str(run)


def test_a_shorter_sequence_is_padded_like_the_single_circuit(distributed):
    x = HeadWeights.random_inputs(1, 16, seed=6)[0][:2]
    qkv = distributed.encode(x)
    out, _ = distributed.run(*qkv, progress=False)
    np.testing.assert_array_equal(out, distributed.clear(*qkv))
    assert out.shape[0] == LENGTH


def test_each_worker_receives_a_head_payload_once(distributed):
    qkv = distributed.encode(HeadWeights.random_inputs(1, 16, seed=9)[0][:LENGTH])
    runs = [distributed.run(*qkv, progress=False)[1] for _ in range(3)]
    # A worker deserializes a head's payload on its first run of that head only; later runs bring ciphertexts.
    loads = [(r.pid, r.head) for run in runs for r in run.heads if r.loaded_payload]
    assert len(loads) == len(set(loads))
    assert not any(r.loaded_payload for run in runs[1:] for r in run.heads)
    for run in runs[1:]:
        assert [r.worker for r in run.heads] == [r.worker for r in runs[0].heads]  # where its payload is
    held = distributed.client.run(lambda dask_worker: sorted(type(v).__name__ for v in dask_worker.data.values()))
    payloads = [name for names in held.values() for name in names if name == "HeadServerPayload"]
    assert len(payloads) == N_HEADS  # one copy of each head's payload on the cluster, none per run


def test_workers_never_receive_a_secret_key(keyed_circuits, distributed):
    from course_lib.keys import keys_loaded

    circuits, cache = keyed_circuits
    distributed.run(*distributed.encode(HeadWeights.random_inputs(1, 16, seed=10)[0][:LENGTH]), progress=False)

    def held_bytes(dask_worker):
        """Every byte string a worker holds as Dask data (payloads and encrypted results)."""
        found = []
        for value in dask_worker.data.values():
            if isinstance(value, HeadServerPayload):
                found += [value.server_zip, value.evaluation_keys]
            elif isinstance(value, tuple) and isinstance(value[0], bytes):
                found.append(value[0])
            else:
                found.append(repr(type(value)).encode())
        return found

    held = [b for found in distributed.client.run(held_bytes).values() for b in found]
    assert held and all(isinstance(b, bytes) for b in held)
    for circuit in circuits:
        with keys_loaded(circuit.circuit, cache):
            keyset = circuit.circuit.keys._keyset  # noqa: SLF001 (the test looks for the secret key material)
            secret_keys = [key.serialize() for key in keyset.get_client_keys().get_secret_keys()]
        assert secret_keys
        for key in secret_keys:
            material = key[len(key) // 2 :]
            for start in range(0, len(material) - 64, max(1, len(material) // 8)):
                window = material[start : start + 64]
                assert all(window not in b for b in held)


def test_a_killed_worker_is_survived_and_the_result_is_exact(keyed_circuits):
    circuits, cache = keyed_circuits
    with DistributedHeads(circuits, workers=2, cache_dir=cache) as heads:
        qkv = heads.encode(HeadWeights.random_inputs(1, 16, seed=11)[0][:LENGTH])
        pids = heads.client.run(os.getpid)
        submitted = heads.submit(*qkv)
        # The worker running head 0's task, or holding its result if it has finished already.
        victim = None
        deadline = time.monotonic() + 30
        while victim is None and time.monotonic() < deadline:
            key = submitted.futures[0].key
            running = [w for w, keys in heads.client.processing().items() if key in keys]
            holding = heads.client.who_has([submitted.futures[0]]).get(key, ())
            candidates = running or list(holding)
            victim = candidates[0] if candidates else None
            time.sleep(0.01)
        assert victim is not None, "head 0's task never reached a worker"
        os.kill(pids[victim], signal.SIGKILL)
        out, run = heads.collect(submitted, progress=False)
        np.testing.assert_array_equal(out, heads.clear(*qkv))
        assert pids[victim] not in {r.pid for r in run.heads}  # what the dead worker had was redone elsewhere
        assert run.heads[0].loaded_payload  # head 0's payload, lost with its worker, was delivered again
    assert "closed" in repr(heads)
    with pytest.raises(RuntimeError, match="closed"):
        heads.run(*qkv)


def test_local_workers_share_the_cores_for_concrete(distributed):
    from course_lib.distributed import cores_per_local_worker

    # Dask's default OMP_NUM_THREADS=1 would give concrete's OpenMP runtime one core per worker.
    threads = distributed.client.run(lambda: os.environ.get("OMP_NUM_THREADS"))
    assert sorted(threads.values()) == [str(cores_per_local_worker(2))] * 2
    assert cores_per_local_worker(1) == (os.cpu_count() or 1)
    assert cores_per_local_worker(10_000) == 1


def test_an_unreachable_scheduler_fails_within_seconds(monkeypatch):
    start = time.monotonic()
    with pytest.raises(SchedulerUnreachableError, match="no Dask scheduler answered at 'tcp://127.0.0.1:9'"):
        connect(scheduler="tcp://127.0.0.1:9", connect_timeout=2)
    assert time.monotonic() - start < 10
    monkeypatch.setenv(SCHEDULER_ENV, "tcp://127.0.0.1:9")
    with pytest.raises(SchedulerUnreachableError, match=r"from \$COURSE_DASK_SCHEDULER"):
        connect(connect_timeout=1)


def test_an_existing_scheduler_from_the_environment_runs_the_heads(keyed_circuits, monkeypatch):
    from distributed import LocalCluster

    circuits, cache = keyed_circuits
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        monkeypatch.setenv(SCHEDULER_ENV, cluster.scheduler_address)
        with pytest.warns(UserWarning, match="steals work"):  # Dask's default, which the course's clusters turn off
            heads = DistributedHeads(circuits, cache_dir=cache)
        with heads:
            qkv = heads.encode(HeadWeights.random_inputs(1, 16, seed=14)[0][:LENGTH])
            out, run = heads.run(*qkv, progress=False)
            np.testing.assert_array_equal(out, heads.clear(*qkv))
            assert {r.worker for r in run.heads} == set(cluster.scheduler_info["workers"])


def test_a_scheduler_without_workers_is_reported():
    from distributed import LocalCluster

    with LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster:
        start = time.monotonic()
        with pytest.raises(SchedulerUnreachableError, match="has no worker"):
            connect(scheduler=cluster.scheduler_address, connect_timeout=1)
        assert time.monotonic() - start < 10


def test_bad_arguments_say_what_is_allowed(heads, keyed_circuits, distributed):
    heads, inputs = heads
    circuits, _ = keyed_circuits
    with pytest.raises(ValueError, match="positive integer"):
        connect(workers=0)
    with pytest.raises(ValueError, match="brings its own workers"):
        connect(workers=2, scheduler="tcp://127.0.0.1:9")
    with pytest.raises(ValueError, match="one head"):
        DistributedHeads([HeadCircuit(heads, inputs, LENGTH, never_run())])
    with pytest.raises(ValueError, match="share their length"):
        DistributedHeads([circuits[0], HeadCircuit(heads[1], inputs, LENGTH + 1, never_run())])
    with pytest.raises(ValueError, match="non-empty list"):
        DistributedHeads([])
    q, k, v = distributed.encode(HeadWeights.random_inputs(1, 16, seed=12)[0][:LENGTH])
    with pytest.raises(ValueError, match=r"shape \(T, 6\)"):
        distributed.run(q[:, :4], k, v)
    from course_lib.fhe import SequenceLengthError

    long_qkv = distributed.encode(np.random.default_rng(13).normal(size=(LENGTH + 1, 16)))
    with pytest.raises(SequenceLengthError, match="compiled for 3"):
        distributed.run(*long_qkv)


def test_the_paper_estimate_counts_rounds_of_whole_heads():
    from course_lib.distributed import layer_seconds_on_cluster

    # 12 heads of 100 PBS at 0.05 core-seconds each: 5 s per head on 1 core.
    assert layer_seconds_on_cluster(100, 12, 0.05, workers=12, cores_per_worker=1) == pytest.approx(5.0)
    assert layer_seconds_on_cluster(100, 12, 0.05, workers=1, cores_per_worker=12) == pytest.approx(5.0)
    assert layer_seconds_on_cluster(100, 12, 0.05, workers=8, cores_per_worker=1) == pytest.approx(10.0)  # 2 rounds
    assert layer_seconds_on_cluster(100, 12, 0.05, workers=24, cores_per_worker=1) == pytest.approx(5.0)  # idle
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        layer_seconds_on_cluster(100, 12, 0.05, workers=0, cores_per_worker=1)
    with pytest.raises(ValueError, match="core_seconds_per_pbs"):
        layer_seconds_on_cluster(100, 12, -1.0, workers=1, cores_per_worker=1)
