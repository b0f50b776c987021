"""The Darcy case study (method.md, section 3): data, training and sampling of a PIDM.

A :class:`DarcyExperiment` joins the layers below from a run configuration and a mesh:

* **data**: samples ``[p, K]`` from :class:`~pidm_fem.physics.darcy_data.DarcySampleGenerator`,
  generated once into one sample file under the data folder, named by the mesh
  fingerprint, a digest of the generator settings and the number of rows, and
  reused afterwards. The training, validation and test splits are consecutive
  index ranges of that file (sizes from the ``data`` section).
* **units**: the network sees per-field normalised (B, 2, n) tensors (a
  :class:`~pidm_fem.diffusion.FieldNormalizer` fitted on the training split) of the
  fields themselves (``diffusion.representation: nodal``, as in the paper) or of
  elliptic coordinates (``elliptic``): the pressure's Neumann Laplacian
  ``M_L^{-1} A p`` and ``log K``, so that the network's errors reach p only through
  the smoothing inverse and K stays positive. The physics sees physical values
  through the bridge's Darcy residual (strong-form nodal ``M_L^{-1} R`` or the weak
  vector ``R``, per ``diffusion.residual``).
* **loss** (:func:`diffusion_loss`): ``ddpm`` is the data loss alone, ``pidm`` adds the
  residual term, ``physics_guided`` feeds the residual gradient as condition channels.
* **training** with the :class:`~pidm_fem.training.Trainer` in the run folder; the
  checkpoints hold the normaliser (``extra["normalizer"]``) and the mesh fingerprint.
* **sampling** from a checkpoint's EMA weights per the ``sampling`` section, with
  CoCoGen corrections and classifier-free guidance as configured; the pressure of
  the returned rows has zero mean (the gauge).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pidm_fem.data import generate_samples, load_samples
from pidm_fem.diffusion import (
    ChannelExperts,
    CoCoGenCorrector,
    CosineSchedule,
    EstimatedChannelInputs,
    FieldNormalizer,
    FieldSubspaces,
    Functional,
    LinearChannelMap,
    LinearViewInputs,
    LogChannelMap,
    PhysicsGuidedConditioning,
    PIDMLoss,
    Residual,
    SubspaceDenoiser,
    TimestepExperts,
    TrajectoryStates,
    principal_subspace,
    sample,
    x0_denoiser,
)
from pidm_fem.experiments.denoisers import build_denoiser
from pidm_fem.experiments.node_fields import NodeFields
from pidm_fem.mesh import default_mesh_path
from pidm_fem.physics.darcy_data import DarcyDataSettings, DarcySampleGenerator, make_darcy_generator
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

#: dtype of the network and of the tensors it sees (the physics computes in float64)
DTYPE = torch.float32
#: key of the normaliser statistics in a checkpoint's ``extra``
NORMALIZER_KEY = "normalizer"
#: the coefficient field of the Darcy equation (its state is the pressure)
COEFFICIENT_FIELDS = ("K",)


def diffusion_loss(
    config: DiffusionConfig,
    schedule: CosineSchedule,
    normalizer: FieldNormalizer,
    residual: Residual,
    *,
    state_misfit: Functional | None = None,
    coefficient_channels: tuple[int, ...] = (),
    training: bool = True,
) -> PIDMLoss:
    """The loss of ``config.method`` for a problem with a residual and no other physics terms.

    * ``ddpm``: the min-SNR data loss alone; the residual is never called.
    * ``pidm``: plus ``c_residual`` times the residual term, with the x0 estimate
      ``x0_estimation`` (and ``sample_steps`` for "sample"); with
      ``residual_gradient: state`` the residual is not differentiated with respect to
      the ``coefficient_channels``; with ``physics_t_fraction`` below 1 it acts on the
      steps ``t < physics_t_fraction * T`` only. ``c_state`` > 0 adds the state misfit
      term (on the trajectory states only with ``state_on: trajectory``);
      ``trajectory_every`` > 0 (when ``training``) lets the physics terms also act on
      states of the network's own ``trajectory_steps``-step DDIM trajectories at
      ``t < trajectory_t_fraction * T``, drawn afresh every ``trajectory_every`` steps
      (with DDIM's ``trajectory_eta``: 0 deterministic, 1 ancestral).
    * ``expert_below`` > 0 (any method but physics_guided): the loss draws its timesteps
      from ``t < expert_below`` only, the range of a low-noise expert, and the trajectory
      states are taken below it too.
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
    state_misfit
        Misfit of the state on physical samples, (B, C, n) -> (B, k); needed when ``c_state`` > 0.
    coefficient_channels
        Channels of the problem's coefficient fields (the data of the PDE, not its state).
    training
        Condition dropout on (training) or off (validation); only physics_guided uses it.

    Raises
    ------
    ConfigError
        If ``c_eq``, ``c_ineq`` or ``lambda_opt`` is non-zero (the problem has no such functionals),
        or if no step of the trajectories lies below ``trajectory_t_fraction * T``, or if
        the state misfit acts on trajectory states only and there are none.
    """
    for key in ("c_eq", "c_ineq", "lambda_opt"):
        if getattr(config, key) != 0:
            raise ConfigError(
                f"diffusion.{key}: this problem has no constraint or objective functional; "
                f"must be 0, got {getattr(config, key)}"
            )
    pidm = config.method == "pidm"
    expert_below = config.expert_below or None
    if expert_below is not None and config.method == "physics_guided":
        raise ConfigError("diffusion.expert_below: a low-noise expert cannot be physics_guided (no condition channels)")
    if expert_below is not None and expert_below > config.T:
        raise ConfigError(f"diffusion.expert_below: must be at most T = {config.T}, got {expert_below}")
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
    return PIDMLoss(
        schedule,
        normalizer,
        residual=residual if pidm else None,
        c_data=config.c_data,
        c_residual=config.c_residual if pidm else 0.0,
        x0_estimate=config.x0_estimation,
        sample_steps=config.sample_steps,
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


def _max_t(fraction: float, T: int) -> int:
    """The bound ``round(fraction * T)`` (at least 1) of the steps ``t < bound`` that make up a fraction of T."""
    return max(1, round(fraction * T))


@dataclass(frozen=True)
class DarcySplits:
    """Physical sample rows ``[p, K]`` of the three splits, each (N, 2n) float64."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


class DarcyExperiment:
    """Data, training and sampling of a diffusion model of Darcy fields ``[p, K]`` on a mesh.

    Parameters
    ----------
    config
        The run configuration.
    mesh_path
        Mesh file of the fields; the shipped default mesh when None.
    data_dir
        Folder of the cached sample files.
    run_dir
        Folder of the run's checkpoints and log.
    data_options
        Further :class:`~pidm_fem.physics.darcy_data.DarcyDataSettings` (``sampler``,
        ``length``, ``n_modes``, ``source``, ``degree``); the mesh and the seed
        (``data.seed``) come from the arguments and the configuration.
    workers
        Processes that generate missing samples.
    progress
        Show progress bars.

    Attributes
    ----------
    settings
        The generator settings.
    generator
        The sample generator (its ``layout`` packs the rows).
    problem
        The generator's :class:`~pidm_fem.physics.darcy.DarcyProblem`.
    fields
        Rows <-> (B, 2, n) tensors.
    mesh
        The mesh as the denoisers see it.
    fingerprint
        Fingerprint of the mesh and field degree, stored in data files and checkpoints.
    schedule
        The noise schedule.
    """

    def __init__(
        self,
        config: RunConfig,
        mesh_path: str | os.PathLike | None = None,
        *,
        data_dir: str | os.PathLike,
        run_dir: str | os.PathLike,
        data_options: Mapping[str, Any] | None = None,
        workers: int = 1,
        progress: bool = True,
    ):
        self.config = config
        self.data_dir, self.run_dir = Path(data_dir), Path(run_dir)
        self.workers, self.progress = workers, progress
        mesh_path = default_mesh_path() if mesh_path is None else mesh_path
        self.settings = DarcyDataSettings(mesh=str(mesh_path), seed=config.data.seed, **dict(data_options or {}))
        self.generator = DarcySampleGenerator(self.settings)
        self.problem = self.generator.problem
        self.fields = NodeFields(self.generator.layout)
        self.mesh = self.fields.mesh_nodes()
        self.fingerprint = self.generator.fingerprint
        self.schedule = CosineSchedule(config.diffusion.T)
        self._rows_residual = self.problem.torch_residual(config.diffusion.residual)
        self._rows_strong_residual = (
            self._rows_residual if config.diffusion.residual == "strong" else self.problem.torch_residual("strong")
        )
        self._splits: DarcySplits | None = None
        self._channel_maps: list | None = None

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """Darcy residual of physical fields (B, 2, n), per ``diffusion.residual``: (B, n), differentiable."""
        return self._rows_residual(self.fields.to_rows(x))

    def strong_residual(self, x: torch.Tensor) -> torch.Tensor:
        """Strong-form nodal residual ``M_L^{-1} R`` of physical fields (B, 2, n): (B, n), differentiable.

        The residual the evaluation reports, whichever residual ``diffusion.residual``
        gives the physics terms.
        """
        return self._rows_strong_residual(self.fields.to_rows(x))

    def solve_state(self, x: torch.Tensor) -> torch.Tensor:
        """The pressure solved for each sample's own permeability (the coupling the data obey).

        Parameters
        ----------
        x
            Physical fields (B, 2, n).

        Returns
        -------
        torch.Tensor
            (B, n) float64 pressures with zero mean (the samples' gauge); NaN for a
            sample whose K is not finite and positive.
        """
        permeability = x[:, self.fields.channel("K")].detach().cpu().double().numpy()
        solved = np.full(permeability.shape, np.nan)
        valid = np.all(np.isfinite(permeability), axis=1) & (permeability.min(axis=1) > 0)
        if valid.any():
            solved[valid] = self.problem.solve_many(permeability[valid])
        return torch.from_numpy(solved)

    def state_misfit(self, x: torch.Tensor) -> torch.Tensor:
        """Relative misfit of each sample's pressure against the one solved for its own K: (B, n).

        ``m = sqrt(w) (p - mean_w(p) - S(K)) / ||S(K)||_w`` with the lumped mass ``w``, so
        that ``sum(m^2)`` is the squared relative state error the evaluation reports.
        Differentiable with respect to p; S(K) is a constant (K is the sample's
        coefficient). A sample without a finite positive K has a zero misfit.
        """
        p = x[:, self.fields.channel("p")]
        weights = torch.as_tensor(self.problem.lumped_mass(), dtype=p.dtype, device=p.device)
        solved = self.solve_state(x).to(dtype=p.dtype, device=p.device)
        valid = torch.isfinite(solved).all(dim=1, keepdim=True)
        solved = torch.where(valid, solved, torch.zeros_like(solved))
        norm = (weights * solved.pow(2)).sum(dim=1, keepdim=True).sqrt().clamp(min=torch.finfo(p.dtype).tiny)
        gauged = p - (p * weights).sum(dim=1, keepdim=True) / weights.sum()
        return torch.where(valid, weights.sqrt() * (gauged - solved) / norm, torch.zeros_like(p))

    @property
    def n_rows(self) -> int:
        """Rows of the sample file: training, validation and test samples together."""
        data = self.config.data
        return data.n_train + data.n_val + data.n_test

    def data_path(self) -> Path:
        """The sample file of this experiment's settings, mesh and size."""
        settings = json.dumps(self.settings.as_dict(), sort_keys=True)
        digest = hashlib.sha256(settings.encode()).hexdigest()[:12]
        return self.data_dir / f"darcy_{self.fingerprint}_{digest}_{self.n_rows}.h5"

    def dataset(self) -> DarcySplits:
        """The training, validation and test rows, generating the sample file if it is missing."""
        if self._splits is None:
            layout = self.generator.layout
            make = partial(make_darcy_generator, self.settings) if self.workers > 1 else lambda: self.generator
            path = generate_samples(
                self.data_path(),
                self.n_rows,
                make,
                self.fingerprint,
                self.settings.as_dict(),
                {name: layout.dof_coordinates(name) for name in layout.names},
                workers=self.workers,
                progress=self.progress,
            )
            rows, _ = load_samples(path, self.fingerprint, layout.names, self.settings.as_dict())
            n_train, n_val = self.config.data.n_train, self.config.data.n_val
            self._splits = DarcySplits(
                train=rows[:n_train], val=rows[n_train : n_train + n_val], test=rows[n_train + n_val :]
            )
        return self._splits

    def node_tensor(self, rows: np.ndarray) -> torch.Tensor:
        """Rows (N, 2n) as the network-dtype tensor (N, 2, n)."""
        return self.fields.to_nodes(torch.as_tensor(rows, dtype=DTYPE))

    def coefficient_channels(self) -> tuple[int, ...]:
        """Channels of the coefficient fields (K): held fixed when physics is differentiated "state" only."""
        return tuple(self.fields.channel(name) for name in COEFFICIENT_FIELDS)

    def channel_maps(self) -> list:
        """The per-field maps of ``diffusion.representation``, in channel order [p, K] (built once)."""
        if self._channel_maps is None:
            if self.config.diffusion.representation == "elliptic":
                maps = {"p": LinearChannelMap(*self.problem.laplacian_maps), "K": LogChannelMap()}
            else:
                maps = {}
            self._channel_maps = [maps.get(name) for name in self.fields.names]
        return self._channel_maps

    def input_views(self) -> list[tuple[int, torch.Tensor]]:
        """``(channel, matrix)`` views of the noisy sample handed to the network (empty when none is on).

        ``model.field_views``: each linearly mapped field by its inverse map (the pressure of
        its Laplacian); ``model.gradient_views``: the recovered nodal gradient, x then y
        (:attr:`~pidm_fem.models.MeshNodes.nodal_gradient`), of every field in those
        physical coordinates.

        Raises
        ------
        ConfigError
            If ``model.field_views`` is on but no field is linearly mapped (nodal representation).
        """
        physical = {
            channel: channel_map.inverse_matrix
            for channel, channel_map in enumerate(self.channel_maps())
            if isinstance(channel_map, LinearChannelMap)
        }
        views = []
        if self.config.model.field_views:
            if not physical:
                raise ConfigError(
                    "model.field_views: no field is linearly mapped; it needs diffusion.representation: elliptic"
                )
            views += list(physical.items())
        if self.config.model.gradient_views:
            gradient = torch.tensor(self.mesh.nodal_gradient, dtype=torch.float64)
            for channel in range(self.fields.n_channels):
                for component in gradient:
                    views.append((channel, component @ physical[channel] if channel in physical else component))
        return views

    def fit_normalizer(self) -> FieldNormalizer:
        """Per-field statistics of the training split, in the coordinates of ``diffusion.representation``."""
        return FieldNormalizer.fit(self.node_tensor(self.dataset().train), self.channel_maps())

    def build_model(self, normalizer: FieldNormalizer | None = None) -> nn.Module:
        """A freshly initialised denoiser of ``config.model``, seeded by ``training.seed``.

        Physics-guided conditioning gives it one condition channel per field, and
        ``model.field_views`` and ``model.gradient_views`` one more per view
        (:class:`~pidm_fem.diffusion.LinearViewInputs`). With ``diffusion.prediction: v``
        the network predicts v and is wrapped into an x0 denoiser
        (:class:`~pidm_fem.diffusion.VPredictionDenoiser`). With ``model.output_modes``
        its estimate is confined to the training data's principal subspace of each field
        (:class:`~pidm_fem.diffusion.SubspaceDenoiser`, in the units of ``normalizer``,
        fitted here when None). With ``diffusion.expert_below`` > 0 it is a
        :class:`~pidm_fem.diffusion.TimestepExperts` pair of two such denoisers: the
        trained low-noise expert for ``t < expert_below`` (of width ``model.expert_width``
        where set) and, with its parameters frozen, the full-range denoiser it is sampled
        beside (its weights come from :meth:`trainer`'s ``high`` or a checkpoint). With
        ``diffusion.frozen_coefficient`` the model is a
        :class:`~pidm_fem.diffusion.ChannelExperts` whose coefficient (K) estimate comes
        from one more such denoiser, frozen (its weights from :meth:`trainer`'s
        ``coefficient`` or a checkpoint); with
        ``frozen_coefficient_steps: high`` that composition replaces the full-range
        denoiser of the pair only; with ``coefficient_input: estimate`` the run's own
        network sees that denoiser's clean estimate of K in place of the noisy K
        (:class:`~pidm_fem.diffusion.EstimatedChannelInputs`, sharing the frozen module).
        The global torch RNG is left as it was.

        Raises
        ------
        ConfigError
            If ``diffusion.frozen_coefficient`` is set for a physics-guided model, whose
            condition channels a model of another run would not read, or on the steps
            ``high`` of a run that is not an expert.
        """
        diffusion = self.config.diffusion
        split = diffusion.expert_below
        frozen = diffusion.frozen_coefficient
        if frozen and diffusion.method == "physics_guided":
            raise ConfigError("diffusion.frozen_coefficient: a physics-guided model's condition channels are its own")
        expert_width = self.config.model.expert_width
        model = self._build_denoiser(normalizer, width=expert_width or None)
        coefficient = self._frozen_denoiser(normalizer) if frozen else None
        if diffusion.coefficient_input == "estimate":
            model = EstimatedChannelInputs(model, coefficient, self.coefficient_channels())
        if split:
            model = TimestepExperts(model, self._frozen_denoiser(normalizer), split)
        if not frozen:
            return model
        return self.with_coefficient_of(model, coefficient, diffusion.frozen_coefficient_steps)

    def with_coefficient_of(self, model: nn.Module, coefficient: nn.Module, steps: str = "all") -> nn.Module:
        """``model`` whose coefficient (K) estimate is ``coefficient``'s, at the steps ``steps``.

        The composition of ``diffusion.frozen_coefficient`` (:meth:`build_model`), also
        for models trained without it.

        Parameters
        ----------
        model
            A denoiser of this run's structure without a frozen coefficient: a single
            denoiser, or a low-noise expert's :class:`~pidm_fem.diffusion.TimestepExperts` pair.
        coefficient
            The denoiser, in the same normalised units, whose coefficient estimate replaces ``model``'s.
        steps
            ``"all"``: at every step (:class:`~pidm_fem.diffusion.ChannelExperts` around
            ``model``); ``"high"``: at the pair's full-range steps only (around its ``high``).

        Raises
        ------
        ConfigError
            If ``steps`` is ``"high"`` and ``model`` is not a low-noise expert's pair, or
            ``steps`` is neither value.
        """
        channels = self.coefficient_channels()
        if steps == "all":
            return ChannelExperts(model, coefficient, channels)
        if steps != "high":
            raise ConfigError(f"frozen coefficient steps must be 'all' or 'high', got {steps!r}")
        if not isinstance(model, TimestepExperts):
            raise ConfigError("diffusion.frozen_coefficient_steps: 'high' needs a low-noise expert (expert_below > 0)")
        return TimestepExperts(model.low, ChannelExperts(model.high, coefficient, channels), model.split)

    def _frozen_parts(self, model: nn.Module) -> tuple[nn.Module | None, nn.Module | None]:
        """The modules of :meth:`build_model`'s ``model`` that hold the frozen full-range and coefficient
        denoisers (None where it has none)."""
        diffusion = self.config.diffusion
        if not diffusion.frozen_coefficient:
            return (model.high if diffusion.expert_below else None), None
        if diffusion.frozen_coefficient_steps == "high":
            return model.high.base, model.high.other
        return (model.base.high if diffusion.expert_below else None), model.other

    def _expert_part(self, model: nn.Module) -> nn.Module:
        """The trained low-noise expert network of :meth:`build_model`'s ``model`` (an expert run's), without
        the coefficient estimator that ``coefficient_input: estimate`` hands it."""
        diffusion = self.config.diffusion
        pair = model.base if diffusion.frozen_coefficient and diffusion.frozen_coefficient_steps == "all" else model
        return pair.low.network if diffusion.coefficient_input == "estimate" else pair.low

    def _frozen_denoiser(self, normalizer: FieldNormalizer | None) -> nn.Module:
        return self._build_denoiser(normalizer).requires_grad_(False)

    def _build_denoiser(self, normalizer: FieldNormalizer | None, width: int | None = None) -> nn.Module:
        """A fresh denoiser of ``config.model``, of width ``width`` (None: ``model.width``)."""
        model_config = self.config.model if width is None else replace(self.config.model, width=width)
        n_fields = self.fields.n_channels
        views = self.input_views()
        cond_channels = (n_fields if self.config.diffusion.method == "physics_guided" else 0) + len(views)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.training.seed)
            network = build_denoiser(
                model_config,
                self.mesh,
                n_fields,
                cond_channels=cond_channels,
                n_timesteps=self.config.diffusion.T,
            )
        if views:
            network = LinearViewInputs(network, views)
        denoiser = x0_denoiser(network, self.config.diffusion.prediction, self.schedule)
        modes = self.config.model.output_modes
        if not modes:
            return denoiser
        normalizer = self.fit_normalizer() if normalizer is None else normalizer
        return SubspaceDenoiser(denoiser, self.principal_subspaces(normalizer, modes))

    def principal_subspaces(self, normalizer: FieldNormalizer, modes: int) -> FieldSubspaces:
        """The mean and ``modes`` leading principal components of each field of the training split.

        In the units of ``normalizer``, orthonormal in the lumped-mass inner product
        (:func:`~pidm_fem.diffusion.principal_subspace`).
        """
        weights = self.problem.lumped_mass()
        train = normalizer.normalize(self.node_tensor(self.dataset().train))
        subspaces = [principal_subspace(train[:, channel], weights, modes) for channel in range(train.shape[1])]
        return FieldSubspaces(subspaces, weights)

    def trainer(self, high: nn.Module | None = None, coefficient: nn.Module | None = None) -> Trainer:
        """A :class:`~pidm_fem.training.Trainer` on the training split, resuming from the run folder.

        Its loss draws t, the noise and the condition dropout from the trainer's
        generator; validation (on the validation split, if any) runs without dropout.

        Parameters
        ----------
        high
            The full-range denoiser (normalised units, e.g. another run's
            :meth:`load_denoiser`) beside which a low-noise expert run
            (``diffusion.expert_below`` > 0) trains; its weights are copied into the pair,
            frozen (and, with ``diffusion.expert_start: full_range``, into the expert as its
            first weights). Needed to start such a run; a resumed one has them in its checkpoint.
        coefficient
            The denoiser (same units) whose coefficient estimate a run with
            ``diffusion.frozen_coefficient`` trains and samples with; copied, frozen, and
            needed likewise to start such a run.

        Raises
        ------
        ConfigError
            If ``high`` or ``coefficient`` is given to a run that has no use for it, or
            missing for a run with no checkpoint to resume from.
        """
        splits = self.dataset()
        normalizer = self.fit_normalizer()
        diffusion = self.config.diffusion
        train_loss, eval_loss = (
            diffusion_loss(
                diffusion,
                self.schedule,
                normalizer,
                self.residual,
                state_misfit=self.state_misfit,
                coefficient_channels=self.coefficient_channels(),
                training=training,
            )
            for training in (True, False)
        )

        def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator):
            loss = train_loss if model.training else eval_loss
            return loss(model, batch["x0"], generator=generator)

        model = self.build_model(normalizer)
        high_part, coefficient_part = self._frozen_parts(model)
        resumed = (self.run_dir / LAST).is_file()
        _copy_frozen(high_part, high, resumed,
                     "a full-range run (diffusion.expert_below: 0) trains no expert beside a frozen model",
                     f"diffusion.expert_below: the expert run {self.run_dir} starts from a full-range denoiser, "
                     f"and none was given")
        if diffusion.expert_start == "full_range" and not resumed:
            self._expert_part(model).load_state_dict(high.state_dict())
        _copy_frozen(coefficient_part, coefficient, resumed,
                     "a run without diffusion.frozen_coefficient takes no coefficient model",
                     f"diffusion.frozen_coefficient: the run {self.run_dir} starts from the denoiser of its "
                     f"coefficient, and none was given")
        val_data = {"x0": self.node_tensor(splits.val)} if len(splits.val) else None
        return Trainer(
            model,
            loss_fn,
            {"x0": self.node_tensor(splits.train)},
            self.config,
            self.run_dir,
            val_data=val_data,
            mesh_fingerprint=self.fingerprint,
            extra={NORMALIZER_KEY: normalizer.state_dict()},
            state={} if train_loss.trajectory is None else {"trajectory": train_loss.trajectory},
            progress=self.progress,
        )

    def train(self, high: nn.Module | None = None, coefficient: nn.Module | None = None) -> TrainingSummary:
        """Train (or resume training) up to ``training.steps``; the last checkpoint is ``run_dir/last.pt``.

        ``high``: the full-range denoiser of a low-noise expert run; ``coefficient``: the
        frozen coefficient denoiser of a ``diffusion.frozen_coefficient`` run (:meth:`trainer`).
        """
        return self.trainer(high, coefficient).train()

    def load_denoiser(self, checkpoint: str | os.PathLike | None = None) -> tuple[nn.Module, FieldNormalizer]:
        """A checkpoint's EMA denoiser, in evaluation mode on ``training.device``, and its normaliser.

        Parameters
        ----------
        checkpoint
            Checkpoint file; ``run_dir/last.pt`` when None.

        Raises
        ------
        CheckpointError
            If the checkpoint is missing, from another mesh, or trained with another
            ``model`` or ``diffusion`` configuration.
        """
        path = self.run_dir / LAST if checkpoint is None else Path(checkpoint)
        state = load_checkpoint(path, self.fingerprint)
        saved, ours = trained_configuration(state.config), trained_configuration(config_to_dict(self.config))
        for section in ("model", "diffusion"):
            if saved.get(section) != ours[section]:
                raise CheckpointError(path, f"trained with another {section} configuration than this experiment's")
        normalizer = FieldNormalizer.from_state_dict(state.extra[NORMALIZER_KEY], self.channel_maps())
        model = self.build_model(normalizer)
        model.load_state_dict(state.ema["shadow"])
        return model.to(torch.device(self.config.training.device)).eval(), normalizer

    def sample(
        self,
        n_samples: int | None = None,
        *,
        seed: int = 0,
        checkpoint: str | os.PathLike | None = None,
        on_step: Callable[[int, torch.Tensor], None] | None = None,
        wrap: Callable[[nn.Module, FieldNormalizer], nn.Module] | None = None,
    ) -> np.ndarray:
        """Draw physical rows ``[p, K]`` from a checkpoint's EMA weights, per ``config.sampling``.

        Batches of ``training.batch_size`` samples are drawn in turn from one generator.
        CoCoGen corrections run when ``cocogen_during`` or ``cocogen_after`` is positive
        (on the pressure only with ``cocogen_gradient: state``);
        a physics-guided model is sampled with classifier-free guidance of scale
        ``guidance_scale``.

        Parameters
        ----------
        n_samples
            Number of samples; ``sampling.n_samples`` when None.
        seed
            Seed of the sampling noise.
        checkpoint
            Checkpoint file; ``run_dir/last.pt`` when None.
        on_step
            Passed to :func:`~pidm_fem.diffusion.sample`: called with each step's
            timestep and clean estimate (physical, one batch at a time).
        wrap
            Sample from ``wrap(denoiser, normalizer)`` instead of the checkpoint's denoiser
            (e.g. a :class:`~pidm_fem.diffusion.TimestepExperts` around it), in the
            checkpoint's normalised units, which ``normalizer`` holds (so that a wrap
            composing another model can check that it shares them).

        Returns
        -------
        numpy.ndarray
            (n_samples, 2n) float64 rows with zero-mean pressure.

        Raises
        ------
        CheckpointError
            If the checkpoint is missing, from another mesh, or trained with another
            ``model`` or ``diffusion`` configuration.
        """
        settings = self.config.sampling
        n_samples = settings.n_samples if n_samples is None else n_samples
        if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
        model, normalizer = self.load_denoiser(checkpoint)
        if wrap is not None:
            model = wrap(model, normalizer)
        device = torch.device(self.config.training.device)

        corrector = guidance = None
        if settings.cocogen_during or settings.cocogen_after:
            corrector = CoCoGenCorrector(
                self.residual,
                normalizer,
                settings.cocogen_step,
                settings.cocogen_during,
                settings.cocogen_after,
                line_search=settings.cocogen_line_search,
                frozen_channels=self.coefficient_channels() if settings.cocogen_gradient == "state" else (),
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
            )
            for start in range(0, n_samples, batch)
        ]
        rows = self.fields.to_rows(torch.cat(chunks)).to(device="cpu", dtype=torch.float64).numpy()
        return self.remove_pressure_mean(rows)

    def remove_pressure_mean(self, rows: np.ndarray) -> np.ndarray:
        """A copy of ``rows`` (B, 2n) whose pressure has zero mean over the domain (the gauge).

        The mean is the integral of the P1 pressure over the area: the lumped mass
        entries are the integrals of the basis functions, so ``M_L . p / sum(M_L)``
        is exact (the gauge :meth:`DarcyProblem.solve` uses).
        """
        layout = self.generator.layout
        rows = np.array(layout.check(rows), dtype=np.float64)
        weights = self.problem.lumped_mass()
        pressure = rows[:, layout.block("p")]
        pressure -= (pressure @ weights / weights.sum())[:, None]
        return rows
