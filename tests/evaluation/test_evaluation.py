"""`jetvit eval` and the linear probe: a converted model against its own source scores perfectly, a hybrid scores worse
by exactly what transformers' source model and plain numpy give, and the DINOv3 probe learns a known segmentation."""

import json
import sys

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from jetvit_hf.cli import main as cli_main
from jetvit_hf.convert import convert_to_jetvit, load_jetvit, save_converted
from jetvit_hf.evaluation.evaluator import evaluate_model, run_evaluation
from jetvit_hf.evaluation.images import build_eval_images, load_eval_images, model_input_size, within_ground_truth
from jetvit_hf.evaluation.probe import (
    load_linear_probe,
    make_linear_probe,
    probe_segmentation_metrics,
    save_linear_probe,
    train_linear_probe,
)
from jetvit_hf.train.supernet import JetViTSupernet
from helpers import REPO

sys.path.insert(0, str(REPO / "training"))
import linear_probe  # noqa: E402

HYBRID = ["linear", "window", "full", "linear", "window", "linear"]





@pytest.fixture(scope="module")
def converted(depth_source, tmp_path_factory):
    """`{"full": dir, "hybrid": dir}`: the source converted all-full, and to `HYBRID` with 2x2 windows."""
    directories = {}
    for name, types in (("full", None), ("hybrid", HYBRID)):
        torch.manual_seed(0)
        model, info = convert_to_jetvit(depth_source[0], types, window_size=2, output_loading_info=True)
        directories[name] = save_converted(model, tmp_path_factory.mktemp(name) / "model", depth_source[0], info)
    return directories


