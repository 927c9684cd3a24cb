"""The three attention types against float64 references written independently of the implementation."""

import pytest
import torch
import torch.nn.functional as F

from jetvit_hf import JetViTConfig, JetViTModel
from jetvit_hf.models.jetvit.modeling_jetvit import (
    JetViTFullAttention,
    JetViTLinearAttention,
    JetViTRopePositionEmbedding,
    JetViTWindowAttention,
)
from jetvit_hf.models.jetvit.ops_jetvit import linear_attention_output, linear_attention_state
from helpers import relative_error

WIDTH, HEADS = 32, 4


def make_config(**overrides) -> JetViTConfig:
    kwargs = dict(
        hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=HEADS, intermediate_size=64, patch_size=4,
        image_size=16, num_register_tokens=2, window_size=3, position_embedding_type="rope",
    )
    kwargs.update(overrides)
    return JetViTConfig(**kwargs)


def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return module.eval()


def rope(config, grid, dtype=torch.float64):
    return JetViTRopePositionEmbedding(config).eval()(grid, dtype)


def reference_qkv(module, x, position_embeddings):
    """q, k, v as [batch, heads, tokens, head_dim] in float64, RoPE on patch tokens, written out long-hand."""
    batch, tokens, _ = x.shape

    def heads(linear):
        y = x @ linear.weight.double().T
        if linear.bias is not None:
            y = y + linear.bias.double()
        return y.view(batch, tokens, HEADS, -1).transpose(1, 2)

    q, k, v = heads(module.q_proj), heads(module.k_proj), heads(module.v_proj)
    if position_embeddings is not None:
        cos, sin = (t.double() for t in position_embeddings)
        prefix = tokens - cos.shape[0]
        for t in (q, k):
            patches = t[:, :, prefix:].clone()
            half = patches.shape[-1] // 2
            rotated = torch.cat((-patches[..., half:], patches[..., :half]), dim=-1)
            t[:, :, prefix:] = patches * cos + rotated * sin
    return q, k, v


def project_out(module, attn):  # attn: [batch, heads, tokens, head_dim]
    batch, _, tokens, _ = attn.shape
    out = attn.transpose(1, 2).reshape(batch, tokens, -1) @ module.o_proj.weight.double().T
    return out + module.o_proj.bias.double()


