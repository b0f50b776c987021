"""Training checkpoints: everything needed to resume a run exactly, written atomically.

A checkpoint holds the model weights, the EMA, the optimiser state, the
random-number states (torch CPU and CUDA, the training ``torch.Generator``,
numpy, python ``random``), the state of the minibatch sampler, the step, the
run configuration (as a dictionary), caller state such as normalisation
statistics (``extra``) and the fingerprint of the mesh the model was trained
on. Files are loaded with ``torch.load(weights_only=True)``, so ``extra`` may
only hold tensors, numbers, strings, ``None`` and lists, tuples or
string-keyed dictionaries of those.
"""

from __future__ import annotations

import io
import os
import pickle
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pidm_fem.atomic_files import atomic_path
from pidm_fem.errors import InputError, one_line
from pidm_fem.mesh.fingerprint import spaces_of
from pidm_fem.training.config import ConfigError, config_from_dict, config_to_dict

__all__ = [
    "FORMAT",
    "LAST",
    "Checkpoint",
    "CheckpointError",
    "capture_rng_state",
    "restore_rng_state",
    "first_nonfinite",
    "save_checkpoint",
    "save_run_checkpoint",
    "load_checkpoint",
    "step_checkpoint_name",
]

FORMAT = "pidm_fem.checkpoint/1"
LAST = "last.pt"


class CheckpointError(InputError):
    """A checkpoint that cannot be written or used: the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str):
        super().__init__(f"{path}: {one_line(problem)}")


@dataclass(frozen=True)
class Checkpoint:
    """The saved state of a training run after ``step`` optimiser steps.

    Attributes
    ----------
    step
        Number of optimiser steps done.
    model
        ``model.state_dict()``.
    ema
        :meth:`EMA.state_dict`.
    optimizer
        ``optimizer.state_dict()``.
    rng
        :func:`capture_rng_state` of the training generator.
    sampler
        State of the minibatch sampler.
    config
        The run configuration as nested dictionaries.
    mesh_fingerprint
        Fingerprint of the mesh the model was trained on ("" when there is none).
    extra
        Caller state, e.g. normalisation statistics.
    """

    step: int
    model: dict[str, torch.Tensor]
    ema: dict[str, Any]
    optimizer: dict[str, Any]
    rng: dict[str, Any]
    sampler: dict[str, Any]
    config: dict[str, Any]
    mesh_fingerprint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def capture_rng_state(generator: torch.Generator) -> dict[str, Any]:
    """States of every random-number generator a training step may draw from.

    Parameters
    ----------
    generator
        The training generator (minibatches and diffusion noise).

    Returns
    -------
    dict
        ``torch``, ``torch_cuda`` (one state per visible device), ``generator``,
        ``numpy`` and ``python`` states, in types ``torch.load(weights_only=True)`` accepts.
    """
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": generator.get_state(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": random.getstate(),
    }


def restore_rng_state(state: Mapping[str, Any], generator: torch.Generator) -> None:
    """Put back the states recorded by :func:`capture_rng_state`.

    Parameters
    ----------
    state
        The recorded states.
    generator
        The training generator, set to the recorded ``generator`` state.
    """
    torch.set_rng_state(state["torch"])
    cuda = state["torch_cuda"]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    generator.set_state(state["generator"])
    npy = state["numpy"]
    np.random.set_state(
        (npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    )
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def first_nonfinite(state: Mapping[str, Any]) -> str | None:
    """Key of the first floating-point tensor in ``state`` with a NaN or inf entry, else ``None``."""
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return key
    return None


def _storable_problem(value: Any, where: str) -> str | None:
    """Where ``value`` holds something ``torch.load(weights_only=True)`` would refuse."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return None
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            problem = _storable_problem(item, f"{where}[{i}]")
            if problem:
                return problem
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where} has a key {key!r} that is not a string"
            problem = _storable_problem(item, f"{where}[{key!r}]")
            if problem:
                return problem
        return None
    kind = f"{type(value).__module__}.{type(value).__name__}"
    return f"{where} is a {kind}; use tensors, numbers, strings, lists or dicts"


def _serialised(path: Path, checkpoint: Checkpoint) -> bytes:
    for part, state in (("model", checkpoint.model), ("ema", checkpoint.ema["shadow"])):
        bad = first_nonfinite(state)
        if bad is not None:
            raise CheckpointError(path, f"refusing to write non-finite weights ({part} entry {bad!r})")
    problem = _storable_problem(checkpoint.extra, "extra")
    if problem:
        raise CheckpointError(path, f"cannot store {problem}")
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **{item.name: getattr(checkpoint, item.name) for item in fields(checkpoint)}}, buffer)
    return buffer.getvalue()


