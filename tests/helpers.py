"""Small helpers shared by the tests."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FIXTURES = TESTS / "fixtures"

BLOCK_PACKAGE = """
import sys
class _BlockJetViT:
    def find_spec(self, name, path=None, target=None):
        if name == "jetvit_hf" or name.startswith("jetvit_hf."):
            raise ImportError("jetvit_hf is hidden in this process")
sys.meta_path.insert(0, _BlockJetViT())
try:
    import jetvit_hf
    raise SystemExit("jetvit_hf should not be importable here")
except ImportError:
    pass
"""


TIMING_KEYS = ("images_per_second", "seconds_per_step")  # wall-clock throughput in each train log entry


def read_train_log(output_dir, timing: bool = False) -> list[dict]:
    """A training run's `train_log.json`; without the throughput keys unless `timing`, since wall time differs
    between runs that must otherwise log exactly the same."""
    log = json.loads((Path(output_dir) / "train_log.json").read_text())
    if timing:
        return log
    return [{key: value for key, value in entry.items() if key not in TIMING_KEYS} for entry in log]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| over all elements (Frobenius norms), computed in float64."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).norm() / expected.norm()).item()


def run_python(code: str, env: dict | None = None, cwd=None) -> str:
    result = subprocess.run(  # one thread, as the tests run (conftest): bitwise comparisons need the same reductions
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, cwd=cwd, timeout=300,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout
