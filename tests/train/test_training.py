"""The training loop (`jetvit_hf.train`): supernet distillation, exact resume, 2-process DDP over gloo, fine-tuning
with Depth Anything's losses and LoRA, and clear errors for bad input. Tiny random sources, tiny images, a few steps."""

import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from sources import dinov2_config, perturb_
from transformers import Dinov2Model

from jetvit_hf.convert import convert_to_jetvit, save_converted
from jetvit_hf.models.jetvit.modeling_jetvit import JetViTForDepthEstimation, JetViTModel
from jetvit_hf.train import TrainConfig, loop, main, reset_accelerate_state, train
from jetvit_hf.train.checkpoints import list_checkpoints
from jetvit_hf.train.config import config_from_args, resolve_compile_backend
from jetvit_hf.train.student import build_supernet
from jetvit_hf.train.supernet import JetViTSupernet, SupernetAttention
from helpers import REPO, read_train_log

CANDIDATE = re.compile(r"\.attention\.candidates\.(\w+)\.")



new_process = reset_accelerate_state  # a resumed run is a new process


@pytest.fixture(autouse=True)
def _fresh_accelerate():
    new_process()
    yield
    new_process()



@pytest.fixture(scope="module")
def images_dir(tmp_path_factory):
    """8 random 48 x 48 images, saved with `save_to_disk`."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)) for _ in range(8)]
    directory = tmp_path_factory.mktemp("images")
    dataset = datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()}))
    dataset.save_to_disk(directory)
    return directory


def make_config(teacher, output_dir, data, **overrides) -> TrainConfig:
    values = dict(
        teacher=str(teacher), output_dir=str(output_dir), data=str(data), image_size=28, batch_size=2, max_steps=4,
        checkpoint_every=2, log_every=1, warmup_steps=1, learning_rate=1e-3, num_workers=0, report_to="none",
    )
    return TrainConfig(**(values | overrides))


def teacher_name(name: str) -> str:
    """The teacher's parameter that a supernet candidate's parameter starts from."""
    return CANDIDATE.sub(".attention.", name)


def test_distill_trains_the_active_attention_only_and_saves_a_loadable_supernet(
    source_checkpoint, images_dir, tmp_path
):
    source, _ = source_checkpoint("dinov2")
    output_dir = train(make_config(source, tmp_path / "run", images_dir, report_to="tensorboard"))

    log = read_train_log(output_dir)
    assert [entry["step"] for entry in log] == [1, 2, 3, 4]
    assert all(math.isfinite(entry["loss"]) and entry["loss"] > 0 for entry in log)
    active = {(layer, code) for entry in log for subnet in entry["subnets"] for layer, code in enumerate(subnet)}
    supernet = JetViTSupernet.from_pretrained(output_dir / "supernet")
    assert supernet.candidates == [["linear", "window"]] * 4
    teacher = convert_to_jetvit(source).state_dict()
    trained = load_file(output_dir / "supernet" / "supernet.safetensors")
    for name, tensor in trained.items():
        match = CANDIDATE.search(name)
        if match is None:  # embeddings, norms, layer scales, MLPs: frozen
            torch.testing.assert_close(tensor, teacher[name], rtol=0, atol=0, msg=name)
            continue
        layer = int(re.search(r"layer\.(\d+)\.", name).group(1))
        was_active = (layer, match.group(1)[0].upper()) in active
        if ".dynamic_conv.fc2." in name:  # starts at zero
            assert bool(tensor.abs().sum() > 0) == was_active, name
        elif ".dynamic_conv." not in name:  # q/k/v/o inherited from the teacher: trained exactly when active
            assert (not torch.equal(tensor, teacher[teacher_name(name)])) == was_active, name
    assert list((output_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert [path.name for path in list_checkpoints(output_dir / "checkpoints")] == ["step-0000002", "step-0000004"]
    provenance = json.loads((output_dir / "supernet" / "jetvit_conversion.json").read_text())  # from the teacher
    assert (provenance["source"], provenance["family"], provenance["source_architecture"]) == (
        str(Path(source).resolve()), "dinov2", "Dinov2Model")
    assert provenance["new_parameters"] == sorted(name for name in trained if ".dynamic_conv." in name)


def test_auto_compile_backend_compiles_on_a_gpu_only():
    """'auto' (the default) is inductor on CUDA, where it was measured faster, and eager on the CPU or beside gradient
    checkpointing; an explicit backend is kept wherever it trains."""
    required = {"teacher": "t", "output_dir": "o"}
    assert TrainConfig(**required).compile_backend == "auto"
    assert resolve_compile_backend(TrainConfig(**required), torch.device("cuda", 0)) == "inductor"
    assert resolve_compile_backend(TrainConfig(**required), torch.device("cpu")) is None
    checkpointed = TrainConfig(**required, gradient_checkpointing=True)
    assert resolve_compile_backend(checkpointed, torch.device("cuda")) is None
    assert resolve_compile_backend(TrainConfig(**required, compile_backend="aot_eager"), torch.device("cpu")) == \
        "aot_eager"
    assert resolve_compile_backend(TrainConfig(**required, compile_backend="none"), torch.device("cuda")) is None


def test_compiled_layers_train_the_same_supernet_without_recompiling_per_subnet(source_checkpoint, images_dir,
                                                                                 tmp_path):
    """compile_backend compiles each layer in place: the same losses, subnets and weights as eager, and a graph per
    attention type (and per first/later layer: the first one's input needs no gradient), not per sampled subnet."""
    from torch._dynamo.utils import counters

    source, _ = source_checkpoint("dinov2")
    eager = train(make_config(source, tmp_path / "eager", images_dir, max_steps=6, checkpoint_every=6))
    new_process()
    counters.clear()
    compiled = train(make_config(source, tmp_path / "compiled", images_dir, max_steps=6, checkpoint_every=6,
                                 compile_backend="aot_eager"))
    subnets = [code for entry in read_train_log(eager) for code in entry["subnets"]]
    assert len(set(subnets)) == 5  # five layouts of the 4 layers in 6 steps
    for entry, expected in zip(read_train_log(compiled), read_train_log(eager), strict=True):
        assert entry["subnets"] == expected["subnets"]
        assert entry["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    # the teacher's full layers, and linear and window layers with and without an input that needs a gradient
    assert counters["stats"]["unique_graphs"] <= 5
    expected = load_file(eager / "supernet" / "supernet.safetensors")
    actual = load_file(compiled / "supernet" / "supernet.safetensors")
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


class Killed(Exception):
    pass


def test_checkpoint_overhead_cap_skips_due_checkpoints_but_never_the_last(source_checkpoint, images_dir, tmp_path):
    """With `max_checkpoint_overhead` a due checkpoint waits until the time since the last one is the last write's
    duration over the cap: at a cap of 1e-9 only the first due checkpoint and the last step's are written, where
    every step's would be without it; the training itself is the same."""
    source, _ = source_checkpoint("dinov2")
    settings = dict(max_steps=4, checkpoint_every=1, keep_checkpoints=0)
    capped = train(make_config(source, tmp_path / "capped", images_dir, max_checkpoint_overhead=1e-9, **settings))
    assert [path.name for path in list_checkpoints(capped / "checkpoints")] == ["step-0000001", "step-0000004"]
    new_process()
    every = train(make_config(source, tmp_path / "every", images_dir, **settings))
    assert [path.name for path in list_checkpoints(every / "checkpoints")] == [f"step-000000{step}" for step in
                                                                               range(1, 5)]
    assert [entry["loss"] for entry in read_train_log(capped)] == pytest.approx(
        [entry["loss"] for entry in read_train_log(every)], rel=1e-6)


def test_resume_continues_exactly_and_ignores_unfinished_checkpoints(
    source_checkpoint, images_dir, tmp_path, monkeypatch
):
    source, _ = source_checkpoint("dinov2")
    # 4 batches per epoch, 2 per step, 2 subnets per batch: the checkpoint at step 3 is mid-epoch (epoch 1, batch 2)
    settings = dict(max_steps=4, checkpoint_every=3, gradient_accumulation_steps=2, subnets_per_step=2)
    uninterrupted = train(make_config(source, tmp_path / "uninterrupted", images_dir, **settings))

    new_process()
    sample = JetViTSupernet.sample

    def killed_in_step_4(self, step, seed=0):
        if step == 13:  # micro-steps 12..15 are step 4's: killed after one backward of it
            raise Killed
        return sample(self, step, seed)

    monkeypatch.setattr(JetViTSupernet, "sample", killed_in_step_4)
    interrupted = tmp_path / "interrupted"
    with pytest.raises(Killed):
        train(make_config(source, interrupted, images_dir, **settings))
    monkeypatch.setattr(JetViTSupernet, "sample", sample)
    checkpoints = interrupted / "checkpoints"
    assert [path.name for path in list_checkpoints(checkpoints)] == ["step-0000003"]
    assert json.loads((checkpoints / "step-0000003" / "trainer_state.json").read_text())["epoch"] == 1
    # what a kill during a checkpoint write leaves: a staging dir, and a dir without its trainer_state.json
    (checkpoints / ".step-0000004.tmp-x1y2z3").mkdir()
    (checkpoints / ".step-0000004.tmp-x1y2z3" / "model.safetensors").write_bytes(b"half")
    (checkpoints / "step-0000009").mkdir()
    (checkpoints / "step-0000009" / "model.safetensors").write_bytes(b"half")

    new_process()
    with pytest.raises(ValueError, match="pass --resume"):
        train(make_config(source, interrupted, images_dir, **settings))
    new_process()
    with pytest.raises(ValueError, match=r"Cannot resume exactly.*batch_size: 2 -> 4"):
        train(make_config(source, interrupted, images_dir, **(settings | {"batch_size": 4}), resume=True))
    new_process()
    resumed = train(make_config(source, interrupted, images_dir, **settings, resume=True))

    # the same losses and the same subnets, step by step (the wall-clock throughput aside)
    assert read_train_log(resumed) == read_train_log(uninterrupted)
    assert len({code for entry in read_train_log(resumed) for code in entry["subnets"]}) > 1
    expected = load_file(uninterrupted / "supernet" / "supernet.safetensors")
    actual = load_file(resumed / "supernet" / "supernet.safetensors")
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)
    assert not (checkpoints / ".step-0000004.tmp-x1y2z3").exists()


def test_the_log_reports_throughput_timed_from_where_each_interval_began(
    source_checkpoint, images_dir, tmp_path, monkeypatch
):
    source, _ = source_checkpoint("dinov2")
    settings = dict(log_every=2, checkpoint_every=100, gradient_accumulation_steps=2)
    images_per_step = 2 * 2 * 1  # batch_size x gradient_accumulation_steps x processes
    output_dir = train(make_config(source, tmp_path / "run", images_dir, max_steps=3, **settings))
    new_process()
    # steps 2 and 3 were timed by the real clock; the resumed run's clock ticks 1 s per reading, so its first interval
    # (steps 3-4) shows that its timing began at the step it resumed from: one step, not log_every steps
    clock = iter(range(100))
    monkeypatch.setattr(loop, "time", SimpleNamespace(perf_counter=lambda: float(next(clock))))
    train(make_config(source, output_dir, images_dir, max_steps=5, resume=True, **settings))

    log = read_train_log(output_dir, timing=True)
    assert [entry["step"] for entry in log] == [2, 3, 4, 5]
    for entry in log:
        for key in ("images_per_second", "seconds_per_step"):
            assert math.isfinite(entry[key]) and entry[key] > 0, entry
        assert entry["images_per_second"] == pytest.approx(images_per_step / entry["seconds_per_step"], rel=1e-9)
    assert [(entry["images_per_second"], entry["seconds_per_step"]) for entry in log[2:]] == [(4.0, 1.0)] * 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def relative_update_difference(actual: dict, expected: dict, start: dict) -> float:
    """|actual - expected| / |expected - start| over the candidates' q/k/v/o (each starts as the teacher's)."""
    names = [name for name in expected if CANDIDATE.search(name) and ".dynamic_conv." not in name]
    difference = torch.cat([(actual[name] - expected[name]).flatten() for name in names])
    update = torch.cat([(expected[name] - start[teacher_name(name)]).flatten() for name in names])
    return (difference.norm() / update.norm()).item()


def test_two_processes_over_gloo_match_one_process(source_checkpoint, images_dir, tmp_path):
    source, _ = source_checkpoint("dinov2")
    settings = dict(max_steps=3, subnets_per_step=2, checkpoint_every=2, log_every=1, warmup_steps=1, num_workers=0)
    flags = [f"--{key}={value}" for key, value in settings.items()]
    flags += [f"--teacher={source}", f"--data={images_dir}", "--image_size=28", "--batch_size=2",
              "--learning_rate=1e-3", "--report_to=none", "--cpu"]
    two = tmp_path / "two"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        str(REPO / "training" / "accelerate" / "cpu_2proc.yaml"), "--main_process_port", str(free_port()),
        str(REPO / "training" / "distill.py"), *flags, f"--output_dir={two}",
    ]
    result = subprocess.run(command, env=os.environ | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    state = json.loads((two / "checkpoints" / "step-0000003" / "trainer_state.json").read_text())
    assert state["num_processes"] == 2
    files = {path.name for path in (two / "checkpoints" / "step-0000003").iterdir()}
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= files  # each process's RNG state

    # one process with the same global batch (2 processes x 2 images) sees the same images and the same subnets
    one = train(make_config(source, tmp_path / "one", images_dir, image_size=28, batch_size=4, learning_rate=1e-3,
                            **settings))
    two_log, one_log = read_train_log(two), read_train_log(one)
    assert [entry["subnets"] for entry in two_log] == [entry["subnets"] for entry in one_log]
    for two_entry, one_entry in zip(two_log, one_log, strict=True):
        assert two_entry["loss"] == pytest.approx(one_entry["loss"], rel=1e-4)
    start = convert_to_jetvit(source).state_dict()
    two_weights = load_file(two / "supernet" / "supernet.safetensors")
    one_weights = load_file(one / "supernet" / "supernet.safetensors")
    assert relative_update_difference(two_weights, one_weights, start) < 1e-2


def test_gradient_checkpointing_recomputes_the_same_subnet(source_checkpoint, images_dir, tmp_path, monkeypatch):
    source, _ = source_checkpoint("dinov3")
    calls = {"count": 0}
    forward = SupernetAttention.forward

    def counting_forward(self, *args, **kwargs):
        calls["count"] += 1
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(SupernetAttention, "forward", counting_forward)
    outputs, forwards = {}, {}
    for checkpointing in (False, True):
        new_process()
        calls["count"] = 0
        outputs[checkpointing] = train(make_config(
            source, tmp_path / f"checkpointing-{checkpointing}", images_dir, image_size=32, max_steps=2,
            gradient_checkpointing=checkpointing,
        ))
        forwards[checkpointing] = calls["count"]
    assert forwards[True] == 2 * forwards[False]  # every layer's attention runs again in backward
    assert read_train_log(outputs[True]) == read_train_log(outputs[False])
    plain, checkpointed = (load_file(outputs[flag] / "supernet" / "supernet.safetensors") for flag in (False, True))
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("candidates", ["window,full", "linear,window"])
def test_bf16_autocast(source_checkpoint, images_dir, tmp_path, candidates):
    source, _ = source_checkpoint("dinov2")
    output_dir = train(make_config(
        source, tmp_path / "run", images_dir, mixed_precision="bf16", candidates=candidates, max_steps=2,
    ))
    assert all(math.isfinite(entry["loss"]) for entry in read_train_log(output_dir))
    teacher = convert_to_jetvit(source).state_dict()
    trained = load_file(output_dir / "supernet" / "supernet.safetensors")
    assert any(not torch.equal(trained[name], teacher[teacher_name(name)])
               for name in trained if CANDIDATE.search(name) and ".dynamic_conv." not in name)


def test_stage2_starts_from_the_stage1_choice_and_the_teachers_full_layers(source_checkpoint, tmp_path):
    source, _ = source_checkpoint("dinov2")
    teacher = convert_to_jetvit(source)
    stage1 = JetViTSupernet(convert_to_jetvit(source))
    with torch.no_grad():  # as if trained: the stage-1 candidates no longer equal the teacher's layers
        for name, parameter in stage1.model.named_parameters():
            if ".candidates." in name:
                parameter.add_(0.01)
    stage1.save_pretrained(tmp_path / "stage1")
    choice = ["linear", "window", "window", "linear"]
    required = dict(teacher=str(source), output_dir=str(tmp_path / "run"))

    stage2 = build_supernet(
        TrainConfig(**required, student=str(tmp_path / "stage1"), candidates="stage2:" + ",".join(choice)), teacher
    )
    assert stage2.candidates == [[kind, "full"] for kind in choice]
    before, after, full = stage1.model.state_dict(), stage2.model.state_dict(), teacher.state_dict()
    for layer, kind in enumerate(choice):
        for weight in ("q_proj.weight", "k_proj.bias", "o_proj.weight"):
            prefix = f"encoder.layer.{layer}.attention"
            kept = f"{prefix}.candidates.{kind}.{weight}"
            assert torch.equal(after[kept], before[kept])
            assert torch.equal(after[f"{prefix}.candidates.full.{weight}"], full[f"{prefix}.{weight}"])

    stage1.extract(choice).save_pretrained(tmp_path / "extracted")  # 'stage2' alone: the model's own types
    from_extracted = build_supernet(TrainConfig(**required, student=str(tmp_path / "extracted"), candidates="stage2"),
                                    teacher)
    assert from_extracted.candidates == stage2.candidates
    with pytest.raises(ValueError, match="name the stage-1 choice"):
        build_supernet(TrainConfig(**required, student=str(tmp_path / "stage1"), candidates="stage2"), teacher)
    other_choice = "stage2:linear,linear,linear,linear"
    with pytest.raises(ValueError, match="differ from the stage-1 choice"):
        build_supernet(TrainConfig(**required, student=str(tmp_path / "extracted"), candidates=other_choice), teacher)


def save_extracted(source, directory, attention_types):
    model = convert_to_jetvit(source, attention_types)
    model.save_pretrained(directory)
    return model


def test_finetune_depth_with_depth_anything_losses(source_checkpoint, tmp_path):
    source, _ = source_checkpoint("depth_anything_v2")
    student, info = convert_to_jetvit(source, ["linear", "window", "full", "linear", "window", "linear"],
                                      output_loading_info=True)
    info.source = "org/depth-anything-tiny"  # a converted student names its source: the saved model carries it
    save_converted(student, tmp_path / "student", source, info)
    output_dir = train(make_config(
        source, tmp_path / "run", "render:train:4", mode="finetune", student=str(tmp_path / "student"),
        depth_loss_weight=1.0, max_steps=2,
    ))
    log = read_train_log(output_dir)
    for entry in log:
        for name in ("feature_loss", "depth_loss", "ssi", "gradient_matching"):
            assert math.isfinite(entry[name]), (name, entry)
        assert entry["loss"] == pytest.approx(entry["feature_loss"] + entry["depth_loss"], rel=1e-5)
        assert entry["depth_loss"] == pytest.approx(entry["ssi"] + 2 * entry["gradient_matching"], rel=1e-5)
    assert (output_dir / "model" / "modeling_jetvit.py").is_file()
    provenance = json.loads((output_dir / "model" / "jetvit_conversion.json").read_text())
    assert provenance == info.to_dict()
    tuned = JetViTForDepthEstimation.from_pretrained(output_dir / "model")
    assert tuned.config.attention_types == student.config.attention_types
    before, after = student.state_dict(), tuned.state_dict()
    assert not torch.equal(after["jetvit.encoder.layer.0.attention.q_proj.weight"],
                           before["jetvit.encoder.layer.0.attention.q_proj.weight"])
    for name in after:
        if ".attention." not in name:  # neck, head, MLPs, norms: frozen
            torch.testing.assert_close(after[name], before[name], rtol=0, atol=0, msg=name)


def test_finetune_with_lora_merges_and_keeps_dinov3_rope_settings(source_checkpoint, images_dir, tmp_path):
    source, _ = source_checkpoint("dinov3")
    student = save_extracted(source, tmp_path / "student", ["linear", "full", "window", "linear"])
    assert student.config.pos_embed_rescale is not None  # DINOv3's train-time RoPE augmentation
    output_dir = train(make_config(
        source, tmp_path / "run", images_dir, mode="finetune", student=str(tmp_path / "student"), image_size=32,
        lora_rank=2, max_steps=2,
    ))
    saved = load_file(output_dir / "model" / "model.safetensors")
    assert not any("lora" in name for name in saved)
    tuned = JetViTModel.from_pretrained(output_dir / "model")
    assert tuned.config.pos_embed_rescale == student.config.pos_embed_rescale
    before, after = student.state_dict(), tuned.state_dict()
    assert before.keys() == after.keys()
    for name in ("encoder.layer.0.attention.q_proj.weight", "encoder.layer.0.attention.dynamic_conv.fc2.weight"):
        assert not torch.equal(after[name], before[name]), name
    for name in after:
        if ".attention." not in name:
            torch.testing.assert_close(after[name], before[name], rtol=0, atol=0, msg=name)


def test_teacher_and_student_must_match(source_checkpoint, images_dir, tmp_path):
    teacher, _ = source_checkpoint("dinov2")
    wide = tmp_path / "wide"
    perturb_(Dinov2Model(dinov2_config(hidden_size=48))).save_pretrained(wide)
    with pytest.raises(ValueError, match="hidden_size is 32 for the teacher and 48 for the student"):
        train(make_config(teacher, tmp_path / "run", images_dir, student=str(wide)))
    other_family, _ = source_checkpoint("dinov3")
    with pytest.raises(ValueError, match="Teacher and student do not match: patch_size"):
        train(make_config(teacher, tmp_path / "run", images_dir, student=str(other_family)))


def test_bad_data_is_named(source_checkpoint, tmp_path):
    source, _ = source_checkpoint("dinov2")
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "photo.png").write_bytes(b"not a png")
    for data in (empty, tmp_path / "missing", broken):
        new_process()
        with pytest.raises(ValueError, match=re.escape(str(data))):
            train(make_config(source, tmp_path / "run", data))
    with pytest.raises(ValueError, match=re.escape("'scenes:8': procedural scenes come from the batched renderer now: "
                                                   "use render:train[:<scenes per epoch>]")):
        train(make_config(source, tmp_path / "run", "scenes:8"))


