"""Distillation losses against float64 numpy references written independently, and hand-computed cases."""

import numpy as np
import pytest
import torch

from jetvit_hf.train.losses import (
    FeatureDistillationLoss,
    depth_anything_loss,
    gradient_matching_loss,
    normalize_disparity,
    scale_shift_invariant_loss,
)

# ------------------------------------------------------------------------------------------- feature distillation


def reference_feature_loss(students, teachers, kind, cosine_weight=0.9, smooth_l1_weight=0.1, beta=1.0):
    per_tap = []
    for student, teacher in zip(students, teachers):
        if kind == "mse":
            per_tap.append(np.mean((student - teacher) ** 2))
            continue
        channel_axis = -1 if student.ndim == 3 else 1
        cosine = np.sum(student * teacher, channel_axis) / (
            np.linalg.norm(student, axis=channel_axis) * np.linalg.norm(teacher, axis=channel_axis)
        )
        difference = np.abs(student - teacher)
        smooth_l1 = np.where(difference < beta, 0.5 * difference**2 / beta, difference - 0.5 * beta)
        per_tap.append(cosine_weight * np.mean(1 - cosine) + smooth_l1_weight * np.mean(smooth_l1))
    return np.mean(per_tap)


def random_taps(seed):
    """A [B, N, C] token tap and a [B, C, H, W] map tap, teacher = noisy student."""
    rng = np.random.default_rng(seed)
    students = [rng.normal(size=(2, 7, 16)), rng.normal(scale=2.0, size=(2, 16, 3, 4))]
    teachers = [s + rng.normal(scale=0.8, size=s.shape) for s in students]
    return students, teachers


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"cosine_weight": 1.0, "smooth_l1_weight": 0.5, "beta": 0.3}, {"kind": "mse"}],
    ids=["default", "weights", "mse"],
)
def test_feature_loss_matches_reference(kwargs):
    students, teachers = random_taps(seed=0)
    loss = FeatureDistillationLoss(**kwargs)(
        [torch.from_numpy(s) for s in students], [torch.from_numpy(t) for t in teachers]
    )
    expected = reference_feature_loss(students, teachers, kwargs.get("kind", "cosine_smooth_l1"),
                                      **{k: v for k, v in kwargs.items() if k != "kind"})
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_feature_loss_hand_computed():
    # Student (1, 0), teacher (0, 2): cos = 0, |diff| = (1, 2) -> SmoothL1 (beta 1) = (0.5 + 1.5) / 2 = 1.
    student, teacher = torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[0.0, 2.0]]])
    assert FeatureDistillationLoss()(student, teacher).item() == pytest.approx(0.9 * 1 + 0.1 * 1.0)
    assert FeatureDistillationLoss("mse")(student, teacher).item() == pytest.approx((1 + 4) / 2)
    assert FeatureDistillationLoss()(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)


def test_feature_loss_bf16_is_computed_in_float32_and_teacher_gets_no_gradient():
    students, teachers = random_taps(seed=1)
    student = [torch.from_numpy(s).to(torch.bfloat16).requires_grad_() for s in students]
    teacher = [torch.from_numpy(t).to(torch.bfloat16).requires_grad_() for t in teachers]
    loss = FeatureDistillationLoss()(student, teacher)
    assert loss.dtype == torch.float32
    expected = reference_feature_loss([s.detach().double().numpy() for s in student],
                                      [t.detach().double().numpy() for t in teacher], "cosine_smooth_l1")
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert all(t.grad is None for t in teacher)
    assert all(s.grad.isfinite().all() and s.grad.abs().sum() > 0 for s in student)


def test_feature_loss_bare_tensor_is_one_tap():
    students, teachers = random_taps(seed=2)
    s, t = torch.from_numpy(students[1]), torch.from_numpy(teachers[1])
    loss = FeatureDistillationLoss()
    assert loss(s, t).item() == loss([s], [t]).item()


def test_feature_loss_errors():
    loss = FeatureDistillationLoss()
    with pytest.raises(ValueError, match="2 student feature taps but 1 teacher"):
        loss([torch.ones(1, 2, 3)] * 2, [torch.ones(1, 2, 3)])
    with pytest.raises(ValueError, match=r"Tap 0: student shape \(1, 2, 3\) != teacher shape \(1, 3, 3\)"):
        loss([torch.ones(1, 2, 3)], [torch.ones(1, 3, 3)])
    with pytest.raises(ValueError, match="at least one"):
        loss([], [])
    with pytest.raises(ValueError, match="kind must be one of"):
        FeatureDistillationLoss("l1")


