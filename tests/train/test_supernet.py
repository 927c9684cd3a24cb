"""The supernet: weight inheritance, step-seeded sampling, exact extraction, stage 2, save/load, errors."""

import pytest
import torch

from jetvit_hf.convert import convert_to_jetvit
from jetvit_hf.layouts import stage2_candidates
from jetvit_hf.train.supernet import JetViTSupernet


@pytest.fixture
def depth_supernet(source_checkpoint):
    directory, source = source_checkpoint("depth_anything_v2")
    torch.manual_seed(0)
    supernet = JetViTSupernet(convert_to_jetvit(directory), ["linear", "window"])
    with torch.no_grad():  # a trained-like state: non-zero kernel generators, perturbed candidates
        for layer in supernet.layers:
            layer.attention.candidates["linear"].dynamic_conv.fc2.weight.normal_(0, 0.05)
            layer.attention.candidates["window"].q_proj.weight.mul_(1.1)
    return directory, source, supernet.eval()


def test_every_candidate_inherits_the_layer_projections_and_generators_start_at_zero(source_checkpoint):
    directory, source = source_checkpoint("dinov3")
    supernet = JetViTSupernet(convert_to_jetvit(directory), [["linear", "window", "full"]] * 4)
    for index, layer in enumerate(supernet.layers):
        for candidate in ("linear", "window", "full"):
            module = layer.attention.candidates[candidate]
            for projection in ("q_proj", "k_proj", "v_proj", "o_proj"):
                expected = getattr(source.model.layer[index].attention, projection).weight
                assert torch.equal(getattr(module, projection).weight, expected)
        generator = layer.attention.candidates["linear"].dynamic_conv
        assert generator.fc2.weight.abs().sum() == 0 and generator.fc2.bias.abs().sum() == 0
    # norms and MLP are shared: one module per layer, not one per candidate
    names = [name for name, _ in supernet.named_parameters()]
    assert sum(".mlp.up_proj.weight" in name for name in names) == 4


def test_sampling_depends_only_on_the_step_and_covers_the_space(depth_supernet):
    _, _, supernet = depth_supernet
    assert supernet.sample(7, seed=3) == supernet.sample(7, seed=3)
    draws = {tuple(supernet.sample(step)) for step in range(200)}
    assert len(draws) > 30 and supernet.num_subnets == 2**6
    per_layer = [{draw[i] for draw in draws} for i in range(6)]
    assert all(choices == {"linear", "window"} for choices in per_layer)


def test_extract_equals_the_supernet_for_its_assignment(depth_supernet):
    _, _, supernet = depth_supernet
    pixel_values = torch.randn(2, 3, 56, 70)
    for step in range(3):
        assignment = supernet.sample(step)
        supernet.set(assignment)
        extracted = supernet.extract().eval()
        assert extracted.config.attention_types == assignment
        with torch.no_grad():
            assert torch.equal(extracted(pixel_values).predicted_depth, supernet(pixel_values).predicted_depth)
    # the extract owns its weights: training it leaves the supernet untouched
    before = supernet.layers[0].attention.candidates[assignment[0]].q_proj.weight.clone()
    with torch.no_grad():
        extracted.jetvit.encoder.layer[0].attention.q_proj.weight.add_(1.0)
    assert torch.equal(supernet.layers[0].attention.candidates[assignment[0]].q_proj.weight, before)


def test_stage2_full_candidates_start_as_the_teacher(depth_supernet):
    directory, source, supernet = depth_supernet
    choice = ["linear", "window", "linear", "window", "linear", "window"]
    stage2 = JetViTSupernet(supernet.extract(choice), stage2_candidates(choice), inherit_full_from=convert_to_jetvit(directory))
    assert stage2.candidates == [[c, "full"] for c in choice]
    pixel_values = torch.randn(1, 3, 56, 56)
    stage2.set(["full"] * 6)
    with torch.no_grad():
        torch.testing.assert_close(stage2(pixel_values).predicted_depth, source(pixel_values).predicted_depth,
                                   rtol=1e-4, atol=1e-5)
        stage2.set(choice)
        supernet.set(choice)
        assert torch.equal(stage2(pixel_values).predicted_depth, supernet(pixel_values).predicted_depth)


def test_save_and_load_round_trip(depth_supernet, tmp_path):
    _, _, supernet = depth_supernet
    supernet.set(supernet.sample(5))
    supernet.save_pretrained(tmp_path / "supernet")
    loaded = JetViTSupernet.from_pretrained(tmp_path / "supernet").eval()
    assert loaded.candidates == supernet.candidates and loaded.assignment == supernet.assignment
    pixel_values = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values).predicted_depth, supernet(pixel_values).predicted_depth)


def test_bad_candidates_and_assignments_are_clear_errors(depth_supernet):
    _, _, supernet = depth_supernet
    with pytest.raises(ValueError, match="Unknown attention type 'sparse' in the candidates of layer 0"):
        JetViTSupernet(supernet.extract(), ["linear", "sparse"])
    with pytest.raises(ValueError, match="one candidate set per layer"):
        JetViTSupernet(supernet.extract(), [["linear"]] * 3)
    with pytest.raises(ValueError, match="not among its candidates"):
        supernet.set(["full"] * 6)
    with pytest.raises(ValueError, match="one attention type per layer"):
        supernet.set(["linear"] * 5)


def test_a_truncated_supernet_file_is_an_error_that_names_it(depth_supernet, tmp_path):
    _, _, supernet = depth_supernet
    supernet.save_pretrained(tmp_path / "supernet")
    weights = tmp_path / "supernet" / "supernet.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="supernet.safetensors"):
        JetViTSupernet.from_pretrained(tmp_path / "supernet")


@pytest.mark.parametrize("conv, conv_names", [("none", []), ("static", ["static_conv.weight"])])
def test_linear_candidates_follow_the_linear_attention_conv(conv, conv_names, source_checkpoint, tmp_path):
    """A supernet of an all-full model converted with `linear_attention_conv`: its linear candidates get that
    convolution (starting at zero), and a saved supernet keeps it."""
    directory, _ = source_checkpoint("dinov3")
    supernet = JetViTSupernet(convert_to_jetvit(directory, linear_attention_conv=conv), ["linear", "window"])
    for layer in supernet.layers:
        linear = layer.attention.candidates["linear"]
        names = [name for name in linear.state_dict() if "conv" in name]
        assert names == conv_names
        assert all(not linear.state_dict()[name].any() for name in names)
    with torch.no_grad():
        for layer in supernet.layers:
            for parameter in layer.attention.candidates["linear"].parameters():
                parameter.add_(0.01)
    supernet.save_pretrained(tmp_path / "supernet")
    loaded = JetViTSupernet.from_pretrained(tmp_path / "supernet")
    assert loaded.config.linear_attention_conv == conv
    for name, tensor in supernet.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name


def test_static_conv_with_a_dynamic_conv_setting_is_an_error_naming_it(source_checkpoint):
    directory, _ = source_checkpoint("dinov3")
    with pytest.raises(ValueError, match="`dynamic_conv_reduction`=2 only applies"):
        JetViTSupernet.from_pretrained(directory, ["linear", "window"], linear_attention_conv="static",
                                       dynamic_conv_reduction=2)
