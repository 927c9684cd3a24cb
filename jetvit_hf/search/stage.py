"""`jetvit search` end to end: one stage of the beam search on a supernet (or the stage-2 supernet built from stage 1's
choice), writing the log, the chosen attention types, the plots and the extracted model into one directory atomically.
The objective, the teacher and the supernet run on one device in one compute dtype (`jetvit_hf.device`).
"""

import os
import shutil
import time
from pathlib import Path

import torch

from ..convert import load_jetvit
from ..device import resolve_placement
from ..evaluation.probe import load_linear_probe
from ..io import atomic_directory, atomic_write_json
from ..layouts import read_attention_types, stage2_candidates
from ..train.supernet import JetViTSupernet
from ..train.targets import check_teacher_student, unwrap
from .beam import NOISE_FACTOR, STAGES, SearchResult, beam_search
from .objectives import OBJECTIVES, make_objective
from .plots import plot_layer_gain, plot_pareto


def prepare_supernet(supernet, teacher: torch.nn.Module, stage: int, start=None) -> tuple[JetViTSupernet, list | None]:
    """The supernet to search and its start. For stage 2 on a supernet without any `"full"` candidate (a stage-1
    supernet), builds the stage-2 supernet from `start` (stage 1's choice, required): each layer keeps its choice or
    becomes full attention inherited from the teacher's own layer."""
    if not isinstance(supernet, JetViTSupernet):
        supernet = JetViTSupernet.from_pretrained(supernet)
    num_layers = len(supernet.candidates)
    start = read_attention_types(start, num_layers) if start is not None else None
    if stage == 2 and not any("full" in layer for layer in supernet.candidates):
        if start is None:
            raise ValueError("Stage 2 on a supernet without full-attention candidates needs start (stage 1's choice, "
                             "e.g. its attention_types.json).")
        supernet = JetViTSupernet(supernet.extract(start), stage2_candidates(start), inherit_full_from=teacher)
    return supernet, start


SPLITS = ("train", "search", "test")  # what data is for: training, choosing a layout, reporting on the chosen one


def check_split(split: str) -> None:
    """Refuse to search on data named as the test split (or on an unknown split name): a layout chosen by its test
    score has no honest test score left."""
    if split not in SPLITS:
        raise ValueError(f"--split {split!r}: unknown split; allowed: {', '.join(SPLITS)}.")
    if split == "test":
        raise ValueError("--split 'test': the test split only reports on the chosen layout; search on the search "
                         "split (disjoint scenes or images) instead.")


def _processor_config(*sources) -> Path | None:
    for source in sources:
        if isinstance(source, (str, os.PathLike)) and (Path(source) / "preprocessor_config.json").is_file():
            return Path(source) / "preprocessor_config.json"
    return None


