"""Load the GPT-2 the course runs: the bundled ``course-gpt2`` (default) or OpenAI's ``gpt2``.

One setting picks the model for every notebook: the ``name`` argument, or else the
``COURSE_MODEL`` environment variable, or else ``"course-gpt2"``::

    from course_lib.models import load_model, load_tokenizer
    model = load_model()            # the bundled model, offline
    tokenizer = load_tokenizer()

    # online only: OpenAI's GPT-2 (124M) from the Hugging Face Hub, cached after the first download
    model = load_model("gpt2")      # or COURSE_MODEL=gpt2 before starting Jupyter

Offline, the Hub path fails within seconds with :class:`ModelUnavailableError`,
which names the bundled model as the alternative, instead of hanging on the network.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

BUNDLED_MODEL_NAME = "course-gpt2"
HUB_MODEL_NAMES: tuple[str, ...] = ("gpt2",)
MODEL_NAMES: tuple[str, ...] = (BUNDLED_MODEL_NAME, *HUB_MODEL_NAMES)
MODEL_ENV_VAR = "COURSE_MODEL"
BUNDLED_MODEL_DIR = Path(__file__).resolve().parent / "assets" / BUNDLED_MODEL_NAME
EOS_TOKEN = "<|endoftext|>"
#: Seconds to wait for the Hugging Face Hub to answer before declaring it unreachable.
HUB_CONNECT_TIMEOUT = 3.0


class ModelUnavailableError(RuntimeError):
    """The requested model cannot be loaded here (unknown name, or the Hub is unreachable)."""


def resolve_model_name(name: str | None = None) -> str:
    """The model to use: ``name`` if given, else ``$COURSE_MODEL``, else ``"course-gpt2"``."""
    chosen = name if name is not None else os.environ.get(MODEL_ENV_VAR, "").strip() or BUNDLED_MODEL_NAME
    if chosen not in MODEL_NAMES:
        origin = "name" if name is not None else f"${MODEL_ENV_VAR}"
        raise ModelUnavailableError(
            f"Unknown model {chosen!r} (from {origin}). Allowed: {', '.join(repr(n) for n in MODEL_NAMES)}: "
            f"{BUNDLED_MODEL_NAME!r} is the bundled model that works offline, 'gpt2' is OpenAI's GPT-2 from the "
            "Hugging Face Hub (needs internet the first time)."
        )
    return chosen


def _hub_endpoint() -> tuple[str, int]:
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


def _offline_error(name: str, reason: str) -> ModelUnavailableError:
    hint = f"load_model({BUNDLED_MODEL_NAME!r})"
    if os.environ.get(MODEL_ENV_VAR):
        hint += f", or unset {MODEL_ENV_VAR} (now {os.environ[MODEL_ENV_VAR]!r}) and restart the kernel"
    return ModelUnavailableError(
        f"Cannot load {name!r} from the Hugging Face Hub: {reason}. It is not in the local cache either. "
        f"Use the course's bundled model, which works offline: {hint}."
    )


def _ensure_hub_reachable(name: str) -> None:
    """Fail fast when the Hub cannot be reached, rather than waiting on library retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        raise _offline_error(name, "HF_HUB_OFFLINE is set")
    host, port = _hub_endpoint()
    try:
        with socket.create_connection((host, port), timeout=HUB_CONNECT_TIMEOUT):
            pass
    except OSError as error:
        raise _offline_error(name, f"{host}:{port} is unreachable ({error.__class__.__name__}: {error})") from None


def _from_hub_or_cache(loader, name: str, **kwargs):
    """Load from the local Hugging Face cache, or download after checking the Hub answers."""
    try:
        return loader(name, local_files_only=True, **kwargs)
    except (OSError, TypeError, ValueError):  # not cached (tokenizers say so with a TypeError in 4.57)
        _ensure_hub_reachable(name)
        return loader(name, **kwargs)


def load_tokenizer(name: str | None = None):
    """The tokenizer of the chosen model (a ``GPT2TokenizerFast``)."""
    from transformers import GPT2TokenizerFast

    chosen = resolve_model_name(name)
    if chosen == BUNDLED_MODEL_NAME:
        return GPT2TokenizerFast.from_pretrained(BUNDLED_MODEL_DIR, local_files_only=True)
    return _from_hub_or_cache(GPT2TokenizerFast.from_pretrained, chosen)


def load_model(name: str | None = None):
    """The chosen GPT-2 as a ``GPT2LMHeadModel`` in eval mode, on the CPU.

    The model uses the "eager" attention implementation: the course replaces
    attention heads by its own quantized ones and reads their intermediate
    values, which the fused kernels would hide.
    """
    from transformers import GPT2LMHeadModel

    chosen = resolve_model_name(name)
    kwargs = {"attn_implementation": "eager"}
    if chosen == BUNDLED_MODEL_NAME:
        model = GPT2LMHeadModel.from_pretrained(BUNDLED_MODEL_DIR, local_files_only=True, **kwargs)
    else:
        model = _from_hub_or_cache(GPT2LMHeadModel.from_pretrained, chosen, **kwargs)
    return model.eval()


def gpt2_shaped_model(seed: int = 0):
    """A one-layer model of OpenAI GPT-2's shape (``GPT2Config()``: 12 heads of dimension 64, width 768),
    with seeded random weights, built locally: what the benchmarks count GPT-2-sized circuits on when the
    Hugging Face Hub is out of reach. The counts depend on the shapes, and on the weights only through the
    calibrated ranges."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_layer=1)).eval()


def gpt2_shaped_inputs(length: int, count: int = 8, *, n_embd: int = 768, seed: int = 0) -> list:
    """``count`` seeded standard-normal attention inputs of shape ``(length, n_embd)``: the calibration
    inputs of :func:`gpt2_shaped_model`'s heads (a layer-normed input has about unit scale)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [rng.normal(size=(length, n_embd)) for _ in range(count)]
