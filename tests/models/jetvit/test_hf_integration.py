"""Hugging Face integration: Auto classes, remote code, the depth pipeline, the Hub (offline), save/load round trips."""

import json
from pathlib import Path
from unittest import mock

import pytest
import torch
from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoModel,
    AutoModelForDepthEstimation,
    AutoModelForSemanticSegmentation,
    pipeline,
)

from jetvit_hf import (
    JetViTBackbone,
    JetViTConfig,
    JetViTForDepthEstimation,
    JetViTForSemanticSegmentation,
    JetViTModel,
)
from jetvit_hf.convert import convert_to_jetvit, save_converted
from helpers import BLOCK_PACKAGE, FIXTURES, run_python

HYBRID = ["linear", "window", "full", "linear", "window", "full"]


@pytest.fixture(scope="module")
def converted_depth(source_checkpoint, tmp_path_factory):
    """A hybrid JetViT depth model converted from Depth Anything V2, saved as an HF directory."""
    directory, _ = source_checkpoint("depth_anything_v2")
    model, info = convert_to_jetvit(directory, HYBRID, window_size=2, output_loading_info=True)
    torch.manual_seed(0)
    with torch.no_grad():  # train-like state: a non-zero kernel generator, so its weights must survive the trip
        for layer in model.jetvit.encoder.layer:
            if layer.attention_type == "linear":
                layer.attention.dynamic_conv.fc2.weight.normal_(0, 0.05)
    output = save_converted(model, tmp_path_factory.mktemp("converted") / "jetvit-depth", directory, info)
    return output, model


def test_auto_classes_are_registered_on_import():
    config = JetViTConfig(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
                          out_indices=[1, 2, 3, 4], neck_hidden_sizes=[4, 8, 16, 16], fusion_hidden_size=8, num_labels=3)
    assert isinstance(AutoConfig.for_model("jetvit"), JetViTConfig)
    assert type(AutoModel.from_config(config)) is JetViTModel
    assert type(AutoBackbone.from_config(config)) is JetViTBackbone
    assert type(AutoModelForDepthEstimation.from_config(config)) is JetViTForDepthEstimation
    assert type(AutoModelForSemanticSegmentation.from_config(config)) is JetViTForSemanticSegmentation


