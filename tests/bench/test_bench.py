"""`jetvit bench` on the CPU (smoke mode): presets, layouts, JSON structure, refusal without a GPU, sweeps, OOM
records, the per-layer latency table and benchmarking a converted checkpoint. No number here is a performance claim."""

import json
import shutil
import subprocess
from unittest import mock

import pytest
import torch
import transformers

from jetvit_hf import bench, layouts
from jetvit_hf.bench import timing
from jetvit_hf.bench.models import _model_factories
from jetvit_hf.bench.specs import _config_with
from jetvit_hf.bench.timing import _maybe_compile, _settings
from jetvit_hf.cli import main as cli_main
from jetvit_hf.convert import convert_to_jetvit, jetvit_config_from_source, save_converted, source_config_from_jetvit
from sources import SOURCES

FAST = dict(device="cpu", warmup=1, iters=2, progress=False)



# Published shapes (notes/hf-transformers.md §1-§3), written out independently of bench.PRESETS:
# name -> (source class, hidden, layers, heads, MLP width, gated, patch, prefix tokens, out_indices, params in M)
PUBLISHED = {
    "dinov3-s": ("DINOv3ViTModel", 384, 12, 6, 1536, False, 16, 5, None, 21.6),
    "dinov3-s+": ("DINOv3ViTModel", 384, 12, 6, 1536, True, 16, 5, None, 28.7),
    "dinov3-b": ("DINOv3ViTModel", 768, 12, 12, 3072, False, 16, 5, None, 85.7),
    "dinov3-l": ("DINOv3ViTModel", 1024, 24, 16, 4096, False, 16, 5, None, 303.1),
    "dinov3-h+": ("DINOv3ViTModel", 1280, 32, 20, 5120, True, 16, 5, None, 840.6),
    "dinov3-7b": ("DINOv3ViTModel", 4096, 40, 32, 8192, True, 16, 5, None, 6716.0),
    "dinov2-s": ("Dinov2Model", 384, 12, 6, 1536, False, 14, 1, None, 22.1),
    "dinov2-b": ("Dinov2Model", 768, 12, 12, 3072, False, 14, 1, None, 86.6),
    "dinov2-l": ("Dinov2Model", 1024, 24, 16, 4096, False, 14, 1, None, 304.4),
    "dinov2-g": ("Dinov2Model", 1536, 40, 24, 4096, True, 14, 1, None, 1136.5),
    "depth-anything-v2-s": ("DepthAnythingForDepthEstimation", 384, 12, 6, 1536, False, 14, 1, [3, 6, 9, 12], 24.8),
    "depth-anything-v2-b": ("DepthAnythingForDepthEstimation", 768, 12, 12, 3072, False, 14, 1, [3, 6, 9, 12], 97.5),
    "depth-anything-v2-l": (
        "DepthAnythingForDepthEstimation", 1024, 24, 16, 4096, False, 14, 1, [5, 12, 18, 24], 335.3,
    ),
    "depth-anything-v2-g": (
        "DepthAnythingForDepthEstimation", 1536, 40, 24, 4096, True, 14, 1, [10, 20, 30, 40], 1258.1,
    ),
}
DEPTH_HEADS = {  # fusion, neck
    "depth-anything-v2-s": (64, [48, 96, 192, 384]),
    "depth-anything-v2-b": (128, [96, 192, 384, 768]),
    "depth-anything-v2-l": (256, [256, 512, 1024, 1024]),
    "depth-anything-v2-g": (384, [1536] * 4),
}


def test_every_real_preset_is_listed():
    assert set(PUBLISHED) == {name for name in bench.PRESETS if not name.startswith("tiny")}
    assert bench.get_preset("dinov3-vitl16").name == "dinov3-l"
    assert bench.get_preset("DINOv2-G").name == "dinov2-g"
    with pytest.raises(ValueError, match="Unknown preset"):
        bench.get_preset("vit-huge")


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_converts_to_its_published_shape(name):
    architecture, hidden, layers, heads, mlp, gated, patch, prefix, out_indices, params_m = PUBLISHED[name]
    spec = bench.resolve_model_spec(name)
    assert spec.source_architecture == architecture
    config = spec.jetvit_config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (hidden, layers, heads)
    assert (config.intermediate_size, config.use_gated_mlp, config.patch_size) == (mlp, gated, patch)
    assert config.num_prefix_tokens == prefix
    if out_indices is not None:
        assert config.out_indices == out_indices
        assert (config.fusion_hidden_size, config.neck_hidden_sizes) == DEPTH_HEADS[name]
    if name == "dinov3-7b":
        assert (config.query_bias, config.key_bias, config.value_bias) == (False, False, False)
    # both models on the meta device (nothing allocated): same parameter count, the published one
    with torch.device("meta"):
        source = getattr(transformers, architecture)._from_config(spec.source_config)
        jetvit = spec.jetvit_class._from_config(_config_with(config, attention_types=["full"] * layers))
    source_params = sum(p.numel() for p in source.parameters())
    assert source_params == sum(p.numel() for p in jetvit.parameters())
    assert source_params / 1e6 == pytest.approx(params_m, abs=0.1)


def test_paper_layout():
    types = layouts.paper_2full_layout(24)
    assert [i for i, t in enumerate(types) if t == "full"] == [13, 21]
    assert types[0] == "linear" and types.count("linear") == 11 and types.count("window") == 11
    others = [t for t in types if t != "full"]
    assert others == ["linear", "window"] * 11
    assert layouts.paper_full_positions(12) == [6, 10]
    assert layouts.paper_full_positions(40) == [21, 35]
    for depth in (1, 2, 3, 4, 12, 32):
        layout = layouts.paper_2full_layout(depth)
        assert len(layout) == depth and layout.count("full") == min(2, depth)


def test_resolve_attention_types():
    assert layouts.resolve_attention_types("all-window", 3) == ["window"] * 3
    assert layouts.resolve_attention_types("linear", 2) == ["linear", "linear"]
    assert layouts.resolve_attention_types("linear,window*2,full", 4) == ["linear", "window", "window", "full"]
    assert layouts.resolve_attention_types(None, 24) == layouts.paper_2full_layout(24)
    with pytest.raises(ValueError, match="4 layers"):
        layouts.resolve_attention_types("linear,full", 4)
    with pytest.raises(ValueError, match="unknown attention type"):
        layouts.resolve_attention_types("sparse", 4)
    assert bench.parse_resolution("1024x2048") == (1024, 2048)
    assert bench.parse_resolution("518") == (518, 518)
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        bench.parse_resolution("big")


def _check_measurement(record, batch_size):
    assert record["status"] == "ok" and record["batch_size"] == batch_size
    assert record["iters"] == len(record["times_ms"]) == 2
    assert record["min_ms"] <= record["median_ms"] <= record["max_ms"]
    assert record["images_per_s"] == pytest.approx(batch_size / (record["median_ms"] / 1e3))
    assert record["peak_memory_mib"] is None  # CPU: not measured


@pytest.mark.parametrize("preset", ["tiny", "tiny-depth"])
def test_cli_cpu_benchmark_writes_consistent_json(preset, tmp_path, capsys):
    output = tmp_path / "results.json"
    argv = ["bench", "--preset", preset, "--device", "cpu", "--batch-size", "2", "--warmup", "1", "--iters", "2",
            "--output", str(output), "--no-progress"]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert bench.CPU_SMOKE_NOTE.upper() in printed and "| hf/jetvit (time ratio) |" in printed

    result = json.loads(output.read_text())
    assert result["command"] == "jetvit " + " ".join(argv)
    assert result["note"] == bench.CPU_SMOKE_NOTE and result["device"] == "cpu" and result["gpu"] is None
    assert result["dtype"] == "float32" and result["sdpa_backend"] == "n/a"
    assert result["timing"]["method"] == "time.perf_counter" and result["timing"]["statistic"] == "median"
    assert result["batch_sizes"] == {"latency": 1, "throughput": 2}
    assert set(result["versions"]) >= {"torch", "transformers", "triton"}
    assert result["versions"]["transformers"] == transformers.__version__
    assert result["attention_layout"] == "paper-2full"
    assert result["attention_types"] == layouts.paper_2full_layout(4)
    spec = bench.resolve_model_spec(preset)
    assert result["resolution"] == [spec.jetvit_config.image_size] * 2
    assert result["num_tokens"] == bench.num_tokens(spec.jetvit_config, result["resolution"])
    assert list(result["results"]) == ["hf", "jetvit-full", "jetvit"]
    for entry in result["results"].values():
        assert entry["status"] == "ok" and entry["profile"] == "n/a" and entry["params"] > 0
        _check_measurement(entry["latency"], 1)
        _check_measurement(entry["throughput"], 2)
    assert result["results"]["hf"]["params"] == result["results"]["jetvit-full"]["params"]
    assert result["fuse_qkv"] is True and result["results"]["hf"]["fused_qkv"] is False
    assert result["results"]["jetvit"]["fused_qkv"] is True and result["results"]["jetvit-full"]["fused_qkv"] is True
    assert result["mlp_gelu"] == "exact, PyTorch's GELU after the GEMM"  # the CPU: no fused epilogue
    impl = result["results"]["hf"]["attn_implementation"]
    assert "sdpa" in impl.values()
    hybrid = result["results"]["jetvit"]
    for other in ("hf", "jetvit-full"):
        for kind in ("latency", "throughput"):
            expected = result["results"][other][kind]["median_ms"] / hybrid[kind]["median_ms"]
            assert result["ratios"][f"{other}/jetvit"][kind] == pytest.approx(expected)


