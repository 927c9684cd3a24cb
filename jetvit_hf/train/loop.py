"""The training loop for supernet distillation and fine-tuning, run by `training/distill.py` and `training/finetune.py`.

- `mode="distill"`: the student is a `JetViTSupernet`. Each forward runs one subnet, `supernet.sample(micro_step,
  seed)`: it depends only on the step, so every process draws the same one. The loss is feature distillation against
  the frozen teacher.
- `mode="finetune"`: the student is a fixed JetViT (an extracted subnet). For depth models the loss also includes
  Depth Anything's disparity loss against the teacher's prediction.

Teacher and student go through `task_features`, so the loss compares the features the task head reads. The run uses
Accelerate: DDP, mixed precision, gradient accumulation and trackers. It writes atomic checkpoints, and `resume`
continues a run exactly: the same weights, optimizer and RNG states, the same data order, and the same subnets.
Each log line also carries the run's throughput (`images_per_second` of all processes, `seconds_per_step`), wall time
as the user's run sees it, so distillation speed is measured where it is spent (`benchmarks/bench_distill.py`).
"""

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..io import atomic_directory, atomic_write_json
from ..models.jetvit.modeling_jetvit import JetViTPreTrainedModel
from .checkpoints import (TRAIN_LOG_FILE, Progress, StopRequest, TrainingInterrupted, agreed, find_resume_checkpoint,
                          restore_progress, save_checkpoint, stop_on_signals)
from .config import TrainConfig, resolve_compile_backend
from .loader import build_training_loader
from .losses import FeatureDistillationLoss, depth_anything_loss
from .optimizer import build_optimizer, build_scheduler
from .student import Student, build_student, compile_layers, load_teacher, subnet_code
from .targets import TaskOutputs, task_features

if TYPE_CHECKING:
    from accelerate import Accelerator


@dataclass
class _Interval:
    """What the next log line averages: the loss terms summed over the forwards since the last one, and the subnets
    those forwards ran."""

    sums: dict = field(default_factory=dict)
    forwards: int = 0
    subnets: list = field(default_factory=list)

    def add(self, parts: dict) -> None:
        for name, value in parts.items():
            self.sums[name] = self.sums.get(name, 0.0) + value.float()
        self.forwards += 1

    def snapshot(self, accelerator: "Accelerator") -> dict:
        """The interval for a checkpoint (JSON): the sums averaged over processes (as logging averages them),
        the forwards and the subnets; empty when nothing happened since the last log line."""
        if not self.forwards:
            return {}
        names = sorted(self.sums)
        means = accelerator.reduce(torch.stack([self.sums[name] for name in names]), "mean")
        sums = {name: value.item() for name, value in zip(names, means, strict=True)}
        return {"sums": sums, "forwards": self.forwards, "subnets": list(self.subnets)}

    @classmethod
    def resume(cls, snapshot: dict, device: torch.device) -> "_Interval":
        sums = {name: torch.tensor(value, dtype=torch.float32, device=device)
                for name, value in snapshot.get("sums", {}).items()}
        return cls(sums, snapshot.get("forwards", 0), list(snapshot.get("subnets", [])))


@dataclass
class _Run:
    """What the steps of a run share."""

    config: TrainConfig
    output_dir: Path
    accelerator: "Accelerator"
    teacher: JetViTPreTrainedModel
    student: Student
    module: nn.Module  # `student.module` as Accelerate prepared it (wrapped in DDP with several processes)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    loader: torch.utils.data.DataLoader
    feature_loss: FeatureDistillationLoss
    progress: Progress = field(default_factory=Progress)
    interval: _Interval = field(default_factory=_Interval)
    stop: StopRequest = field(default_factory=StopRequest)
    # the wall clock (`time.perf_counter`) and the optimizer step where the log interval's timing began: the last log
    # line, or the step a resumed run started at (the first interval after a resume is shorter than log_every). A
    # checkpoint written at a log step counts in the next interval: it is part of the run's wall time.
    timing_since: float = 0.0
    timing_step: int = 0
    # when the last checkpoint ended and how long its write took (`max_checkpoint_overhead`); none yet: the first due
    # checkpoint is written
    checkpoint_ended: float = 0.0
    checkpoint_seconds: float = 0.0


