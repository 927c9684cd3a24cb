"""`config.linear_attention_conv`, the paper's ablation of the convolution of V in linear layers: none, static, or the
squeeze dynamic one (the default, and what configs saved before the field existed load as)."""

import json

import pytest
import torch

from jetvit_hf import JetViTConfig, JetViTModel
from jetvit_hf.models.jetvit.configuration_jetvit import LINEAR_ATTENTION_CONVS
from jetvit_hf.models.jetvit.modeling_jetvit import JetViTLinearAttention
from helpers import relative_error
from test_attention import (
    WIDTH,
    make_config,
    randomize_,
    reference_depthwise_conv,
    reference_linear_attention,
    reference_qkv,
    rope,
)


def linear_reference(module, x, position_embeddings, num_prefix, grid, kernels=None):
    """float64 long-hand: ReLU linear attention, plus (with `kernels` [C, k, k]) the same depthwise conv of V on the
    patch grid of every image, added to the patch tokens before o_proj."""
    q, k, v = reference_qkv(module, x.double(), position_embeddings)
    batch, tokens = x.shape[:2]
    attn = reference_linear_attention(q, k, v, module.config.linear_attention_eps)
    attn = attn.transpose(1, 2).reshape(batch, tokens, WIDTH)
    if kernels is not None:
        values = v.transpose(1, 2).reshape(batch, tokens, WIDTH)[:, num_prefix:]
        for b in range(batch):
            image = values[b].T.reshape(WIDTH, *grid)
            attn[b, num_prefix:] += reference_depthwise_conv(image, kernels.double()).reshape(WIDTH, -1).T
    return attn @ module.o_proj.weight.double().T + module.o_proj.bias.double()


def run_block(module, grid, batch=2, seed=0):
    x = torch.randn(batch, 3 + grid[0] * grid[1], WIDTH, generator=torch.Generator().manual_seed(seed))
    x = x.to(module.o_proj.weight.dtype)
    position_embeddings = rope(module.config, grid, torch.float32)
    return x, position_embeddings, module(x, position_embeddings=position_embeddings, grid_size=grid)[0]


def test_default_is_squeeze_dynamic_and_the_values_are_the_three_ablations():
    assert JetViTConfig().linear_attention_conv == "squeeze_dynamic"
    assert LINEAR_ATTENTION_CONVS == ("none", "static", "squeeze_dynamic")


def test_fresh_static_conv_is_zero_and_the_block_is_plain_linear_attention():
    model = JetViTModel(make_config(attention_types=["linear", "full"], linear_attention_conv="static")).eval()
    attention = model.encoder.layer[0].attention
    assert attention.static_conv.weight.shape == (WIDTH, 3, 3) and attention.static_conv.weight.abs().sum() == 0
    assert attention.dynamic_conv is None
    with torch.no_grad():
        x, position_embeddings, out = run_block(attention, (3, 4))
    expected = linear_reference(attention, x, position_embeddings, 3, (3, 4))
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("grid", [(4, 4), (3, 5)])
def test_static_conv_block_matches_reference(grid):
    config = make_config(linear_attention_conv="static", dynamic_conv_kernel_size=3)
    module = randomize_(JetViTLinearAttention(config), seed=7)  # a random (non-zero) static kernel
    with torch.no_grad():
        x, position_embeddings, out = run_block(module, grid)
    expected = linear_reference(module, x, position_embeddings, 3, grid, kernels=module.static_conv.weight)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    # the same kernel for every image: the convolution is not a function of the image's mean V
    without = linear_reference(module, x, position_embeddings, 3, grid)
    assert not torch.allclose(out.double(), without, rtol=1e-3, atol=1e-3)


