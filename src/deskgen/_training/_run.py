"""`train_lora` and its training loop: the optimizer and schedule, resuming from a
checkpoint, gradient accumulation, checkpoints, the loss log, and the result."""

from __future__ import annotations

import math
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._checkpoints import FORMAT, Resumable, list_checkpoints, newest_good, save_checkpoint
from .._exceptions import ConfigError, DeskgenError
from ._config import LoraTrainingConfig, TrainingProgress, TrainingResult, _config_digest
from ._save import (
    _append_log,
    _as_random_state,
    _metadata,
    _plain_random_state,
    _truncate_log,
)
from ._trainer import _device_of, _Trainer


def train_lora(
    config: LoraTrainingConfig,
    *,
    progress: bool = True,
    on_step: Callable[[TrainingProgress], None] | None = None,
) -> TrainingResult:
    """Train a LoRA on ``config.data`` and write ``OUT/NAME.safetensors`` (see the module).

    With ``config.resume`` and a checkpoint in ``OUT/checkpoints``, the run continues from the
    latest one that verifies exactly as if it had not stopped (a damaged newer one is skipped,
    with a warning in the result). ``on_step`` is called after every optimizer step; an
    exception it raises stops training (checkpoints already written stay).

    Raises:
        ConfigError: no usable data, a checkpoint from other settings, or mixed precision
            without a GPU.
        ModelLoadError: every checkpoint in ``OUT/checkpoints`` is damaged.
        ModelNotFoundError, ModelLoadError, ModelMismatchError: the base model (as for
            `DeskGenerator`).
        OutOfMemoryError: the GPU (or the CPU's allocator) ran out of memory while training;
            the message says what to lower.
        MissingDependencyError: the ``local`` extra is not installed.
    """
    from .._registry import get_backend_class

    get_backend_class("sdxl")  # raises MissingDependencyError without the local extra
    try:
        return _train(config, progress=progress, on_step=on_step)
    except DeskgenError:
        raise
    except Exception as exc:
        from .._device import resolve_device
        from ..backends._request_memory import is_out_of_memory, out_of_memory_error

        if is_out_of_memory(exc):
            raise out_of_memory_error(
                exc,
                device=resolve_device(config.device),
                what="while training",
                hint="Lower batch_size (raise gradient_accumulation_steps to keep the effective "
                "batch), the resolution, or turn on gradient_checkpointing.",
            ) from exc
        raise