def test_remote_code_loads_without_the_package(converted_depth, tmp_path):
    directory, model = converted_depth
    pixel_values = torch.randn(1, 3, 70, 98)
    torch.save(pixel_values, tmp_path / "pixels.pt")
    code = BLOCK_PACKAGE + f"""
import torch
from transformers import AutoConfig, AutoModel, AutoModelForDepthEstimation, pipeline
from transformers.dynamic_module_utils import get_class_from_dynamic_module
from PIL import Image
directory = {str(directory)!r}
pixels = torch.load({str(tmp_path / "pixels.pt")!r})
depth_model = AutoModelForDepthEstimation.from_pretrained(directory, trust_remote_code=True).eval()
assert type(depth_model).__module__.startswith("transformers_modules."), type(depth_model).__module__
base = AutoModel.from_pretrained(directory, trust_remote_code=True).eval()
# AutoBackbone.from_pretrained asks the Hub whether the path is a repo (transformers 5.x) and so cannot run offline;
# the auto_map entry it would follow is resolved the same way here:
auto_map = AutoConfig.from_pretrained(directory, trust_remote_code=True).auto_map
backbone = get_class_from_dynamic_module(auto_map["AutoBackbone"], directory).from_pretrained(directory).eval()
with torch.no_grad():
    torch.save({{
        "depth": depth_model(pixels).predicted_depth,
        "base": base(pixels).last_hidden_state,
        "maps": backbone(pixels).feature_maps,
    }}, {str(tmp_path / "out.pt")!r})
estimator = pipeline("depth-estimation", model=directory, trust_remote_code=True)
image = Image.open({str(FIXTURES / "coffee.jpg")!r})
result = estimator(image)
print(type(estimator.model).__module__, result["depth"].size, tuple(result["predicted_depth"].shape))
"""
    stdout = run_python(code, env={"HF_MODULES_CACHE": str(tmp_path / "modules")}, cwd=tmp_path)
    module, size, depth_shape = stdout.split(" ", 1)[0], *stdout.strip().split(" ", 1)[1].rsplit(" (", 1)
    assert module.startswith("transformers_modules.")
    assert size == "(600, 400)" and depth_shape == "400, 600)"

    outputs = torch.load(tmp_path / "out.pt")
    reloaded = type(model).from_pretrained(directory).eval()
    with torch.no_grad():
        # the remote code computes exactly what the installed package computes from the same files ...
        depth = reloaded(pixel_values).predicted_depth
        torch.testing.assert_close(outputs["depth"], depth, rtol=0, atol=0)
        base = JetViTModel.from_pretrained(directory)(pixel_values).last_hidden_state
        torch.testing.assert_close(outputs["base"], base, rtol=0, atol=0)
        maps = reloaded.jetvit(pixel_values).feature_maps
        # ... and what the converted model in memory computes, to fp32 rounding: transformers 5.24 loads weights at
        # offsets that are not 64-byte aligned, which changes the summation order of some CPU kernels
        torch.testing.assert_close(outputs["depth"], model(pixel_values).predicted_depth)
    for actual, expected in zip(outputs["maps"], maps, strict=True):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_depth_pipeline_on_a_real_photo(converted_depth, coffee_image):
    directory, _ = converted_depth
    estimator = pipeline("depth-estimation", model=str(directory), trust_remote_code=True)
    assert type(estimator.model) is JetViTForDepthEstimation  # the installed package wins over the repo code
    result = estimator(coffee_image)
    assert result["depth"].size == coffee_image.size
    assert result["predicted_depth"].shape == (coffee_image.height, coffee_image.width)
    depth = result["predicted_depth"]
    assert torch.isfinite(depth).all() and depth.std() > 0


def test_depth_pipeline_on_a_bf16_checkpoint(depth_source, coffee_image, tmp_path):
    """A checkpoint converted with `--dtype bfloat16` runs in bf16 under `pipeline` (`dtype="auto"`), whose
    post-processing converts `predicted_depth` to numpy, which has no bfloat16."""
    directory, _ = depth_source  # its disparity varies by tens of percent across the photo, bf16's error by ~1%
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        model, info = convert_to_jetvit(directory, HYBRID, window_size=2, dtype=dtype, output_loading_info=True)
        output = save_converted(model, tmp_path / str(dtype), directory, info)
        estimator = pipeline("depth-estimation", model=str(output), trust_remote_code=True)
        assert estimator.model.dtype == dtype
        results[dtype] = estimator(coffee_image)
    result, reference = results[torch.bfloat16], results[torch.float32]
    assert result["depth"].size == coffee_image.size
    depth = result["predicted_depth"]
    assert depth.dtype == torch.float32 and depth.shape == (coffee_image.height, coffee_image.width)
    expected = reference["predicted_depth"]
    torch.testing.assert_close(depth, expected, rtol=0, atol=0.03 * expected.abs().max().item())


def _snapshot_cache(cache: Path, repo_id: str, files_from: Path) -> None:
    """Lay out `files_from` as the `main` snapshot of `repo_id` in a huggingface_hub cache."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for item in files_from.iterdir():
        (snapshot / item.name).write_bytes(item.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_repo_id_loading_and_conversion_from_an_offline_hub_cache(converted_depth, source_checkpoint, tmp_path):
    directory, model = converted_depth
    source_directory, _ = source_checkpoint("dinov3")
    cache = tmp_path / "hub"
    _snapshot_cache(cache, "org/jetvit-tiny-depth", directory)
    _snapshot_cache(cache, "facebook/dinov3-tiny", source_directory)
    pixel_values = torch.randn(1, 3, 56, 84)
    torch.save(pixel_values, tmp_path / "pixels.pt")
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_MODULES_CACHE": str(tmp_path / "modules")}
    code = BLOCK_PACKAGE + f"""