def train(config: TrainConfig) -> Path:
    """Run the training `config` describes; returns `output_dir`.

    Writes `output_dir/supernet` (distill) or `output_dir/model` (finetune: a complete HF model directory),
    `train_log.json` (the logged scalars, among them `images_per_second` and `seconds_per_step`, and, for distill, the
    subnets of each step), tensorboard logs under `tensorboard/` and `checkpoints/step-XXXXXXX`. SIGINT or SIGTERM
    ends the current optimizer step, writes a checkpoint and raises `TrainingInterrupted`; resuming from it continues
    exactly.
    """
    from accelerate.utils import set_seed

    output_dir = Path(config.output_dir)
    accelerator = _make_accelerator(config, output_dir)
    if not accelerator.is_local_main_process:  # one copy of the info lines (model conversion, resume)
        logging.getLogger("jetvit_hf").setLevel(logging.WARNING)
    checkpoint = find_resume_checkpoint(config, output_dir)
    set_seed(config.seed)  # new weights (dynamic-conv generators, LoRA) start the same in every run

    teacher = load_teacher(config)
    student = build_student(config, teacher)
    compile_backend = resolve_compile_backend(config, accelerator.device)
    if compile_backend is not None:
        compile_layers(teacher, compile_backend)
        compile_layers(student.model, compile_backend)
    teacher.to(accelerator.device)
    run = _prepare_run(config, output_dir, accelerator, teacher, student)
    run.progress = restore_progress(accelerator, checkpoint, config, output_dir)
    run.interval = _Interval.resume(run.progress.open_interval, accelerator.device)
    accelerator.init_trackers("tensorboard", config=_tracker_config(config))
    with stop_on_signals(run.stop):
        _train_until_done(run)
    _save_outputs(run)
    return output_dir


def _prepare_run(config: TrainConfig, output_dir: Path, accelerator: "Accelerator", teacher: JetViTPreTrainedModel,
                 student: Student) -> _Run:
    """The data, the optimizer and its schedule; Accelerate prepares them with the student (not the schedule, see
    `build_scheduler`), and checkpoints the schedule too."""
    loader = build_training_loader(config, student.model.config.patch_size, accelerator)
    optimizer = build_optimizer(student.trainable, config)
    scheduler = build_scheduler(optimizer, config)
    module, optimizer, loader = accelerator.prepare(student.module, optimizer, loader)
    accelerator.register_for_checkpointing(scheduler)
    feature_loss = FeatureDistillationLoss(kind=config.loss)
    return _Run(config, output_dir, accelerator, teacher, student, module, optimizer, scheduler, loader, feature_loss)


def _train_until_done(run: _Run) -> None:
    """Optimizer steps from where the run is to `max_steps`, epoch after epoch."""
    from tqdm.auto import tqdm

    config, accelerator, progress = run.config, run.accelerator, run.progress
    bar = tqdm(total=config.max_steps, initial=progress.step, desc=config.mode,
               disable=not accelerator.is_local_main_process)
    run.timing_since, run.timing_step = time.perf_counter(), progress.step
    with contextlib.closing(bar):
        while progress.step < config.max_steps:
            # The data order of an epoch depends only on (seed, epoch); a resumed run skips what it already saw.
            run.loader.set_epoch(progress.epoch)
            batches = accelerator.skip_first_batches(run.loader, progress.batch) if progress.batch else run.loader
            for batch in batches:
                _train_micro_batch(run, batch["pixel_values"])
                progress.batch += 1
                if progress.batch == len(run.loader):
                    progress.epoch, progress.batch = progress.epoch + 1, 0
                if not accelerator.sync_gradients:
                    continue
                _end_optimizer_step(run, bar)
                if progress.step >= config.max_steps:
                    break


