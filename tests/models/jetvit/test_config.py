import pytest

from jetvit_hf import ATTENTION_TYPES, JetViTConfig


def small(**overrides) -> JetViTConfig:
    kwargs = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64)
    kwargs.update(overrides)
    return JetViTConfig(**kwargs)


def test_defaults_are_all_full_attention():
    assert small().attention_types == ["full"] * 3
    assert ATTENTION_TYPES == ("full", "window", "linear")


def test_round_trip_keeps_every_field(tmp_path):
    config = small(
        attention_types=["linear", "window", "full"],
        window_size=7,
        position_embedding_type="rope",
        num_register_tokens=4,
        out_indices=[1, 3],
        neck_hidden_sizes=[4, 8, 16, 32],
        depth_estimation_type="metric",
        max_depth=80.0,
    )
    config.save_pretrained(tmp_path)
    loaded = JetViTConfig.from_pretrained(tmp_path)
    for field in ("attention_types", "window_size", "position_embedding_type", "num_register_tokens",
                  "out_indices", "out_features", "neck_hidden_sizes", "depth_estimation_type", "max_depth"):
        assert getattr(loaded, field) == getattr(config, field), field
    assert loaded.out_features == ["stage1", "stage3"]
    assert loaded.num_prefix_tokens == 5


@pytest.mark.parametrize(
    "overrides, field, allowed",
    [
        (dict(attention_types=["full", "full"]), "attention_types", "3 entries"),
        (dict(attention_types=["full", "softmax", "linear"]), "attention_types", "'window'"),
        (dict(window_size=0), "window_size", ">= 1"),
        (dict(num_attention_heads=5), "num_attention_heads", "divisor"),
        (dict(position_embedding_type="sincos"), "position_embedding_type", "'rope'"),
        (dict(position_embedding_type="rope", num_attention_heads=16), "rope", "divisible by 4"),
        (dict(dynamic_conv_kernel_size=4), "dynamic_conv_kernel_size", "odd"),
        (dict(dynamic_conv_reduction=0), "dynamic_conv_reduction", "[1, hidden_size"),
        (dict(linear_attention_eps=0.0), "linear_attention_eps", "> 0"),
        (dict(depth_estimation_type="absolute"), "depth_estimation_type", "'metric'"),
        (dict(neck_hidden_sizes=[8, 16]), "neck_hidden_sizes", "same length"),
    ],
)
def test_invalid_config_names_field_and_allowed_values(overrides, field, allowed):
    with pytest.raises(ValueError) as error:
        small(**overrides)
    assert field in str(error.value)
    assert allowed in str(error.value)