import torch
from transformers import AutoModelForDepthEstimation, pipeline
from PIL import Image
model = AutoModelForDepthEstimation.from_pretrained("org/jetvit-tiny-depth", trust_remote_code=True).eval()
with torch.no_grad():
    torch.save(model(torch.load({str(tmp_path / "pixels.pt")!r})).predicted_depth, {str(tmp_path / "depth.pt")!r})
estimator = pipeline("depth-estimation", model="org/jetvit-tiny-depth", trust_remote_code=True)
print(estimator(Image.new("RGB", (90, 60), "gray"))["depth"].size)
"""
    assert run_python(code, env=env, cwd=tmp_path).strip() == "(90, 60)"
    with torch.no_grad():  # bitwise against the package loading the same files (see the test above)
        expected = type(model).from_pretrained(directory).eval()(pixel_values).predicted_depth
        torch.testing.assert_close(torch.load(tmp_path / "depth.pt"), expected, rtol=0, atol=0)

    # the converter resolves Hub ids through the same cache
    code = """
import torch
from jetvit_hf.convert import convert_to_jetvit
from transformers import DINOv3ViTModel
jetvit = convert_to_jetvit("facebook/dinov3-tiny")
source = DINOv3ViTModel.from_pretrained("facebook/dinov3-tiny").eval()
x = torch.randn(1, 3, 64, 48)
with torch.no_grad():
    expected = source(x).last_hidden_state
    print(((jetvit(x).last_hidden_state - expected).abs().max() / expected.abs().max()).item())