def _train_micro_batch(run: _Run, pixel_values: torch.Tensor) -> None:
    """The teacher's targets for one micro-batch, then forward and backward for each subnet; the optimizer steps (and
    clips the gradients) on the last micro-batch of an optimizer step."""
    config, accelerator, student = run.config, run.accelerator, run.student
    with accelerator.accumulate(run.module):
        with torch.no_grad(), accelerator.autocast():
            target = task_features(run.teacher, pixel_values, student.targets, with_prediction=student.use_depth_loss)
        for index in range(config.subnets_per_step):
            if student.supernet is not None:
                student.supernet.set(student.supernet.sample(run.progress.micro_step, config.seed))
                run.interval.subnets.append(subnet_code(student.supernet.assignment))
            run.progress.micro_step += 1
            last = index == config.subnets_per_step - 1  # only the last subnet's backward may all-reduce
            with contextlib.nullcontext() if last else accelerator.no_sync(run.module):
                parts = _forward_backward(run, pixel_values, target)
            run.interval.add(parts)
        if accelerator.sync_gradients and config.max_grad_norm > 0:
            accelerator.clip_grad_norm_(student.trainable, config.max_grad_norm)
        run.optimizer.step()  # a no-op until the last micro-batch of the step
        run.optimizer.zero_grad(set_to_none=True)


def _forward_backward(run: _Run, pixel_values: torch.Tensor, target: TaskOutputs) -> dict:
    """The student's loss against `target`, backpropagated; returns the loss and its terms, detached."""
    config = run.config
    features, prediction = run.module(pixel_values)
    loss = run.feature_loss(features, target.features)
    parts = {"feature_loss": loss.detach()}
    if run.student.use_depth_loss:
        depth, depth_parts = depth_anything_loss(prediction, target.prediction)
        loss = loss + config.depth_loss_weight * depth
        parts |= {"depth_loss": depth.detach(), **depth_parts}
    run.accelerator.backward(loss / config.subnets_per_step)
    return parts | {"loss": loss.detach()}


def _end_optimizer_step(run: _Run, bar) -> None:
    """Advance the schedule and the step count; log and checkpoint when due; when asked to stop, checkpoint and raise
    `TrainingInterrupted`."""
    config, progress = run.config, run.progress
    lr = run.scheduler.get_last_lr()[0]
    run.scheduler.step()
    progress.step += 1
    bar.update(1)
    last = progress.step == config.max_steps
    scheduled = progress.step % config.checkpoint_every == 0
    stop, due = agreed(run.accelerator, run.stop, scheduled and (
        not config.max_checkpoint_overhead
        or time.perf_counter() - run.checkpoint_ended >= run.checkpoint_seconds / config.max_checkpoint_overhead))
    checkpoint_now = due or last
    # a scheduled checkpoint never splits a log interval; logging at every scheduled one, written or skipped by the
    # overhead cap, keeps the log the same however long the writes take
    if scheduled or last or progress.step % config.log_every == 0:
        _log(run, lr, bar)
    if checkpoint_now or stop:
        checkpoint = _checkpoint(run)
    if stop:
        run.accelerator.end_training()  # flush the trackers
        raise TrainingInterrupted(progress.step, config.max_steps, checkpoint)


def _checkpoint(run: _Run) -> Path:
    """A checkpoint of the run as it is, with the log interval it cuts (none at log steps)."""
    run.progress.open_interval = run.interval.snapshot(run.accelerator)
    began = time.perf_counter()
    checkpoint = save_checkpoint(run.accelerator, run.output_dir, run.progress, run.config)
    run.checkpoint_ended = time.perf_counter()
    run.checkpoint_seconds = run.checkpoint_ended - began
    return checkpoint


