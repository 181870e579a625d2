"""The course's figures, one function each, returning a matplotlib :class:`~matplotlib.figure.Figure`.

The figures are built with :class:`matplotlib.figure.Figure`, not ``pyplot``: nothing
is drawn behind the caller's back, and a notebook shows a figure exactly once, by
displaying the returned object (make it a cell's last expression, or ``display(fig)``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from .error_analysis import MatmulError, RoundTripError
from .quantization import QuantParams

if TYPE_CHECKING:  # concrete is imported by the notebooks that compile, not by every figure
    from .lookup_errors import LookupErrors

# ---------------------------------------------------------------------- notebook 01: quantization


def _draw_error_vs_bits(ax: Axes, results: Sequence[RoundTripError], highlight: int | None = None) -> None:
    bits = [r.n_bits for r in results]
    ax.semilogy(bits, [r.max_error for r in results], "o-", color="C3", label="largest error")
    ax.semilogy(bits, [r.bound for r in results], "k--", label="bound: scale / 2")
    ax.semilogy(bits, [r.rms_error for r in results], "s-", color="C0", label="rms error")
    if highlight is not None:
        ax.axvline(highlight, color="0.6", linewidth=6, alpha=0.35, zorder=0, label=f"n_bits = {highlight}")
    ax.set_xticks(bits)
    ax.set_xlabel("n_bits")
    ax.set_ylabel("|dequantize(quantize(x)) - x|")
    ax.set_title("Round-trip error: each bit halves it")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()


def plot_rounding_error_vs_bits(results: Sequence[RoundTripError], *, highlight: int | None = None) -> Figure:
    """Round-trip error (largest and rms) against n_bits, with the bound ``scale / 2``.

    Args:
        results: from :func:`course_lib.error_analysis.round_trip_errors`.
        highlight: an n_bits to mark with a vertical band.
    """
    fig = Figure(figsize=(6, 4), layout="constrained")
    _draw_error_vs_bits(fig.add_subplot(), results, highlight)
    return fig


def plot_round_trip(x: np.ndarray, params: QuantParams, results: Sequence[RoundTripError]) -> Figure:
    """Two panels: the quantization staircase of ``params`` over the range of ``x``, and the error against n_bits.

    Args:
        x: the data (its range is drawn, and its values as a rug).
        params: the quantization to draw as a staircase.
        results: round-trip errors of ``x`` per n_bits (the right panel), ``params.n_bits`` highlighted.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    fig = Figure(figsize=(11, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    grid = np.linspace(x.min(), x.max(), 2001)
    left.plot(grid, grid, color="0.6", linewidth=1, label="float (identity)")
    left.plot(grid, params.dequantize(params.quantize(grid)), color="C3", label="dequantize(quantize(x))")
    left.plot(x, np.full_like(x, x.min()), "|", color="C0", alpha=0.15, markersize=10, label="the data")
    left.set_xlabel("x")
    left.set_ylabel("value after the round trip")
    left.set_title(f"{params.n_bits} bits: {2**params.n_bits} levels, step {params.scale:.3g}")
    left.grid(True, alpha=0.3)
    left.legend(loc="upper left")
    _draw_error_vs_bits(right, results, highlight=params.n_bits)
    return fig


def plot_matmul_error_vs_inner_dim(result: MatmulError) -> Figure:
    """Error of an integer matmul against its inner dimension K (log-log): measured, typical, worst case.

    Args:
        result: from :func:`course_lib.error_analysis.measure_matmul_error`.
    """
    k = result.inner_dims
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.loglog(k, result.bound, "k--", label="worst-case bound (grows like K)")
    ax.loglog(k, result.max_error, "o-", color="C3", label="largest measured error")
    ax.loglog(k, result.typical, ":", color="C0", linewidth=2, label="typical estimate (grows like sqrt(K))")
    ax.loglog(k, result.rms_error, "s-", color="C0", label="rms measured error")
    ax.loglog(k, result.output_rms, "-", color="0.6", label="rms of the outputs x @ w")
    ax.set_xticks(k, [str(int(v)) for v in k])
    ax.minorticks_off()
    ax.set_xlabel("inner dimension K (products summed per output)")
    ax.set_ylabel("error of one output")
    ax.set_title(f"x @ w on {result.n_bits_x}-bit x and {result.n_bits_w}-bit w")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def plot_lookup_table(
    fn: Callable[[np.ndarray], np.ndarray], in_params: QuantParams, out_params: QuantParams, *, name: str = "f"
) -> Figure:
    """A table lookup seen twice: as integers (what the circuit stores) and as reals (what it means).

    Args:
        fn: the float function (vectorised).
        in_params, out_params: quantization of its input and of its output.
        name: the function's name, for titles.
    """
    q_in = np.arange(in_params.qmin, in_params.qmax + 1)
    q_out = out_params.quantize(fn(in_params.dequantize(q_in)))
    fig = Figure(figsize=(11, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.bar(q_in, q_out - out_params.qmin, bottom=out_params.qmin, color="C2", width=0.8)
    for a, b in zip(q_in, q_out, strict=True):
        left.annotate(str(b), (a, b), textcoords="offset points", xytext=(0, 2), ha="center", fontsize="small")
    left.set_xticks(q_in)
    left.set_xlabel("input integer")
    left.set_ylabel("output integer")
    left.set_title(f"The table: {q_in.size} entries, one per possible input")
    left.grid(True, axis="y", alpha=0.3)
    lo, hi = in_params.real_range
    grid = np.linspace(lo, hi, 400)
    right.plot(grid, fn(grid), color="0.5", label=f"{name}(x) in floats")
    right.plot(
        in_params.dequantize(q_in), out_params.dequantize(q_out), "o", color="C2", label="dequantized table entries"
    )
    right.set_xlabel("x (real input)")
    right.set_ylabel(f"{name}(x)")
    right.set_title("The same table in reals")
    right.grid(True, alpha=0.3)
    right.legend()
    return fig


# ---------------------------------------------------------------------- notebook 02: one head inside GPT-2


def plot_head_in_gpt2(n_layer: int, n_head: int, layer: int, head: int, *, head_dim: int | None = None) -> Figure:
    """Where head ``head`` of layer ``layer`` sits in a GPT-2: the stack of blocks, and that layer's attention.

    Left, the whole model from the token embeddings (bottom) to the next-token logits
    (top), with block ``layer`` highlighted. Right, that block opened: ``ln_1``, the
    attention split into its ``n_head`` heads (``head`` highlighted: its slice of
    ``c_attn``, scores, mask, softmax and weighted values), ``c_proj``, then the MLP.

    Args:
        n_layer, n_head: the model's numbers of blocks and of heads per block.
        layer, head: the head to highlight (0-based).
        head_dim: the dimension of one head, printed when given.
    """
    from matplotlib.patches import ConnectionPatch, FancyBboxPatch

    for name, value, count in (("layer", layer, n_layer), ("head", head, n_head)):
        if count < 1:
            raise ValueError(f"n_{name} must be at least 1, got {count}")
        if not 0 <= value < count:
            raise ValueError(f"{name} must be from 0 to {count - 1}, got {value}")
    highlight, quiet, edge = "#d62728", "#dde6f0", "#4c6a8a"
    fig = Figure(figsize=(11, 5.2), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1, 2.3])

    def box(ax: Axes, x: float, y: float, w: float, h: float, text: str, face: str, **kw) -> FancyBboxPatch:
        patch = FancyBboxPatch(
            (x, y), w, h, boxstyle="round,pad=0.005,rounding_size=0.01", facecolor=face, edgecolor=edge, linewidth=1
        )
        ax.add_patch(patch)
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", **kw)
        return patch

    # -- left: the stack of blocks
    left.set_xlim(0, 1)
    left.set_ylim(0, 1)
    left.axis("off")
    left.set_title(f"GPT-2: {n_layer} blocks", fontsize="medium")
    bottom, top = 0.13, 0.86
    step = (top - bottom) / n_layer
    box(left, 0.1, 0.02, 0.8, 0.08, "token + position\nembeddings", "#eeeeee", fontsize="small")
    box(left, 0.1, 0.89, 0.8, 0.08, "ln_f, LM head:\nnext-token logits", "#eeeeee", fontsize="small")
    for i in range(n_layer):
        chosen = i == layer
        y = bottom + i * step + 0.1 * step
        box(
            left,
            0.1,
            y,
            0.8,
            0.8 * step,
            f"block {i}" + ("  (this one)" if chosen else ""),
            highlight if chosen else quiet,
            color="white" if chosen else "black",
            fontsize="small" if n_layer <= 12 else "x-small",
            fontweight="bold" if chosen else "normal",
        )
    chosen_y = bottom + layer * step + 0.1 * step

    # -- right: the chosen block opened
    right.set_xlim(0, 1)
    right.set_ylim(0, 1)
    right.axis("off")
    dim = f", {head_dim} dims each" if head_dim else ""
    right.set_title(
        f"block {layer}: attention split into {n_head} heads{dim}\n"
        f"red: head {head}, on integers; every other head stays in float",
        fontsize="medium",
    )
    box(right, 0.05, 0.02, 0.9, 0.07, "input x: the residual stream (T tokens)", "#eeeeee", fontsize="small")
    box(right, 0.05, 0.12, 0.9, 0.07, "ln_1 (layer norm): the head's input", quiet, fontsize="small")
    box(right, 0.05, 0.22, 0.9, 0.08, "c_attn: x @ W + b -> q | k | v for every head", quiet, fontsize="small")
    gap = 0.01
    width = (0.9 - gap * (n_head - 1)) / n_head
    for j in range(n_head):
        chosen = j == head
        label = f"h{j}" if n_head <= 16 else ""
        if chosen:
            label = f"head {j}\n\nq, k, v\nscores\nmask\nsoftmax\nprobs @ v" if width > 0.1 else f"h{j}"
        box(
            right,
            0.05 + j * (width + gap),
            0.33,
            width,
            0.3,
            label,
            highlight if chosen else quiet,
            color="white" if chosen else "black",
            fontsize="small" if n_head <= 12 else "x-small",
            fontweight="bold" if chosen else "normal",
        )
    box(right, 0.05, 0.66, 0.9, 0.08, "concatenate the heads -> c_proj, + residual", quiet, fontsize="small")
    box(right, 0.05, 0.77, 0.9, 0.08, "ln_2 -> MLP (GELU), + residual", quiet, fontsize="small")
    box(right, 0.05, 0.88, 0.9, 0.08, "to the next block", "#eeeeee", fontsize="small")
    for y in (chosen_y, chosen_y + 0.8 * step):
        fig.add_artist(
            ConnectionPatch(
                xyA=(0.9, y),
                coordsA=left.transData,
                xyB=(0.05, 0.02 if y == chosen_y else 0.96),
                coordsB=right.transData,
                color=highlight,
                linestyle="--",
                linewidth=1,
            )
        )
    return fig


def plot_topk_agreement(
    results: Sequence,
    *,
    compare: Sequence | None = None,
    labels: tuple[str, str] = ("", "other"),
    points: Sequence[tuple[float, float, str]] = (),
    baseline=None,
    title: str | None = None,
    ks: Sequence[int] | None = None,
) -> Figure:
    """Top-k agreement with the float model against n_bits, one line per k.

    Args:
        results: :class:`course_lib.evaluation.Agreement` objects (from ``sweep_topk_agreement``).
        compare: an optional second set of results (e.g. another head or model), drawn dashed.
        labels: suffixes for the two sets in the legend (``results``, then ``compare``).
        points: single published or reference values, ``(n_bits, share, label)``, drawn as stars.
        baseline: an Agreement drawn as dotted horizontal lines, one per k (e.g. the head removed,
            from :func:`course_lib.evaluation.head_removed_agreement`).
        title: the figure's title.
        ks: the k to draw (default: every k the results hold).
    """
    if not results:
        raise ValueError("plot_topk_agreement needs at least one result")
    if ks is not None:
        missing = sorted(set(ks) - set(results[0].agreement))
        if missing or not ks:
            raise ValueError(f"ks must be some of the results' k {sorted(results[0].agreement)}, got {list(ks)}")
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    sets = [(results, "-", "o", labels[0])]
    if compare:
        sets.append((compare, "--", "s", labels[1]))
    bits: set[int] = set()
    drawn = sorted(ks) if ks is not None else sorted(results[0].agreement)
    for series, style, marker, suffix in sets:
        xs = [r.n_bits for r in series]
        bits.update(xs)
        for i, k in enumerate(drawn):
            label = f"top-{k}" + (f" ({suffix})" if suffix else "")
            ys = [100 * r.agreement[k] for r in series]
            ax.plot(xs, ys, linestyle=style, marker=marker, color=f"C{i}", label=label)
    if baseline is not None:
        for i, k in enumerate(drawn):
            if k in baseline.agreement:
                share = 100 * baseline.agreement[k]
                ax.axhline(share, linestyle=":", linewidth=1.5, color=f"C{i}", label=f"top-{k}, head removed")
    for x, share, label in points:
        ax.plot([x], [100 * share], "*", color="black", markersize=13, label=label, zorder=5)
    ax.set_xticks(sorted(bits))
    ax.set_xlabel("n_bits of the quantized activations")
    ax.set_ylabel("agreement with the float model (%)")
    ax.set_title(title or "Does the model still predict the float model's next token?")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    return fig


def plot_attention_heatmaps(
    float_probs: np.ndarray,
    quantized_probs: np.ndarray,
    tokens: Sequence[str] | None = None,
    *,
    n_bits: int | None = None,
) -> Figure:
    """Attention probabilities side by side: float, dequantized integers, and their difference.

    Args:
        float_probs: ``(T, T)`` float attention probabilities (row t: how token t spreads its attention).
        quantized_probs: the same from the quantized head, dequantized.
        tokens: the ``T`` tokens, for the axis labels.
        n_bits: the quantized head's bits, for the title.
    """
    a = np.asarray(float_probs, dtype=np.float64)
    b = np.asarray(quantized_probs, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape != b.shape:
        raise ValueError(f"expected two square arrays of the same shape (T, T), got {a.shape} and {b.shape}")
    if tokens is not None and len(tokens) != a.shape[0]:
        raise ValueError(f"{len(tokens)} tokens for a {a.shape[0]}x{a.shape[0]} attention matrix")
    fig = Figure(figsize=(15, 5.2), layout="constrained")
    axes = fig.subplots(1, 3)
    diff = b - a
    limit = float(np.max(np.abs(diff))) or 1.0
    quantized = f"{n_bits}-bit head, dequantized" if n_bits else "quantized head, dequantized"
    panels = [
        (a, "float head", "viridis", 0.0, 1.0),
        (b, quantized, "viridis", 0.0, 1.0),
        (diff, f"difference (largest {limit:.3f})", "RdBu_r", -limit, limit),
    ]
    for ax, (data, title, cmap, vmin, vmax) in zip(axes, panels, strict=True):
        image = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("attends to token")
        if tokens is not None:
            labels = [repr(t)[1:-1] for t in tokens]
            ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize="x-small")
            ax.set_yticks(range(len(labels)), labels, fontsize="x-small")
        fig.colorbar(image, ax=ax, shrink=0.8)
    axes[0].set_ylabel("token")
    return fig


def plot_fhe_cost(
    n_bits: Sequence[int], pbs: Sequence[int], seconds: Sequence[float], *, measured: tuple[int, float] | None = None
) -> Figure:
    """Run time of the encrypted head against ``n_bits`` (log scale): estimated from the compiler's complexity,
    with a real run as a star. The PBS counts go in the title when they are all equal (the shapes set them, not
    the bits), next to each point otherwise.

    Args:
        n_bits: the activation bits of each compiled circuit.
        pbs: their PBS counts.
        seconds: their run times (estimated from the compiler's complexity).
        measured: ``(n_bits, seconds)`` of a real encrypted run, drawn as a star.
    """
    n_bits, pbs, seconds = list(n_bits), [int(p) for p in pbs], list(seconds)  # Series are indexed by label
    if not len(n_bits) == len(pbs) == len(seconds):
        raise ValueError(f"one value per circuit: {len(n_bits)} n_bits, {len(pbs)} PBS counts, {len(seconds)} times")
    fig = Figure(figsize=(6.5, 3.4), layout="constrained")
    ax = fig.subplots()
    ax.plot(n_bits, seconds, "o-", color="tab:red", label="estimated from the compiler's complexity")
    if measured is not None:
        ax.plot(*measured, "*", color="black", markersize=14, label="measured (the encrypted run above)")
    same_pbs = len(set(pbs)) == 1
    if not same_pbs:
        for b, count, value in zip(n_bits, pbs, seconds, strict=True):
            ax.annotate(f"{count:,} PBS", (b, value), textcoords="offset points", xytext=(4, -10), fontsize=8)
    title = "run time: set by the bits" + (f" (the same {pbs[0]:,} PBS at every width)" if same_pbs else "")
    ax.set(xlabel="n_bits", ylabel="seconds per run (2 cores)", title=title, yscale="log")
    ax.set_xticks(list(n_bits))
    ax.title.set_fontsize(10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_design_ladder(
    labels: Sequence[str],
    pbs_per_step: Sequence[dict[str, int]],
    seconds: Sequence[float],
    *,
    seconds_are: str = "estimated from the compiler's complexity",
) -> Figure:
    """PBS per step and run time of successive versions of the encrypted head (notebook 03, section 4).

    Args:
        labels: one name per version, from the first to the last.
        pbs_per_step: for each version, its PBS per step (``CircuitSummary.pbs_per_step``).
        seconds: for each version, its run time on ciphertexts.
        seconds_are: how the run times were obtained, written under the panel's title ("measured", or how
            they were estimated).
    """
    fig = Figure(figsize=(10, 0.7 * len(labels) + 1.6), layout="constrained")
    left, right = fig.subplots(1, 2, sharey=True)
    rows = list(range(len(labels)))[::-1]  # the first version on top
    steps = list(dict.fromkeys(step for counts in pbs_per_step for step in counts))
    starts = [0] * len(labels)
    for step, color in zip(steps, ("tab:blue", "tab:orange", "tab:green", "tab:gray"), strict=False):
        widths = [counts.get(step, 0) for counts in pbs_per_step]
        left.barh(rows, widths, left=starts, color=color, label=step)
        starts = [a + b for a, b in zip(starts, widths, strict=True)]
    for row, total in zip(rows, starts, strict=True):
        left.annotate(f" {total:,}", (total, row), va="center", fontsize=9)
    left.set_yticks(rows, labels)
    left.set(xlabel="PBS per run", title="PBS per step")
    left.set_xlim(0, max(starts) * 1.25)
    left.legend(fontsize=8, loc="lower right")
    right.barh(rows, seconds, color="tab:red")
    for row, value in zip(rows, seconds, strict=True):
        right.annotate(f" {value:,.0f} s", (value, row), va="center", fontsize=9)
    right.set(xlabel="seconds per run on ciphertexts (2 cores)", title=f"run time, {seconds_are}")
    right.title.set_fontsize(9)
    right.set_xlim(0, max(seconds) * 1.3)
    return fig


def plot_pbs_against_length(
    panels: Sequence[tuple[str, dict[str, tuple[Sequence[int], Sequence[int]]]]],
    *,
    points: Sequence[tuple[str, int, int, str]] = (),
) -> Figure:
    """PBS count against sequence length, one panel per model, one line per circuit.

    Args:
        panels: ``(title, {label: (lengths, pbs)})`` for each panel.
        points: single reference values ``(panel title, length, pbs, label)``, drawn as stars.
    """
    fig = Figure(figsize=(5 * len(panels), 3.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, lines) in zip(axes, panels, strict=True):
        for i, (label, (lengths, pbs)) in enumerate(lines.items()):
            ax.plot(lengths, pbs, "o-", markersize=3, color=f"C{i}", label=label)
        for panel, length, pbs, label in points:
            if panel == title:
                ax.plot([length], [pbs], "*", color="black", markersize=13, label=label, zorder=5)
        ax.set(xlabel="sequence length (tokens)", ylabel="PBS per run", title=title)
        ax.yaxis.set_major_formatter(lambda value, _: f"{value:,.0f}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", loc="upper left")
    return fig


def plot_step_costs(steps: Sequence[int], pbs: Sequence[int], sent_bytes: Sequence[int]) -> Figure:
    """One generation step per token, against the tokens it reads: its PBS (left) grow with ``T``, the bytes the
    client sends (right) do not.

    Args:
        steps: the steps' sequence lengths ``T``.
        pbs: each step's PBS count.
        sent_bytes: the bytes the client sent for each step.
    """
    if not len(steps) == len(pbs) == len(sent_bytes):
        raise ValueError(f"one value per step: {len(steps)} steps, {len(pbs)} PBS counts, {len(sent_bytes)} sizes")
    fig = Figure(figsize=(9, 3.2), layout="constrained")
    left, right = fig.subplots(1, 2, sharex=True)
    left.bar(steps, pbs, color="C3")
    left.set(xlabel="step T (tokens read)", ylabel="PBS", title="the server's work per token grows with T")
    left.yaxis.set_major_formatter(lambda value, _: f"{value:,.0f}")
    right.bar(steps, [b / 1e6 for b in sent_bytes], color="C0")
    right.set(xlabel="step T (tokens read)", ylabel="MB sent", title="what the client sends per token does not")
    for ax in (left, right):
        ax.set_xticks(list(steps))
        ax.grid(True, axis="y", alpha=0.3)
    return fig


def plot_error_budget(labels: Sequence[str], top1: Sequence[float], reference_top1: float) -> Figure:
    """Where a quantized layer's accuracy goes: the top-1 points each tensor loses on its own.

    Args:
        labels: one name per tensor (each row of the budget puts that tensor alone at the low setting).
        top1: each row's top-1 agreement with the float model, from 0 to 1.
        reference_top1: the top-1 agreement of the reference row (every tensor at high precision).
    """
    if len(labels) != len(top1):
        raise ValueError(f"one top-1 per label: {len(labels)} labels, {len(top1)} values")
    lost = [100 * (reference_top1 - value) for value in top1]
    order = np.argsort(lost)  # the largest loss on top
    fig = Figure(figsize=(7.5, 0.42 * len(labels) + 1.2), layout="constrained")
    ax = fig.subplots()
    ax.barh(range(len(labels)), [lost[i] for i in order], color="tab:red")
    ax.set_yticks(range(len(labels)), [labels[i] for i in order])
    for row, i in enumerate(order):
        ax.annotate(f" {lost[i]:.1f}", (max(lost[i], 0), row), va="center", fontsize=9)
    ax.set(xlabel="top-1 points lost (that tensor alone at the low setting)", title="where the accuracy goes")
    ax.set_xlim(0, max(lost) * 1.15)
    ax.grid(True, axis="x", alpha=0.3)
    return fig


def plot_accuracy_against_keys(
    labels: Sequence[str],
    top1: Sequence[float],
    key_gigabytes: Sequence[float],
    *,
    target: float | None = None,
    memory_gigabytes: float | None = None,
) -> Figure:
    """Top-1 agreement of quantized layers against the size of their evaluation keys, one named point per setting.

    Args:
        labels: one name per setting (in the legend).
        top1: each setting's top-1 agreement with the float model, from 0 to 1.
        key_gigabytes: each setting's evaluation keys, in GB before compression (as the server holds them).
        target: a top-1 to draw as a dashed horizontal line.
        memory_gigabytes: a memory size to draw as a dotted vertical line (keys to its right do not fit).
    """
    if not len(labels) == len(top1) == len(key_gigabytes):
        raise ValueError(
            f"one value per setting: {len(labels)} labels, {len(top1)} top-1, {len(key_gigabytes)} key sizes"
        )
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    ax = fig.subplots()
    for i, (label, t, k) in enumerate(zip(labels, top1, key_gigabytes, strict=True)):
        ax.scatter([k], [100 * t], s=45, color=f"C{i}", zorder=3, label=label)
    if target is not None:
        ax.axhline(100 * target, color="gray", linestyle="--", linewidth=1)
        ax.annotate(
            f"target {100 * target:.0f} %",
            (min(key_gigabytes), 100 * target),
            textcoords="offset points",
            xytext=(0, 4),
            fontsize=8,
            color="gray",
        )
    if memory_gigabytes is not None:
        ax.axvline(memory_gigabytes, color="C3", linestyle=":", linewidth=1.5)
        ax.annotate(
            f"{memory_gigabytes:.0f} GB of memory",
            (memory_gigabytes, min(100 * t for t in top1)),
            textcoords="offset points",
            xytext=(4, 0),
            fontsize=8,
            color="C3",
        )
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), title="setting")
    ax.set_xscale("log")
    ax.set_xlim(min(key_gigabytes) / 1.3, max([*key_gigabytes, memory_gigabytes or 0]) * 1.3)
    plain = FuncFormatter(lambda value, _: f"{value:g}")  # 20, not 2 x 10^1
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.set(
        xlabel="evaluation keys (GB before compression, log scale)",
        ylabel="top-1 agreement with float (%)",
        title="accuracy is bought with evaluation keys: each point a setting of the layer",
    )
    ax.grid(True, alpha=0.3)
    return fig


def plot_lookup_errors(result: LookupErrors) -> Figure:
    """Where the wrong lookups of a simulated table landed: the row below or above the right one, or outside
    the table (a bar each, with its count), for one :class:`~course_lib.lookup_errors.LookupErrors`."""
    from .lookup_errors import OUTSIDE

    offsets = sorted(key for key in result.landed if key not in (0, OUTSIDE))
    labels = [f"row {offset:+d}" for offset in offsets] + [OUTSIDE]
    counts = [result.landed[offset] for offset in offsets] + [result.landed.get(OUTSIDE, 0)]
    fig = Figure(figsize=(6.5, 3.2), layout="constrained")
    ax = fig.subplots()
    bars = ax.bar(labels, counts, color=["C0"] * len(offsets) + ["C3"])
    ax.bar_label(bars, labels=[f"{count:,}" for count in counts], fontsize=9)
    ax.set(
        ylabel="wrong lookups",
        title=f"measured in simulation: {result.wrong:,} of {result.lookups:,} lookups wrong "
        f"at p_error = {result.p_error:.3g}",
    )
    ax.title.set_fontsize(10)
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def show_widget(widget, static_text: str) -> None:
    """Display an ipywidgets widget whose saved output, where no kernel runs it, reads ``static_text``.

    A live notebook shows the widget. GitHub, nbviewer and a notebook opened without running it
    have no kernel behind the widget: they show the ``text/plain`` part of the output instead,
    which is ``static_text`` (say what the widget does and where its static counterpart is) rather
    than ipywidgets' own repr. The committed notebooks keep only that part (scripts/clean_notebooks.py).
    """
    from IPython.display import display

    bundle = widget._repr_mimebundle_()
    bundle["text/plain"] = static_text
    display(bundle, raw=True)
