"""Small head circuits and helpers shared by the tests of fhe, keys, client and generation (not a test file).

The circuits are small (a random head, model width 16, head dimension 4) so that compilation and key
generation take seconds.
"""

from concrete import fhe

from course_lib.attention import HeadWeights, QuantizedHead
from course_lib.fast_attention import FastHead
from course_lib.fhe import HeadCircuit, configuration

LENGTH = 4


def small_circuit(n_bits=4, lookup_bits=5, length=LENGTH, seed=0, design=QuantizedHead):
    head = design(HeadWeights.random(16, 4, seed=seed), n_bits, lookup_bits=lookup_bits)
    inputs = HeadWeights.random_inputs(12, 16)
    head.calibrate(inputs)
    return HeadCircuit(head, inputs, length=length)


def never_run() -> fhe.Configuration:
    """The compiler configuration of a test circuit that is simulated, counted or refused, never run on ciphertexts.

    One set of cryptographic parameters for the whole circuit (``mono``) instead of one per precision: concrete's
    optimizer finds it in a fraction of the time, and the graph, so the simulated integers and the PBS count, is
    the same. Only what depends on the parameters (complexity, key sizes, speed) differs, and no test that uses
    this reads them. Circuits as wide as a whole layer can have no single parameter set: they keep the default.
    """
    return configuration(
        fhe_execution=False, fhe_simulation=True, parameter_selection_strategy=fhe.ParameterSelectionStrategy.MONO
    )


def narrow_circuit(length=LENGTH, seed=0):
    """The cheapest circuit to key and run, a 2-bit fast head: for the tests of keys, execution and the server.

    What they check does not depend on the head's design or width; its keys take a few seconds, not twenty.
    """
    return small_circuit(n_bits=2, lookup_bits=2, length=length, seed=seed, design=FastHead)


def logits_in_modes(model, swap, ids, modes=("quantized", "simulate")) -> dict:
    """The model's logits for token ids ``ids`` with ``swap`` in each of ``modes``, by mode."""
    import torch

    logits = {}
    for mode in modes:
        swap.mode = mode
        with torch.no_grad():
            logits[mode] = model(ids).logits
    return logits