def test_no_conv_block_has_no_conv_parameters_and_is_plain_linear_attention():
    model = JetViTModel(make_config(attention_types=["linear", "linear"], linear_attention_conv="none"))
    assert not [name for name in model.state_dict() if "conv" in name]
    module = randomize_(model.encoder.layer[1].attention, seed=8)
    with torch.no_grad():
        x, position_embeddings, out = run_block(module, (4, 3))
    torch.testing.assert_close(out.double(), linear_reference(module, x, position_embeddings, 3, (4, 3)),
                               rtol=1e-5, atol=1e-5)


def test_static_conv_gradient_is_the_sum_over_images():
    """The kernel is expanded over the batch (a view): its gradient is the sum of every image's kernel gradient, so it
    equals the gradient of the float64 reference (to the fp32 of the op's backward)."""
    module = randomize_(JetViTLinearAttention(make_config(linear_attention_conv="static")), seed=9).double()
    kernels = module.conv_weight(torch.zeros(3, WIDTH))
    assert kernels.shape == (3, WIDTH, 3, 3) and kernels.stride(0) == 0  # a view of the one kernel, not a copy
    grid = (3, 4)
    x, position_embeddings, out = run_block(module, grid, batch=3)
    weights = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (out * weights).sum().backward()
    grad = module.static_conv.weight.grad.clone()
    module.zero_grad()
    expected = linear_reference(module, x.double(), position_embeddings, 3, grid, module.static_conv.weight)
    (expected * weights).sum().backward()
    assert grad.abs().sum() > 0
    assert relative_error(grad, module.static_conv.weight.grad) < 1e-6


@pytest.mark.parametrize("conv", LINEAR_ATTENTION_CONVS)
def test_save_and_load_round_trip_keeps_the_conv_and_the_outputs(conv, tmp_path):
    model = randomize_(JetViTModel(make_config(attention_types=["linear", "window"], linear_attention_conv=conv)), 10)
    model.save_pretrained(tmp_path)
    loaded = JetViTModel.from_pretrained(tmp_path).eval()
    assert loaded.config.linear_attention_conv == conv
    assert loaded.state_dict().keys() == model.state_dict().keys()
    pixels = torch.randn(2, 3, 20, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels).last_hidden_state, model(pixels).last_hidden_state)


def test_config_without_the_field_loads_as_squeeze_dynamic(tmp_path):
    make_config(attention_types=["linear", "full"]).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["linear_attention_conv"]  # as written before the field existed
    (tmp_path / "config.json").write_text(json.dumps(saved))
    config = JetViTConfig.from_pretrained(tmp_path)
    assert config.linear_attention_conv == "squeeze_dynamic"
    assert JetViTModel(config).encoder.layer[0].attention.dynamic_conv is not None


def test_a_conv_switch_without_linear_layers_is_fine():
    config = make_config(attention_types=["full", "window"], linear_attention_conv="none")
    assert not [name for name in JetViTModel(config).state_dict() if "conv" in name]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(linear_attention_conv="dynamic"), "['none', 'static', 'squeeze_dynamic']"),
        (dict(linear_attention_conv="static", dynamic_conv_reduction=8), "`dynamic_conv_reduction`"),
        (dict(linear_attention_conv="none", dynamic_conv_kernel_size=5), "`dynamic_conv_kernel_size`"),
        (dict(linear_attention_conv="none", dynamic_conv_reduction=2), "`dynamic_conv_reduction`"),
    ],
)
def test_bad_conv_settings_name_the_field(overrides, message):
    with pytest.raises(ValueError, match="linear_attention_conv") as error:
        make_config(**overrides)
    assert message in str(error.value)


def test_overrides_set_by_from_pretrained_are_checked_when_the_model_is_built(tmp_path):
    JetViTModel(make_config(attention_types=["linear", "full"])).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="`linear_attention_conv` must be one of"):
        JetViTModel.from_pretrained(tmp_path, linear_attention_conv="dynamic")
    static = JetViTModel.from_pretrained(tmp_path, linear_attention_conv="static", dynamic_conv_kernel_size=5)
    assert static.encoder.layer[0].attention.static_conv.weight.shape == (WIDTH, 5, 5)