def run_search(supernet, teacher, data=None, *, output: str | os.PathLike, objective="feature", stage: int = 1,
               beam_width: int = 3, start=None, max_changes: int | None = None, max_full: int | None = None,
               tolerance: float = 0.0, noise_factor: float = NOISE_FACTOR, latency_table=None,
               latency_budget_ms: float | None = None, metric: str = "delta1", depth_mode: str = "disparity",
               reference: str = "auto", split: str = "search", da2k=None, probe=None,
               num_labels: int | None = None, probe_steps: int = 1000, num_images: int | None = None,
               image_size=None, batch_size: int | None = None, device: str | torch.device = "auto",
               dtype: str | torch.dtype = "auto", overwrite: bool = False, progress: bool = True) -> SearchResult:
    """Search one stage and write `output` atomically: `search_log.json` (`SearchResult.to_dict`),
    `attention_types.json`, `<type>_attention_gain.png` (`full_attention_gain.png` in stage 2), `pareto.png` and
    `model/` (the chosen subnet extracted as an ordinary JetViT, with the source's `preprocessor_config.json`).

    `supernet` is a `JetViTSupernet` or a directory for `JetViTSupernet.from_pretrained` (a saved supernet, a converted
    JetViT or a source checkpoint); `teacher` a JetViT model or a directory for `convert.load_jetvit`; `objective`
    an `Objective` or a name for `make_objective` (with `data` and the remaining options). `split` names what `data`
    is (`SPLITS`); `"test"` is refused (`check_split`). Stage 2's target is the teacher's own score
    (`Objective.teacher_score`, from the outputs the objective kept, with its per-image scores), as in the paper;
    steps and the teacher's reach are judged against `tolerance + noise_factor * SE` (`beam.beam_search`).

    A named objective runs on `device` (auto, cpu, cuda, cuda:N) with forwards in `dtype` (auto, float32, bfloat16,
    float16; `device.resolve_placement`: auto is a GPU with bfloat16 autocast when there is one, else the CPU in
    float32), `batch_size` images per forward (default 16 on a GPU, 8 on the CPU); the supernet and the teacher are
    moved there. The log records the device and dtype and the wall-clock seconds of the set-up (loading, the
    teacher's one pass), of every candidate, of every round and of the stage.
    """
    if stage not in STAGES:
        raise ValueError(f"Unknown search stage {stage!r}; allowed: {list(STAGES)}.")
    if isinstance(objective, str) and objective not in OBJECTIVES:
        raise ValueError(f"Unknown objective {objective!r}; allowed: {list(OBJECTIVES)}.")
    check_split(split)
    placement = resolve_placement(device, dtype)  # an unusable device fails here, before anything is loaded
    sources = {"supernet": supernet, "teacher": teacher, "data": data}
    began = time.perf_counter()
    with atomic_directory(output, overwrite=overwrite) as staging:
        teacher_model = teacher if isinstance(teacher, torch.nn.Module) else load_jetvit(teacher)
        search_supernet, start = prepare_supernet(supernet, teacher_model, stage, start)
        check_teacher_student(unwrap(teacher_model).config, search_supernet.config)
        if isinstance(objective, str):
            objective = make_objective(
                objective, teacher_model, data, image_size=image_size, num_images=num_images, batch_size=batch_size,
                metric=metric, depth_mode=depth_mode, reference=reference, da2k=da2k,
                probe=load_linear_probe(probe) if isinstance(probe, (str, os.PathLike)) else probe,
                num_labels=num_labels, probe_steps=probe_steps, progress=progress, device=placement.device,
                dtype=placement.dtype,
            )
        teacher_score = teacher_images = None
        if stage == 2:
            teacher_score, teacher_images = objective.teacher_score(), objective.teacher_image_scores()
            if teacher_score is None:
                teacher_score, teacher_images = objective.assess(teacher_model)
        setup_seconds = time.perf_counter() - began
        result = beam_search(
            search_supernet, objective, stage=stage, beam_width=beam_width, start=start, max_changes=max_changes,
            max_full=max_full, tolerance=tolerance, noise_factor=noise_factor, teacher_score=teacher_score,
            teacher_image_scores=teacher_images, latency_table=latency_table, latency_budget_ms=latency_budget_ms,
            progress=progress,
        )
        result.timing["setup_seconds"] = setup_seconds
        result.metadata = {name: str(value) if isinstance(value, (str, os.PathLike)) else type(value).__name__
                           for name, value in sources.items() if value is not None}
        result.metadata["split"] = split
        result.save(staging / "search_log.json")
        atomic_write_json(staging / "attention_types.json", {
            "attention_types": result.best, "score": result.best_score, "objective": result.objective["name"],
            "stage": stage, "estimated_latency_ms": result.best_latency_ms,
        })
        plot_layer_gain(result, staging / f"{result.layer_gain['attention_type']}_attention_gain.png")
        plot_pareto(result, staging / "pareto.png")
        extracted = search_supernet.extract(result.best).eval()
        extracted.save_pretrained(staging / "model")
        processor = _processor_config(supernet, teacher)
        if processor is not None:
            shutil.copyfile(processor, staging / "model" / "preprocessor_config.json")
    return result
