"""The registry of methods: each compared method defined once, as a small declarative record.

A :class:`Method` says what its run configuration sets, which trained models it needs
and in what order, and what it does at sampling time. The benchmark, the command line
and the tests read :data:`METHODS`; :func:`method_config` turns a run file's sections
into a method's run configuration.

CoCoGen (Jacobsen et al.) is no method of its own: it is a sampling-time correction
that applies to any method's samples (the ``cocogen`` section's ``apply_to``), reported
as ``<method>+cocogen``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pidm_fem.training import ConfigError, RunConfig, config_from_dict
from pidm_fem.training.config import merge_sections

#: suffix of the rows of CoCoGen-corrected samples
COCOGEN_SUFFIX = "+cocogen"
#: diffusion keys of PIDM-trajectory where the run file leaves them unset: chains of 10 DDIM steps drawn
#: every 25 training steps, states at t < T / 2, state misfit of weight 1
#: (docs/studies/what-trajectory-states-change.md)
TRAJECTORY_DEFAULTS = {"trajectory_every": 25, "trajectory_steps": 10, "trajectory_t_fraction": 0.5, "c_state": 1.0}


@dataclass(frozen=True)
class Method:
    """One compared method.

    Attributes
    ----------
    name
        Its name in tables, folders and ``--methods``.
    summary
        One line saying what it is.
    diffusion
        The diffusion keys it sets (over the run file's).
    defaults
        The diffusion keys it sets where the run file leaves them unset.
    trained
        Whether it trains a run of its own (else it samples the models of ``needs``).
    needs
        The methods whose trained models it uses, in order: for a low-noise expert, the
        full-range model it trains beside and (for a frozen coefficient) the coefficient
        model; for a sampled-only method, the model it samples.
    after_sampling
        ``"solve_state"``: its samples' state fields are replaced by the FEM solve of their
        own coefficient (one solve per sample).
    step_cost
        Cost of a training step relative to DDPM's, for sharing the training between processes.
    """

    name: str
    summary: str
    diffusion: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    trained: bool = True
    needs: tuple[str, ...] = ()
    after_sampling: Literal["solve_state"] | None = None
    step_cost: float = 1.0

    @property
    def role(self) -> str:
        """The run's ``diffusion.role``."""
        return self.diffusion.get("role", "model")

    @property
    def is_expert(self) -> bool:
        """Whether its run is a low-noise expert (trained beside frozen models of ``needs``)."""
        return self.role != "model"


_PIDM_MEAN = {"method": "pidm", "x0_estimation": "mean"}

#: the registered methods, in table order (their relative step costs were measured side by side at the
#: quick and default scales: docs/studies/why-plain-pidm-misses-the-floor.md)
METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method("ddpm", "standard diffusion: the data loss alone", {"method": "ddpm"}),
        Method("pidm_mean", "PIDM: the residual of the network's clean estimate", _PIDM_MEAN, step_cost=1.1),
        Method("pidm_sample", "PIDM: the residual at the end of a differentiable DDIM chain",
               {"method": "pidm", "x0_estimation": "sample"}, step_cost=2.1),
        Method("physics_guided", "physics-guided conditioning (Shu et al.) with classifier-free guidance",
               {"method": "physics_guided"}, step_cost=1.1),
        Method("pidm_trajectory", "PIDM-mean with its physics also on states of the network's own trajectories",
               _PIDM_MEAN, TRAJECTORY_DEFAULTS, step_cost=2.6),
        Method("ddpm_k_pidm_p", "K from DDPM; p from PIDM-trajectory with a low-noise expert trained on DDPM's K",
               {**_PIDM_MEAN, "role": "expert_on_frozen_coefficient"}, TRAJECTORY_DEFAULTS,
               needs=("pidm_trajectory", "ddpm"), step_cost=1.5),
        Method("ddpm_k_fem_p", "K from DDPM; p from the FEM solve of that K (the physics-exact reference)",
               trained=False, needs=("ddpm",), after_sampling="solve_state"),
    )
}


def trained_methods(names: list[str]) -> list[str]:
    """The names of ``names`` that train a run of their own, full-range runs first, experts after."""
    trained = [name for name in names if METHODS[name].trained]
    return [m for m in trained if not METHODS[m].is_expert] + [m for m in trained if METHODS[m].is_expert]


def missing_needs(names: list[str]) -> dict[str, list[str]]:
    """``{method: the methods it needs that are not in names}`` for the methods of ``names`` that lack any."""
    missing = {name: [need for need in METHODS[name].needs if need not in names] for name in names}
    return {name: needs for name, needs in missing.items() if needs}


def check_methods(names: list[str], cocogen: tuple[str, ...]) -> None:
    """Raise ConfigError (one line) for an unknown method, a missing need or a CoCoGen target not run."""
    for name in list(names) + list(cocogen):
        if name not in METHODS:
            raise ConfigError(f"unknown method {name!r}; methods: {', '.join(METHODS)}")
    for name, needs in missing_needs(names).items():
        raise ConfigError(f"methods: {name} uses the {' and '.join(needs)} model{'s' if len(needs) > 1 else ''}, "
                          f"so it needs {' and '.join(needs)}")
    for name in cocogen:
        if name not in names:
            raise ConfigError(f"cocogen.apply_to: {name} is not among the methods run")
        if not METHODS[name].trained:
            raise ConfigError(f"cocogen.apply_to: {name} samples another method's model; correct that method")


def method_config(sections: Mapping[str, Any], name: str, source: str | None = None) -> RunConfig:
    """The run configuration of method ``name`` from a run file's ``sections``.

    The method's :attr:`~Method.diffusion` keys override the file's, its
    :attr:`~Method.defaults` fill the diffusion keys the file leaves unset. The run of a
    low-noise expert takes its optimiser from the ``expert`` section (``steps``, ``lr``,
    ``lr_schedule``; its EMA starts at ``min(training.ema_start, steps // 2)``), and
    its trajectory states are drawn, unless the file says otherwise, by chains of the
    sampler's length (its DDIM steps, or T for DDPM), so that its physics acts on the
    states the sampler visits.

    Raises
    ------
    ConfigError
        One line naming ``source`` (default ``<name>``) and the key.
    """
    method = METHODS[name]
    sections = copy.deepcopy(dict(sections))
    defaults = dict(method.defaults)
    file_config = config_from_dict(sections, source=source or f"<{name}>")
    if method.is_expert:
        sampling = file_config.sampling
        if "trajectory_steps" in defaults:
            chain = sampling.ddim_steps if sampling.sampler == "ddim" else file_config.diffusion.T
            defaults["trajectory_steps"] = chain
        expert, training = file_config.expert, file_config.training
        own = {"lr": expert.lr, "lr_schedule": expert.lr_schedule}
        if expert.steps is not None:
            own.update(steps=expert.steps, ema_start=min(training.ema_start, expert.steps // 2))
        sections = merge_sections(sections, {"training": {k: v for k, v in own.items() if v is not None}})
    sections["diffusion"] = {**defaults, **sections.get("diffusion", {}), **method.diffusion}
    return config_from_dict(sections, source=source or f"<{name}>")