def _log(run: _Run, lr: float, bar) -> None:
    """The interval's loss terms, averaged over its forwards and all processes, `lr` and the throughput: to the
    trackers, the progress bar and the log history; for a supernet also the subnets drawn, which must agree across
    processes."""
    from accelerate.utils import gather_object

    config, accelerator, progress, interval = run.config, run.accelerator, run.progress, run.interval
    names = sorted(interval.sums)
    means = accelerator.reduce(torch.stack([interval.sums[name] for name in names]) / interval.forwards, "mean")
    scalars = {name: value.item() for name, value in zip(names, means, strict=True)} | {"lr": lr}
    # Wall time since the interval's timing began. The `.item()` above waited for the device's queued work (and the
    # reduce for every process), so no synchronize on the step path is needed.
    now = time.perf_counter()
    seconds, steps = now - run.timing_since, progress.step - run.timing_step
    images = steps * config.batch_size * config.gradient_accumulation_steps * accelerator.num_processes
    scalars |= {"images_per_second": images / seconds, "seconds_per_step": seconds / steps}
    accelerator.log(scalars, step=progress.step)
    entry = {"step": progress.step} | scalars
    postfix = {"loss": f"{scalars['loss']:.4f}", "lr": f"{lr:.2e}", "img/s": f"{scalars['images_per_second']:.1f}"}
    if run.student.supernet is not None:
        everyone = gather_object([interval.subnets])
        if any(other != interval.subnets for other in everyone):
            raise RuntimeError(f"Processes sampled different subnets by step {progress.step}: {everyone}")
        entry["subnets"] = interval.subnets
        postfix["subnet"] = interval.subnets[-1]
    bar.set_postfix(postfix)
    progress.log_history.append(entry)
    run.interval = _Interval()
    run.timing_since, run.timing_step = now, progress.step  # the next interval's timing begins here


def _save_outputs(run: _Run) -> None:
    """Once every process is done: the trained model and the log history, written by the main process."""
    accelerator = run.accelerator
    accelerator.wait_for_everyone()
    model = run.student.trained_model()
    if accelerator.is_main_process:
        _save_result(run.config, run.output_dir, run.student.supernet, model)
        atomic_write_json(run.output_dir / TRAIN_LOG_FILE, run.progress.log_history)
    accelerator.wait_for_everyone()
    accelerator.end_training()


def _save_result(config: TrainConfig, output_dir: Path, supernet, model: JetViTPreTrainedModel) -> None:
    """Atomically write `output_dir/supernet` (distill) or `output_dir/model` (finetune: a complete HF model directory
    with the student's, else the teacher's, image-processor config), each with the `jetvit_conversion.json` of
    `convert.trained_conversion_info`: it names the source the weights came from, so `jetvit bench --model` times
    transformers' model beside it and `jetvit card` names the base model."""
    from ..convert import resolve_source, trained_conversion_info

    info = trained_conversion_info(model, [config.student, config.teacher])
    with atomic_directory(output_dir / ("model" if supernet is None else "supernet"), overwrite=True) as staging:
        if supernet is not None:
            supernet.save_pretrained(staging, overwrite=True)  # takes the place of the empty staging directory
        else:
            model.save_pretrained(staging)
            for processor in (Path(config.student) / "preprocessor_config.json",
                              resolve_source(config.teacher) / "preprocessor_config.json"):
                if processor.is_file():
                    shutil.copyfile(processor, staging / processor.name)
                    break
        if info is not None:
            atomic_write_json(staging / "jetvit_conversion.json", info.to_dict())


# ----------------------------------------------------------------------------------------------------------------------
# Accelerate


def _make_accelerator(config: TrainConfig, output_dir: Path):
    import importlib.util

    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    log_with = None
    if config.report_to == "tensorboard":
        if importlib.util.find_spec("tensorboard") is not None:
            log_with = "tensorboard"
        else:
            logging.getLogger(__name__).warning("tensorboard is not installed; logging to train_log.json only.")
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=log_with,
        project_dir=str(output_dir),
        cpu=config.cpu,
        # inactive candidates get no gradient in a step (nor do layers after the last feature tap)
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise ValueError(
            f"{launched} processes were launched, but Accelerate runs this one alone (no GPU found): to train on "
            "CPU processes over gloo, pass --cpu (or set ACCELERATE_USE_CPU=1)."
        )
    return accelerator


def _tracker_config(config: TrainConfig) -> dict:
    """The config as scalars, which is all tensorboard's hparams take."""
    return {
        key: value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
        for key, value in config.to_dict().items()
    }


def reset_accelerate_state() -> None:
    """Forget Accelerate's process-wide state, as a new process would: each `train` builds its own `Accelerator`
    (a resumed run, or the next stage of `jetvit pipeline`, in the same process)."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    for state in (PartialState, AcceleratorState, GradientState):
        state._shared_state.clear()
