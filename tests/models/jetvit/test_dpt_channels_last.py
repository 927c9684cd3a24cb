"""The DPT neck and head run channels-last without layout copies, project before upsampling in the fusion layers, and
compute what the NCHW, upsample-then-project path (transformers' Depth Anything, this package before) computes."""

import copy
import json
import types

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from transformers import AutoModelForDepthEstimation

from benchmarks.bench_dpt_neck import ModulesReassembleLayer, UpsampleThenProjectFusionLayer
from jetvit_hf import JetViTBackbone, JetViTConfig, JetViTForDepthEstimation
from jetvit_hf.models.jetvit.modeling_jetvit_heads import JetViTFeatureFusionLayer, transposed_conv_then_conv3x3
from sources import perturb_

CL = torch.channels_last
# The fusion layer as transformers' Depth Anything (and this package before) computes it: upsample, then project
original_fusion_forward = UpsampleThenProjectFusionLayer.forward
# The reassemble layer and the neck's 3x3 convolution as transformers runs them: transposed convolution, then the conv
original_reassemble_forward = ModulesReassembleLayer.forward


def tiny_config(**overrides) -> JetViTConfig:
    kwargs = dict(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, patch_size=8,
        num_register_tokens=2, position_embedding_type="rope", attention_types=["linear", "window", "full", "linear"],
        window_size=2, out_indices=[1, 2, 3, 4], neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
        head_hidden_size=8,
    )
    kwargs.update(overrides)
    return JetViTConfig(**kwargs)


def tiny_depth_model(**overrides) -> JetViTForDepthEstimation:
    torch.manual_seed(0)
    model = perturb_(JetViTForDepthEstimation(tiny_config(**overrides)))
    with torch.no_grad():  # a steeper head (as conftest's `depth_source`): the depth varies by tens of percent
        model.head.conv3.weight.mul_(40)
    return model


def original_depth(model: JetViTForDepthEstimation, pixel_values: torch.Tensor) -> torch.Tensor:
    """`predicted_depth` the way it was computed before: NCHW feature maps (LayerNorm over the whole sequence, then a
    copy to NCHW), NCHW weights, the fusion layers' upsample-then-project order, and the reassemble layers'
    transposed convolutions run before the neck's 3x3 convolutions rather than composed with them."""
    backbone, config = model.jetvit, model.config
    grid = (pixel_values.shape[2] // config.patch_size, pixel_values.shape[3] // config.patch_size)
    hidden_states = backbone(pixel_values, output_hidden_states=True).hidden_states
    maps = []
    for stage, hidden_state in zip(backbone.stage_names, hidden_states):
        if stage in backbone.out_features:
            patches = backbone.layernorm(hidden_state)[:, config.num_prefix_tokens:]
            maps.append(patches.reshape(patches.shape[0], *grid, -1).permute(0, 3, 1, 2).contiguous())
    neck = copy.deepcopy(model.neck).to(memory_format=torch.contiguous_format)
    head = copy.deepcopy(model.head).to(memory_format=torch.contiguous_format)
    for layer in neck.fusion_stage.layers:
        layer.forward = types.MethodType(original_fusion_forward, layer)
    for layer in neck.reassemble_stage.layers:
        layer.forward = types.MethodType(original_reassemble_forward, layer)
    for tensor in (*maps, *neck.parameters(), *head.parameters()):
        assert tensor.ndim != 4 or tensor.is_contiguous()
    return head(neck(maps), grid).float()


def relative_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("batch", [1, 2])
def test_outputs_equal_the_nchw_upsample_then_project_path(batch):
    model = tiny_depth_model()
    pixel_values = torch.randn(batch, 3, 40, 56, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        actual = model(pixel_values).predicted_depth
        expected = original_depth(model, pixel_values)
    assert actual.shape == expected.shape == (batch, 40, 56)
    assert expected.std() > 0.1 * expected.abs().mean()  # a varied map: the comparison is not with a constant
    assert relative_difference(actual, expected) <= 1e-5


def test_metric_head_equals_the_original_path_too():
    model = tiny_depth_model(depth_estimation_type="metric", max_depth=20.0)
    pixel_values = torch.randn(2, 3, 48, 40, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert relative_difference(model(pixel_values).predicted_depth, original_depth(model, pixel_values)) <= 1e-5


@pytest.mark.parametrize("batch", [1, 3])
def test_every_op_of_the_neck_and_head_reads_and_writes_channels_last(batch):
    model = tiny_depth_model()
    for name, param in [*model.neck.named_parameters(), *model.head.named_parameters()]:
        assert param.ndim != 4 or param.is_contiguous(memory_format=CL), name
    checked = []

    def tensors(value):
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (tuple, list)):
            for item in value:
                yield from tensors(item)

    def check(name):
        def hook(module, args, output):
            for role, value in (("input", args), ("output", output)):
                for tensor in tensors(value):
                    if tensor.ndim == 4:  # the head's output is [batch, height, width]
                        assert tensor.is_contiguous(memory_format=CL), f"{name} {role} {tuple(tensor.stride())}"
                        checked.append(name)
        return hook

    for prefix, part in (("neck", model.neck), ("head", model.head)):
        for name, module in part.named_modules(prefix=prefix):
            module.register_forward_hook(check(name))
    with torch.no_grad():
        maps = model.jetvit(torch.randn(batch, 3, 40, 56)).feature_maps
        for feature_map in maps:  # dense NHWC memory (the prefix tokens were dropped before the LayerNorm)
            assert feature_map.is_contiguous(memory_format=CL) and feature_map.shape[:2] == (batch, 32)
        depth = model(torch.randn(batch, 3, 40, 56)).predicted_depth
    assert depth.shape == (batch, 40, 56) and depth.is_contiguous()
    # every conv, conv-transpose and ReLU (but the first fusion layer's residual_layer1, which has no input to fuse,
    # as in transformers), every fusion layer (its output is its bilinear upsampling's) and the head's conv2 (its input
    # is the head's upsampling) was seen
    ops = {n for n, m in [*model.neck.named_modules(prefix="neck"), *model.head.named_modules(prefix="head")]
           if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.ReLU))}
    unused = {n for n in ops if n.startswith("neck.fusion_stage.layers.0.residual_layer1.")}
    assert len(unused) == 4 and ops - unused <= set(checked)
    assert "head.conv2" in checked and {f"neck.fusion_stage.layers.{i}" for i in range(4)} <= set(checked)


