"""course_lib.plots: the figures the notebooks draw, checked by what they contain (shapes, lines, labels) and
by the errors they raise on inputs they cannot draw."""

import numpy as np
import pytest
from matplotlib.figure import Figure

from course_lib import plots
from course_lib.evaluation import Agreement


@pytest.mark.parametrize("n_layer, n_head, layer, head", [(4, 4, 0, 0), (12, 12, 11, 7), (1, 1, 0, 0)])
def test_plot_head_in_gpt2(n_layer, n_head, layer, head):
    fig = plots.plot_head_in_gpt2(n_layer, n_head, layer, head, head_dim=32)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    left, right = fig.axes
    assert len(left.patches) == n_layer + 2  # the blocks, the embeddings and the LM head
    assert len(right.patches) == n_head + 6
    texts = [t.get_text() for t in left.texts]
    assert f"block {layer}  (this one)" in texts
    assert any(t.get_text().startswith(f"head {head}") or t.get_text() == f"h{head}" for t in right.texts)


@pytest.mark.parametrize("args", [(4, 4, 4, 0), (4, 4, 0, -1), (0, 4, 0, 0)])
def test_plot_head_in_gpt2_refuses_missing_heads(args):
    with pytest.raises(ValueError, match="must be"):
        plots.plot_head_in_gpt2(*args)


def agreements(offset=0.0):
    return [Agreement(b, {1: 0.5 + b / 25 - offset, 5: 0.7 + b / 40, 10: 0.8 + b / 60}, 100) for b in range(2, 11)]


def test_plot_topk_agreement_lines():
    fig = plots.plot_topk_agreement(agreements())
    (ax,) = fig.axes
    assert len(ax.lines) == 3
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [100 * (0.5 + b / 25) for b in range(2, 11)])
    fig = plots.plot_topk_agreement(
        agreements(), compare=agreements(0.1), labels=("a", "b"), points=[(4, 0.96, "published")]
    )
    (ax,) = fig.axes
    assert len(ax.lines) == 7
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["top-1 (a)", "top-5 (a)", "top-10 (a)", "top-1 (b)", "top-5 (b)", "top-10 (b)", "published"]
    removed = Agreement(0, {1: 0.4, 5: 0.6, 10: 0.7}, 100)
    (ax,) = plots.plot_topk_agreement(agreements(), baseline=removed).axes
    assert len(ax.lines) == 6
    assert ax.lines[3].get_ydata()[0] == pytest.approx(40) and ax.lines[3].get_linestyle() == ":"
    assert "top-1, head removed" in [t.get_text() for t in ax.get_legend().get_texts()]
    with pytest.raises(ValueError, match="at least one result"):
        plots.plot_topk_agreement([])


def test_plot_topk_agreement_draws_only_the_chosen_k():
    (ax,) = plots.plot_topk_agreement(agreements(), compare=agreements(0.1), labels=("a", "b"), ks=(1,)).axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["top-1 (a)", "top-1 (b)"]
    removed = Agreement(0, {1: 0.4, 5: 0.6, 10: 0.7}, 100)
    assert len(plots.plot_topk_agreement(agreements(), baseline=removed, ks=(1, 5)).axes[0].lines) == 4
    for ks in ((2,), ()):
        with pytest.raises(ValueError, match="ks must be some of the results' k"):
            plots.plot_topk_agreement(agreements(), ks=ks)


def test_plot_attention_heatmaps():
    rng = np.random.default_rng(0)
    probs = np.tril(rng.random((5, 5)))
    probs /= probs.sum(axis=1, keepdims=True)
    fig = plots.plot_attention_heatmaps(probs, np.round(probs * 15) / 15, list("abcde"), n_bits=4)
    assert len(fig.axes) == 6  # three panels and their colorbars
    assert [len(ax.images) for ax in fig.axes[:3]] == [1, 1, 1]
    np.testing.assert_allclose(fig.axes[2].images[0].get_array(), np.round(probs * 15) / 15 - probs)
    assert "4-bit" in fig.axes[1].get_title()
    with pytest.raises(ValueError, match="square arrays of the same shape"):
        plots.plot_attention_heatmaps(probs, probs[:4, :4])
    with pytest.raises(ValueError, match="4 tokens for a 5x5"):
        plots.plot_attention_heatmaps(probs, probs, list("abcd"))


