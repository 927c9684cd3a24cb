"""Checkpoints of a training run: atomic saves, which ones exist, which one to resume, and whether it can be resumed.

A checkpoint is `output_dir/checkpoints/step-XXXXXXX`: Accelerate's state (model, optimizer, scheduler, the RNG states
of every process) plus `trainer_state.json` (the progress, the process count and the config). It is written into a
staging dir that is renamed only when complete, so a killed write never looks like a checkpoint.
"""

import contextlib
import dataclasses
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..io import atomic_directory, atomic_write_json
from .config import TrainConfig

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE_FILE = "trainer_state.json"
TRAIN_LOG_FILE = "train_log.json"
_CHECKPOINT_NAME = re.compile(r"step-(\d{7,})")
# Config fields that may differ when a run is resumed: they do not change the math or the data order.
_RESUME_MAY_CHANGE = frozenset(
    {"teacher", "student", "data", "output_dir", "resume", "max_steps", "checkpoint_every", "keep_checkpoints",
     "log_every", "report_to", "num_workers", "gradient_checkpointing", "cpu"}
)


@dataclass
class Progress:
    """Where the run is: optimizer steps done, the next batch (epoch, index per process) and the subnets drawn."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    micro_step: int = 0
    log_history: list = field(default_factory=list)


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under `directory`, oldest first. Staging dirs of unfinished writes are never listed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [
        path for path in directory.iterdir()
        if _CHECKPOINT_NAME.fullmatch(path.name) and (path / TRAINER_STATE_FILE).is_file()
    ]
    return sorted(found, key=lambda path: int(_CHECKPOINT_NAME.fullmatch(path.name).group(1)))


def find_resume_checkpoint(config: TrainConfig, output_dir: Path) -> Path | None:
    """The checkpoint `config.resume` asks for: none, the latest in `output_dir`, or the one it names."""
    existing = list_checkpoints(output_dir / CHECKPOINTS_DIR)
    if config.resume is False:
        if existing:
            raise ValueError(
                f"{output_dir} already holds checkpoints of an earlier run ({existing[-1].name}); pass --resume to "
                "continue it, or choose another --output_dir."
            )
        return None
    if config.resume is True:
        return existing[-1] if existing else None
    path = Path(config.resume)
    if (path / TRAINER_STATE_FILE).is_file():
        return path
    found = list_checkpoints(path) or list_checkpoints(path / CHECKPOINTS_DIR)
    if not found:
        raise ValueError(f"resume: {path} is neither a complete checkpoint nor a directory holding one.")
    return found[-1]


def restore_progress(accelerator, checkpoint: Path | None, config: TrainConfig, output_dir: Path) -> Progress:
    """Load `checkpoint` (weights, optimizer, scheduler, RNG states, accumulation counter) into the prepared objects of
    `accelerator` and return its progress; without a checkpoint, a fresh start."""
    from accelerate.logging import get_logger

    logger = get_logger(__name__)
    if checkpoint is None:
        if config.resume is True:
            logger.info(f"No checkpoint in {output_dir / CHECKPOINTS_DIR}; starting from scratch.")
        return Progress()
    saved = json.loads((checkpoint / TRAINER_STATE_FILE).read_text())
    _check_resumable(saved, config, accelerator.num_processes)
    accelerator.load_state(str(checkpoint))
    progress = Progress(**{key: saved[key] for key in ("step", "epoch", "batch", "micro_step", "log_history")})
    logger.info(f"Resuming from {checkpoint}: step {progress.step}, epoch {progress.epoch}, batch {progress.batch}")
    return progress


def _check_resumable(saved: dict, config: TrainConfig, num_processes: int) -> None:
    current = config.to_dict() | {"num_processes": num_processes}
    saved = saved["config"] | {"num_processes": saved["num_processes"]}
    changed = [
        f"{key}: {saved.get(key)!r} -> {current[key]!r}"
        for key in current if key not in _RESUME_MAY_CHANGE and saved.get(key) != current[key]
    ]
    if changed:
        raise ValueError(
            "Cannot resume exactly: these settings differ from the checkpoint's (checkpoint -> now): "
            + "; ".join(changed) + ". Use the original settings, or start a new run in another output_dir."
        )


def save_checkpoint(accelerator, output_dir: Path, progress: Progress, config: TrainConfig) -> Path:
    """Accelerate's state (model, optimizer, scheduler, RNG) plus `trainer_state.json`, written into a staging dir that
    becomes `checkpoints/step-XXXXXXX` only when complete; then older checkpoints beyond `keep_checkpoints` go."""
    from accelerate.utils import broadcast_object_list

    checkpoints = output_dir / CHECKPOINTS_DIR
    target = checkpoints / f"step-{progress.step:07d}"
    with contextlib.ExitStack() as stack:
        staging = stack.enter_context(atomic_directory(target, overwrite=True)) if accelerator.is_main_process else None
        staging = broadcast_object_list([staging])[0]  # every process writes its RNG state into the same dir
        accelerator.save_state(str(staging))
        if accelerator.is_main_process:
            trainer_state = dataclasses.asdict(progress) | {
                "num_processes": accelerator.num_processes, "config": config.to_dict()
            }
            atomic_write_json(staging / TRAINER_STATE_FILE, trainer_state)
        accelerator.wait_for_everyone()  # all files are in before the main process renames the dir
    if accelerator.is_main_process:
        atomic_write_json(output_dir / TRAIN_LOG_FILE, progress.log_history)
        complete = list_checkpoints(checkpoints)
        stale = complete[: -config.keep_checkpoints] if config.keep_checkpoints else []
        stale += [path for path in checkpoints.iterdir() if path.name.startswith(".step-")]  # killed writes
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
    return target
