"""`benchmarks/bench_dpt_neck.py` on the CPU: its variants compute the same depth, each in its intended layout, and
without a GPU it refuses with status 2. No timing here."""

import importlib.util

import pytest
import torch

from helpers import REPO
from jetvit_hf import JetViTConfig
from jetvit_hf.models.jetvit.modeling_jetvit_heads import JetViTDepthHead, JetViTDepthNeck, JetViTFeatureFusionLayer


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_dpt_neck", REPO / "benchmarks" / "bench_dpt_neck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_variants_compute_the_same_depth_in_their_layouts(bench):
    config = JetViTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
                          patch_size=14, out_indices=[1, 2, 3, 4], neck_hidden_sizes=[8, 16, 32, 32],
                          fusion_hidden_size=16, head_hidden_size=8)
    torch.manual_seed(0)
    neck, head = JetViTDepthNeck(config).eval(), JetViTDepthHead(config).eval()
    with torch.no_grad():
        head.conv3.bias.fill_(1.0)  # keep the final ReLU open
    layernorm = torch.nn.LayerNorm(32)
    grid = (5, 7)
    hidden_states = [torch.randn(2, 1 + 35, 32) for _ in range(4)]
    outputs = {}
    with torch.no_grad():
        for name, (channels_last, project_first, kernel_sites, compose_resize) in bench.VARIANTS.items():
            fn = bench.build_variant(neck, head, layernorm, grid, 1, channels_last, project_first, kernel_sites,
                                     compose_resize)
            seen = []  # the feature maps, as the neck's first convolution receives them
            fn.neck.reassemble_stage.layers[0].projection.register_forward_pre_hook(
                lambda module, args: seen.append(args[0]))
            outputs[name] = fn(hidden_states)
            assert seen[0].is_contiguous(memory_format=torch.channels_last) == channels_last, name
            assert seen[0].is_contiguous() != channels_last, name
            memory_format = torch.channels_last if channels_last else torch.contiguous_format
            for part in (fn.neck, fn.head):  # (a 1x1 conv's weight is both)
                assert all(p.is_contiguous(memory_format=memory_format) for p in part.parameters() if p.ndim == 4)
            fusion_class = type(fn.neck.fusion_stage.layers[0])
            assert (fusion_class is not bench.UpsampleThenProjectFusionLayer) == project_first, name
            assert (fusion_class is JetViTFeatureFusionLayer) == ("fusion" in kernel_sites), name
            assert (type(fn.head) is JetViTDepthHead) == ("head" in kernel_sites), name
            reassemble_class = type(fn.neck.reassemble_stage.layers[0])
            assert (reassemble_class is not bench.ModulesReassembleLayer) == compose_resize, name
    assert outputs["before"].shape == (2, 70, 98)
    for name, output in outputs.items():
        assert bench.relative_difference(output, outputs["before"]) <= 1e-5, name


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_without_a_gpu_it_exits_with_status_2(bench, capsys):
    assert bench.main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