def test_plot_error_budget_sorts_the_losses_largest_on_top():
    fig = plots.plot_error_budget(["x", "probs", "weights"], [0.92, 0.90, 0.99], reference_top1=0.998)
    (ax,) = fig.axes
    widths = [bar.get_width() for bar in ax.patches]
    assert widths == pytest.approx([0.8, 7.8, 9.8])  # barh draws the first bar at the bottom
    assert [t.get_text() for t in ax.get_yticklabels()] == ["weights", "x", "probs"]
    with pytest.raises(ValueError, match="one top-1 per label: 2 labels, 1 values"):
        plots.plot_error_budget(["x", "q"], [0.9], 1.0)


def test_plot_accuracy_against_keys_places_each_setting_the_target_and_the_memory():
    fig = plots.plot_accuracy_against_keys(["a", "b"], [0.67, 0.89], [6.4, 19.7], target=0.9, memory_gigabytes=16)
    (ax,) = fig.axes
    np.testing.assert_allclose([c.get_offsets()[0] for c in ax.collections], [[6.4, 67], [19.7, 89]])
    assert ax.get_xscale() == "log"
    assert ax.lines[0].get_ydata()[0] == pytest.approx(90)  # the target's dashed line
    assert ax.lines[1].get_xdata()[0] == pytest.approx(16)  # the memory's dotted line
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
    assert {"target 90 %", "16 GB of memory"} <= {t.get_text() for t in ax.texts}
    assert len(plots.plot_accuracy_against_keys(["a"], [0.5], [1.0]).axes[0].lines) == 0
    with pytest.raises(ValueError, match="2 labels, 1 top-1"):
        plots.plot_accuracy_against_keys(["a", "b"], [0.5], [1, 2])


def test_plot_lookup_errors_draws_one_bar_per_place_a_wrong_lookup_landed():
    from course_lib.lookup_errors import OUTSIDE, LookupErrors

    result = LookupErrors(p_error=0.1, complexity=1.0, lookups=1_000, landed={0: 900, -1: 40, 1: 50, OUTSIDE: 10})
    (ax,) = plots.plot_lookup_errors(result).axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["row -1", "row +1", OUTSIDE]
    assert [p.get_height() for p in ax.patches] == [40, 50, 10]
    assert "100 of 1,000" in ax.get_title()


def test_plot_fhe_cost_says_once_that_the_pbs_do_not_change_with_the_bits():
    (ax,) = plots.plot_fhe_cost([3, 4, 5], [1448, 1448, 1448], [20.0, 40.0, 100.0], measured=(4, 42.0)).axes
    assert "the same 1,448 PBS at every width" in ax.get_title()
    assert [t.get_text() for t in ax.texts] == []  # no per-point counts when they are all equal
    assert [line.get_label() for line in ax.get_lines()] == [
        "estimated from the compiler's complexity",
        "measured (the encrypted run above)",
    ]
    import pandas as pd

    costs = pd.DataFrame({"PBS": [1000, 1200], "s": [20.0, 40.0]}, index=pd.Index([3, 4], name="n_bits"))
    (ax,) = plots.plot_fhe_cost(costs.index, costs["PBS"], costs["s"]).axes  # Series indexed by n_bits, as notebook 03
    assert [t.get_text() for t in ax.texts] == ["1,000 PBS", "1,200 PBS"]
    with pytest.raises(ValueError, match="one value per circuit"):
        plots.plot_fhe_cost([3, 4], [1000], [20.0, 40.0])


def test_plot_design_ladder_says_how_its_run_times_were_obtained():
    steps = [{"scores": 10, "mix": 5}, {"scores": 4, "mix": 2}]
    left, right = plots.plot_design_ladder(["a", "b"], steps, [30.0, 10.0]).axes
    assert right.get_title() == "run time, estimated from the compiler's complexity"
    assert plots.plot_design_ladder(["a", "b"], steps, [30.0, 10.0], seconds_are="measured").axes[1].get_title() == (
        "run time, measured"
    )
    assert [t.get_text() for t in left.texts] == [" 15", " 6"]