def least_squares(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    (scale, shift), *_ = np.linalg.lstsq(np.stack([prediction, np.ones_like(prediction)], 1), target, rcond=None)
    return scale * prediction + shift


def reference_depth_metrics(student, teacher, valid=None) -> dict:
    """Both modes against the teacher's disparity, in numpy: per image least squares over `valid` (default teacher >
    0); DA mode compares disparities; depth mode floors the aligned disparity at 1 / max depth, inverts, clips to the
    teacher's depth range and compares depths. Means over images."""
    valid = [t > 0 for t in teacher] if valid is None else valid
    disparities = np.concatenate([t[v] for t, v in zip(teacher, valid)])
    min_depth, max_depth = 1 / disparities.max(), 1 / disparities.min()
    results = {"disparity": [], "depth": []}
    for s, t, v in zip(student, teacher, valid):
        aligned, target = least_squares(s[v], t[v]), t[v]
        ratio = np.maximum(aligned / target, target / aligned)
        results["disparity"].append([np.mean(np.abs(aligned - target) / target),
                                     np.mean((aligned > 0) & (ratio < 1.25))])
        depth = np.clip(1 / np.maximum(aligned, 1 / max_depth), min_depth, max_depth)
        results["depth"].append([np.mean(np.abs(depth - 1 / target) * target),
                                 np.mean(np.maximum(depth * target, 1 / (depth * target)) < 1.25)])
    return {mode: dict(zip(("abs_rel", "delta1"), np.mean(values, axis=0))) for mode, values in results.items()}


def test_converted_model_against_its_own_source_is_perfect(converted, depth_source, scenes, tmp_path):
    report = run_evaluation(converted["full"], depth_source[0], scenes, output=tmp_path / "report.json",
                            probe_steps=30, progress=False)
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(json.dumps(report))
    assert report["tasks"] == ["features", "depth", "segmentation"] and report["num_images"] == 6
    for mode in ("disparity", "depth"):
        metrics = report["depth"]["vs_teacher"][mode]
        assert metrics["mode"] == mode and metrics["abs_rel"] == pytest.approx(0, abs=1e-6)
        assert metrics["delta1"] == metrics["delta2"] == metrics["delta3"] == 1.0
        ground_truth = report["depth"]["vs_ground_truth"]
        assert ground_truth["student"][mode] == ground_truth["teacher"][mode]
    assert min(report["features"]["per_layer_cosine"]) == pytest.approx(1.0, abs=1e-6)
    assert report["ordinal"]["accuracy"] == 1.0 and report["ordinal"]["num_pairs"] > 100
    segmentation = report["segmentation"]
    assert segmentation["student_vs_teacher"]["mean_iou"] == segmentation["student_vs_teacher"]["pixel_accuracy"] == 1
    assert segmentation["student"] == segmentation["teacher"]


def test_hybrid_scores_worse_by_what_the_transformers_source_and_numpy_give(converted, depth_source, scenes):
    source = depth_source[1]
    hybrid = load_jetvit(converted["hybrid"])
    report = run_evaluation(hybrid, depth_source[0], scenes, tasks=["features", "depth"], progress=False)
    pixels = torch.cat(load_eval_images(scenes, 14, 56).batches)
    with torch.no_grad():
        theirs = source(pixels, output_hidden_states=True)
        ours = hybrid(pixels, output_hidden_states=True)
    # against the teacher only where the scene has ground truth (not the sky, not beyond 80 m) and the teacher's
    # disparity is at least 1% of its median there
    depths = datasets.load_from_disk(str(scenes)).with_format("numpy")["depth"]
    teacher_maps = theirs.predicted_depth.double().numpy()
    valid = []
    for teacher_map, depth in zip(teacher_maps, depths):
        truth = F.interpolate(torch.from_numpy((depth > 0) & (depth <= 80)).float()[None, None],
                              size=teacher_map.shape, mode="nearest")[0, 0].bool().numpy()
        valid.append(truth & (teacher_map >= 0.01 * np.median(teacher_map[truth])))
    assert 0 < np.mean([v.mean() for v in valid]) < 1
    expected = reference_depth_metrics(ours.predicted_depth.double().numpy(), teacher_maps, valid)
    for mode in ("disparity", "depth"):
        for metric in ("abs_rel", "delta1"):
            assert report["depth"]["vs_teacher"][mode][metric] == pytest.approx(expected[mode][metric], rel=1e-4)
    assert report["depth"]["vs_teacher"]["disparity"]["abs_rel"] > 1e-3
    cosines = [
        F.cosine_similarity(hybrid.jetvit.layernorm(a)[:, 1:], source.backbone.layernorm(b)[:, 1:], dim=-1).mean()
        for a, b in zip(ours.hidden_states[1:], theirs.hidden_states[1:])
    ]
    assert report["features"]["per_layer_cosine"] == pytest.approx([c.item() for c in cosines], abs=1e-5)
    assert min(report["features"]["per_layer_cosine"]) < 0.999 and report["ordinal"]["accuracy"] < 1.0
    # ground truth: DA-mode delta1 of transformers' source prediction against the scenes' exact depth, where there
    # is a surface within 80 m (rendered ground runs to the horizon)
    values = []
    for prediction, depth in zip(theirs.predicted_depth, depths):
        upsampled = F.interpolate(prediction[None, None].double(), size=depth.shape, mode="bilinear",
                                  align_corners=True)[0, 0].numpy()
        truth = (depth > 0) & (depth <= 80)
        target = 1 / depth[truth].astype(np.float64)
        aligned = least_squares(upsampled[truth], target)
        values.append(np.mean((aligned > 0) & (np.maximum(aligned / target, target / aligned) < 1.25)))
    teacher_gt = report["depth"]["vs_ground_truth"]["teacher"]["disparity"]["delta1"]
    assert teacher_gt == pytest.approx(np.mean(values), abs=1e-9)


def two_colour_images(count: int, seed: int) -> datasets.Dataset:
    """Red left part (class 0) and blue right part (class 1) split at a random patch border; top rows unlabelled."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(count):
        border = int(rng.integers(1, 4)) * 14
        pixels = np.zeros((56, 56, 3), np.uint8)
        pixels[:, :border] = rng.integers(150, 256, 3) * np.array([1.0, 0.2, 0.2])
        pixels[:, border:] = rng.integers(150, 256, 3) * np.array([0.2, 0.2, 1.0])
        label = np.zeros((56, 56), np.uint8)
        label[:, border:] = 1
        label[:2] = 255
        images.append(Image.fromarray(pixels))
        labels.append(label)
    features = datasets.Features({"image": datasets.Image(), "labels": datasets.Array2D((56, 56), "uint8")})
    return datasets.Dataset.from_dict({"image": images, "labels": labels}, features=features)


def test_linear_probe_learns_a_known_segmentation_and_round_trips(source_checkpoint, tmp_path):
    model = load_jetvit(source_checkpoint("dinov2")[0])
    probe = train_linear_probe(model, two_colour_images(16, 0), steps=100, progress=False)
    info = probe.training_info
    assert probe.classifier.out_channels == 2 and info["warmup_steps"] == 4 and info["final_loss"] < 0.4
    held_out = load_eval_images(two_colour_images(8, 1), 14, 56)
    metrics = probe_segmentation_metrics(model, probe, held_out)
    assert metrics["mean_iou"] > 0.9 and metrics["pixel_accuracy"] > 0.95
    save_linear_probe(probe, tmp_path / "probe")
    loaded = load_linear_probe(tmp_path / "probe")
    assert loaded.training_info == json.loads(json.dumps(info))
    assert probe_segmentation_metrics(model, loaded, held_out) == metrics
    with pytest.raises(FileExistsError):
        save_linear_probe(probe, tmp_path / "probe")
    with pytest.raises(ValueError, match="reads 8 channels"):
        probe_segmentation_metrics(model, make_linear_probe(8, 2), held_out)
    weights = tmp_path / "probe" / "probe.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a broken file is an error that names it
    with pytest.raises(ValueError, match="probe.safetensors"):
        load_linear_probe(tmp_path / "probe")


def test_linear_probe_script_and_eval_with_the_saved_probe(converted, depth_source, scenes, tmp_path, capsys):
    assert linear_probe.main(["--model", str(converted["full"]), "--data", str(scenes), "--eval-data", str(scenes),
                              "--steps", "20", "--image-size", "56", "--output", str(tmp_path / "probe"),
                              "--no-progress"]) == 0
    saved = json.loads((tmp_path / "probe" / "probe.json").read_text())
    largest_label = int(np.max(datasets.load_from_disk(str(scenes)).with_format("numpy")["labels"]))
    assert saved["num_labels"] == largest_label + 1 and saved["training"]["evaluation"]["mean_iou"] > 0
    assert cli_main(["eval", "--model", str(converted["hybrid"]), "--teacher", str(depth_source[0]), "--data",
                     str(scenes), "--task", "segmentation", "--probe", str(tmp_path / "probe"), "--output",
                     str(tmp_path / "report.json"), "--no-progress"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["tasks"] == ["segmentation"] and "features" not in report and report["inputs"]["probe"]
    # the probe was trained and scored on the same teacher features: the report's teacher row is its evaluation
    for key in ("mean_iou", "pixel_accuracy"):
        assert report["segmentation"]["teacher"][key] == pytest.approx(saved["training"]["evaluation"][key])
    assert report["segmentation"]["student_vs_teacher"]["mean_iou"] < 1
    assert "segmentation student vs teacher" in capsys.readouterr().out


def test_da2k_only_evaluation(converted, depth_source, scenes, tmp_path):
    rows = datasets.load_from_disk(str(scenes))
    rng, annotations = np.random.default_rng(0), {}
    for index in range(3):
        rows[index]["image"].save(tmp_path / f"scene{index}.png")
        depth = np.asarray(rows[index]["depth"])
        points = [p for p in zip(rng.integers(0, 42, 200), rng.integers(0, 56, 200)) if depth[p] > 0]
        pairs = [(a, b) for a, b in zip(points[::2], points[1::2]) if depth[a] != depth[b]][:15]
        annotations[f"scene{index}.png"] = [
            {"point1": [int(c) for c in (a if depth[a] < depth[b] else b)],
             "point2": [int(c) for c in (b if depth[a] < depth[b] else a)], "closer_point": "point1"}
            for a, b in pairs
        ]
    (tmp_path / "annotations.json").write_text(json.dumps(annotations))
    assert cli_main(["eval", "--model", str(converted["hybrid"]), "--teacher", str(depth_source[0]), "--da2k",
                     str(tmp_path / "annotations.json"), "--output", str(tmp_path / "report.json"),
                     "--no-progress"]) == 0
    ordinal = json.loads((tmp_path / "report.json").read_text())["ordinal"]
    assert ordinal["num_pairs"] == sum(len(p) for p in annotations.values())
    correct = {"accuracy": 0, "teacher_accuracy": 0}
    for name, pairs in annotations.items():
        pixels = load_eval_images([Image.open(tmp_path / name)], 14, 56).batches[0]
        for key, model in (("accuracy", load_jetvit(converted["hybrid"])), ("teacher_accuracy", depth_source[1])):
            with torch.no_grad():
                disparity = model(pixels).predicted_depth
            disparity = F.interpolate(disparity[None], size=(42, 56), mode="bilinear", align_corners=True)[0, 0]
            correct[key] += sum(bool(disparity[tuple(p["point1"])] > disparity[tuple(p["point2"])]) for p in pairs)
    for key, count in correct.items():
        assert ordinal[key] == pytest.approx(count / ordinal["num_pairs"])


def test_evaluation_images_keep_order_and_original_sizes():
    assert model_input_size(42, 56, 56, 14) == (56, 70)  # short side to 56, 74.7 rounds to 5 patches
    assert model_input_size(300, 210, 518, 14) == (742, 518)  # 740 rounds to 53 patches
    assert model_input_size(10, 10, (28, 42), 14) == (28, 42)
    images = [Image.new("RGB", size) for size in ((56, 56), (56, 56), (70, 56), (56, 56))]
    eval_images = build_eval_images(images, 14, 56, batch_size=4)
    assert [tuple(b.shape) for b in eval_images.batches] == [(2, 3, 56, 56), (1, 3, 56, 70), (1, 3, 56, 56)]
    assert eval_images.original_sizes == [(56, 56), (56, 56), (56, 70), (56, 56)]
    with pytest.raises(ValueError, match="its depth map is"):
        build_eval_images(images[:1], 14, 56, depth=[torch.ones(3, 3)])


def test_clear_errors(converted, depth_source, source_checkpoint, tmp_path, capsys):
    dinov2 = load_jetvit(source_checkpoint("dinov2")[0])
    unlabelled = build_eval_images([Image.new("RGB", (56, 56))], 14, 56)
    with pytest.raises(ValueError, match="needs a depth model"):
        evaluate_model(dinov2, dinov2, unlabelled, tasks=["depth"])
    with pytest.raises(ValueError, match="Unknown evaluation task"):
        evaluate_model(dinov2, dinov2, unlabelled, tasks=["detection"])
    with pytest.raises(ValueError, match="needs segmentation labels"):
        evaluate_model(dinov2, dinov2, unlabelled, tasks=["segmentation"])
    with pytest.raises(ValueError, match="Teacher and student do not match"):
        evaluate_model(dinov2, load_jetvit(depth_source[0]), unlabelled)
    JetViTSupernet.from_pretrained(converted["full"]).save_pretrained(tmp_path / "supernet")
    with pytest.raises(ValueError, match="saved supernet"):
        load_jetvit(tmp_path / "supernet")
    assert cli_main(["eval", "--model", str(converted["full"]), "--teacher", str(depth_source[0]), "--output",
                     str(tmp_path / "r.json")]) == 2
    assert "--data" in capsys.readouterr().err


def test_ground_truth_beyond_80_m_is_left_out_and_teacher_maps_are_compared_only_where_it_is_valid():
    depth = np.array([[0.0, 5.0, 6.0], [7.0, 80.0, 100.0]], np.float32)
    features = datasets.Features({"image": datasets.Image(), "depth": datasets.Array2D((2, 3), "float32")})
    data = datasets.Dataset.from_dict({"image": [Image.new("RGB", (3, 2))], "depth": [depth]}, features=features)
    loaded = load_eval_images(data, 1, (2, 3)).depth[0]
    assert loaded.tolist() == [[0.0, 5.0, 6.0], [7.0, 80.0, 0.0]]
    teacher = torch.tensor([[0.3, 0.2, 0.2], [0.2, 0.001, 0.5]])  # 0.001 < 1% of the median 0.2 where valid
    compared = within_ground_truth(teacher, loaded)
    assert torch.isnan(compared).tolist() == [[True, False, False], [False, True, True]]
    assert compared[0, 1:].tolist() == pytest.approx([0.2, 0.2])