def _train(
    config: LoraTrainingConfig,
    *,
    progress: bool,
    on_step: Callable[[TrainingProgress], None] | None,
) -> TrainingResult:
    import torch
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    started = time.perf_counter()
    out = Path(os.path.expanduser(config.out))
    out.mkdir(parents=True, exist_ok=True)
    # verified before the model loads: all of them damaged is an error at once
    resume: Resumable | None = newest_good(out) if config.resume else None
    devices = [torch.device(d).index or 0 for d in [_device_of(config)] if d.startswith("cuda")]
    with torch.random.fork_rng(devices=devices):  # the caller's random state stays as it was
        torch.manual_seed(config.seed)  # the LoRA's gaussian initialisation
        trainer = _Trainer(config)
    trainer.assign_buckets()

    batches_per_epoch = len(trainer.epoch_batches(0))
    steps_per_epoch = math.ceil(batches_per_epoch / config.gradient_accumulation_steps)
    total_steps = config.max_steps or steps_per_epoch * config.epochs
    groups: list[dict[str, Any]] = [
        {"params": [p for p in trainer.unet.parameters() if p.requires_grad]}
    ]
    if config.train_text_encoders:
        groups.append(
            {
                "params": [
                    p for e in trainer.text_encoders for p in e.parameters() if p.requires_grad
                ],
                "lr": config.text_encoder_learning_rate or config.learning_rate,
            }
        )
    optimizer = torch.optim.AdamW(
        groups, lr=config.learning_rate, weight_decay=config.adam_weight_decay
    )
    schedule = get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps,
        num_training_steps=total_steps,
    )
    scaler = torch.amp.GradScaler("cuda", enabled=trainer.precision == "fp16")
    generator = torch.Generator().manual_seed(config.seed)
    rng = random.Random(config.seed)
    digest = _config_digest(config)
    data_digest = trainer.data_digest()

    step, epoch, next_batch, resumed_from = 0, 0, 0, None
    loss_before: float | None = None
    if resume is not None:
        latest, state = resume.folder, resume.state
        for folder, why in resume.damaged:
            trainer.warnings.append(
                f"The checkpoint {str(folder)!r} is damaged ({why}): resumed from "
                f"{latest.name} instead; the damaged one is deleted when this run writes its "
                "first checkpoint."
            )
        if state.get("format") != FORMAT or state.get("config") != digest:
            raise ConfigError(
                f"The checkpoint {str(latest)!r} was made with other settings (model, rank, "
                "learning rate...): train into another out folder, or pass resume=False to "
                "start over (its checkpoints are then replaced)."
            )
        if state.get("data") != data_digest:
            raise ConfigError(
                f"The data changed since the checkpoint {str(latest)!r} (images or captions "
                "added, removed or edited), so its place in the data means nothing now: train "
                "into another out folder, or pass resume=False to start over."
            )
        shaped = config.lr_scheduler not in ("constant", "constant_with_warmup")
        if shaped and state.get("total_steps") != total_steps:
            raise ConfigError(
                f"The checkpoint was made for {state.get('total_steps')} steps and this run asks "
                f"for {total_steps}: a {config.lr_scheduler!r} schedule depends on the length. "
                "Keep max_steps/epochs as they were, or use a constant schedule."
            )
        trainer.load_lora_state(resume.adapter)
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        scaler.load_state_dict(state["scaler"])
        generator.set_state(state["generator"])
        rng.setstate(_as_random_state(state["rng"]))
        step, epoch, next_batch = state["step"], state["epoch"], state["next_batch"]
        resumed_from, loss_before = step, float(state["loss_before"])  # the first run's
    # a fresh start replaces the old checkpoints, and a resumed one the damaged ones it skipped,
    # but only once it has one of its own
    stale = [f for f, _ in resume.damaged] if resume is not None else list_checkpoints(out)
    resume = None  # its tensors are in the modules now
    log_path = out / "loss.jsonl"
    if resumed_from is None:
        log_path.unlink(missing_ok=True)
    else:  # drop what the interrupted run logged after its last checkpoint
        _truncate_log(log_path, step)

    if loss_before is None:
        loss_before = trainer.fixed_loss()
    for module in trainer.trained:
        module.train()
    saved: list[Path] = []
    accum = config.gradient_accumulation_steps

    def checkpoint() -> None:
        folder = out / "checkpoints" / f"step-{step:06d}"
        flat = {f"{c}.{k}": v for c, part in trainer.lora_state().items() for k, v in part.items()}
        save_checkpoint(
            folder,
            flat,
            {
                "format": FORMAT,
                "config": digest,
                "step": step,
                "epoch": epoch,
                "next_batch": next_batch,
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "scaler": scaler.state_dict(),
                "generator": generator.get_state(),
                "rng": _plain_random_state(rng.getstate()),
                "loss_before": loss_before,
                "data": data_digest,
                "total_steps": total_steps,
            },
        )
        for old in stale:
            if old != folder:  # the same step written again has replaced it
                shutil.rmtree(old, ignore_errors=True)
        stale.clear()
        saved.append(folder)
        if config.keep_checkpoints is not None:
            for old in list_checkpoints(out)[: -config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)

    bar = tqdm(total=total_steps, initial=step, disable=not progress, unit="step", desc="training")
    window: list[float] = []
    try:
        while step < total_steps:
            batches = trainer.epoch_batches(epoch)
            while next_batch < len(batches) and step < total_steps:
                batch = batches[next_batch]
                next_batch += 1
                loss = trainer.loss(batch, generator, rng)
                scaler.scale(loss / accum).backward()
                window.append(float(loss.detach()))
                last_of_epoch = next_batch >= len(batches)
                if len(window) < accum and not last_of_epoch:
                    continue
                if config.max_grad_norm is not None:
                    scaler.unscale_(optimizer)
                    params = [p for g in groups for p in g["params"]]
                    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                mean = sum(window) / len(window)
                window = []
                report = TrainingProgress(
                    step=step,
                    total_steps=total_steps,
                    epoch=epoch,
                    loss=mean,
                    learning_rate=float(schedule.get_last_lr()[0]),
                    elapsed=time.perf_counter() - started,
                )
                _append_log(log_path, report)
                bar.update(1)
                bar.set_postfix(loss=f"{mean:.4f}")
                if last_of_epoch:  # the checkpoint then resumes at the next epoch's start
                    epoch, next_batch = epoch + 1, 0
                every = config.checkpoint_every
                if (every and step % every == 0) or step == total_steps:
                    checkpoint()
                if on_step is not None:
                    on_step(report)
                if last_of_epoch:
                    break
    finally:
        bar.close()
    for module in trainer.trained:
        module.eval()
    loss_after = trainer.fixed_loss()
    lora_path = out / f"{config.name}.safetensors"
    trainer.save_lora(lora_path, _metadata(config, trainer, step, loss_before, loss_after))
    return TrainingResult(
        lora=lora_path,
        steps=step,
        epochs=epoch,
        images=len(trainer.samples),
        resumed_from=resumed_from,
        loss_before=loss_before,
        loss_after=loss_after,
        loss_log=log_path,
        checkpoints=list_checkpoints(out),
        seconds=time.perf_counter() - started,
        warnings=trainer.warnings,
    )