def window_mask(grid, window, num_prefix):
    """[tokens, tokens] boolean: patch queries see their window's patches and the prefix; prefix queries see all."""
    height, width = grid
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    same_window = (rows[:, None] // window == rows[None, :] // window) & (cols[:, None] // window == cols[None, :] // window)
    tokens = num_prefix + height * width
    mask = torch.ones(tokens, tokens, dtype=torch.bool)
    mask[num_prefix:, num_prefix:] = same_window
    return mask


@pytest.mark.parametrize("grid", [(6, 6), (5, 7), (2, 2), (7, 4)])
@pytest.mark.parametrize("num_registers", [0, 2])
def test_window_attention_matches_masked_softmax_reference(grid, num_registers):
    config = make_config(num_register_tokens=num_registers)
    module = randomize_(JetViTWindowAttention(config), seed=1)
    num_prefix = 1 + num_registers
    x = torch.randn(2, num_prefix + grid[0] * grid[1], WIDTH)
    position_embeddings = rope(config, grid, torch.float32)

    with torch.no_grad():
        out, weights = module(x, position_embeddings=position_embeddings, grid_size=grid)

    q, k, v = reference_qkv(module, x.double(), position_embeddings)
    scores = q @ k.transpose(-1, -2) / (WIDTH // HEADS) ** 0.5
    scores = scores.masked_fill(~window_mask(grid, config.window_size, num_prefix), float("-inf"))
    expected = project_out(module, scores.softmax(-1) @ v)
    assert weights is None
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_window_covering_the_whole_grid_equals_full_attention():
    config = make_config(window_size=8)
    window = randomize_(JetViTWindowAttention(config), seed=2)
    full = JetViTFullAttention(config).eval()
    full.load_state_dict(window.state_dict())
    grid = (5, 6)
    x = torch.randn(1, 3 + 30, WIDTH)
    position_embeddings = rope(config, grid, torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(
            window(x, position_embeddings=position_embeddings, grid_size=grid)[0],
            full(x, position_embeddings=position_embeddings, grid_size=grid)[0],
            rtol=1e-5, atol=1e-5,
        )


def reference_linear_attention(q, k, v, eps):
    """Explicit N x N ReLU-kernel attention: out_i = sum_j a_ij v_j / (sum_j a_ij + N eps), a_ij = relu(q_i).relu(k_j)."""
    scores = F.relu(q) @ F.relu(k).transpose(-1, -2)
    return (scores @ v) / (scores.sum(-1, keepdim=True) + k.shape[-2] * eps)


def reference_depthwise_conv(image, kernels):
    """Shift-and-add depthwise convolution, `image` [C, H, W], `kernels` [C, k, k], zero padding k // 2."""
    channels, height, width = image.shape
    size = kernels.shape[-1]
    padded = F.pad(image, (size // 2,) * 4)
    out = torch.zeros_like(image)
    for dy in range(size):
        for dx in range(size):
            out += kernels[:, dy, dx, None, None] * padded[:, dy : dy + height, dx : dx + width]
    return out


@pytest.mark.parametrize("grid", [(4, 4), (3, 5)])
def test_linear_attention_block_matches_reference(grid):
    config = make_config(num_register_tokens=2, dynamic_conv_kernel_size=3)
    module = randomize_(JetViTLinearAttention(config), seed=3)  # the kernel generator is random, not zero, here
    num_prefix, tokens = 3, 3 + grid[0] * grid[1]
    x = torch.randn(2, tokens, WIDTH)
    position_embeddings = rope(config, grid, torch.float32)
    with torch.no_grad():
        out, _ = module(x, position_embeddings=position_embeddings, grid_size=grid)

    q, k, v = reference_qkv(module, x.double(), position_embeddings)
    attn = reference_linear_attention(q, k, v, config.linear_attention_eps)
    attn = attn.transpose(1, 2).reshape(2, tokens, WIDTH)
    values = v.transpose(1, 2).reshape(2, tokens, WIDTH)[:, num_prefix:]
    conv = module.dynamic_conv
    for b in range(2):
        squeezed = values[b].mean(0)
        hidden = F.silu(squeezed @ conv.fc1.weight.double().T + conv.fc1.bias.double())
        kernels = (hidden @ conv.fc2.weight.double().T + conv.fc2.bias.double()).view(WIDTH, 3, 3)
        image = values[b].T.reshape(WIDTH, *grid)
        attn[b, num_prefix:] += reference_depthwise_conv(image, kernels).reshape(WIDTH, -1).T
    expected = attn @ module.o_proj.weight.double().T + module.o_proj.bias.double()
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_fresh_linear_block_is_plain_relu_linear_attention_with_inherited_projections():
    """The kernel generator starts at zero, so the convolution adds nothing until it is trained."""
    config = make_config(attention_types=["linear", "linear"])
    model = JetViTModel(config).eval()
    attention = model.encoder.layer[0].attention
    assert attention.dynamic_conv.fc2.weight.abs().sum() == 0 and attention.dynamic_conv.fc2.bias.abs().sum() == 0
    grid = (3, 4)
    x = torch.randn(1, 3 + 12, WIDTH)
    position_embeddings = rope(config, grid, torch.float32)
    with torch.no_grad():
        out, _ = attention(x, position_embeddings=position_embeddings, grid_size=grid)
    q, k, v = reference_qkv(attention, x.double(), position_embeddings)
    expected = project_out(attention, reference_linear_attention(q, k, v, config.linear_attention_eps))
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_linear_attention_stays_finite_and_accurate_with_large_activations(dtype):
    generator = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 4096, 2, 16, generator=generator) * 300 for _ in range(3))  # [B, N, H, d]
    state, key_sum, _ = linear_attention_state(k.to(dtype), v.to(dtype), 1)
    out = linear_attention_output(q.to(dtype), v.to(dtype), state, key_sum, None, 1, (64, 64), 1e-6)
    expected = reference_linear_attention(*(x.double().transpose(1, 2) for x in (q, k, v)), eps=1e-6)
    expected = expected.transpose(1, 2).reshape(1, 4096, 32)
    assert torch.isfinite(out).all()
    error = relative_error(out, expected)
    assert error < 2e-2, error


@pytest.mark.parametrize("attention_type", ["full", "window", "linear"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_whole_model_runs_in_half_precision(attention_type, dtype):
    config = make_config(attention_types=[attention_type] * 2)
    model = randomize_(JetViTModel(config), seed=5)
    reference = model(torch.randn(2, 3, 20, 28, generator=torch.Generator().manual_seed(0)) * 50).last_hidden_state
    half = model.to(dtype)
    with torch.no_grad():
        out = half(torch.randn(2, 3, 20, 28, generator=torch.Generator().manual_seed(0)).to(dtype) * 50)
    assert out.last_hidden_state.dtype == dtype
    assert torch.isfinite(out.last_hidden_state).all()
    error = relative_error(out.last_hidden_state, reference)
    assert error < 5e-2, error


def test_full_attention_returns_attention_maps_with_eager():
    config = make_config()
    config._attn_implementation = "eager"
    model = JetViTModel(config).eval()
    out = model(torch.randn(1, 3, 16, 16), output_attentions=True)
    assert len(out.attentions) == 2
    assert out.attentions[0].shape == (1, HEADS, 3 + 16, 3 + 16)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(1, HEADS, 19))


def test_fused_qkv_projections_give_the_same_outputs():
    config = make_config(attention_types=["linear", "window"], key_bias=False)
    model = randomize_(JetViTModel(config), seed=6)
    pixel_values = torch.randn(2, 3, 20, 28)
    with torch.no_grad():
        expected = model(pixel_values).last_hidden_state
        model.fuse_qkv_projections()
        assert model.encoder.layer[0].attention.qkv_weight.shape == (3 * WIDTH, WIDTH)
        fused = model(pixel_values).last_hidden_state
    assert "encoder.layer.0.attention.qkv_weight" not in model.state_dict()
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
    model.unfuse_qkv_projections()
    assert model.encoder.layer[0].attention.qkv_weight is None


def test_hybrid_training_step_compiles_to_the_eager_gradients():
    """torch.compile traces the fused ops and their registered backwards into one forward and one backward graph
    (AOTAutograd; Inductor on top is exercised on the GPU by benchmarks/bench_training.py --compile): a training step
    of a hybrid model gives eager's loss and gradients."""
    config = make_config(num_hidden_layers=3, attention_types=["linear", "window", "full"])
    model = randomize_(JetViTModel(config), seed=3).double().train()
    pixels = torch.randn(2, 3, 16, 16, dtype=torch.float64)

    def step(forward):
        model.zero_grad(set_to_none=True)
        loss = forward(pixels).last_hidden_state.square().mean()
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    loss, grads = step(model)
    compiled_loss, compiled_grads = step(torch.compile(model, fullgraph=True, backend="aot_eager"))
    torch.testing.assert_close(compiled_loss, loss)
    assert compiled_grads.keys() == grads.keys()
    assert any("dynamic_conv" in name for name in grads) and any("layer.1.attention" in name for name in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, msg=name)


def test_rope_tables_are_one_op_that_compile_keeps_and_match_float64():
    """The tables are DINOv3's patch-centre angles' cos and sin (float64 long-hand), and `torch.compile` sees them as
    one `jetvit::rope_tables` op, not cos/sin it could inline into every full layer's RoPE kernel."""
    config = make_config()
    grid = (3, 5)
    centres = [((i + 0.5) / grid[0] * 2 - 1, (j + 0.5) / grid[1] * 2 - 1)
               for i in range(grid[0]) for j in range(grid[1])]
    inv_freq = 1 / config.rope_theta ** (torch.arange(config.head_dim // 4, dtype=torch.float64) * 4 / config.head_dim)
    angles = 2 * torch.pi * torch.tensor(centres, dtype=torch.float64)[:, :, None] * inv_freq
    angles = angles.flatten(1).repeat(1, 2)
    cos, sin = JetViTRopePositionEmbedding(config).eval()(grid, torch.float32)
    torch.testing.assert_close(cos, angles.cos().float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(sin, angles.sin().float(), atol=1e-6, rtol=0)
    torch.library.opcheck(torch.ops.jetvit.rope_tables.default, (angles.float(), torch.bfloat16))

    targets = []

    def recording_backend(graph_module, example_inputs):
        targets.extend(node.target for node in graph_module.graph.nodes if node.op == "call_function")
        return graph_module.forward

    module = JetViTRopePositionEmbedding(config).eval()
    torch.compile(lambda: module(grid, torch.bfloat16), fullgraph=True, backend=recording_backend)()
    assert torch.ops.jetvit.rope_tables in targets
    assert not {torch.cos, torch.sin} & set(targets)
