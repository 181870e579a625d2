"""course_lib.keys: keys cached per circuit fingerprint, reused by the same circuit, never by another."""

import numpy as np
import pytest
from circuits import narrow_circuit

from course_lib.attention import HeadWeights
from course_lib.keys import KEY_CACHE_ENV, circuit_fingerprint, ensure_keys, key_cache_dir


@pytest.mark.keys
def test_keys_are_cached_per_circuit(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_CACHE_ENV, str(tmp_path / "cache"))
    assert key_cache_dir() == tmp_path / "cache"
    first = narrow_circuit(seed=0)
    report = ensure_keys(first.circuit, progress=False)
    assert report.generated and report.path.exists() and report.path.parent.name == report.fingerprint
    again = narrow_circuit(seed=0)  # the same circuit, compiled again: same fingerprint, keys loaded
    assert circuit_fingerprint(again.circuit) == report.fingerprint
    second = ensure_keys(again.circuit, progress=False)
    assert not second.generated and second.path == report.path
    x = HeadWeights.random_inputs(1, 16)[0][:3]
    np.testing.assert_array_equal(again.execute(*again.encode(x)), first.simulate(*first.encode(x)))
    other = narrow_circuit(seed=1)  # another circuit (other weights) never reuses these keys
    assert circuit_fingerprint(other.circuit) != report.fingerprint
    assert ensure_keys(other.circuit, progress=False).generated
