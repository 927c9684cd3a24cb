import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from sources import build_source  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_slow = pytest.mark.skip(reason="slow; set JETVIT_RUN_SLOW=1 to run")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "slow" in item.keywords and os.environ.get("JETVIT_RUN_SLOW") != "1":
            item.add_marker(skip_slow)


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No test may reach the Hub, and `datasets` caches go to the test's own directory."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    try:
        import datasets
    except ImportError:  # a kernels-only environment (e.g. the GPU machine) has no `datasets`
        return
    # datasets reads these when it is imported, which happened already
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")


@pytest.fixture(autouse=True)
def _quiet_transformers():
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    yield


@pytest.fixture(scope="session")
def source_checkpoint(tmp_path_factory):
    """`source_checkpoint(name)` -> (directory, source model): one tiny random checkpoint per family, built once."""
    cache = {}

    def get(name: str):
        if name not in cache:
            directory = tmp_path_factory.mktemp(f"source-{name}")
            cache[name] = (directory, build_source(name, directory))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def coffee_image():
    from PIL import Image

    return Image.open(FIXTURES / "coffee.jpg").convert("RGB")