def test_hf_eager_baseline_stays_uncompiled(monkeypatch):
    """`hf-eager` is transformers' model exactly as built, also when the run compiles everything else."""
    compiled, options = [], []
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: compiled.append(module) or
                        options.append(kwargs) or ("compiled", module))
    settings = _settings("cpu", None, 1, 1, True, None, None, False)
    module = torch.nn.Linear(2, 2)
    assert _maybe_compile(module, settings, "hf-eager") is module
    assert _maybe_compile(module, settings, "hf") == ("compiled", module) and compiled == [module]
    # every compiled column without Inductor's timed shape padding, the mode's own options kept
    assert options == [{"dynamic": False, "options": {"shape_padding": False}}]
    _maybe_compile(module, _settings("cpu", None, 1, 1, True, "reduce-overhead", None, False), "hf")
    assert options[-1]["options"] == {"triton.cudagraphs": True, "shape_padding": False}
    assert "mode" not in options[-1]
    result = bench.benchmark("tiny", device="cpu", resolution=32, batch_size=1, warmup=1, iters=1, progress=False,
                             baselines=["hf-eager", "hf"], profile=False)
    assert list(result["results"]) == ["hf", "hf-eager", "jetvit"]
    assert "never compiled" in result["results"]["hf-eager"]["description"]
    assert set(result["ratios"]) == {"hf/jetvit", "hf-eager/jetvit"}
    swept = bench.sweep("tiny", device="cpu", resolutions=["32x32"], warmup=1, iters=1, progress=False,
                        baselines=["hf-eager"])
    header = bench.format_sweep(swept).splitlines()[3]
    assert header == "| resolution | tokens | hf-eager (ms) | jetvit (ms) | hf-eager/jetvit |"


