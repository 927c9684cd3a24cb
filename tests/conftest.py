import copy
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from helpers import FIXTURES  # noqa: E402
from sources import build_source  # noqa: E402



def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_slow = pytest.mark.skip(reason="slow; set JETVIT_RUN_SLOW=1 to run")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "slow" in item.keywords and os.environ.get("JETVIT_RUN_SLOW") != "1":
            item.add_marker(skip_slow)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The tests' models are tiny: a second intra-op thread only adds OpenMP barriers and scheduling jitter (tens of
    times slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


@pytest.fixture(scope="module")
def depth_source(source_checkpoint, tmp_path_factory):
    """The tiny Depth Anything V2 source with a steeper head, so its disparity varies by more than 10% across pixels
    (ordinal pairs need that)."""
    _, source = source_checkpoint("depth_anything_v2")
    source = copy.deepcopy(source)
    with torch.no_grad():
        source.head.conv3.weight.mul_(40)
    directory = tmp_path_factory.mktemp("depth-source")
    source.save_pretrained(directory)
    return directory, source


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Six rendered scenes of the train split (42 x 56, exact depth and labels), saved to disk."""
    import datasets

    from jetvit_hf.data.render_stream import render_dataset

    directory = tmp_path_factory.mktemp("scenes")
    with pytest.MonkeyPatch.context() as patch:  # set up before the per-test `_offline`, whose cache is not in force
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", directory / "cache")
        render_dataset("train", 6, 42, 56).save_to_disk(str(directory / "data"))
    return directory / "data"