def save_checkpoint(path: str | os.PathLike, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` to ``path`` atomically (temporary file in the same folder, then rename).

    Parameters
    ----------
    path
        Destination file.
    checkpoint
        The state to save.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    CheckpointError
        If the model or EMA weights are not finite or ``extra`` holds an unstorable value;
        nothing is written then.
    """
    path = Path(path)
    data = _serialised(path, checkpoint)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def step_checkpoint_name(step: int) -> str:
    """File name of the step-numbered checkpoint kept for ``step``."""
    return f"step_{step:08d}.pt"


def save_run_checkpoint(run_dir: str | os.PathLike, checkpoint: Checkpoint, keep_every: int = 0) -> Path:
    """Write ``last.pt`` in ``run_dir``, and a step-numbered copy when ``keep_every`` divides the step.

    Parameters
    ----------
    run_dir
        The run folder.
    checkpoint
        The state to save.
    keep_every
        Keep ``step_<step>.pt`` as well every that many steps; 0 keeps only ``last.pt``.

    Returns
    -------
    Path
        The path of ``last.pt``.
    """
    run_dir = Path(run_dir)
    last = run_dir / LAST
    data = _serialised(last, checkpoint)
    targets = [last]
    if keep_every > 0 and checkpoint.step % keep_every == 0:
        targets.append(run_dir / step_checkpoint_name(checkpoint.step))
    for target in targets:
        with atomic_path(target) as tmp:
            tmp.write_bytes(data)
    return last


def _with_current_defaults(config: Any) -> Any:
    """A stored run configuration with the defaults of keys added since it was written.

    A configuration that no longer parses (a key since removed, say) is returned as
    it is, so that comparing it with the current one names the difference.
    """
    if not isinstance(config, Mapping):
        return config
    try:
        return config_to_dict(config_from_dict(config))
    except ConfigError:
        return config


def load_checkpoint(
    path: str | os.PathLike, mesh_fingerprint: str | None = None, map_location: str | torch.device = "cpu",
    *, any_mesh: bool = False,
) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Parameters
    ----------
    path
        The checkpoint file.
    mesh_fingerprint
        Fingerprint of the caller's mesh; the checkpoint is refused if its own differs.
        ``None`` skips the check.
    map_location
        Device the tensors are loaded onto.
    any_mesh
        Compare only the spaces part of the fingerprints (:func:`~pidm_fem.mesh.spaces_of`):
        a checkpoint of the same fields on the same spaces of another mesh is accepted.

    Returns
    -------
    Checkpoint
        The saved state.

    Raises
    ------
    CheckpointError
        One line naming the file: missing, unreadable or corrupt, not a checkpoint,
        or made on another mesh.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such checkpoint file")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # torch's message advises weights_only=False: not for files of unknown origin
        raise CheckpointError(path, "holds Python objects besides tensors and plain data, which pidm_fem does not "
                                    "load (not a pidm_fem checkpoint, or not a trusted one)") from None
    except Exception as err:  # torch.load raises many types for damaged files
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        if "weights_only" in first_line:
            first_line = "not a plain-data checkpoint"
        raise CheckpointError(path, f"unreadable or corrupt checkpoint ({type(err).__name__}: {first_line})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(path, f"not a pidm_fem checkpoint (format {found!r}, expected {FORMAT!r})")
    data.pop("format")
    try:
        checkpoint = Checkpoint(**{**data, "config": _with_current_defaults(data.get("config"))})
    except TypeError as err:
        raise CheckpointError(path, f"incomplete checkpoint ({err})") from None
    if any_mesh and mesh_fingerprint is not None:
        if spaces_of(checkpoint.mesh_fingerprint) != spaces_of(mesh_fingerprint):
            raise CheckpointError(path, f"made for other fields or spaces ({spaces_of(checkpoint.mesh_fingerprint)!r}, "
                                        f"here {spaces_of(mesh_fingerprint)!r})")
    elif mesh_fingerprint is not None and checkpoint.mesh_fingerprint != mesh_fingerprint:
        raise CheckpointError(
            path,
            f"made on another mesh (fingerprint {checkpoint.mesh_fingerprint!r}, "
            f"current mesh {mesh_fingerprint!r})",
        )
    return checkpoint