def test_cuda_refused_without_gpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli_main(["bench", "--preset", "tiny", "--device", "cuda", "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert "no CUDA GPU is available" in captured.err and "--device cpu" in captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert cli_main(["bench", "--preset", "tiny", "--no-progress"]) == 2  # cuda is the default
    with pytest.raises(bench.DeviceUnavailableError):
        bench.benchmark("tiny", device="cuda")


def test_cli_usage_errors(capsys):
    assert cli_main(["bench", "--device", "cpu"]) == 2
    assert "--preset" in capsys.readouterr().err
    assert cli_main(["bench", "--preset", "tiny", "--device", "cpu", "--attention-types", "linear,full"]) == 2
    assert "4 layers" in capsys.readouterr().err
    assert cli_main(["bench", "--list-presets"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in PUBLISHED) and "paper-2full" in listing


def test_sweep_writes_json_and_png(tmp_path, capsys):
    output = tmp_path / "sweep.json"
    argv = ["bench", "--preset", "tiny", "--device", "cpu", "--sweep", "64x64,96x128", "--warmup", "1", "--iters", "2",
            "--skip-baselines-above", "30", "--output", str(output), "--no-progress"]
    assert cli_main(argv) == 0
    assert "| 96x128 | 53 |" in capsys.readouterr().out
    result = json.loads(output.read_text())
    plot = tmp_path / "sweep.png"
    assert result["plot"] == str(plot) and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p["resolution"] for p in result["points"]] == [[64, 64], [96, 128]]
    assert [p["num_tokens"] for p in result["points"]] == [5 + 16, 5 + 48]
    small, large = result["points"]
    assert list(small["results"]) == ["hf", "jetvit-full", "jetvit"]
    assert all(entry["status"] == "ok" for entry in small["results"].values())
    assert small["ratios"]["hf/jetvit"] == pytest.approx(
        small["results"]["hf"]["median_ms"] / small["results"]["jetvit"]["median_ms"]
    )
    assert large["results"]["jetvit"]["status"] == "ok"
    assert large["results"]["hf"]["status"] == large["results"]["jetvit-full"]["status"] == "skipped"
    assert large["ratios"]["hf/jetvit"] is None


def test_sweep_records_out_of_memory(monkeypatch, tmp_path):
    """A point that runs out of memory is recorded as "oom" and the sweep goes on."""
    real_pixels = timing._random_pixels

    def pixels(config, batch_size, resolution, settings):
        if resolution[0] * resolution[1] > 64 * 64:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")
        return real_pixels(config, batch_size, resolution, settings)

    monkeypatch.setattr(timing, "_random_pixels", pixels)
    result = bench.sweep("tiny", resolutions=["64x64", "128x128"], baselines=["jetvit-full"],
                         plot=tmp_path / "oom.png", **FAST)
    small, big = result["points"]
    assert small["results"]["jetvit"]["status"] == small["results"]["jetvit-full"]["status"] == "ok"
    assert big["results"]["jetvit"]["status"] == "oom" and "out of memory" in big["results"]["jetvit"]["error"]
    assert "hf" not in big["results"] and big["ratios"]["jetvit-full/jetvit"] is None
    assert (tmp_path / "oom.png").is_file()


def test_benchmark_out_of_memory_at_the_throughput_batch_names_a_batch_that_fits(monkeypatch, capsys):
    """The throughput batch runs out of memory, batch 2 fits: the record and the printed table say so."""
    real_pixels = timing._random_pixels
    tried = []

    def pixels(config, batch_size, resolution, settings):
        tried.append(batch_size)
        if batch_size > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")
        return real_pixels(config, batch_size, resolution, settings)

    monkeypatch.setattr(timing, "_random_pixels", pixels)
    status = cli_main(["bench", "--preset", "tiny", "--device", "cpu", "--resolution", "64x64", "--batch-size", "8",
                       "--warmup", "1", "--iters", "2", "--baselines", "jetvit-full", "--no-progress"])
    out = capsys.readouterr().out
    assert status == 0
    assert "jetvit: out of memory at batch 8 on this device; batch 2 fits: rerun with --batch-size 2" in out
    assert "jetvit-full: out of memory at batch 8 on this device; batch 2 fits" in out
    assert tried.count(4) == 2 and tried.count(2) == 2  # halving from 8: 4 (out of memory), then 2 (fits)


def test_out_of_memory_behind_another_error_is_still_recorded_as_such(monkeypatch):
    """Running out of memory while a CUDA graph is captured surfaces as the capture's error, with the out-of-memory
    error as its context (`WholeForwardGraph`): the case is still an "oom" record, and other errors still raise."""
    from jetvit_hf.bench.device import _is_oom

    def capture_fails(batch_size, cause):
        def forward(pixel_values):
            if pixel_values.shape[0] > 1:
                try:
                    raise cause
                except Exception as error:
                    raise RuntimeError("CUDA error: operation failed due to a previous error during capture") from error
            return pixel_values * 2

        settings = _settings("cpu", None, 1, 1, False, None, None, False)
        config = transformers.PretrainedConfig(num_channels=3)
        return timing._measure_model(forward, config, batch_size, (8, 8), settings)

    record = capture_fails(4, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB"))
    assert record["status"] == "oom" and record["fits_batch_size"] == 1
    with pytest.raises(RuntimeError, match="previous error during capture"):
        capture_fails(4, ValueError("a bug, not memory"))
    assert not _is_oom(RuntimeError("CUDA error: an illegal memory access was encountered"))


def test_profiled_forward_is_a_steady_state_call(monkeypatch):
    """The profile runs after the throughput batch; a runner that prepares itself on a new shape (a
    `WholeForwardGraph` recaptures: three warm-up forwards) must do that before the profiler starts."""
    from jetvit_hf.bench import run

    calls = []

    class Recapturing:
        shape = None

        def __call__(self, pixel_values):
            new_shape = pixel_values.shape != self.shape
            self.shape = pixel_values.shape
            calls.append("capture" if new_shape else "replay")

    def profile_forward(fn, settings):
        calls.append("profiler on")
        fn()
        return {"calls": list(calls)}

    monkeypatch.setattr(run, "profile_forward", profile_forward)
    runner = Recapturing()
    runner(torch.zeros(8, 3, 8, 8))  # the throughput batch ran last
    settings = _settings("cpu", None, 1, 1, False, None, None, True)
    profile = run._profile_model(runner, transformers.PretrainedConfig(num_channels=3), (8, 8), settings)
    assert profile["calls"] == ["capture", "capture", "profiler on", "replay"]


def test_layer_table_and_estimate(tmp_path, capsys):
    path = tmp_path / "layers.json"
    argv = ["bench", "--preset", "tiny", "--device", "cpu", "--resolution", "128x128", "--warmup", "2",
            "--iters", "5", "--layer-table", str(path), "--attention-types", "linear,window,full,linear",
            "--no-progress"]
    assert cli_main(argv) == 0
    assert "one window layer" in capsys.readouterr().out
    table = json.loads(path.read_text())
    assert table["note"] == bench.CPU_SMOKE_NOTE and table["gpu"] is None
    assert (table["model"], table["resolution"], table["batch_size"], table["num_layers"]) == ("tiny", [128, 128], 1, 4)
    assert set(table["per_layer_ms"]) == {"full", "window", "linear"}
    assert all(ms > 0 for ms in table["per_layer_ms"].values())
    assert {"torch", "transformers", "triton"} <= set(table["versions"]) and table["dtype"] == "float32"
    remainder = table["whole_model_full_ms"] - 4 * table["per_layer_ms"]["full"]
    assert table["remainder_ms"] == pytest.approx(max(0.0, remainder))

    # the estimate's arithmetic, from the dict and from the file
    types = ["linear", "window", "full", "linear"]
    expected = table["remainder_ms"] + 2 * table["per_layer_ms"]["linear"] + table["per_layer_ms"]["window"] + (
        table["per_layer_ms"]["full"]
    )
    assert bench.estimate_latency(table, types) == pytest.approx(expected)
    assert bench.estimate_latency(path, "linear,window,full,linear") == pytest.approx(expected)
    assert bench.estimate_latency(table, "all-full") == pytest.approx(
        table["remainder_ms"] + 4 * table["per_layer_ms"]["full"]
    )
    with pytest.raises(ValueError, match="4 layers"):
        bench.estimate_latency(table, ["full"] * 3)

    # structure check only (CPU timings are noisy): the estimate is within a loose factor of the measured hybrid
    check = table["check"]
    assert check["attention_types"] == types and check["estimated_ms"] == pytest.approx(expected)
    assert 1 / 4 < check["estimated_ms"] / check["measured_ms"] < 4


def test_benchmark_converted_checkpoint(source_checkpoint, tmp_path):
    source_dir, _ = source_checkpoint("dinov3")
    source_copy = tmp_path / "source"
    shutil.copytree(source_dir, source_copy)
    types = ["linear", "window", "full", "linear"]
    model, info = convert_to_jetvit(source_copy, types, window_size=2, output_loading_info=True)
    converted = tmp_path / "converted"
    save_converted(model, converted, source_copy, info)

    result = bench.benchmark(model=converted, resolution=64, batch_size=1, **FAST)
    assert result["attention_layout"] == "checkpoint" and result["attention_types"] == types
    assert result["model"]["checkpoint"] == str(converted) and result["model"]["window_size"] == 2
    assert result["model"]["source_config_origin"].startswith("source directory")
    assert all(result["results"][name]["status"] == "ok" for name in ("hf", "jetvit-full", "jetvit"))
    assert "from" in result["results"]["jetvit"]["description"]  # the checkpoint's own weights
    assert result["results"]["jetvit"]["throughput"]["median_ms"] == result["results"]["jetvit"]["latency"]["median_ms"]

    shutil.rmtree(source_copy)  # source unreachable: the hf config is rebuilt from the JetViT config
    result = bench.benchmark(model=converted, resolution=64, batch_size=1, attention_types="all-window", **FAST)
    assert result["model"]["source_config_origin"].startswith("rebuilt")
    assert result["results"]["hf"]["status"] == "ok" and result["attention_types"] == ["window"] * 4

    (converted / "jetvit_conversion.json").unlink()
    result = bench.benchmark(model=converted, resolution=64, batch_size=1, fuse_qkv=False, **FAST)
    assert result["fuse_qkv"] is False and result["results"]["jetvit"]["fused_qkv"] is False
    assert result["results"]["hf"]["status"] == "skipped"
    assert any("jetvit_conversion.json" in note for note in result["notes"])
    assert "hf/jetvit" in result["ratios"] and result["ratios"]["hf/jetvit"]["latency"] is None


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_source_config_rebuilt_from_jetvit_config(name):
    """`--model DIR` offline: the source config rebuilt from a JetViT config converts back to the same JetViT config."""
    model_class, make_config, _ = SOURCES[name]
    source = make_config()
    source.architectures = [model_class.__name__]
    config, family, architecture, _ = jetvit_config_from_source(source)
    rebuilt = source_config_from_jetvit(config, family, architecture)
    again, family_again, architecture_again, _ = jetvit_config_from_source(rebuilt)
    assert (family_again, architecture_again) == (family, architecture)
    assert again.to_dict() == config.to_dict()


def test_attention_kernel_names_and_cpu_profile():
    classify = bench.classify_attention_kernel
    assert classify("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x64") == "cudnn"
    assert classify("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4>>") == "flash"
    assert bench.classify_attention_kernel("fmha_cutlassF_bf16_aligned_64x64_rf_sm80(PyTorchMemEffAttention)") == (
        "efficient"
    )
    assert bench.classify_attention_kernel("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64") is None
    assert bench.kernel_category("nvjet_sm90_tst_256x144_64x4_2x1_v_bz_coopA_gelubias_TNT") == "gemm"
    assert bench.kernel_category("triton_per_fused_add_mul_native_layer_norm_view_7").startswith("other")
    # cuDNN's convolution kernels (the DPT neck and head) are fprop kernels, but not attention
    conv = "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64_warpgroupsize1x1x1_cudnn"
    assert classify(conv) is None and bench.kernel_category(conv) == "convolution"
    assert bench.kernel_category("void cutlass__5x_cudnn::Kernel<cutlass_tensorop_bf16_s16816fprop_optimized>") == (
        "convolution")
    assert bench.kernel_category("triton_poi_fused__to_copy_add_convolution_relu_37").startswith("other")
    settings = _settings("cpu", None, 0, 1, False, None, None, True)
    q = torch.randn(1, 2, 8, 4)
    profile = bench.profile_forward(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q), settings)
    assert profile["backends"] == ["cpu-flash"]
    assert profile["sdpa_ops"] == {"aten::_scaled_dot_product_flash_attention_for_cpu": 1}


def test_backbone_flops_matches_published_count():
    """notes/performance.md §4: DINOv2-L at 518 px is 506.8 GMACs (timm 507.15)."""
    spec = bench.resolve_model_spec("dinov2-l")
    flops = bench.backbone_flops(spec.jetvit_config, ["full"] * 24, (518, 518))
    assert flops / 2 / 1e9 == pytest.approx(506.8, rel=2e-3)


def test_config_overrides_reach_every_jetvit_model(tmp_path):
    from jetvit_hf.cli import _parse_overrides

    overrides = _parse_overrides(["window_size=1", "linear_attention_eps=1e-5", "kernel_impl=torch"])
    assert overrides == {"window_size": 1, "linear_attention_eps": 1e-5, "kernel_impl": "torch"}
    spec = bench.resolve_model_spec("tiny", config_overrides=overrides)
    assert spec.jetvit_config.window_size == 1 and spec.jetvit_config.kernel_impl == "torch"
    assert any("kernel_impl" in note for note in spec.notes)
    factories = _model_factories(spec, ["window"] * 4, ["jetvit-full"], _settings("cpu", None, 0, 1, False, None, None,
                                                                                  False))
    models = {name: factory(torch.device("cpu"), torch.float32) for name, (_, factory) in factories.items()}
    assert all(m.config.window_size == 1 and m.config.kernel_impl == "torch" for m in models.values())
    with pytest.raises(ValueError, match="cannot change"):
        bench.resolve_model_spec("tiny", config_overrides={"num_hidden_layers": 2})
    with pytest.raises(ValueError, match="KEY=VALUE"):
        _parse_overrides(["window_size"])


def test_jetvit_models_keep_the_exact_gelu_unless_the_tanh_epilogue_is_asked_for():
    """The bench times the source model's exact GELU (fused into the GEMM where the Gluon kernel runs); cuBLASLt's
    tanh-GELU epilogue is an opt-in approximation."""
    from jetvit_hf.models.jetvit.modeling_jetvit import JetViTMLP

    spec = bench.resolve_model_spec("tiny")
    for tanh in (False, True):
        settings = _settings("cpu", None, 0, 1, False, None, None, False, tanh_gelu_epilogue=tanh)
        factories = _model_factories(spec, ["window"] * 4, ["jetvit-full"], settings)
        for name, (_, factory) in factories.items():
            mlps = [m for m in factory(torch.device("cpu"), torch.float32).modules() if isinstance(m, JetViTMLP)]
            assert mlps and all(mlp.hidden_act == "gelu" for mlp in mlps)
            assert all(mlp.gelu_epilogue == ("tanh" if tanh else "erf") for mlp in mlps), (name, tanh)
    assert settings.tanh_gelu_epilogue and bench.benchmark.__kwdefaults__["tanh_gelu_epilogue"] is False


def test_the_record_says_how_the_mlp_computed_its_activation():
    from jetvit_hf.bench.records import _mlp_gelu
    from jetvit_hf.models.jetvit import kernels_jetvit_mlp

    gelu, gated = bench.resolve_model_spec("tiny"), bench.resolve_model_spec("dinov3-s+")
    assert gelu.jetvit_config.hidden_act == "gelu" and gated.jetvit_config.use_gated_mlp

    def settings(device, dtype=torch.bfloat16, tanh=False):
        return timing.RunSettings(torch.device(device), dtype, 0, 1, tanh_gelu_epilogue=tanh)

    assert _mlp_gelu(gelu, settings("cpu")) == "exact, PyTorch's GELU after the GEMM"
    assert _mlp_gelu(gelu, settings("cuda", tanh=True)) == "tanh approximation, cuBLASLt GEMM epilogue"
    assert _mlp_gelu(gelu, settings("cuda", torch.float32, tanh=True)) == "exact, PyTorch's GELU after the GEMM"
    assert _mlp_gelu(gated, settings("cuda")) == "none (gated silu MLP)"
    if kernels_jetvit_mlp.gluon is None:  # no Gluon: the exact GELU stays a pass after the GEMM on any GPU
        assert _mlp_gelu(gelu, settings("cuda")) == "exact, PyTorch's GELU after the GEMM"


def test_every_jetvit_kernel_has_its_profile_category():
    """Each Triton kernel launched by kernels_jetvit_*.py is counted under JetViT's linear or window attention."""
    import re

    from jetvit_hf.models.jetvit import (kernels_jetvit_linear, kernels_jetvit_linear_backward, kernels_jetvit_window,
                                         kernels_jetvit_window_backward)

    # read, not imported: the kernels exist only where triton does
    modules = (kernels_jetvit_linear, kernels_jetvit_linear_backward, kernels_jetvit_window,
               kernels_jetvit_window_backward)
    source = "".join(open(module.__file__).read() for module in modules)
    defined = set(re.findall(r"@triton\.jit\n    def (\w+)\(", source))
    launched = set(re.findall(r"(\w+_kernel)\[", source))
    assert launched <= defined
    assert launched == {"_state_kernel", "_state_finalize_kernel", "_state_split_kernel", "_output_kernel",
                        "_state_backward_kernel", "_output_backward_kernel", "_window_kernel", "_prefix_merge_kernel",
                        "_window_bwd_dq_kernel", "_prefix_stats_kernel", "_window_bwd_dkdv_kernel",
                        "_prefix_grad_kernel", "_rope_rotate_kernel"}
    for name in launched:
        assert bench.kernel_category(name).startswith("jetvit "), name
    # the MLP's fused GEMM (a Gluon kernel) counts with the GEMMs
    from jetvit_hf.models.jetvit import kernels_jetvit_mlp

    source = open(kernels_jetvit_mlp.__file__).read()
    launched = set(re.findall(r"(\w+_kernel)\[", source))
    assert launched == {"_gemm_bias_gelu_kernel"}
    assert launched <= set(re.findall(r"@gluon\.jit\n    def (\w+)\(", source))
    assert bench.kernel_category("_gemm_bias_gelu_kernel") == "gemm"


def test_the_pipeline_benchmark_reads_the_jobs_own_step_announcements(capsys):
    """`benchmarks/bench_pipeline.py` times the steps from the pipeline's announcements: it must parse what
    `jetvit pipeline` prints, skipped steps included."""
    from benchmarks.bench_pipeline import step_times
    from jetvit_hf.search import post_training

    post_training.restart_clock()
    post_training._announce(1, "distilling the stage-1 supernet")
    post_training._announce(6, "converting the teacher", ": already done in runs/x, skipped")
    steps = step_times(capsys.readouterr().out)
    assert [(s["step"], s["title"]) for s in steps] == [
        (1, "distilling the stage-1 supernet"), (6, "converting the teacher: already done in runs/x, skipped")]
    assert all(s["began_s"] == 0 for s in steps)  # both within the first second of the restarted clock


def test_whole_graph_mode_needs_cuda_and_is_labelled():
    with pytest.raises(ValueError, match="cuda-graph captures CUDA graphs and needs a CUDA device"):
        _settings("cpu", None, 1, 1, True, "cuda-graph", None, False)
    from jetvit_hf.bench.report import _compile_label

    assert _compile_label({"mode": "cuda-graph", "dynamic": False}) == ", torch.compile + one CUDA graph per shape"
    assert _compile_label({"mode": "reduce-overhead", "dynamic": False}) == ", torch.compile(reduce-overhead)"
    assert _compile_label(None) == ", eager"


@pytest.mark.gpu
def test_whole_forward_graph_replays_new_inputs_and_recaptures_new_shapes():
    """The captured forward computes each call's own input (copied into the graph), also for inputs passed through a
    tuple, and a new shape gets its own graph; checked against the eager module in float64."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8)).cuda().double()

    def forward(x, pair):
        return module(x) * pair[0] + pair[1]

    runner = timing.WholeForwardGraph(forward)
    scale, shift = (torch.randn(8, device="cuda", dtype=torch.float64) for _ in range(2))
    with torch.inference_mode():
        for shape in [(4, 16), (4, 16), (9, 16)]:
            x = torch.randn(*shape, device="cuda", dtype=torch.float64)
            other_scale = scale * torch.rand(1, device="cuda", dtype=torch.float64)
            got = runner(x, pair=(other_scale, shift)).clone()
            torch.testing.assert_close(got, forward(x, (other_scale, shift)), rtol=1e-12, atol=1e-12)
            assert runner.key[1][0] == ("tensor", shape, torch.float64, x.device)


def test_gpu_power_and_clocks_reads_the_run_gpus_row_of_nvidia_smi():
    """The power limit and maximum SM clock of the GPU whose UUID torch reports (or of the only one), numbers parsed,
    nvidia-smi's "[N/A]" as None; nothing where nvidia-smi is missing or fails."""
    from jetvit_hf.bench import device as bench_device

    listing = ("GPU-11111111-aaaa, 700.00, 700.00, 1980\n"
               "GPU-22222222-bbbb, 600.00, [N/A], 1785\n")

    def answering(text):
        return lambda *args, **kwargs: subprocess.CompletedProcess(args, 0, stdout=text, stderr="")

    with mock.patch.object(bench_device.subprocess, "run", answering(listing)):
        assert bench_device.gpu_power_and_clocks("22222222-bbbb") == {
            "gpu_power_limit_w": 600.0, "gpu_power_max_limit_w": None, "gpu_max_sm_clock_mhz": 1785.0}
        assert bench_device.gpu_power_and_clocks("33333333-cccc") == {}  # two GPUs, neither this one
        assert bench_device.gpu_power_and_clocks(None) == {}
    with mock.patch.object(bench_device.subprocess, "run", answering(listing.splitlines()[0])):
        assert bench_device.gpu_power_and_clocks(None)["gpu_power_limit_w"] == 700.0  # the only GPU

    def failing(*args, **kwargs):
        raise FileNotFoundError("nvidia-smi")

    with mock.patch.object(bench_device.subprocess, "run", failing):
        assert bench_device.gpu_power_and_clocks("11111111-aaaa") == {}


def test_gpu_state_sampler_summarises_the_run_gpus_nvidia_smi_samples():
    """The clock, power and temperature samples of the GPU whose UUID torch reports, as medians (clock also its
    minimum, temperature its maximum), "[N/A]" skipped; nothing where nvidia-smi is missing or sampled no such GPU."""
    from jetvit_hf.bench import device as bench_device

    samples = ["GPU-11111111-aaaa, 1980, 120.50, 40", "GPU-22222222-bbbb, 1755, 690.00, 60",
               "GPU-11111111-aaaa, 1980, 121.00, 40", "GPU-22222222-bbbb, 1605, [N/A], 62",
               "GPU-22222222-bbbb, 1740, 694.00, 61", "not a sample"]

    class NvidiaSmi:
        def __init__(self, args, **kwargs):
            self.args, self.stdout = args, iter(line + "\n" for line in samples)
            self.terminated = False

        def terminate(self):
            self.terminated = True

        def wait(self, timeout=None):
            return 0

    with mock.patch.object(bench_device.subprocess, "Popen", NvidiaSmi):
        with bench_device.GpuStateSampler("22222222-bbbb", interval_ms=50) as sampler:
            pass
        assert sampler._process.terminated and "-lms" in sampler._process.args
        assert sampler.summary() == {"samples": 3, "sm_clock_mhz_median": 1740.0, "sm_clock_mhz_min": 1605.0,
                                     "power_w_median": 692.0, "temperature_c_max": 62.0}
        with bench_device.GpuStateSampler("33333333-cccc") as sampler:  # two GPUs sampled, neither this one
            pass
        assert sampler.summary() == {}

    def missing(*args, **kwargs):
        raise FileNotFoundError("nvidia-smi")

    with mock.patch.object(bench_device.subprocess, "Popen", missing):
        with bench_device.GpuStateSampler("22222222-bbbb") as sampler:
            pass
        assert sampler.summary() == {}


def test_the_report_gives_each_models_sm_clock_when_recorded():
    from jetvit_hf.bench.report import _gpu_state_text

    state = {"samples": 30, "sm_clock_mhz_median": 1740.0, "sm_clock_mhz_min": 1605.0, "power_w_median": 689.1,
             "temperature_c_max": 61.0}
    entry = {"latency": {"batch_size": 1, "gpu_state": state},
             "throughput": {"batch_size": 8, "gpu_state": {**state, "sm_clock_mhz_median": 1605.0,
                                                           "power_w_median": None}}}
    assert _gpu_state_text(entry) == "; SM clock 1740 MHz at 689 W (bs1), 1605 MHz (bs8)"
    assert _gpu_state_text({"latency": {"batch_size": 1}, "throughput": None}) == ""  # CPU runs, older records


def test_the_report_names_the_gpus_power_limit_and_clock_when_recorded():
    from jetvit_hf.bench.report import _where

    env = {"gpu": "NVIDIA H200", "cpu_threads": 16, "gpu_power_limit_w": 700.0, "gpu_max_sm_clock_mhz": 1980.0}
    assert _where({"environment": env}) == "NVIDIA H200 (700 W, 1980 MHz)"
    assert _where({"environment": {**env, "gpu_power_limit_w": None}}) == "NVIDIA H200 (1980 MHz)"
    assert _where({"environment": {"gpu": "NVIDIA H200", "cpu_threads": 16}}) == "NVIDIA H200"  # records before them
    assert _where({"environment": {"gpu": None, "cpu_threads": 2}}) == "CPU (2 threads)"
