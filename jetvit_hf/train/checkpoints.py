"""Checkpoints of a training run: atomic saves, which ones exist, which one to resume, and whether it can be resumed;
and stopping on SIGINT / SIGTERM with a checkpoint of the last finished optimizer step.

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
import signal
import threading
import time
from collections.abc import Iterator
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
     "log_every", "report_to", "num_workers", "gradient_checkpointing", "compile_backend", "max_checkpoint_overhead",
     "cpu"}
)


@dataclass
class Progress:
    """Where the run is: optimizer steps done, the next batch (epoch, index per process) and the subnets drawn."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    micro_step: int = 0
    log_history: list = field(default_factory=list)
    # the log interval a checkpoint between two log steps cuts (loss sums averaged over processes, forwards, subnets),
    # so that a resumed run logs exactly what an uninterrupted one does; empty at log steps
    open_interval: dict = field(default_factory=dict)


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


def saved_step(checkpoint: Path) -> int:
    """The optimizer step a complete checkpoint holds."""
    return json.loads((checkpoint / TRAINER_STATE_FILE).read_text())["step"]


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
    progress = Progress(**{key: saved[key] for key in ("step", "epoch", "batch", "micro_step", "log_history")},
                        open_interval=saved.get("open_interval", {}))
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


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the run after its optimizer step `step`, saved in `checkpoint`. A `KeyboardInterrupt`,
    so that whatever handles Ctrl-C handles it, and `except Exception` does not swallow it."""

    def __init__(self, step: int, max_steps: int, checkpoint: Path):
        super().__init__(f"interrupted after step {step} of {max_steps} (checkpoint {checkpoint})")
        self.step, self.max_steps, self.checkpoint = step, max_steps, checkpoint


# Signals this soon after the first are the same request: a launcher (`accelerate launch`, torchrun) forwards the
# terminal's Ctrl-C to processes that got it already.
REPEATED_SIGNAL_SECONDS = 1.0


@dataclass
class StopRequest:
    """The signal that asked the run to stop (None: none did), and when (`time.monotonic()`)."""

    signal: int | None = None
    at: float = 0.0


@contextlib.contextmanager
def stop_on_signals(request: StopRequest) -> Iterator[None]:
    """While active, SIGINT and SIGTERM only record themselves in `request`: the loop finishes its optimizer step,
    writes a checkpoint and raises `TrainingInterrupted`. Another signal more than `REPEATED_SIGNAL_SECONDS` later
    raises `KeyboardInterrupt` at once (a checkpoint write it cuts leaves only a staging dir). Outside the main thread
    signals cannot be caught; nothing changes there. DataLoader workers forked meanwhile inherit the handlers, so they
    keep serving the last step."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, frame):
        now = time.monotonic()
        if request.signal is None:
            request.signal, request.at = signum, now
        elif now - request.at > REPEATED_SIGNAL_SECONDS:
            raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, handle) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def agreed(accelerator, request: StopRequest, checkpoint_due: bool) -> tuple[bool, bool]:
    """`(stop, checkpoint_due)`: whether any process was asked to stop, and whether any finds a checkpoint due (the
    overhead cap reads each process's own clock); with several processes all of them learn both at the same optimizer
    step (one all-reduce of two flags per step), so they write the same checkpoint and stop together."""
    import torch

    flags = (request.signal is not None, checkpoint_due)
    if accelerator.num_processes == 1:
        return flags
    reduced = accelerator.reduce(torch.tensor([float(flag) for flag in flags], device=accelerator.device), "sum")
    return bool(reduced[0].item() > 0), bool(reduced[1].item() > 0)
