"""Conversion from every supported family: all-full JetViT must equal the transformers source model."""

import json
import re

import pytest
import torch

from jetvit_hf import JetViTConfig
from jetvit_hf.cli import main as cli_main
from jetvit_hf.convert import convert_to_jetvit, save_converted
from sources import SOURCES


def max_relative_difference(source_output, jetvit_output) -> float:
    """Largest |a - b| / max|a| over every tensor the source returns (nested tuples included)."""
    worst = 0.0
    for key, expected in source_output.items():
        actual = jetvit_output[key]
        pairs = zip(expected, actual) if isinstance(expected, (tuple, list)) else [(expected, actual)]
        for a, b in pairs:
            assert a.shape == b.shape, key
            worst = max(worst, ((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item())
    return worst


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_all_full_conversion_equals_source(name, source_checkpoint):
    directory, source = source_checkpoint(name)
    jetvit, info = convert_to_jetvit(directory, output_loading_info=True)
    assert info.new_parameters == []
    native = SOURCES[name][2]
    patch = jetvit.config.patch_size
    generator = torch.Generator().manual_seed(0)
    # native resolution, and a non-square size that is neither a multiple of the window nor of the patch
    for height, width in [(native, native), (native + 3 * patch + 5, native - patch + 3)]:
        pixel_values = torch.randn(2, 3, height, width, generator=generator)
        with torch.no_grad():
            expected = source(pixel_values, output_hidden_states=True)
            actual = jetvit(pixel_values, output_hidden_states=True)
        assert max_relative_difference(expected, actual) <= 1e-4


@pytest.mark.parametrize("name", ["dinov2_registers", "dinov3_backbone", "depth_anything_v2"])
def test_mixed_attention_types_keep_source_shapes(name, source_checkpoint):
    directory, source = source_checkpoint(name)
    num_layers = source.config.backbone_config.num_hidden_layers if "depth" in name else source.config.num_hidden_layers
    types = (["linear", "window", "full"] * num_layers)[:num_layers]
    jetvit, info = convert_to_jetvit(directory, types, window_size=2, output_loading_info=True)
    assert jetvit.config.attention_types == types
    linear_layers = [i for i, t in enumerate(types) if t == "linear"]
    assert {int(n.split("layer.")[1].split(".")[0]) for n in info.new_parameters} == set(linear_layers)
    pixel_values = torch.randn(2, 3, 75, 61)
    with torch.no_grad():
        expected, actual = source(pixel_values), jetvit(pixel_values)
    for key, value in expected.items():
        values = value if isinstance(value, tuple) else (value,)
        for a, b in zip(values, actual[key] if isinstance(value, tuple) else (actual[key],)):
            assert a.shape == b.shape and torch.isfinite(b).all()
        # a hybrid is a different network: outputs move away from the source
        assert not torch.allclose(values[0], actual[key][0] if isinstance(value, tuple) else actual[key])


def test_every_inherited_attention_type_starts_from_the_source_projections(source_checkpoint):
    directory, source = source_checkpoint("dinov3")
    jetvit = convert_to_jetvit(directory, ["linear", "window", "full", "linear"])
    for index, layer in enumerate(jetvit.encoder.layer):
        for projection in ("q_proj", "k_proj", "v_proj", "o_proj"):
            expected = getattr(source.model.layer[index].attention, projection).weight
            assert torch.equal(getattr(layer.attention, projection).weight, expected)


def test_saved_directory_is_a_complete_hf_model(source_checkpoint, tmp_path):
    directory, _ = source_checkpoint("depth_anything_v1")
    model, info = convert_to_jetvit(directory, ["linear"] * 6, output_loading_info=True)
    output = save_converted(model, tmp_path / "out", directory, info)
    files = {p.name for p in output.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "configuration_jetvit.py",
            "modeling_jetvit.py", "jetvit_conversion.json"} <= files
    config = json.loads((output / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_jetvit.JetViTConfig",
        "AutoModel": "modeling_jetvit.JetViTModel",
        "AutoBackbone": "modeling_jetvit.JetViTBackbone",
        "AutoModelForDepthEstimation": "modeling_jetvit.JetViTForDepthEstimation",
    }
    processor = json.loads((output / "preprocessor_config.json").read_text())
    assert processor["image_processor_type"].startswith("DPTImageProcessor")
    assert processor["ensure_multiple_of"] == 14 and processor["keep_aspect_ratio"] is True
    report = json.loads((output / "jetvit_conversion.json").read_text())
    assert report["new_parameters"] == info.new_parameters and len(info.new_parameters) == 24
    # no stray staging directories are left beside the output
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_backbone_conversion_keeps_the_source_processor(source_checkpoint, tmp_path):
    from transformers import BitImageProcessorPil

    directory, _ = source_checkpoint("dinov2_backbone")
    BitImageProcessorPil(crop_size={"height": 98, "width": 98}).save_pretrained(directory)
    model, info = convert_to_jetvit(directory, output_loading_info=True)
    output = save_converted(model, tmp_path / "out", directory, info)
    processor = json.loads((output / "preprocessor_config.json").read_text())
    assert processor["crop_size"] == {"height": 98, "width": 98}
    assert json.loads((output / "config.json").read_text())["auto_map"]["AutoBackbone"] == "modeling_jetvit.JetViTBackbone"


def test_cli_convert(source_checkpoint, tmp_path, capsys):
    directory, _ = source_checkpoint("dinov3")
    output = tmp_path / "jet"
    code = cli_main(["convert", "--source", str(directory), "--output", str(output),
                     "--attention-types", "linear,window*2,full", "--window-size", "3", "--dtype", "bfloat16"])
    assert code == 0
    config = JetViTConfig.from_pretrained(output)
    assert config.attention_types == ["linear", "window", "window", "full"]
    assert config.window_size == 3 and str(config.dtype).endswith("bfloat16")
    assert "layers [0]" in capsys.readouterr().out
    # an existing output is refused unless --overwrite
    assert cli_main(["convert", "--source", str(directory), "--output", str(output)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli_main(["convert", "--source", str(directory), "--output", str(output), "--overwrite",
                     "--attention-types", "linear"]) == 0
    assert JetViTConfig.from_pretrained(output).attention_types == ["linear"] * 4


def test_unsupported_architecture_names_what_was_found(tmp_path):
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)).save_pretrained(tmp_path)
    with pytest.raises(ValueError) as error:
        convert_to_jetvit(tmp_path)
    assert "'vit'" in str(error.value) and "dinov3_vit" in str(error.value)


def test_unsupported_head_class_is_refused(tmp_path):
    from transformers import Dinov2ForImageClassification

    from sources import dinov2_config

    Dinov2ForImageClassification(dinov2_config()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="Dinov2ForImageClassification.*Supported architectures"):
        convert_to_jetvit(tmp_path)


def test_shape_mismatch_is_a_clear_error(source_checkpoint, tmp_path):
    directory, source = source_checkpoint("dinov2")
    config = json.loads((directory / "config.json").read_text())
    config["mlp_ratio"] = 2  # the weights were saved with ratio 4
    for item in directory.iterdir():
        (tmp_path / item.name).write_bytes(item.read_bytes())
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"Shape mismatch for 'encoder.layer.0.mlp.up_proj.(weight|bias)': the source has"):
        convert_to_jetvit(tmp_path)


def test_bad_attention_types_and_overrides(source_checkpoint):
    directory, _ = source_checkpoint("dinov2")
    with pytest.raises(ValueError, match="attention_types"):
        convert_to_jetvit(directory, ["linear", "full"])
    with pytest.raises(ValueError, match="unknown type"):
        convert_to_jetvit(directory, ["linear", "full", "window", "sparse"])
    with pytest.raises(ValueError, match="Unknown JetViTConfig override"):
        convert_to_jetvit(directory, window_sise=4)


def test_missing_source_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="neither a local directory nor a Hub repo"):
        convert_to_jetvit("org/does-not-exist")
    with pytest.raises(ValueError, match="no config.json"):
        convert_to_jetvit(tmp_path)


def test_atomic_writes_leave_ordinary_permissions(tmp_path):
    import os
    import stat

    from jetvit_hf.io import atomic_directory, atomic_write_json

    umask = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "model") as staging:
            atomic_write_json(staging / "config.json", {"a": 1})
        assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o755
        assert stat.S_IMODE((tmp_path / "model" / "config.json").stat().st_mode) == 0o644
        with pytest.raises(FileExistsError, match="overwrite"):
            with atomic_directory(tmp_path / "model"):
                pass
        with pytest.raises(RuntimeError):  # a failure inside leaves the old directory as it was
            with atomic_directory(tmp_path / "model", overwrite=True) as staging:
                (staging / "half-written").write_text("x")
                raise RuntimeError("crash")
        assert [p.name for p in (tmp_path / "model").iterdir()] == ["config.json"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    finally:
        os.umask(umask)


def test_mlp_only_inheritance_keeps_all_but_the_attention_projections(source_checkpoint, tmp_path):
    """The paper's ablation: q/k/v/o start afresh (the model's own init); every other weight is the source's."""
    directory, _ = source_checkpoint("depth_anything_v2")
    types = ["linear", "window", "full"] * 2
    inherited = convert_to_jetvit(directory, types)
    torch.manual_seed(0)
    model, info = convert_to_jetvit(directory, types, inherit="mlp_only", output_loading_info=True)
    projection = re.compile(r"\.attention\.[qkvo]_proj\.")
    expected_state, state = inherited.state_dict(), model.state_dict()
    for name, tensor in state.items():
        if projection.search(name):
            if name.endswith("weight"):
                assert not torch.equal(tensor, expected_state[name]), name
                assert 0 < tensor.std() < 2 * model.config.initializer_range, name  # trunc_normal(std=0.02)
            else:
                assert not tensor.any(), name  # biases start at zero
        elif ".dynamic_conv." not in name:  # embeddings, norms, layer scales, MLPs, neck and head: bit-equal
            assert torch.equal(tensor, expected_state[name]), name
    assert info.inherit == "mlp_only"
    assert info.new_parameters == sorted(n for n in state if projection.search(n) or ".dynamic_conv." in n)
    assert info.inherited_tensors == len(state) - len(info.new_parameters)
    output = save_converted(model, tmp_path / "out", directory, info)
    report = json.loads((output / "jetvit_conversion.json").read_text())
    assert report["inherit"] == "mlp_only" and report["new_parameters"] == info.new_parameters


@pytest.mark.parametrize("conv, new", [("none", []), ("static", ["static_conv.weight"])])
def test_fresh_conversion_with_each_linear_attention_conv_is_the_same_linear_attention(conv, new, source_checkpoint):
    directory, _ = source_checkpoint("dinov3")
    full = convert_to_jetvit(directory, "linear", linear_attention_conv="squeeze_dynamic")
    model, info = convert_to_jetvit(directory, "linear", linear_attention_conv=conv, output_loading_info=True)
    assert info.inherit == "all"
    assert info.new_parameters == [f"encoder.layer.{i}.attention.{name}" for i in range(4) for name in new]
    pixel_values = torch.randn(2, 3, 64, 48)
    with torch.no_grad():  # a zero conv (static, fresh squeeze dynamic) or none: the same linear attention
        torch.testing.assert_close(model(pixel_values).last_hidden_state, full(pixel_values).last_hidden_state)


def test_bad_inherit_and_conv_settings_name_the_field(source_checkpoint):
    directory, _ = source_checkpoint("dinov2")
    with pytest.raises(ValueError, match=r"`inherit` must be one of \['all', 'mlp_only'\], got 'attention'"):
        convert_to_jetvit(directory, inherit="attention")
    with pytest.raises(ValueError, match="`linear_attention_conv` must be one of"):
        convert_to_jetvit(directory, linear_attention_conv="dynamic")
    with pytest.raises(ValueError, match="`dynamic_conv_reduction`=8 only applies .* 'static'"):
        convert_to_jetvit(directory, "linear", linear_attention_conv="static", dynamic_conv_reduction=8)


def test_cli_convert_inherit_and_linear_attention_conv(source_checkpoint, tmp_path):
    directory, _ = source_checkpoint("dinov3")
    output = tmp_path / "jet"
    assert cli_main(["convert", "--source", str(directory), "--output", str(output), "--attention-types", "linear",
                     "--linear-attention-conv", "static", "--inherit", "mlp_only"]) == 0
    assert JetViTConfig.from_pretrained(output).linear_attention_conv == "static"
    assert json.loads((output / "jetvit_conversion.json").read_text())["inherit"] == "mlp_only"