# ---------------------------------------------------------------------------------------------- Depth Anything


def reference_normalize(disparity, mask, eps=1e-6):
    out = np.zeros_like(disparity)
    for i in range(len(disparity)):
        values = disparity[i][mask[i]]
        if values.size == 0:
            continue
        median = np.sort(values)[(values.size - 1) // 2]  # lower median
        spread = np.mean(np.abs(values - median))
        out[i][mask[i]] = (values - median) / max(spread, eps)
    return out


def reference_depth_anything(prediction, target, mask, trim=0.1, scales=4):
    """(ssi, gm): DA-V2 trimming as `L[L < quantile(L, 1 - trim)].mean()`, MiDaS gradient loss, mean over images."""
    valid = mask & np.isfinite(target)
    residual = reference_normalize(prediction, valid) - reference_normalize(np.where(valid, target, 0), valid)
    ssi, gm = [], []
    for r, m in zip(residual, valid):
        if not m.any():
            continue
        loss = np.abs(r[m])
        ssi.append(loss[loss < np.quantile(loss, 1 - trim)].mean() if trim else loss.mean())
        total = 0.0
        for k in range(scales):
            rk, mk = r[:: 2**k, :: 2**k], m[:: 2**k, :: 2**k].astype(np.float64)
            dx = np.abs(np.diff(rk, axis=1)) * mk[:, 1:] * mk[:, :-1]
            dy = np.abs(np.diff(rk, axis=0)) * mk[1:] * mk[:-1]
            total += (dx.sum() + dy.sum()) / max(mk.sum(), 1)
        gm.append(total)
    return np.mean(ssi), np.mean(gm)


def random_disparity_batch(seed, batch=3, height=13, width=11):
    """Images with different numbers of valid pixels, NaN targets off the mask, and (batch > 3) an empty image."""
    rng = np.random.default_rng(seed)
    target = rng.uniform(0.1, 5.0, (batch, height, width))
    prediction = 2.0 * target + 1.0 + rng.normal(scale=0.5, size=target.shape)
    mask = rng.random(target.shape) < 0.85
    mask[1, : height // 2] = False
    mask[3:] = False
    target[~mask & (rng.random(target.shape) < 0.5)] = np.nan  # only ever off the mask
    return prediction, target, mask


def test_normalize_disparity_hand_computed():
    # [1, 2, 3, 10]: lower median 2, mean |d - 2| = (1 + 0 + 1 + 8) / 4 = 2.5.
    disparity = torch.tensor([[[1.0, 2.0], [3.0, 10.0]]])
    np.testing.assert_allclose(normalize_disparity(disparity).numpy(), [[[-0.4, 0.0], [0.4, 3.2]]], rtol=1e-6)
    # Masking out 10: [1, 2, 3] -> median 2, spread 2/3; the masked pixel is 0.
    mask = torch.tensor([[[True, True], [True, False]]])
    np.testing.assert_allclose(normalize_disparity(disparity, mask).numpy(), [[[-1.5, 0.0], [1.5, 0.0]]], rtol=1e-6)
    # A constant map normalises to zeros, not NaN.
    assert normalize_disparity(torch.full((1, 2, 2), 3.0)).abs().max().item() == 0.0


def test_normalize_disparity_matches_reference():
    prediction, _, mask = random_disparity_batch(seed=3, batch=4)
    got = normalize_disparity(torch.from_numpy(prediction), torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(got, reference_normalize(prediction, mask), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("trim", [0.1, 0.0, 0.25])
def test_depth_anything_loss_matches_reference(trim):
    prediction, target, mask = random_disparity_batch(seed=4, batch=4)
    total, parts = depth_anything_loss(*map(torch.from_numpy, (prediction, target, mask)), trim=trim)
    ssi, gm = reference_depth_anything(prediction, target, mask, trim=trim)
    assert parts["ssi"].item() == pytest.approx(ssi, rel=1e-12)
    assert parts["gradient_matching"].item() == pytest.approx(gm, rel=1e-12)
    assert total.item() == pytest.approx(ssi + 2.0 * gm, rel=1e-12)
    inputs = [torch.from_numpy(a) for a in (prediction, target, mask)]
    assert scale_shift_invariant_loss(*inputs, trim=trim).item() == pytest.approx(ssi, rel=1e-12)
    assert gradient_matching_loss(*inputs).item() == pytest.approx(gm, rel=1e-12)


def test_non_finite_targets_are_masked_out():
    prediction, target, _ = random_disparity_batch(seed=8)
    target[np.random.default_rng(8).random(target.shape) < 0.2] = np.inf
    target[0, 0, 0] = np.nan
    total, parts = depth_anything_loss(torch.from_numpy(prediction), torch.from_numpy(target))  # no mask given
    ssi, gm = reference_depth_anything(prediction, target, np.isfinite(target))
    assert parts["ssi"].item() == pytest.approx(ssi, rel=1e-12)
    assert parts["gradient_matching"].item() == pytest.approx(gm, rel=1e-12)


@pytest.mark.parametrize("pixels, trim", [(10, 0.1), (11, 0.1), (20, 0.1), (21, 0.1), (31, 0.1), (57, 0.1),
                                          (4, 0.3), (14, 0.3), (15, 0.3)])
def test_trimming_equals_da_v2_quantile_rule_on_distinct_losses(pixels, trim):
    # (pixels - 1) * 0.9 is whole for 11, 21 and 31: the quantile is then a data value, which `<` drops. For trim 0.3
    # and 4 or 14 pixels, the DA rule keeps one pixel more than "drop the floor(trim * n) largest".
    rng = np.random.default_rng(pixels)
    prediction, target = rng.normal(size=(2, 1, pixels)), rng.normal(size=(2, 1, pixels))
    mask = np.ones_like(prediction, dtype=bool)
    loss = scale_shift_invariant_loss(torch.from_numpy(prediction), torch.from_numpy(target), trim=trim)
    expected = reference_depth_anything(prediction, target, mask, trim=trim, scales=1)[0]
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_trimming_hand_computed_and_ties():
    # Constant target -> normalised target 0, so the per-pixel loss is |normalised prediction|. This prediction has
    # lower median 0 and mean |p| = 1, so it is its own normalisation: losses [0, 0, 0, 0, 0, 1, 1, 2, 2, 4].
    target = torch.full((1, 1, 10), 5.0)
    prediction = torch.tensor([[[0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 4.0]]])
    # k = ceil(9 * 0.9) = 9 kept: drops the 4 (the 90th percentile is 2.2).
    assert scale_shift_invariant_loss(prediction, target).item() == pytest.approx(6 / 9)
    assert scale_shift_invariant_loss(prediction, target, trim=0.0).item() == pytest.approx(10 / 10)
    # k = ceil(9 * 0.7) = 7 kept: [0, 0, 0, 0, 0, 1, 1].
    assert scale_shift_invariant_loss(prediction, target, trim=0.3).item() == pytest.approx(2 / 7)

    # Ties at the quantile: 19 zero losses and one of 20. The quantile is 0, so `L < v` keeps nothing (NaN);
    # this loss keeps the k = ceil(19 * 0.9) = 18 smallest, all zeros.
    prediction = torch.zeros(1, 1, 20)
    prediction[..., -1] = 20.0
    target = torch.full((1, 1, 20), 5.0)
    assert scale_shift_invariant_loss(prediction, target).item() == 0.0
    assert scale_shift_invariant_loss(prediction, target, trim=0.0).item() == pytest.approx(1.0)


def test_gradient_matching_hand_computed():
    # Constant target, prediction [[0, 1], [-1, 0]]: lower median 0, spread 0.5 -> residual [[0, 2], [-2, 0]].
    # dx: |2 - 0| + |0 + 2| = 4, dy: |-2 - 0| + |0 - 2| = 4 -> 8 / 4 pixels. Scale 1 is a single pixel: adds 0.
    prediction = torch.tensor([[[0.0, 1.0], [-1.0, 0.0]]])
    target = torch.full_like(prediction, 3.0)
    assert gradient_matching_loss(prediction, target, scales=1).item() == pytest.approx(2.0)
    assert gradient_matching_loss(prediction, target, scales=2).item() == pytest.approx(2.0)
    # Masking out pixel (1, 1): residual [[0, 1.5], [-1.5, -]] -> one x pair (1.5) and one y pair (1.5) over 3 pixels.
    mask = torch.tensor([[[True, True], [True, False]]])
    assert gradient_matching_loss(prediction, target, mask, scales=1).item() == pytest.approx(1.0)


def test_gradient_matching_coarse_scales_follow_subsampling():
    # Residual = normalised prediction; on a 4x4 the scale-1 grid is pixels (0, 0), (0, 2), (2, 0), (2, 2).
    prediction = torch.zeros(1, 4, 4, dtype=torch.float64)
    prediction[0, 0, 2] = 16.0  # lower median 0, spread 1: residual is the prediction itself
    target = torch.ones_like(prediction)
    # Scale 0: |16| twice in x and once in y over 16 pixels. Scale 1 ([[0, 16], [0, 0]]): once in x and once in y
    # over 4 pixels.
    assert gradient_matching_loss(prediction, target, scales=1).item() == pytest.approx(3 * 16 / 16)
    assert gradient_matching_loss(prediction, target, scales=2).item() == pytest.approx(3 * 16 / 16 + 2 * 16 / 4)


@pytest.mark.parametrize("scale, shift", [(3.0, -2.0), (0.01, 100.0)])
def test_losses_are_invariant_to_positive_affine_maps_of_the_target(scale, shift):
    _, target, mask = random_disparity_batch(seed=5)
    target, mask = torch.from_numpy(target), torch.from_numpy(mask)
    prediction = scale * torch.nan_to_num(target, nan=7.0) + shift  # off-mask values are arbitrary
    assert scale_shift_invariant_loss(prediction, target, mask).item() == pytest.approx(0.0, abs=1e-9)
    assert gradient_matching_loss(prediction, target, mask).item() == pytest.approx(0.0, abs=1e-9)
    # A negative scale flips the disparity ordering and is penalised.
    assert scale_shift_invariant_loss(-prediction, target, mask).item() > 0.5
    assert gradient_matching_loss(-prediction, target, mask).item() > 0.5


def test_depth_anything_loss_gradients():
    prediction, target, mask = random_disparity_batch(seed=6, batch=4, height=7, width=6)
    prediction = torch.from_numpy(prediction).requires_grad_()
    target, mask = torch.from_numpy(target), torch.from_numpy(mask)
    total, _ = depth_anything_loss(prediction, target, mask)
    total.backward()
    assert prediction.grad.isfinite().all()
    assert prediction.grad[~mask].abs().max() == 0
    assert prediction.grad[mask].abs().sum() > 0
    fresh = prediction.detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda p: depth_anything_loss(p, target, mask)[0], (fresh,))


def test_depth_anything_loss_bf16_and_empty_mask():
    prediction, target, mask = random_disparity_batch(seed=7)
    low = torch.from_numpy(prediction).to(torch.bfloat16).requires_grad_()
    total, parts = depth_anything_loss(low, torch.from_numpy(target).float(), torch.from_numpy(mask))
    assert total.dtype == torch.float32
    target32 = target.astype(np.float32).astype(np.float64)
    ssi, gm = reference_depth_anything(low.detach().double().numpy(), target32, mask)
    assert parts["ssi"].item() == pytest.approx(ssi, rel=1e-4)
    assert parts["gradient_matching"].item() == pytest.approx(gm, rel=1e-4)
    total.backward()
    assert low.grad.dtype == torch.bfloat16 and low.grad.float().isfinite().all()

    empty = torch.zeros_like(torch.from_numpy(mask))
    total, _ = depth_anything_loss(low, torch.from_numpy(target).float(), empty)
    assert total.item() == 0.0


def test_depth_losses_reject_bad_inputs():
    with pytest.raises(ValueError, match=r"\[\(2, 4, 4\), \(2, 4, 5\)\]"):
        scale_shift_invariant_loss(torch.ones(2, 4, 4), torch.ones(2, 4, 5))
    with pytest.raises(ValueError, match="trim must be in"):
        scale_shift_invariant_loss(torch.rand(1, 4, 4), torch.rand(1, 4, 4), trim=1.0)
    with pytest.raises(ValueError, match="scales must be at least 1"):
        gradient_matching_loss(torch.rand(1, 4, 4), torch.rand(1, 4, 4), scales=0)