def test_config_errors_are_clear(tmp_path, monkeypatch):
    required = dict(teacher="t", output_dir="o")
    with pytest.raises(ValueError, match="Unknown config key 'learning_rat'. Did you mean 'learning_rate'"):
        TrainConfig.from_dict(required | {"learning_rat": 1e-4})
    with pytest.raises(ValueError, match="Unknown attention type 'sliding' in candidates"):
        TrainConfig(**required, candidates=["linear", "sliding"])
    with pytest.raises(ValueError, match="Unknown attention type 'lin' in the stage-1 choice"):
        TrainConfig(**required, candidates="stage2:linear,lin")
    with pytest.raises(ValueError, match="mixed_precision must be one of"):
        TrainConfig(**required, mixed_precision="fp8")
    with pytest.raises(ValueError, match="teacher is required"):
        TrainConfig(output_dir="o")
    with pytest.raises(ValueError, match="compile_backend must be one of"):
        TrainConfig(**required, compile_backend="tensorrt")
    with pytest.raises(ValueError, match="compile_backend and gradient_checkpointing cannot be combined"):
        TrainConfig(**required, compile_backend="inductor", gradient_checkpointing=True)
    assert TrainConfig(**required, compile_backend="auto", gradient_checkpointing=True)  # auto resolves to eager
    with pytest.raises(ValueError, match="max_checkpoint_overhead must be >= 0"):
        TrainConfig(**required, max_checkpoint_overhead=-0.1)
    with pytest.raises(ValueError, match=r"candidates only apply to mode 'distill' \(a fine-tuned"):
        TrainConfig(**required, mode="finetune", student="s", candidates=["linear"])
    with pytest.raises(SystemExit, match="distill.py: error: Unknown config key 'bogus'"):
        main(["--teacher", "t", "--output_dir", "o", "--bogus", "1"], mode="distill")
    with pytest.raises(SystemExit, match="finetune.py: error: batch_size must be int, got 'two'"):
        main(["--teacher=t", "--output_dir=o", "--student=s", "--batch_size=two"], mode="finetune")

    # YAML, then flags; types follow the fields
    config_file = tmp_path / "run.yaml"
    config_file.write_text("teacher: t\noutput_dir: o\ncandidates: [linear, window]\nlearning_rate: 3.0e-4\n")
    config = config_from_args(
        ["--config", str(config_file), "--learning-rate", "1e-4", "--train_mlp", "--student_overrides={window_size: 2}",
         "--candidates", "stage2:linear,window"], mode="distill",
    )
    assert config.learning_rate == 1e-4 and config.train_mlp is True and config.student_overrides == {"window_size": 2}
    assert config.candidates == "stage2:linear,window"
    assert config_from_args(["--config", str(config_file)], mode="distill").candidates == ["linear", "window"]
    for shipped in ("distill", "finetune"):
        config = config_from_args(["--teacher=t", "--output_dir=o", "--student=s"], mode=shipped,
                                  default_config=REPO / "training" / "configs" / f"{shipped}.yaml")
        assert config.mode == shipped

    # several launched processes that Accelerate would run as independent single ones
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="pass --cpu"):
        train(TrainConfig(**required))
