"""What distillation trains: `train_mlp` and `lora_rank` of `TrainConfig` pick the attention only (default), the
attention and the MLPs, or LoRA adapters on them (plus the linear layers' convolutions, which have no LoRA form)."""

import pytest

from jetvit_hf.train import TrainConfig
from jetvit_hf.train.student import build_student, load_teacher


def trainable_names(source, tmp_path, **settings) -> list[str]:
    config = TrainConfig(teacher=str(source), output_dir=str(tmp_path / "run"), candidates=["linear", "window"],
                         **settings)
    student = build_student(config, load_teacher(config))
    names = [name for name, parameter in student.model.named_parameters() if parameter.requires_grad]
    assert len(names) == len(student.trainable)
    return names


@pytest.mark.parametrize("conv", ["squeeze_dynamic", "static"])
def test_default_trains_every_attention_candidate_and_its_conv_only(conv, source_checkpoint, tmp_path):
    source, _ = source_checkpoint("dinov3")
    names = trainable_names(source, tmp_path, student_overrides={"linear_attention_conv": conv})
    assert names and all(".attention.candidates." in name for name in names)
    for candidate in ("linear", "window"):
        for projection in ("q_proj", "k_proj", "v_proj", "o_proj"):
            assert f"encoder.layer.3.attention.candidates.{candidate}.{projection}.weight" in names
    conv_name = {"squeeze_dynamic": "dynamic_conv.fc2.weight", "static": "static_conv.weight"}[conv]
    assert f"encoder.layer.0.attention.candidates.linear.{conv_name}" in names


def test_train_mlp_adds_the_mlps_and_nothing_else(source_checkpoint, tmp_path):
    source, _ = source_checkpoint("dinov3")
    names = trainable_names(source, tmp_path, train_mlp=True)
    assert {name for name in names if ".attention." not in name} == {
        f"encoder.layer.{i}.mlp.{p}.{k}" for i in range(4) for p in ("up_proj", "down_proj") for k in ("weight", "bias")
    }


@pytest.mark.parametrize("train_mlp", [False, True])
def test_lora_trains_adapters_and_the_static_conv(train_mlp, source_checkpoint, tmp_path):
    source, _ = source_checkpoint("dinov3")
    names = trainable_names(source, tmp_path, lora_rank=2, train_mlp=train_mlp,
                            student_overrides={"linear_attention_conv": "static"})
    full_weights = [name for name in names if "lora_" not in name]
    static = [f"encoder.layer.{i}.attention.candidates.linear.static_conv.weight" for i in range(4)]
    assert sorted(full_weights) == static
    assert any(".q_proj.lora_A." in name for name in names)
    assert any(".mlp.up_proj.lora_A." in name for name in names) is train_mlp