"""
    assert float(run_python(code, env=env, cwd=tmp_path)) <= 1e-4


def test_push_to_hub_against_a_local_stand_in(converted_depth, tmp_path):
    from huggingface_hub import CommitInfo, HfApi, ModelCard, RepoUrl
    from huggingface_hub.errors import EntryNotFoundError

    directory, _ = converted_depth
    model = JetViTForDepthEstimation.from_pretrained(directory)
    remote = tmp_path / "remote"
    remote.mkdir()

    def create_commit(self, repo_id, operations, **kwargs):
        for operation in operations:
            target = remote / operation.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            source = operation.path_or_fileobj
            target.write_bytes(Path(source).read_bytes() if isinstance(source, (str, Path)) else source.read())
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/0", commit_message="upload",
                          commit_description="", oid="0" * 40)

    with mock.patch.object(HfApi, "create_repo", lambda self, repo_id, **kw: RepoUrl(f"https://huggingface.co/{repo_id}")), \
         mock.patch.object(HfApi, "create_commit", create_commit), \
         mock.patch.object(ModelCard, "load", side_effect=EntryNotFoundError("no card")):
        model.push_to_hub("org/jetvit-pushed")

    assert {"config.json", "model.safetensors", "modeling_jetvit.py", "configuration_jetvit.py"} <= {
        p.name for p in remote.iterdir()
    }
    reloaded = AutoModelForDepthEstimation.from_pretrained(remote, trust_remote_code=True)
    for (name, expected), (_, actual) in zip(model.state_dict().items(), reloaded.state_dict().items(), strict=True):
        assert torch.equal(expected, actual), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("model_class", [JetViTModel, JetViTBackbone, JetViTForDepthEstimation, JetViTForSemanticSegmentation])
def test_save_load_round_trip_is_bit_exact(model_class, dtype, tmp_path):
    config = JetViTConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, patch_size=8, image_size=32,
        num_register_tokens=2, position_embedding_type="rope", attention_types=["linear", "window", "full", "linear"],
        window_size=2, out_indices=[1, 2, 3, 4], neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
        num_labels=5,
    )
    torch.manual_seed(0)
    model = model_class(config).to(dtype).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["auto_map"]["AutoModel"] == "modeling_jetvit.JetViTModel"
    loaded = model_class.from_pretrained(tmp_path, dtype=dtype).eval()
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    for name in state:
        assert loaded_state[name].dtype == dtype or not state[name].is_floating_point()
        assert torch.equal(state[name], loaded_state[name]), name
    pixel_values = torch.randn(2, 3, 40, 56, dtype=dtype)
    with torch.no_grad():
        expected, actual = model(pixel_values), loaded(pixel_values)
    first = next(iter(expected.values()))
    assert torch.equal(first if isinstance(first, torch.Tensor) else first[0],
                       next(iter(actual.values())) if isinstance(first, torch.Tensor) else next(iter(actual.values()))[0])


def test_pixel_values_with_wrong_channels_get_a_clear_error():
    model = JetViTModel(JetViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    with pytest.raises(ValueError, match="has 1 channels but the model expects 3"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"shape \(batch, channels, height, width\)"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="smaller than one 16x16 patch"):
        model(torch.randn(1, 3, 8, 32))


def test_gradient_checkpointing_gives_the_same_gradients():
    config = JetViTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                          patch_size=8, attention_types=["linear", "window", "full"], window_size=2)
    torch.manual_seed(0)
    model = JetViTModel(config).train()
    with torch.no_grad():
        for layer in model.encoder.layer:
            if layer.attention_type == "linear":
                layer.attention.dynamic_conv.fc2.weight.normal_(0, 0.05)
    pixel_values = torch.randn(2, 3, 40, 48)

    def gradients():
        model.zero_grad()
        model(pixel_values).last_hidden_state.square().mean().backward()
        return {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}

    plain = gradients()
    # transformers 5.23 renamed the entry point; 5.17 has only the old name
    getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    assert all(layer.gradient_checkpointing for layer in model.encoder.layer)
    checkpointed = gradients()
    unused = {"embeddings.mask_token"}  # only used with bool_masked_pos
    assert plain.keys() == checkpointed.keys() == {name for name, _ in model.named_parameters()} - unused
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7)


def test_semantic_segmentation_head_follows_the_linear_probe_protocol():
    config = JetViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                          patch_size=8, num_register_tokens=4, num_labels=6, semantic_head_dropout=0.0)
    torch.manual_seed(0)
    model = JetViTForSemanticSegmentation(config).eval()
    pixel_values = torch.randn(2, 3, 48, 64)
    labels = torch.randint(0, 6, (2, 48, 64))
    labels[:, :10] = 255
    out = model(pixel_values, labels=labels)
    assert out.logits.shape == (2, 6, 6, 8)

    # independent recomputation: normed last-layer patch tokens -> BatchNorm -> 1x1 conv -> bilinear -> CE(ignore 255)
    with torch.no_grad():
        tokens = model.jetvit(pixel_values).last_hidden_state[:, 5:]
        features = tokens.transpose(1, 2).reshape(2, 32, 6, 8)
        bn = model.head.batchnorm
        normed = (features - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
        normed = normed * bn.weight[:, None, None] + bn.bias[:, None, None]
        logits = torch.einsum("bchw,kc->bkhw", normed, model.head.classifier.weight[:, :, 0, 0])
        logits = logits + model.head.classifier.bias[None, :, None, None]
        torch.testing.assert_close(out.logits, logits, rtol=1e-5, atol=1e-5)
        upsampled = torch.nn.functional.interpolate(logits, size=(48, 64), mode="bilinear", align_corners=False)
        log_probs = upsampled.log_softmax(1)
        valid = labels != 255
        picked = log_probs.permute(0, 2, 3, 1)[valid].gather(1, labels[valid][:, None])
        torch.testing.assert_close(out.loss, -picked.mean(), rtol=1e-5, atol=1e-6)