def test_backbone_maps_are_views_with_the_values_of_the_nchw_copies():
    """The maps equal LayerNorm-then-slice-then-copy bit for bit; without the LayerNorm they are views of the tokens."""
    for apply_layernorm in (True, False):
        config = tiny_config(apply_layernorm=apply_layernorm, return_class_token=True)
        torch.manual_seed(0)
        backbone = perturb_(JetViTBackbone(config))
        pixel_values = torch.randn(2, 3, 40, 56)
        with torch.no_grad():
            outputs = backbone(pixel_values, output_hidden_states=True)
        for index, stage in enumerate(config.out_indices):
            hidden_state = outputs.hidden_states[stage]
            normed = backbone.layernorm(hidden_state) if apply_layernorm else hidden_state
            expected = normed[:, 3:].reshape(2, 5, 7, 32).permute(0, 3, 1, 2).contiguous()
            feature_map = outputs.feature_maps[index]
            assert torch.equal(feature_map, expected)
            assert torch.equal(outputs.cls_tokens[index], normed[:, 0])
            assert feature_map.stride()[1] == 1  # channels innermost
            if not apply_layernorm:  # a view of the encoder's tokens, gaps (the prefix tokens) between images
                assert feature_map.data_ptr() == hidden_state[:, 3:].data_ptr()


def test_fusion_projection_commutes_with_the_upsampling_in_float64():
    """Projecting (1x1 conv with bias) before the bilinear upsampling is the same function as after it."""
    config = tiny_config()
    torch.manual_seed(0)
    layer = perturb_(JetViTFeatureFusionLayer(config)).double()
    with torch.no_grad():
        layer.projection.bias.normal_(0, 1.0)  # a large bias: it commutes only because the weights sum to 1
        hidden_state, residual = torch.randn(2, 16, 5, 7, dtype=torch.float64), torch.randn(2, 16, 5, 7).double()
        for size in (None, (9, 13), (11, 8)):
            for args in ((hidden_state,), (hidden_state, residual)):
                actual = layer(*args, size=size)
                expected = original_fusion_forward(layer, *args, size=size)
                assert actual.shape == expected.shape
                torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
        # the head's 3x3 conv1 does not commute with its upsampling: that is why it stays where it is
        conv = torch.nn.Conv2d(16, 8, 3, padding=1).double()
        up = lambda x: F.interpolate(x, size=(11, 16), mode="bilinear", align_corners=True)  # noqa: E731
        assert (conv(up(hidden_state)) - up(conv(hidden_state))).abs().max() > 1e-2


def test_channels_last_survives_loading_and_saves_ordinary_safetensors(tmp_path):
    model = tiny_depth_model()
    model.save_pretrained(tmp_path)
    params = dict(model.named_parameters())
    with safe_open(tmp_path / "model.safetensors", framework="pt") as saved:
        for name in saved.keys():  # the logical values, in ordinary row-major order (safetensors has no strides)
            assert torch.equal(saved.get_tensor(name), params[name].detach().contiguous()), name
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["JetViTForDepthEstimation"]

    pixel_values = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        expected = model(pixel_values).predicted_depth
    loaded, info = JetViTForDepthEstimation.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    auto = AutoModelForDepthEstimation.from_pretrained(tmp_path)
    bf16 = JetViTForDepthEstimation.from_pretrained(tmp_path, dtype=torch.bfloat16)
    for reloaded in (loaded, auto, bf16, copy.deepcopy(loaded).to(torch.float64)):  # `to` keeps the memory format
        for name, param in [*reloaded.neck.named_parameters(), *reloaded.head.named_parameters()]:
            assert param.ndim != 4 or param.is_contiguous(memory_format=CL), name
    with torch.no_grad():  # fp32 rounding, not bitwise: see test_remote_code_loads_without_the_package
        for reloaded in (loaded, auto):
            torch.testing.assert_close(reloaded.eval()(pixel_values).predicted_depth, expected)


