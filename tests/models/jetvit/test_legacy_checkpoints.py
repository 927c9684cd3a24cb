"""Checkpoints saved by earlier versions keep loading: the fixtures under `fixtures/legacy_checkpoints/` were written by
`save_converted` before the package was reorganised into folders, with that version's code files for remote code and
the outputs that version computed on a fixed input."""

import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForDepthEstimation

from jetvit_hf import JetViTForDepthEstimation, JetViTModel
from helpers import BLOCK_PACKAGE, FIXTURES, REPO, run_python

LEGACY = FIXTURES / "legacy_checkpoints"
CASES = {"dinov3": (AutoModel, JetViTModel, "last_hidden_state"),
         "depth_anything_v2": (AutoModelForDepthEstimation, JetViTForDepthEstimation, "predicted_depth")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_legacy_checkpoint_loads_with_the_installed_package(name):
    auto_class, jetvit_class, key = CASES[name]
    reference = load_file(LEGACY / name / "expected_outputs.safetensors")
    model = auto_class.from_pretrained(LEGACY / name).eval()
    assert type(model) is jetvit_class  # the installed code wins over the checkpoint's copy
    assert model.config.attention_types.count("linear") >= 2 and "window" in model.config.attention_types
    with torch.no_grad():
        output = getattr(model(pixel_values=reference["pixel_values"]), key)
    # the fixture was computed with another thread count: fp32 rounding, not bitwise
    torch.testing.assert_close(output, reference["expected"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_legacy_checkpoint_loads_with_its_own_remote_code(name, tmp_path):
    auto_class, _, key = CASES[name]
    directory = shutil.copytree(LEGACY / name, tmp_path / name)
    code = BLOCK_PACKAGE + f"""
import torch
from safetensors.torch import load_file
from transformers import {auto_class.__name__}
reference = load_file({str(directory / "expected_outputs.safetensors")!r})
model = {auto_class.__name__}.from_pretrained({str(directory)!r}, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
with torch.no_grad():
    output = model(pixel_values=reference["pixel_values"]).{key}
torch.testing.assert_close(output, reference["expected"], rtol=1e-5, atol=1e-5)
print("ok")
"""
    assert run_python(code, env={"HF_MODULES_CACHE": str(tmp_path / "modules")}, cwd=tmp_path).strip() == "ok"


def test_legacy_checkpoint_resaved_by_this_version_loads_remotely(tmp_path):
    """Re-saving an old checkpoint writes this version's code files, complete enough to run without the package."""
    reference = load_file(LEGACY / "depth_anything_v2" / "expected_outputs.safetensors")
    model = JetViTForDepthEstimation.from_pretrained(LEGACY / "depth_anything_v2")
    model.save_pretrained(tmp_path / "resaved")
    shipped = sorted(p.name for p in (tmp_path / "resaved").glob("*.py"))
    package_files = sorted(p.name for p in (REPO / "jetvit_hf" / "models" / "jetvit").glob("*.py"))
    assert shipped == [name for name in package_files if name != "__init__.py"]
    code = BLOCK_PACKAGE + f"""
import torch
from safetensors.torch import load_file
from transformers import AutoModelForDepthEstimation
reference = load_file({str(LEGACY / "depth_anything_v2" / "expected_outputs.safetensors")!r})
model = AutoModelForDepthEstimation.from_pretrained({str(tmp_path / "resaved")!r}, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
with torch.no_grad():
    output = model(pixel_values=reference["pixel_values"]).predicted_depth
torch.testing.assert_close(output, reference["expected"], rtol=1e-5, atol=1e-5)
print("ok")
"""
    assert run_python(code, env={"HF_MODULES_CACHE": str(tmp_path / "modules")}, cwd=tmp_path).strip() == "ok"
    assert reference["expected"].shape[-2:] == reference["pixel_values"].shape[-2:]
