"""The training loop: Adam, clipping, EMA, validation, logs, checkpoints and exact resume.

The loop trains any ``torch.nn.Module`` with a loss callable::

    loss_fn(model, batch, generator) -> (loss, components)

``batch`` maps names to rows drawn from the training tensors (on the training
device), ``generator`` is the CPU ``torch.Generator`` of the run (draw all
randomness from it, e.g. ``torch.randn(shape, generator=generator)``, so that
a resumed run repeats it), ``loss`` is a scalar tensor and ``components`` maps
names (data, residual, constraints, ...) to floats for the logs. In data-parallel training
(:mod:`pidm_fem.training.distributed`) the trainer adds a fourth argument, ``part``: the
slice of the batch's rows this process computes, after drawing every random number for
the whole batch.

The run folder holds ``last.pt`` (see :mod:`pidm_fem.training.checkpoint`)
and ``log.jsonl``, one JSON object per line: ``"split": "train"`` lines every
``log_every`` steps (values averaged over the steps since the previous line)
and ``"split": "val"`` lines every ``val_every`` steps.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from pidm_fem.atomic_files import atomic_path
from pidm_fem.errors import ComputationError, Interrupted
from pidm_fem.stop_signals import stop_requests
from pidm_fem.training.checkpoint import (
    LAST,
    Checkpoint,
    CheckpointError,
    capture_rng_state,
    first_nonfinite,
    load_checkpoint,
    restore_rng_state,
    save_run_checkpoint,
)
from pidm_fem.training.config import RunConfig, TrainingConfig, config_to_dict, trained_configuration
from pidm_fem.training.distributed import DataParallel
from pidm_fem.training.ema import EMA

__all__ = [
    "LOG",
    "LossFn",
    "Stateful",
    "EpochSampler",
    "StepRecord",
    "TrainingSummary",
    "TrainingDiverged",
    "Trainer",
    "check_resumable",
    "learning_rate",
]

LOG = "log.jsonl"
#: prefix of the checkpoint ``extra`` keys that hold the trainer's ``state`` objects
STATE_PREFIX = "state."


class Stateful(Protocol):
    """Training state outside the model and optimiser (e.g. a loss's cached batch), saved in checkpoints."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


LossFn = Callable[..., tuple[Tensor, dict[str, float]]]

# Keys that may change when a run is resumed: they do not change what is trained.
_RESUMABLE_CHANGES = (
    "training.steps",
    "training.device",
    "training.val_every",
    "training.checkpoint_every",
    "training.keep_every",
    "training.log_every",
    "sampling.",
)


class TrainingDiverged(ComputationError):
    """A non-finite loss, gradient or weight stopped training; the message names the step."""


@dataclass(frozen=True)
class StepRecord:
    """What one training step produced (passed to the per-step callback)."""

    step: int
    loss: float
    components: dict[str, float]
    grad_norm: float


@dataclass(frozen=True)
class TrainingSummary:
    """Outcome of :meth:`Trainer.train`.

    Attributes
    ----------
    first_step
        Step the call started from (0 for a fresh run, else the resumed step).
    last_step
        Step reached.
    components
        Loss and components of the last training step ({} if no step ran).
    val_components
        Loss and components of the last validation pass on the raw weights, or ``None``.
    seconds_per_step
        Mean wall time of a training step in this call (validation and checkpoints excluded).
    wall_seconds
        Wall time of the whole call.
    """

    first_step: int
    last_step: int
    components: dict[str, float]
    val_components: dict[str, float] | None
    seconds_per_step: float
    wall_seconds: float


class EpochSampler:
    """Minibatch rows: each epoch a fresh random permutation, cut into batches; the incomplete tail is dropped.

    Parameters
    ----------
    n_rows
        Number of training rows.
    batch_size
        Rows per batch, at most ``n_rows``.
    generator
        Generator the permutations are drawn from.
    """

    def __init__(self, n_rows: int, batch_size: int, generator: torch.Generator):
        if batch_size > n_rows:
            raise ValueError(f"training.batch_size ({batch_size}) exceeds the number of training rows ({n_rows})")
        self.n_rows, self.batch_size, self.generator = n_rows, batch_size, generator
        self.order = torch.empty(0, dtype=torch.long)
        self.cursor = 0

    def next(self) -> Tensor:
        """Row indices of the next batch."""
        if self.cursor + self.batch_size > len(self.order):
            self.order = torch.randperm(self.n_rows, generator=self.generator)
            self.cursor = 0
        rows = self.order[self.cursor : self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return rows

    def state_dict(self) -> dict[str, Any]:
        """Current permutation and position, for checkpoints."""
        return {"order": self.order.clone(), "cursor": self.cursor}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`; the permutation must cover the same number of rows."""
        order = state["order"]
        if len(order) not in (0, self.n_rows):
            raise ValueError(f"the checkpoint was trained on {len(order)} rows, got {self.n_rows}")
        self.order, self.cursor = order.clone(), int(state["cursor"])


def learning_rate(settings: TrainingConfig, step: int) -> float:
    """The learning rate of optimiser step ``step`` (1-based) under ``settings.lr_schedule``.

    Parameters
    ----------
    settings
        The training section: ``lr``, ``lr_schedule`` and ``steps``.
    step
        The step, from 1 to ``settings.steps``.

    Returns
    -------
    float
        ``lr`` ("constant"), or ``lr * (1 + cos(pi * (step - 1) / steps)) / 2`` ("cosine").
    """
    if settings.lr_schedule == "cosine":
        return settings.lr * 0.5 * (1.0 + math.cos(math.pi * (step - 1) / settings.steps))
    return settings.lr


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in d.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _config_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Dotted keys that differ between two configurations and matter for training."""
    old, new = _flatten(trained_configuration(saved)), _flatten(trained_configuration(current))
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k, "<missing>") != new.get(k, "<missing>"))
    return [k for k in changed if not k.startswith(_RESUMABLE_CHANGES)]


def check_resumable(path: str | os.PathLike, config: RunConfig, mesh_fingerprint: str) -> Checkpoint:
    """The checkpoint a run would resume from, after checking that it may.

    Raises
    ------
    CheckpointError
        If the checkpoint is unreadable, made on another mesh, or with a configuration
        that differs in a key that matters for training.
    """
    checkpoint = load_checkpoint(path, mesh_fingerprint)
    changes = _config_changes(checkpoint.config, config_to_dict(config))
    if changes:
        raise CheckpointError(path, f"made with another configuration ({', '.join(changes)} differ); use a new run folder")
    return checkpoint


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines after ``step`` (written after the checkpoint that a run resumes from)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a crash
    with atomic_path(path) as tmp:
        tmp.write_text("".join(kept))


def _formatted(components: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in components.items())


class _Window:
    """Running means of the training steps since the last log line."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, record: StepRecord, seconds: float) -> None:
        values = {"loss": record.loss, "grad_norm": record.grad_norm, "seconds": seconds}
        values.update({f"component.{k}": v for k, v in record.components.items()})
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1

    def means(self) -> dict[str, float]:
        return {key: total / self.count for key, total in self.sums.items()}


class _LossOf(nn.Module):
    """The loss of a model as a module: what data-parallel training wraps, one forward per step."""

    def __init__(self, model: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator, part: slice):
        return self.loss_fn(self.model, batch, generator, part)


class Trainer:
    """Trains ``model`` with ``loss_fn`` on rows of ``train_data``; resumes from ``run_dir/last.pt``.

    Parameters
    ----------
    model
        The network; moved to ``config.training.device``.
    loss_fn
        ``loss_fn(model, batch, generator) -> (loss, components)`` (see the module docstring).
        The trainer calls ``model.train()`` before training steps and ``model.eval()``
        before validation, so the loss can read ``model.training`` (e.g. for condition dropout).
    train_data
        Training tensors by name, all with the same number of rows (first dimension).
    config
        The run configuration; ``config.training`` drives the loop, the whole of it is
        stored in checkpoints.
    run_dir
        Folder for ``last.pt``, step-numbered checkpoints and ``log.jsonl``. If it holds a
        ``last.pt``, the run resumes from it: the mesh fingerprint must match and the
        configuration may differ only in steps, device and the logging, validation,
        checkpoint and sampling settings.
    val_data
        Held-out tensors by name for validation, or ``None`` for no validation.
    mesh_fingerprint
        Fingerprint of the mesh the data live on, stored in and checked against checkpoints.
    extra
        Caller state stored in every checkpoint (e.g. normalisation statistics).
    state
        Further training state by name (e.g. the loss's), whose ``state_dict()`` every
        checkpoint stores in ``extra["state.<name>"]`` and whose ``load_state_dict`` a
        resume calls.
    callback
        Called after every step (after its logging, validation and checkpoint) with a :class:`StepRecord`.
    progress
        Show a progress bar.
    parallel
        This process's share of data-parallel training (:func:`~pidm_fem.training.distributed.data_parallel`),
        or None for one process. Rank 0 alone writes the checkpoints and the log.

    Attributes
    ----------
    step
        Number of optimiser steps done so far (the resumed step after construction).
    ema
        The :class:`EMA` of the weights.
    generator
        The training generator (CPU), seeded with ``config.training.seed``.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        train_data: Mapping[str, Tensor],
        config: RunConfig,
        run_dir: str | os.PathLike,
        *,
        val_data: Mapping[str, Tensor] | None = None,
        mesh_fingerprint: str = "",
        extra: Mapping[str, Any] | None = None,
        state: Mapping[str, Stateful] | None = None,
        callback: Callable[[StepRecord], None] | None = None,
        progress: bool = True,
        parallel: DataParallel | None = None,
    ):
        settings = config.training
        self.config = config
        self.device = torch.device(settings.device)
        self.model = model.to(self.device)
        self.loss_fn = loss_fn
        self.train_data = dict(train_data)
        n_rows = self._check_data(self.train_data, "train_data")
        self.val_data = dict(val_data) if val_data is not None else None
        if self.val_data is not None:
            self._check_data(self.val_data, "val_data")
        self.run_dir = Path(run_dir)
        self.mesh_fingerprint = mesh_fingerprint
        self.extra = dict(extra or {})
        self.state = dict(state or {})
        self.callback = callback
        self.parallel = parallel
        self.progress = progress and (parallel is None or parallel.writes)
        if parallel is not None:
            parallel.part(settings.batch_size)  # a batch that does not split evenly is refused before any step

        self._parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self._parameters, lr=settings.lr)
        self.ema = EMA(self.model, settings.ema_decay, settings.ema_start)
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.sampler = EpochSampler(n_rows, settings.batch_size, self.generator)
        self.step = 0
        self._saved_step: int | None = None

        if self._writes:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if (self.run_dir / LAST).exists():
            self._resume(self.run_dir / LAST)
        if self._writes:
            _truncate_log(self.run_dir / LOG, self.step)
        # data-parallel: one forward of the whole loss per step, so that the model may be called
        # several times in it (a DDIM chain, trajectory states) before the one backward
        self._step_loss = None if parallel is None else DistributedDataParallel(
            _LossOf(self.model, loss_fn), find_unused_parameters=True)

    @property
    def _writes(self) -> bool:
        """Whether this process writes the run's files (the only one, or rank 0)."""
        return self.parallel is None or self.parallel.writes

    @staticmethod
    def _check_data(data: dict[str, Tensor], name: str) -> int:
        if not data:
            raise ValueError(f"{name} is empty: give at least one tensor")
        rows = {key: value.shape[0] if value.dim() else None for key, value in data.items()}
        if None in rows.values() or len(set(rows.values())) != 1:
            raise ValueError(f"{name}: every tensor needs the same number of rows, got {rows}")
        return next(iter(rows.values()))

    def _resume(self, path: Path) -> None:
        checkpoint = check_resumable(path, self.config, self.mesh_fingerprint)
        self.model.load_state_dict(checkpoint.model)
        self.ema.load_state_dict(checkpoint.ema)
        self.optimizer.load_state_dict(checkpoint.optimizer)
        self.sampler.load_state_dict(checkpoint.sampler)
        restore_rng_state(checkpoint.rng, self.generator)
        for name, item in self.state.items():
            if STATE_PREFIX + name not in checkpoint.extra:
                raise CheckpointError(path, f"holds no training state {name!r}; use a new run folder")
            item.load_state_dict(checkpoint.extra[STATE_PREFIX + name])
        self.step = self._saved_step = checkpoint.step

    def checkpoint(self) -> Checkpoint:
        """The current state of the run as a :class:`Checkpoint` (tensors are not copied)."""
        return Checkpoint(
            step=self.step,
            model=self.model.state_dict(),
            ema=self.ema.state_dict(),
            optimizer=self.optimizer.state_dict(),
            rng=capture_rng_state(self.generator),
            sampler=self.sampler.state_dict(),
            config=config_to_dict(self.config),
            mesh_fingerprint=self.mesh_fingerprint,
            extra={**self.extra, **{STATE_PREFIX + name: item.state_dict() for name, item in self.state.items()}},
        )

    def _diverged(self, step: int, what: str, components: Mapping[str, float]) -> TrainingDiverged:
        kept = (
            f"last good checkpoint {self.run_dir / LAST} (step {self._saved_step})"
            if self._saved_step is not None
            else "no checkpoint was written yet"
        )
        return TrainingDiverged(
            f"training diverged at step {step}: {what} (components: {_formatted(components)}); {kept}"
        )

    def _save(self) -> None:
        bad = first_nonfinite(self.model.state_dict())
        if bad is not None:
            raise self._diverged(self.step, f"non-finite weights in {bad!r}", {})
        if self._writes:
            save_run_checkpoint(self.run_dir, self.checkpoint(), self.config.training.keep_every)
        self._saved_step = self.step

    def _batch(self, data: Mapping[str, Tensor], rows: Tensor) -> dict[str, Tensor]:
        return {key: value[rows.to(value.device)].to(self.device) for key, value in data.items()}

    def _train_step(self, step: int) -> StepRecord:
        rows = self.sampler.next()
        batch = self._batch(self.train_data, rows)
        if self.parallel is None:
            self.model.train()
            loss, components = self.loss_fn(self.model, batch, self.generator)
            components = {key: float(value) for key, value in components.items()}
            value = float(loss.detach())
        else:  # the processes' mean loss and components: every process stops on the same step
            self._step_loss.train()
            loss, components = self._step_loss(batch, self.generator, self.parallel.part(len(rows)))
            value, components = self.parallel.mean(float(loss.detach()), components)
        if not math.isfinite(value):
            raise self._diverged(step, f"loss is {value}", components)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.config.training, step)
        grad_norm = float(nn.utils.clip_grad_norm_(self._parameters, self.config.training.grad_clip))
        if not math.isfinite(grad_norm):
            raise self._diverged(step, f"gradient norm is {grad_norm}", components)
        self.optimizer.step()
        self.ema.update(self.model, step)
        return StepRecord(step=step, loss=value, components=components, grad_norm=grad_norm)

    def evaluate(self, data: Mapping[str, Tensor], use_ema: bool = False) -> dict[str, float]:
        """Loss and components on all rows of ``data``, averaged over rows.

        The noise comes from a generator seeded afresh with ``config.training.seed``, so
        two calls on the same weights give the same numbers; the training random states
        are left untouched. The model is in eval mode and its parameters do not require
        gradients meanwhile (the loss may still take gradients with respect to its inputs).

        Parameters
        ----------
        data
            Tensors by name with the same number of rows.
        use_ema
            Evaluate the EMA weights instead of the current ones.

        Returns
        -------
        dict
            ``{"loss": ..., <component>: ...}``.
        """
        n_rows = self._check_data(dict(data), "data")
        settings = self.config.training
        generator = torch.Generator().manual_seed(settings.seed)
        flags = [p.requires_grad for p in self.model.parameters()]
        totals: dict[str, float] = {}
        devices = []
        if self.device.type == "cuda":
            devices = [self.device.index if self.device.index is not None else torch.cuda.current_device()]
        with torch.random.fork_rng(devices=devices):
            self.model.eval()
            self.model.requires_grad_(False)
            try:
                with self.ema.applied_to(self.model) if use_ema else nullcontext(self.model):
                    for start in range(0, n_rows, settings.batch_size):
                        rows = torch.arange(start, min(start + settings.batch_size, n_rows))
                        loss, components = self.loss_fn(self.model, self._batch(data, rows), generator)
                        values = {"loss": float(loss.detach()), **{k: float(v) for k, v in components.items()}}
                        for key, value in values.items():
                            totals[key] = totals.get(key, 0.0) + value * len(rows)
            finally:
                for parameter, flag in zip(self.model.parameters(), flags):
                    parameter.requires_grad_(flag)
                self.model.train()
        return {key: total / n_rows for key, total in totals.items()}

    def _validate(self, log: TextIO) -> dict[str, float]:
        started = time.perf_counter()
        raw = self.evaluate(self.val_data)
        ema = self.evaluate(self.val_data, use_ema=True)
        line = {
            "split": "val",
            "step": self.step,
            "loss": raw.pop("loss"),
            "components": raw,
            "ema_loss": ema.pop("loss"),
            "ema_components": ema,
            "seconds": time.perf_counter() - started,
        }
        log.write(json.dumps(line) + "\n")
        log.flush()
        return {"loss": line["loss"], **raw}

    def _log_train(self, log: TextIO, window: _Window, bar: tqdm) -> None:
        means = window.means()
        components = {k.removeprefix("component."): v for k, v in means.items() if k.startswith("component.")}
        line = {
            "split": "train",
            "step": self.step,
            "loss": means["loss"],
            "components": components,
            "lr": self.optimizer.param_groups[0]["lr"],
            "grad_norm": means["grad_norm"],
            "seconds_per_step": means["seconds"],
        }
        log.write(json.dumps(line) + "\n")
        log.flush()
        bar.set_postfix({k: f"{v:.3g}" for k, v in {"loss": means["loss"], **components}.items()}, refresh=False)

    def train(self) -> TrainingSummary:
        """Run the remaining steps up to ``config.training.steps``.

        Returns
        -------
        TrainingSummary
            Steps done, last components and timing.

        Raises
        ------
        TrainingDiverged
            On a NaN or inf loss, gradient norm or weight; ``last.pt`` keeps the last good state.
        Interrupted
            On SIGINT or SIGTERM: the step under way is finished and checkpointed first, so
            that running again resumes exactly where it stopped.
        """
        settings = self.config.training
        first_step = self.step
        started = time.perf_counter()
        step_seconds = 0.0
        last: StepRecord | None = None
        val_components = None
        window = _Window()
        with stop_requests() as stop, open(self.run_dir / LOG if self._writes else os.devnull, "a") as log, tqdm(
            total=settings.steps,
            initial=first_step,
            desc=f"train {self.run_dir.name}",
            disable=not self.progress,
            dynamic_ncols=True,
        ) as bar:
            for step in range(first_step + 1, settings.steps + 1):
                tick = time.perf_counter()
                last = self._train_step(step)
                self.step = step
                seconds = time.perf_counter() - tick
                step_seconds += seconds
                window.add(last, seconds)
                final = step == settings.steps
                if step % settings.log_every == 0 or final:
                    self._log_train(log, window, bar)
                    window = _Window()
                if self.val_data is not None and (final or (settings.val_every and step % settings.val_every == 0)):
                    val_components = self._validate(log)
                if final or (settings.checkpoint_every and step % settings.checkpoint_every == 0):
                    self._save()
                bar.update(1)
                if self.callback is not None:
                    self.callback(last)
                if stop.signum is not None and not final:
                    self._save()
                    raise Interrupted(
                        f"{stop.name} at step {step} of {settings.steps}: saved {self.run_dir / LAST}; "
                        "run the same command again to resume from it",
                        stop.signum,
                    )
        if self.parallel is not None:  # the others may read the checkpoints rank 0 has written
            dist.barrier()
        steps_run = self.step - first_step
        return TrainingSummary(
            first_step=first_step,
            last_step=self.step,
            components={"loss": last.loss, **last.components} if last else {},
            val_components=val_components,
            seconds_per_step=step_seconds / steps_run if steps_run else 0.0,
            wall_seconds=time.perf_counter() - started,
        )