def test_to_channels_last_restores_weights_replaced_by_contiguous_ones():
    model = tiny_depth_model()
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    model.load_state_dict(state, assign=True)  # assigns the contiguous tensors themselves
    assert not model.head.conv1.weight.is_contiguous(memory_format=CL)
    pixel_values = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        before = model(pixel_values).predicted_depth
        assert model.to_channels_last() is model
        assert model.head.conv1.weight.is_contiguous(memory_format=CL)
        assert model.neck.fusion_stage.layers[0].projection.weight.is_contiguous(memory_format=CL)
        assert relative_difference(model(pixel_values).predicted_depth, before) <= 1e-5


@pytest.mark.parametrize("stride, conv_bias, grid", [(4, False, (5, 7)), (2, False, (6, 3)), (2, True, (1, 4)),
                                                    (3, True, (3, 5)), (4, True, (1, 1))])
def test_transposed_conv_then_conv3x3_is_the_two_modules_in_float64(stride, conv_bias, grid):
    """The composed transposed convolution equals conv(resize(x)) to float64 rounding, values and gradients (every
    weight, the input), at the borders too (a 1x1 grid is all border), with and without a bias on the 3x3 conv."""
    torch.manual_seed(stride)
    resize = torch.nn.ConvTranspose2d(6, 5, stride, stride=stride).double()
    conv = torch.nn.Conv2d(5, 4, 3, padding=1, bias=conv_bias).double()
    x = torch.randn(2, 6, *grid, dtype=torch.float64, requires_grad=True)
    expected = conv(resize(x))
    actual = transposed_conv_then_conv3x3(x, resize, conv)
    assert actual.shape == expected.shape == (2, 4, grid[0] * stride, grid[1] * stride)
    assert torch.allclose(actual, expected, rtol=0, atol=1e-13 * expected.abs().max().item())
    grad = torch.randn_like(expected)
    params = [x, *resize.parameters(), *conv.parameters()]
    for name, a, e in zip(["x", "resize.weight", "resize.bias", "conv.weight", "conv.bias"],
                          torch.autograd.grad(actual, params, grad), torch.autograd.grad(expected, params, grad)):
        assert torch.allclose(a, e, rtol=0, atol=1e-12 * e.abs().max().item()), name


def test_compiled_neck_composes_the_upsampling_scales_and_predicts_the_same_depth(monkeypatch):
    """Under torch.compile (`is_compiling` true) the two upsampling reassemble layers run `transposed_conv_then_conv3x3`
    on their channels-last maps, and the model predicts what the modules (transformers' order) predict; eager calls
    keep the modules."""
    from jetvit_hf.models.jetvit import modeling_jetvit_heads

    model = tiny_depth_model()
    pixel_values = torch.randn(2, 3, 40, 56, generator=torch.Generator().manual_seed(3))
    calls = []

    def spy(x, resize, conv):
        calls.append((x.is_contiguous(memory_format=CL), resize.stride))
        out = transposed_conv_then_conv3x3(x, resize, conv)
        assert out.is_contiguous(memory_format=CL)
        return out

    monkeypatch.setattr(modeling_jetvit_heads, "transposed_conv_then_conv3x3", spy)
    with torch.no_grad():
        eager = model(pixel_values).predicted_depth
        assert calls == []
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        composed = model(pixel_values).predicted_depth
    assert calls == [(True, (4, 4)), (True, (2, 2))]
    expected = original_depth(model, pixel_values)
    assert expected.std() > 0.1 * expected.abs().mean()
    assert relative_difference(composed, expected) <= 1e-5 and relative_difference(eager, expected) <= 1e-5


def test_transposed_conv_then_conv3x3_refuses_other_shapes():
    x = torch.randn(1, 4, 3, 3)
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)
    with pytest.raises(ValueError, match="kernel = stride"):
        transposed_conv_then_conv3x3(x, torch.nn.ConvTranspose2d(4, 4, 3, stride=2), conv)
    with pytest.raises(ValueError, match="3x3 convolution with stride 1 and padding 1"):
        transposed_conv_then_conv3x3(x, torch.nn.ConvTranspose2d(4, 4, 2, stride=2), torch.nn.Conv2d(4, 4, 3))
