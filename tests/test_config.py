"""course_lib.config: one frozen, checked object for a head's settings, and the course's named settings."""

import dataclasses

import pytest

from course_lib.config import COURSE, DESIGNS, FROM_X, LIGHT, PUBLISHED, WEIGHT_SCALES, HeadConfig, head_config


def test_the_named_settings():
    assert (COURSE.n_bits, COURSE.lookup_bits, COURSE.design) == (4, 6, "fast")
    assert (LIGHT.n_bits, LIGHT.lookup_bits, LIGHT.design) == (3, 3, "fast")
    assert (FROM_X.n_bits_weights, FROM_X.weight_scales, FROM_X.exact_projection_rounding) == (6, "aligned", False)
    assert FROM_X.replace(n_bits_weights=None, weight_scales="tensor", exact_projection_rounding=True) == COURSE
    assert (PUBLISHED.design, PUBLISHED.lookup_bits, PUBLISHED.n_bits) == ("published", None, 4)
    assert set(DESIGNS) == {"published", "fast", "fast-quarter-squares"}
    assert set(WEIGHT_SCALES) == {"tensor", "qkv", "aligned"}


def test_it_is_frozen_and_replace_checks_the_copy():
    with pytest.raises(dataclasses.FrozenInstanceError):
        COURSE.n_bits = 6
    assert COURSE.replace(n_bits=5).n_bits == 5 and COURSE.n_bits == 4
    with pytest.raises(TypeError, match="no setting 'bits'.*its settings are n_bits, lookup_bits"):
        COURSE.replace(bits=5)
    with pytest.raises(ValueError, match="lookup_bits \\(6\\) must be at least n_bits \\(8\\)"):
        COURSE.replace(n_bits=8)


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        ({"n_bits": 1}, ValueError, "n_bits must be .*2.*16"),
        ({"n_bits": 4.5}, ValueError, "n_bits must be an integer from 2 to 16, got 4.5"),
        ({"n_bits_weights": 40}, ValueError, "n_bits_weights must be an integer from 2 to 16"),
        ({"lookup_bits": 3}, ValueError, "lookup_bits \\(3\\) must be at least n_bits \\(4\\)"),
        ({"projection_bits": 2}, ValueError, "projection_bits \\(2\\) must be at least n_bits"),
        ({"design": "quick"}, ValueError, "design must be one of 'published', 'fast', 'fast-quarter-squares'"),
        ({"weight_scales": "row"}, ValueError, "weight_scales must be one of 'tensor', 'qkv', 'aligned'"),
        ({"weight_scales": "aligned", "projection_bits": 6}, ValueError, "leave projection_bits unset"),
        ({"exact_projection_rounding": "yes"}, TypeError, "exact_projection_rounding must be True or False"),
        ({"sum_rounding": "once"}, ValueError, "sum_rounding must be one of 'products', 'sum'"),
        ({"sum_rounding": "sum", "design": "published"}, ValueError, "needs design='fast', got design='published'"),
        ({"tensor_bits": {"input": 1}}, ValueError, "tensor_bits\\['input'\\] must be an integer from 2 to 16"),
        ({"tensor_bits": 6}, TypeError, "tensor_bits must be a dict of quantizer names to bits"),
        ({"tensor_bits": [(3, 6)]}, ValueError, "each quantizer is named once, by a string, got 3"),
        ({"probs_digits": 0}, ValueError, "probs_digits must be an integer from 1 to 4"),
        ({"probs_digits": 3}, ValueError, "probs_digits=3 splits the probabilities' 4 bits into digits of at least 2"),
        ({"probs_digits": 2, "tensor_bits": {"probs": 8}, "design": "published"}, ValueError, "design='published'"),
        ({"input_clip_percentile": 40}, ValueError, "input_clip_percentile must be a number above 50 and at most 100"),
        ({"input_clip_percentile": True}, ValueError, "input_clip_percentile must be a number"),
    ],
)
def test_a_wrong_setting_is_refused_with_what_is_allowed(settings, error, message):
    with pytest.raises(error, match=message):
        HeadConfig(**settings)


def test_values_are_normalised():
    import numpy as np

    config = HeadConfig(n_bits=np.int64(5), lookup_bits=np.int64(7), exact_projection_rounding=np.bool_(False))
    assert type(config.n_bits) is int and type(config.lookup_bits) is int
    assert config.exact_projection_rounding is False
    assert config == HeadConfig(n_bits=5, lookup_bits=7, exact_projection_rounding=False)


def test_weight_bits_and_at_bits():
    assert (
        COURSE.weight_bits == 8
        and FROM_X.weight_bits == 6
        and COURSE.replace(n_bits=10, lookup_bits=12).weight_bits == 10
    )
    assert COURSE.at_bits(6) == COURSE.replace(n_bits=6, lookup_bits=8)  # the lookups keep their 2-bit margin
    assert LIGHT.at_bits(5).lookup_bits == 5
    assert PUBLISHED.at_bits(8) == PUBLISHED.replace(n_bits=8)  # no rounding stays no rounding
    with pytest.raises(ValueError, match="n_bits must be"):
        COURSE.at_bits(1)


def test_head_config_reads_a_config_and_keyword_changes():
    assert head_config() is COURSE
    assert head_config(default=PUBLISHED) is PUBLISHED
    assert head_config(FROM_X, n_bits=3, lookup_bits=3) == FROM_X.replace(n_bits=3, lookup_bits=3)
    assert head_config(None, default=PUBLISHED, design="fast", lookup_bits=6) == COURSE
    with pytest.raises(TypeError, match="config must be a HeadConfig, got dict"):
        head_config({"n_bits": 4})


def test_mixed_precision_names_the_bits_of_single_quantizers():
    mixed = COURSE.replace(tensor_bits={"v": 5, "input": 6})
    assert mixed.tensor_bits == (("input", 6), ("v", 5))  # sorted pairs: hashable, equal however given
    assert mixed == COURSE.replace(tensor_bits=[("input", 6), ("v", 5)])
    assert mixed.bits_of("input") == 6 and mixed.bits_of("v") == 5 and mixed.bits_of("probs") == COURSE.n_bits
    assert hash(mixed) == hash(COURSE.replace(tensor_bits={"input": 6, "v": 5}))
    assert COURSE.replace(input_clip_percentile=99).input_clip_percentile == 99.0
