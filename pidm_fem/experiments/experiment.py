"""One generic experiment: data, training, sampling and the physics of a problem's diffusion model.

An :class:`Experiment` joins the layers below from a :class:`~pidm_fem.physics.problem.Problem`
and a run configuration, and knows nothing else of the case study:

* **data**: the problem's samples, generated once into one sample file under the data
  folder, named by the problem, its fingerprint, a digest of its settings and the
  number of rows, and reused afterwards. The training, validation and test splits are
  consecutive index ranges of that file (sizes from the ``data`` section).
* **units**: the network sees per-field normalised (B, C, n) tensors (a
  :class:`~pidm_fem.diffusion.FieldNormalizer` fitted on the training split) in the
  coordinates of ``diffusion.representation`` (the problem's
  :meth:`~pidm_fem.physics.problem.Problem.channel_maps`); the physics sees physical
  values through the problem's residual.
* **loss** (:func:`diffusion_loss`): ``ddpm`` is the data loss alone, ``pidm`` adds the
  residual term (and the problem's functionals and state misfit where configured),
  ``physics_guided`` feeds the residual gradient as condition channels.
* **models** (:meth:`Experiment.build_model`): one denoiser, or a low-noise expert beside
  a frozen full-range denoiser, optionally with a frozen coefficient denoiser; the
  :class:`ModelParts` name each part, so that no caller reaches into the nesting.
* **training** with the :class:`~pidm_fem.training.Trainer` in the run folder; the
  checkpoints hold the normaliser (``extra["normalizer"]``) and the mesh fingerprint.
* **sampling** from a checkpoint's EMA weights per the ``sampling`` section, with
  CoCoGen corrections (the ``cocogen`` section) on request and classifier-free guidance
  for physics-guided models; the returned rows are in the problem's gauge.
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import scipy.sparse
import torch
from torch import nn

from pidm_fem.data import generate_samples, load_samples
from pidm_fem.errors import ComputationError, InputError
from pidm_fem.parallel import data_comm, world
from pidm_fem.diffusion import (
    ChannelExperts,
    CoCoGenCorrector,
    CosineSchedule,
    FieldNormalizer,
    Functional,
    LinearChannelMap,
    LinearViewInputs,
    LogChannelMap,
    PhysicsGuidedConditioning,
    StandardisedConditions,
    PIDMLoss,
    Residual,
    TimestepExperts,
    TrajectoryStates,
    sample,
    spectral_norm_estimate,
    x0_denoiser,
)
from pidm_fem.experiments.denoisers import build_denoiser
from pidm_fem.experiments.node_fields import NodeFields
from pidm_fem.physics.problem import LinearCoordinates, LogCoordinates, Problem
from pidm_fem.training import (
    CheckpointError,
    ConfigError,
    RunConfig,
    Trainer,
    TrainingSummary,
    config_to_dict,
    load_checkpoint,
    trained_configuration,
)
from pidm_fem.training.checkpoint import LAST
from pidm_fem.training.config import DiffusionConfig
from pidm_fem.training.distributed import DataParallel, data_parallel, wait_for_file
from pidm_fem.training.trainer import check_resumable

#: each problem's input views and their spectral norms, by the settings that make them: dense (n, n)
#: matrices, built once per problem for all of a study's experiments
_VIEWS: "weakref.WeakKeyDictionary[Problem, dict]" = weakref.WeakKeyDictionary()
#: dtype of the network and of the tensors it sees (the physics computes in float64)
DTYPE = torch.float32
#: key of the normaliser statistics in a checkpoint's ``extra``
NORMALIZER_KEY = "normalizer"
#: the PIDM loss's functional terms: diffusion key of the weight -> the problem's functional
FUNCTIONAL_TERMS = {"c_eq": "equality", "c_ineq": "inequality", "lambda_opt": "objective"}


def diffusion_loss(
    config: DiffusionConfig,
    schedule: CosineSchedule,
    normalizer: FieldNormalizer,
    residual: Residual,
    *,
    functionals: dict[str, Functional] | None = None,
    state_misfit: Functional | None = None,
    coefficient_channels: tuple[int, ...] = (),
    expert_below: int | None = None,
    training: bool = True,
) -> PIDMLoss:
    """The loss of ``config.method`` for a problem with a residual and optional functionals.

    * ``ddpm``: the min-SNR data loss alone; the residual is never called.
    * ``pidm``: plus ``c_residual`` times the residual term, with the x0 estimate
      ``x0_estimation`` (and ``sample_steps`` for "sample"); with
      ``residual_gradient: state`` the residual is not differentiated with respect to
      the ``coefficient_channels``; with ``physics_t_fraction`` below 1 it acts on the
      steps ``t < physics_t_fraction * T`` only. ``c_eq``, ``c_ineq`` and
      ``lambda_opt`` weigh the problem's equality, inequality and objective functionals.
      ``c_state`` > 0 adds the state misfit term (on the trajectory states only with
      ``state_on: trajectory``); ``trajectory_every`` > 0 (when ``training``) lets the
      physics terms also act on states of the network's own ``trajectory_steps``-step
      DDIM trajectories at ``t < trajectory_t_fraction * T``, drawn afresh every
      ``trajectory_every`` steps (with DDIM's ``trajectory_eta``).
    * ``expert_below`` (a low-noise expert): the loss draws its timesteps from
      ``t < expert_below`` only, and the trajectory states are taken below it too.
    * ``physics_guided``: the data loss of a denoiser that receives the residual
      gradient of x_t as C extra condition channels, dropped with probability
      ``cond_dropout`` when ``training``.

    Parameters
    ----------
    config
        The ``diffusion`` section of the run configuration.
    schedule
        The noise schedule.
    normalizer
        The normaliser of the training data.
    residual
        Differentiable residual on physical samples, (B, C, n) -> (B, M).
    functionals
        ``{"equality" | "inequality" | "objective": functional}`` of physical samples, (B, C, n) -> (B,).
    state_misfit
        Misfit of the state on physical samples, (B, C, n) -> (B, k); needed when ``c_state`` > 0.
    coefficient_channels
        Channels of the problem's coefficient fields (the data of the PDE, not its state).
    expert_below
        The split of a low-noise expert; None for a full-range model.
    training
        Condition dropout and trajectory states on (training) or off (validation).

    Raises
    ------
    ConfigError
        If a functional's weight is non-zero and the problem has no such functional, if
        no step of the trajectories lies below ``trajectory_t_fraction * T``, or if the
        state misfit acts on trajectory states only and there are none.
    """
    functionals = functionals or {}
    for key, term in FUNCTIONAL_TERMS.items():
        if getattr(config, key) != 0 and term not in functionals:
            raise ConfigError(
                f"diffusion.{key}: this problem has no {term} functional; must be 0, got {getattr(config, key)}"
            )
    pidm = config.method == "pidm"
    if pidm and config.c_state > 0 and config.state_on == "trajectory" and config.trajectory_every == 0:
        raise ConfigError("diffusion.state_on: 'trajectory' needs trajectory states (trajectory_every > 0)")
    trajectory = None
    if pidm and training and config.trajectory_every > 0:
        try:
            trajectory = TrajectoryStates(
                schedule,
                config.trajectory_every,
                config.trajectory_steps,
                min(_max_t(config.trajectory_t_fraction, config.T), expert_below or config.T),
                config.trajectory_eta,
            )
        except ValueError as err:
            raise ConfigError(f"diffusion.trajectory_t_fraction: {err}") from None
    conditioning = None
    if config.method == "physics_guided":
        conditioning = PhysicsGuidedConditioning(residual, normalizer, dropout=config.cond_dropout if training else 0.0)
    weights = {key: getattr(config, key) if pidm else 0.0 for key in FUNCTIONAL_TERMS}
    return PIDMLoss(
        schedule,
        normalizer,
        residual=residual if pidm else None,
        c_data=config.c_data,
        c_residual=config.c_residual if pidm else 0.0,
        x0_estimate=config.x0_estimation,
        sample_steps=config.sample_steps,
        equality=functionals.get("equality") if pidm else None,
        c_eq=weights["c_eq"],
        inequality=functionals.get("inequality") if pidm else None,
        c_ineq=weights["c_ineq"],
        objective=functionals.get("objective") if pidm else None,
        lambda_opt=weights["lambda_opt"],
        snr_gamma=config.min_snr_gamma,
        conditioning=conditioning,
        physics_max_t=None if config.physics_t_fraction == 1 else _max_t(config.physics_t_fraction, config.T),
        frozen_channels=coefficient_channels if config.residual_gradient == "state" else (),
        state_misfit=state_misfit if pidm else None,
        c_state=config.c_state if pidm else 0.0,
        state_on=config.state_on,
        trajectory=trajectory,
        max_t=expert_below,
    )


def data_file(folder: str | os.PathLike, problem: Problem, n_rows: int) -> Path:
    """The sample file of ``n_rows`` rows of ``problem`` (its settings and mesh) in ``folder``."""
    settings = json.dumps(problem.settings(), sort_keys=True)
    digest = hashlib.sha256(settings.encode()).hexdigest()[:12]
    return Path(folder) / f"{problem.name}_{problem.fingerprint}_{digest}_{n_rows}.h5"


def problem_rows(problem: Problem, path: Path, n_rows: int, workers: int = 1, progress: bool = True) -> np.ndarray:
    """The ``n_rows`` samples of ``problem`` in the file ``path``, generating (or completing) it first.

    Under an MPI launcher the ranks share the rows (each solves on its own communicator)
    and rank 0 writes the file; under torchrun rank 0 makes it and the others wait for it.
    """
    layout = problem.layout
    rank, size = world()
    if size > 1 and data_comm() is None and rank > 0:  # torchrun's processes: rank 0 makes the file
        wait_for_file(path)
    make = problem.generator_factory() if workers > 1 else lambda: problem.sample
    path = generate_samples(path, n_rows, make, problem.fingerprint, problem.settings(),
                            {name: layout.dof_coordinates(name) for name in layout.names},
                            workers=workers, progress=progress, reject=problem.inadmissible, comm=data_comm())
    rows, _ = load_samples(path, problem.fingerprint, layout.names, problem.settings(), reject=problem.inadmissible)
    return rows


def _max_t(fraction: float, T: int) -> int:
    """The bound ``round(fraction * T)`` (at least 1) of the steps ``t < bound`` that make up a fraction of T."""
    return max(1, round(fraction * T))


def _copy_frozen(frozen: nn.Module | None, source: nn.Module | None, resumed: bool, unused: str, missing: str) -> None:
    """Copy ``source``'s weights into a model's frozen part ``frozen`` (None: the model has none).

    Raises ConfigError ``unused`` if a source is given for no frozen part, ``missing`` if
    none is given for a frozen part of a run that does not resume from a checkpoint.
    """
    if frozen is None:
        if source is not None:
            raise ConfigError(unused)
    elif source is not None:
        frozen.load_state_dict(source.state_dict())
    elif not resumed:
        raise ConfigError(missing)


class SamplingFailed(ComputationError):
    """Samples with non-finite values: the message names the checkpoint; nothing is written."""


def check_device(name: str) -> None:
    """Raise ConfigError unless the torch device ``name`` (``training.device``) exists here."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        build = "has no CUDA" if torch.version.cuda is None else "finds no CUDA device"
        raise ConfigError(f"training.device: {name!r} is not available (this torch {torch.__version__} {build})")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"training.device: {name!r} is not available ({torch.cuda.device_count()} CUDA devices)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"training.device: {name!r} is not available here")


@dataclass(frozen=True)
class Splits:
    """Physical sample rows of the three splits, each (N, total) float64."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


@dataclass(frozen=True)
class ModelParts:
    """A run's model and its named parts.

    Attributes
    ----------
    model
        What is trained, checkpointed and sampled: ``model(x_t, t, cond, scalars) -> x0_hat``.
    trained
        The network whose parameters the run trains (the model itself, or its low-noise expert).
    full_range
        The frozen full-range denoiser beside a low-noise expert; None for a full-range run.
    coefficient
        The frozen denoiser whose coefficient estimate the model uses; None without one.
    """

    model: nn.Module
    trained: nn.Module
    full_range: nn.Module | None = None
    coefficient: nn.Module | None = None


class Experiment:
    """Data, training and sampling of a diffusion model of a problem's generated fields.

    Parameters
    ----------
    problem
        The case study (:class:`~pidm_fem.physics.problem.Problem`).
    config
        The run configuration.
    data_dir
        Folder of the cached sample files.
    run_dir
        Folder of the run's checkpoints and log.
    workers
        Processes that generate missing samples.
    progress
        Show progress bars.
    other_mesh
        The run's checkpoints were trained on another mesh (the same fields on the same
        spaces): only the mesh-native denoiser (``model.kind: mesh``) samples them here.

    Attributes
    ----------
    fields
        Rows <-> (B, C, n) channel tensors of the generated fields.
    conditions
        Rows <-> (B, C_cond, n) tensors of the condition fields (None for a problem without).
    mesh
        The mesh as the denoisers see it.
    fingerprint
        Fingerprint of the problem's mesh and spaces, stored in data files and checkpoints.
    schedule
        The noise schedule.
    """

    def __init__(
        self,
        problem: Problem,
        config: RunConfig,
        *,
        data_dir: str | os.PathLike,
        run_dir: str | os.PathLike,
        workers: int = 1,
        progress: bool = True,
        other_mesh: bool = False,
    ):
        self.problem = problem
        self.other_mesh = other_mesh
        self.config = config
        self.data_dir, self.run_dir = Path(data_dir), Path(run_dir)
        self.workers, self.progress = workers, progress
        self.fields = NodeFields(problem.layout, problem.generated)
        self.conditions = NodeFields(problem.layout, problem.conditions) if problem.conditions else None
        self.mesh = self.fields.mesh_nodes()
        self.fingerprint = problem.fingerprint
        self.schedule = CosineSchedule(config.diffusion.T)
        self._rows_residual = problem.torch_residual(config.diffusion.residual)
        self._rows_strong_residual = problem.torch_residual("strong")
        self._rows_state_misfit = problem.torch_state_misfit() if problem.has_state_solve() else None
        self._splits: Splits | None = None
        self._channel_maps: list | None = None
        self._condition_statistics: torch.Tensor | None = None

    # --- physics of (B, C, n) physical tensors -------------------------------------------
    def rows_of(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Packed rows of generated fields x (B, C, n) and, for a conditional problem, their conditions (B, C_cond, n)."""
        if self.conditions is None:
            return self.fields.to_rows(x)
        if cond is None:
            raise ValueError(f"the {self.problem.name} problem's physics needs the condition fields")
        base = self.conditions.to_rows(cond.to(x.dtype), rows=x.new_zeros(x.shape[0], self.problem.layout.total))
        return self.fields.to_rows(x, rows=base)

    def residual(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The problem's residual of physical fields (B, C, n) (and conditions), per ``diffusion.residual``."""
        return self._rows_residual(self.rows_of(x, cond))

    def strong_residual(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The strong-form-equivalent nodal residual of physical fields (B, C, n): what the evaluation reports."""
        return self._rows_strong_residual(self.rows_of(x, cond))

    def solve_state(self, x: torch.Tensor) -> torch.Tensor:
        """The state solved for each sample's own coefficient (the coupling the data obey), float64.

        NaN for a sample whose coefficient the problem does not admit.
        """
        rows = self.fields.to_rows(x.detach().cpu().double())
        return torch.from_numpy(self.problem.solve_state(rows.numpy()))

    def state_misfit(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The problem's relative state misfit of physical fields (B, C, n): differentiable in the state."""
        if self._rows_state_misfit is None:
            raise ConfigError(f"the {self.problem.name} problem has no state solve, so no state misfit")
        return self._rows_state_misfit(self.rows_of(x, cond))

    def functionals(self) -> dict[str, Functional]:
        """The problem's functionals as functions of physical fields (B, C, n) (and conditions)."""
        return {
            term: (lambda x, cond=None, f=functional: f(self.rows_of(x, cond)))
            for term, functional in self.problem.functionals().items()
        }

    def check_before_work(self) -> None:
        """Every check the configuration, this machine and an existing checkpoint allow, before any data or training.

        Raises
        ------
        ConfigError
            If ``training.device`` is not available, the model cannot be built (its width, say)
            or, in a run of several processes, the batch does not split evenly over them.
        CheckpointError
            If the run folder's checkpoint cannot be resumed: unreadable, made on another
            mesh, or with a configuration that differs in a key that matters for training.
        """
        check_device(self.config.training.device)
        rank, size = world()
        if size > 1:
            DataParallel(rank, size).part(self.config.training.batch_size)
        try:
            self.build_model()
        except ConfigError:
            raise
        except ValueError as err:
            raise ConfigError(f"model: {err}") from None
        if self.other_mesh:
            self._check_mesh_native(self.run_dir / LAST)
            if (self.run_dir / LAST).exists():
                load_checkpoint(self.run_dir / LAST, self.fingerprint, any_mesh=True)
        elif (self.run_dir / LAST).exists():
            check_resumable(self.run_dir / LAST, self.config, self.fingerprint)

    def _check_mesh_native(self, path: Path) -> None:
        """CheckpointError unless the run's model samples on a mesh it was not trained on."""
        if self.config.model.kind != "mesh":
            raise CheckpointError(path, f"trained on another mesh with a mesh-bound model (model.kind: "
                                        f"{self.config.model.kind}, whose raster is its training mesh's); only the "
                                        "mesh denoiser (model.kind: mesh) samples on other meshes")

    # --- data ------------------------------------------------------------------------------
    @property
    def n_rows(self) -> int:
        """Rows of the sample file: training, validation and test samples together."""
        data = self.config.data
        return data.n_train + data.n_val + data.n_test

    def data_path(self) -> Path:
        """The sample file of this experiment's problem settings, mesh and size."""
        return data_file(self.data_dir, self.problem, self.n_rows)

    def dataset(self) -> Splits:
        """The training, validation and test rows, generating the sample file if it is missing."""
        if self._splits is None:
            rows = problem_rows(self.problem, self.data_path(), self.n_rows, self.workers, self.progress)
            n_train, n_val = self.config.data.n_train, self.config.data.n_val
            self._splits = Splits(
                train=rows[:n_train], val=rows[n_train : n_train + n_val], test=rows[n_train + n_val :]
            )
        return self._splits

    def node_tensor(self, rows: np.ndarray) -> torch.Tensor:
        """Rows (N, total) as the network-dtype tensor (N, C, n) of the generated fields."""
        return self.fields.to_nodes(torch.as_tensor(rows, dtype=DTYPE))

    def condition_tensor(self, rows: np.ndarray) -> torch.Tensor | None:
        """Rows (N, total) as the physical condition fields (N, C_cond, n), network dtype; None without conditions."""
        return None if self.conditions is None else self.conditions.to_nodes(torch.as_tensor(rows, dtype=DTYPE))

    def _data(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """The trainer's tensors of rows: ``x0`` and, for a conditional problem, ``cond``."""
        data = {"x0": self.node_tensor(rows)}
        if self.conditions is not None:
            data["cond"] = self.condition_tensor(rows)
        return data

    def coefficient_channels(self) -> tuple[int, ...]:
        """Channels of the coefficient fields: held fixed when the physics is differentiated "state" only."""
        return self.fields.channels_of(self.problem.coefficient_fields)

    # --- units and models ----------------------------------------------------------------
    def channel_maps(self) -> list:
        """The per-channel maps of ``diffusion.representation``, in channel order (built once)."""
        if self._channel_maps is None:
            coordinates = self.problem.channel_maps(self.config.diffusion.representation)
            maps = {}
            for name, spec in coordinates.items():
                if isinstance(spec, LinearCoordinates):
                    maps[name] = LinearChannelMap(spec.forward, spec.inverse)
                elif isinstance(spec, LogCoordinates):
                    maps[name] = LogChannelMap()
                else:
                    raise TypeError(f"field {name!r}: unknown coordinates {spec!r}")
            self._channel_maps = [maps.get(name) for name in self.fields.names]
        return self._channel_maps

    def input_views(self) -> list[tuple[int, torch.Tensor]]:
        """``(channel, matrix)`` views of the noisy sample handed to the network (empty when none is on).

        ``model.field_views``: each linearly mapped field by its inverse map (the pressure of
        its Laplacian); ``model.gradient_views``: the recovered nodal gradient, x then y
        (:attr:`~pidm_fem.models.MeshNodes.nodal_gradient`), of every field in those
        physical coordinates.
        """
        return self._views_and_norms()[0]

    def _views_and_norms(self) -> tuple[list[tuple[int, torch.Tensor]], list[float]]:
        """:meth:`input_views` and their spectral norms, built once per problem and settings."""
        key = (self.config.diffusion.representation, self.config.model.field_views, self.config.model.gradient_views)
        held = _VIEWS.setdefault(self.problem, {})
        if key in held:
            return held[key]
        physical = {
            channel: channel_map.inverse_matrix
            for channel, channel_map in enumerate(self.channel_maps())
            if isinstance(channel_map, LinearChannelMap)
        }
        views = list(physical.items()) if self.config.model.field_views else []
        if self.config.model.gradient_views:
            for channel in range(self.fields.n_channels):
                for component in self.mesh.nodal_gradient:
                    # the gradient is local (a node's triangles): sparse times dense, not a dense cube
                    view = (scipy.sparse.csr_matrix(component) @ physical[channel].numpy()
                            if channel in physical else component)
                    views.append((channel, torch.tensor(view, dtype=torch.float64)))
        held[key] = views, [spectral_norm_estimate(matrix) for _, matrix in views]
        return held[key]

    def fit_normalizer(self) -> FieldNormalizer:
        """Per-channel statistics of the training split, in the coordinates of ``diffusion.representation``."""
        return FieldNormalizer.fit(self.node_tensor(self.dataset().train), self.channel_maps())

    @property
    def expert_below(self) -> int | None:
        """The split of a low-noise expert run (``expert.below``); None for a full-range run."""
        return None if self.config.diffusion.role == "model" else self.config.expert.below

    def build_model(self) -> ModelParts:
        """A freshly initialised model of the run's role, each network seeded by ``training.seed``.

        * ``diffusion.role: model``: one denoiser (:meth:`build_denoiser`).
        * ``expert``: a :class:`~pidm_fem.diffusion.TimestepExperts` pair: the trained
          low-noise expert for ``t < expert.below`` (of width ``expert.width`` where set)
          and, frozen, the full-range denoiser it is sampled beside (its weights come from
          :meth:`trainer`'s ``full_range`` or a checkpoint).
        * ``expert_on_frozen_coefficient``: that pair inside a
          :class:`~pidm_fem.diffusion.ChannelExperts` whose coefficient estimate comes
          from one more denoiser, frozen, at every step.

        The global torch RNG is left as it was.
        """
        role = self.config.diffusion.role
        if role == "model":
            denoiser = self.build_denoiser()
            return ModelParts(denoiser, denoiser)
        expert = self.build_denoiser(width=self.config.expert.width)
        full_range = self.build_denoiser().requires_grad_(False)
        pair = TimestepExperts(expert, full_range, self.config.expert.below)
        if role == "expert":
            return ModelParts(pair, expert, full_range)
        coefficient = self.build_denoiser().requires_grad_(False)
        return ModelParts(ChannelExperts(pair, coefficient, self.coefficient_channels()), expert, full_range,
                          coefficient)

    def build_denoiser(self, width: int | None = None) -> nn.Module:
        """A fresh denoiser of ``config.model`` of width ``width`` (None: ``model.width``), seeded by ``training.seed``.

        Physics-guided conditioning gives it one condition channel per field, and
        ``model.field_views`` and ``model.gradient_views`` one more per view
        (:class:`~pidm_fem.diffusion.LinearViewInputs`). With ``diffusion.prediction: v``
        the network predicts v and is wrapped into an x0 denoiser.
        """
        model_config = self.config.model if width is None else replace(self.config.model, width=width)
        n_fields = self.fields.n_channels
        views, norms = self._views_and_norms()
        n_conditions = 0 if self.conditions is None else self.conditions.n_channels
        cond_channels = n_conditions + (n_fields if self.config.diffusion.method == "physics_guided" else 0) + len(views)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.training.seed)
            network = build_denoiser(model_config, self.mesh, n_fields, cond_channels=cond_channels,
                                     n_timesteps=self.config.diffusion.T)
        if views:
            network = LinearViewInputs(network, views, norms)
        if n_conditions:
            network = StandardisedConditions(network, n_conditions)
            if self._condition_statistics is not None:
                network.fit(self._condition_statistics)
        return x0_denoiser(network, self.config.diffusion.prediction, self.schedule)

    # --- training --------------------------------------------------------------------------
    def loss(self, normalizer: FieldNormalizer, training: bool = True) -> PIDMLoss:
        """The run's loss (:func:`diffusion_loss`) on this problem's physics."""
        misfit = self.state_misfit if self._rows_state_misfit is not None else None
        return diffusion_loss(
            self.config.diffusion,
            self.schedule,
            normalizer,
            self.residual,
            functionals=self.functionals(),
            state_misfit=misfit,
            coefficient_channels=self.coefficient_channels(),
            expert_below=self.expert_below,
            training=training,
        )

    def trainer(self, full_range: nn.Module | None = None, coefficient: nn.Module | None = None) -> Trainer:
        """A :class:`~pidm_fem.training.Trainer` on the training split, resuming from the run folder.

        Its loss draws t, the noise and the condition dropout from the trainer's
        generator; validation (on the validation split, if any) runs without dropout.

        Parameters
        ----------
        full_range
            The full-range denoiser (normalised units, e.g. another run's
            :meth:`load_denoiser`) beside which a low-noise expert run trains; its weights
            are copied into the pair, frozen. Needed to start such a run; a resumed one
            has them in its checkpoint.
        coefficient
            The denoiser (same units) whose coefficient estimate an
            ``expert_on_frozen_coefficient`` run trains and samples with; copied, frozen,
            and needed likewise to start such a run.

        Raises
        ------
        ConfigError
            If ``full_range`` or ``coefficient`` is given to a run that has no use for it, or
            missing for a run with no checkpoint to resume from, or if the run's checkpoints
            are of another mesh (:attr:`other_mesh`: they are sampled here, not trained).
        """
        if self.other_mesh:
            raise ConfigError(f"{self.run_dir}: trained on another mesh; it samples on this one but trains on its own")
        splits = self.dataset()
        normalizer = self.fit_normalizer()
        train_loss, eval_loss = self.loss(normalizer, training=True), self.loss(normalizer, training=False)

        def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator,
                    part: slice | None = None):
            loss = train_loss if model.training else eval_loss
            return loss(model, batch["x0"], cond=batch.get("cond"), generator=generator, part=part)

        self._condition_statistics = self.condition_tensor(splits.train)  # the models standardise conditions by it
        parts = self.build_model()
        resumed = (self.run_dir / LAST).is_file()
        _copy_frozen(parts.full_range, full_range, resumed,
                     "a full-range run (diffusion.role: model) trains no expert beside a frozen model",
                     f"diffusion.role: the expert run {self.run_dir} starts from a full-range denoiser, "
                     "and none was given")
        _copy_frozen(parts.coefficient, coefficient, resumed,
                     "a run without a frozen coefficient (diffusion.role) takes no coefficient model",
                     f"diffusion.role: the run {self.run_dir} starts from the denoiser of its coefficient, "
                     "and none was given")
        val_data = self._data(splits.val) if len(splits.val) else None
        return Trainer(
            parts.model,
            loss_fn,
            self._data(splits.train),
            self.config,
            self.run_dir,
            val_data=val_data,
            mesh_fingerprint=self.fingerprint,
            extra={NORMALIZER_KEY: normalizer.state_dict()},
            state={} if train_loss.trajectory is None else {"trajectory": train_loss.trajectory},
            progress=self.progress,
            parallel=data_parallel(torch.device(self.config.training.device)),
        )

    def train(self, full_range: nn.Module | None = None, coefficient: nn.Module | None = None) -> TrainingSummary:
        """Train (or resume training) up to ``training.steps``; the last checkpoint is ``run_dir/last.pt``.

        ``full_range`` and ``coefficient``: the frozen denoisers of an expert run (:meth:`trainer`).
        """
        return self.trainer(full_range, coefficient).train()

    # --- sampling --------------------------------------------------------------------------
    def load_denoiser(self, checkpoint: str | os.PathLike | None = None) -> tuple[nn.Module, FieldNormalizer]:
        """A checkpoint's EMA model, in evaluation mode on ``training.device``, and its normaliser.

        Parameters
        ----------
        checkpoint
            Checkpoint file; ``run_dir/last.pt`` when None.

        Raises
        ------
        CheckpointError
            If the checkpoint is missing, from another mesh (unless :attr:`other_mesh` and
            the model is the mesh denoiser) or other spaces, or trained with another
            ``model``, ``diffusion`` or expert configuration.
        """
        path = self.run_dir / LAST if checkpoint is None else Path(checkpoint)
        if self.other_mesh:
            self._check_mesh_native(path)
        state = load_checkpoint(path, self.fingerprint, any_mesh=self.other_mesh)
        saved, ours = trained_configuration(state.config), trained_configuration(config_to_dict(self.config))
        for section in ("model", "diffusion", "expert"):
            if saved.get(section) != ours.get(section):
                raise CheckpointError(path, f"trained with another {section} configuration than this experiment's")
        normalizer = FieldNormalizer.from_state_dict(state.extra[NORMALIZER_KEY], self.channel_maps())
        model = self.build_model().model
        model.load_state_dict(state.ema["shadow"])
        return model.to(torch.device(self.config.training.device)).eval(), normalizer

    def sample(
        self,
        n_samples: int | None = None,
        *,
        seed: int = 0,
        cocogen: bool = False,
        checkpoint: str | os.PathLike | None = None,
        on_step: Callable[[int, torch.Tensor], None] | None = None,
        wrap: Callable[[nn.Module, FieldNormalizer], nn.Module] | None = None,
        conditions: np.ndarray | None = None,
    ) -> np.ndarray:
        """Draw physical rows from a checkpoint's EMA weights, per ``config.sampling``.

        Batches of ``training.batch_size`` samples are drawn in turn from one generator;
        a physics-guided model is sampled with classifier-free guidance of scale
        ``sampling.guidance_scale``.

        Parameters
        ----------
        n_samples
            Number of samples; ``sampling.n_samples`` when None.
        seed
            Seed of the sampling noise.
        cocogen
            Correct the samples with CoCoGen's residual-gradient steps per the ``cocogen`` section.
        checkpoint
            Checkpoint file; ``run_dir/last.pt`` when None.
        on_step
            Passed to :func:`~pidm_fem.diffusion.sample`: called with each step's
            timestep and clean estimate (physical, one batch at a time).
        wrap
            Sample from ``wrap(model, normalizer)`` instead of the checkpoint's model
            (e.g. a composition with another run's model), in the checkpoint's normalised
            units, which ``normalizer`` holds.
        conditions
            For a problem with condition fields: rows (N, total) whose conditions the N
            samples are drawn for (their generated fields are ignored); ``n_samples`` must
            be None or N.

        Returns
        -------
        numpy.ndarray
            (n_samples, total) float64 rows in the problem's gauge.

        Raises
        ------
        CheckpointError
            If the checkpoint is missing, from another mesh, or trained with another
            configuration.
        SamplingFailed
            If any sample has a non-finite value (the message names the checkpoint).
        """
        settings = self.config.sampling
        cond = None
        if self.conditions is not None:
            if conditions is None or (n_samples is not None and n_samples != len(conditions)):
                raise InputError(f"the {self.problem.name} problem is sampled for given conditions: one row each")
            if cocogen or self.config.diffusion.method == "physics_guided":
                raise ConfigError(f"CoCoGen and physics-guided sampling need a problem without condition fields "
                                  f"({self.problem.name} has them)")
            conditions = self.problem.layout.check(conditions)
            cond, n_samples = self.condition_tensor(conditions), len(conditions)
        n_samples = settings.n_samples if n_samples is None else n_samples
        if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 1:
            raise InputError(f"the number of samples must be a positive integer, got {n_samples!r}")
        model, normalizer = self.load_denoiser(checkpoint)
        if wrap is not None:
            model = wrap(model, normalizer)
        device = torch.device(self.config.training.device)

        corrector = guidance = None
        if cocogen:
            corrections = self.config.cocogen
            corrector = CoCoGenCorrector(
                self.residual,
                normalizer,
                corrections.step,
                corrections.during,
                corrections.after,
                line_search=corrections.line_search,
                frozen_channels=self.coefficient_channels() if corrections.gradient == "state" else (),
            )
        if self.config.diffusion.method == "physics_guided":
            guidance = PhysicsGuidedConditioning(
                self.residual, normalizer, dropout=self.config.diffusion.cond_dropout, scale=settings.guidance_scale
            )
        generator = torch.Generator().manual_seed(seed)
        batch = self.config.training.batch_size
        chunks = [
            sample(
                model,
                self.schedule,
                normalizer,
                (min(batch, n_samples - start), self.fields.n_channels, self.fields.n_nodes),
                method=settings.sampler,
                n_steps=settings.ddim_steps if settings.sampler == "ddim" else None,
                eta=settings.eta,
                generator=generator,
                corrector=corrector,
                guidance=guidance,
                dtype=DTYPE,
                device=device,
                progress=self.progress,
                on_step=on_step,
                cond=None if cond is None else cond[start : start + batch].to(device),
            )
            for start in range(0, n_samples, batch)
        ]
        given = None if conditions is None else torch.as_tensor(conditions, dtype=torch.float64)
        rows = self.fields.to_rows(torch.cat(chunks).cpu().double(), rows=given).numpy()
        bad = int((~np.isfinite(rows).all(axis=1)).sum())
        if bad:
            raise SamplingFailed(f"{self.run_dir / LAST if checkpoint is None else checkpoint}: {bad} of {n_samples} "
                                 "samples have non-finite values; nothing was written")
        return self.problem.gauge(rows)

    def with_solved_state(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` whose state fields are replaced by the state solved for their own coefficient.

        The physics-exact reference of a generated coefficient: its residual is the
        solver's floor, at the cost of one solve per sample. Rows whose coefficient the
        problem does not admit get NaN states.
        """
        rows = np.array(rows, dtype=np.float64)
        solved = self.problem.solve_state(rows)
        offset = 0
        for name in self.problem.state_fields:
            block = self.problem.layout.block(name)
            width = block.stop - block.start
            rows[:, block] = solved[:, offset : offset + width]
            offset += width
        return self.problem.gauge(rows)
