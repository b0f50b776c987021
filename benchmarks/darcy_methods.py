"""Training and sampling of every compared method on one Darcy dataset (used by darcy_mesh.py).

Methods share the seed, model, optimiser, data and number of steps; they differ
only in the switches of the diffusion configuration:

* ``ddpm``: standard diffusion (c_residual = 0);
* ``pidm_mean``: PIDM, residual of the network's x0 estimate;
* ``pidm_sample``: PIDM, residual at the end of a differentiable DDIM chain;
* ``pidm_trajectory``: PIDM-mean whose physics terms also act on states of the network's own
  DDIM trajectories, with the state misfit beside the residual (:data:`TRAJECTORY_DEFAULTS`);
* ``physics_guided``: residual-gradient conditioning with classifier-free guidance;
* ``ddpm_expert``, ``pidm_trajectory_expert``: the DDPM and PIDM-trajectory models, each
  sampled with a low-noise expert for the steps t < :data:`EXPERT_BELOW` (eDiff-I's
  ensemble of expert denoisers), trained with the model's own loss beside the model,
  frozen (:data:`EXPERT_OF`); PIDM-trajectory's expert draws its trajectory states
  through both, by chains of the sampler's length, so that its physics acts on the
  states the sampler visits below the split;
* ``cocogen``: the DDPM model, sampled with residual corrections;
* ``pidm_cocogen``: the PIDM-mean model, sampled with the same corrections;
* ``pidm_trajectory_cocogen``: the PIDM-trajectory model, sampled with the same corrections;
* ``pidm_trajectory_expert_ddpm_k``: the ``pidm_trajectory_expert`` pair whose coefficient (K)
  estimate is DDPM's at every step (:data:`COMPOSED`): the pressure of the physics-informed
  models, the coefficient of the model trained on the data alone;
* ``pidm_trajectory_expert_ddpm_k_high``: the same with DDPM's K at the full-range model's
  steps only (t >= :data:`EXPERT_BELOW`), the expert's own K below;
* ``pidm_trajectory_expert_on_ddpm_k``: a low-noise expert of PIDM-trajectory trained and
  sampled inside that composition (``diffusion.frozen_coefficient``, DDPM's model frozen:
  :data:`COEFFICIENT_OF`), so that its trajectory states and its physics terms meet DDPM's K;
* ``pidm_trajectory_expert_on_ddpm_k_high``: the same inside the ``_high`` composition, DDPM's
  K at the full-range steps only, the expert's own K below;
* ``pidm_trajectory_expert_given_ddpm_k``: ``pidm_trajectory_expert_on_ddpm_k`` whose expert
  network sees DDPM's clean estimate of K in place of the noisy K (``diffusion.coefficient_input:
  estimate``, :data:`COEFFICIENT_INPUT`): the pressure of a conditional model, given the K it
  is composed with.
"""

from __future__ import annotations

import copy
import ctypes
import dataclasses
import json
import multiprocessing
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pidm_fem.diffusion import FieldNormalizer
from pidm_fem.experiments import DarcyExperiment
from pidm_fem.training import CheckpointError, config_from_dict, load_checkpoint
from pidm_fem.training.checkpoint import LAST

#: diffusion-section overrides of each trained method
TRAINED = {
    "ddpm": {"method": "ddpm"},
    "pidm_mean": {"method": "pidm", "x0_estimation": "mean"},
    "pidm_sample": {"method": "pidm", "x0_estimation": "sample"},
    "physics_guided": {"method": "physics_guided"},
    "pidm_trajectory": {"method": "pidm", "x0_estimation": "mean"},
}
#: the extra sections of darcy_mesh's base configuration with the experts' own keys, and the section each updates
EXPERT_SECTIONS = {"expert_model": "model", "expert_training": "training", "expert_diffusion": "diffusion"}
#: first timestep of the full-range model under a low-noise expert (docs/darcy_studies.md, "A low-noise expert":
#: at the quick scale t < 10 did as well as t < 20 and better than t < 30)
EXPERT_BELOW = 10
#: low-noise experts: the full-range method each trains beside (frozen) and is sampled with
EXPERT_OF = {"ddpm_expert": "ddpm", "pidm_trajectory_expert": "pidm_trajectory",
             "pidm_trajectory_expert_on_ddpm_k": "pidm_trajectory",
             "pidm_trajectory_expert_on_ddpm_k_high": "pidm_trajectory",
             "pidm_trajectory_expert_given_ddpm_k": "pidm_trajectory"}
#: trained methods whose coefficient (K) estimate is, in training and sampling, that of another trained
#: method's model, frozen (``diffusion.frozen_coefficient``), at the steps ``diffusion.frozen_coefficient_steps``
#: (all, or the full-range model's only): the method and the steps; they train after every other method
COEFFICIENT_OF = {"pidm_trajectory_expert_on_ddpm_k": ("ddpm", "all"),
                  "pidm_trajectory_expert_on_ddpm_k_high": ("ddpm", "high"),
                  "pidm_trajectory_expert_given_ddpm_k": ("ddpm", "all")}
#: methods of :data:`COEFFICIENT_OF` whose own network sees the frozen model's clean coefficient estimate
#: in place of the noisy coefficient (``diffusion.coefficient_input: estimate``)
COEFFICIENT_INPUT = ("pidm_trajectory_expert_given_ddpm_k",)
TRAINED.update({expert: TRAINED[run] for expert, run in EXPERT_OF.items()})
TRAINED.update({m: {**TRAINED[m], "frozen_coefficient": True, "frozen_coefficient_steps": steps,
                    "coefficient_input": "estimate" if m in COEFFICIENT_INPUT else "noisy"}
                for m, (_, steps) in COEFFICIENT_OF.items()})
#: diffusion keys of ``pidm_trajectory`` where the run's configuration leaves them unset (the options of the
#: README's "Trajectory states in the default mode": chains of 10 DDIM steps drawn every 25 training steps,
#: states at t < T / 2, state misfit of weight 1)
TRAJECTORY_DEFAULTS = {"trajectory_every": 25, "trajectory_steps": 10, "trajectory_t_fraction": 0.5, "c_state": 1.0}
#: per trained method, the diffusion keys it sets where the run's configuration leaves them unset
DEFAULTS = {"pidm_trajectory": TRAJECTORY_DEFAULTS, "ddpm_expert": {"expert_below": EXPERT_BELOW},
            "pidm_trajectory_expert": {**TRAJECTORY_DEFAULTS, "expert_below": EXPERT_BELOW}}
DEFAULTS.update({m: DEFAULTS["pidm_trajectory_expert"] for m in COEFFICIENT_OF})
#: sampled-only methods: the trained method whose model they sample with CoCoGen corrections
CORRECTED = {"cocogen": "ddpm", "pidm_cocogen": "pidm_mean", "pidm_trajectory_cocogen": "pidm_trajectory"}
#: sampled-only methods composed of two trained methods' models: the one sampled, the one whose
#: coefficient (K) estimate replaces the first's, and the steps at which it does, as in
#: :data:`COEFFICIENT_OF` (:meth:`~pidm_fem.experiments.DarcyExperiment.with_coefficient_of`;
#: docs/darcy_studies.md, "The coefficient of the data model")
COMPOSED = {"pidm_trajectory_expert_ddpm_k": ("pidm_trajectory_expert", "ddpm", "all"),
            "pidm_trajectory_expert_ddpm_k_high": ("pidm_trajectory_expert", "ddpm", "high")}
#: prctl option of Linux: the signal a process receives when its parent dies
PR_SET_PDEATHSIG = 1
#: relative cost of a training step (quick mode, one core each: 80, 88, 168 and 88 s for 350 steps;
#: pidm_trajectory: default mode, 1.56 against DDPM's 0.61 s per step side by side; with the fused
#: slice attention, default mode: 1, 1.03, 2.1, 1.04 and 2.8, which groups the methods the same way); the
#: methods of :data:`COEFFICIENT_OF` never train in parallel groups
STEP_COST = {"ddpm": 1.0, "pidm_mean": 1.1, "pidm_sample": 2.1, "physics_guided": 1.1, "pidm_trajectory": 2.6,
             "ddpm_expert": 1.0, "pidm_trajectory_expert": 1.5}


def method_config(base: dict, method: str):
    """The run configuration of ``method`` from the shared ``base`` sections.

    The method's :data:`TRAINED` keys override ``base``; its :data:`DEFAULTS` fill the
    diffusion keys that ``base`` leaves unset (so a command-line option still wins). The
    trajectory states of an expert (:data:`EXPERT_OF`) are drawn, unless ``base`` says
    otherwise, by chains of the sampler's length (its DDIM steps, or T for DDPM), and
    its model, training and diffusion keys are updated from ``base``'s extra sections
    :data:`EXPERT_SECTIONS` (darcy_mesh's ``--expert-width``, ``--expert-steps``,
    ``--expert-lr-schedule`` and ``--expert-start``), which the other methods ignore.
    """
    sections = copy.deepcopy(base)
    expert = {target: sections.pop(extra, {}) for extra, target in EXPERT_SECTIONS.items()}
    if method not in EXPERT_OF:
        expert = {target: {} for target in expert}
    for target in ("model", "training"):
        sections[target] = {**sections.get(target, {}), **expert[target]}
    defaults = dict(DEFAULTS.get(method, {}))
    if method in EXPERT_OF and "trajectory_steps" in defaults:
        sampling = config_from_dict({"sampling": sections.get("sampling", {})}).sampling
        T = config_from_dict({"diffusion": sections.get("diffusion", {})}).diffusion.T
        defaults["trajectory_steps"] = sampling.ddim_steps if sampling.sampler == "ddim" else T
    sections["diffusion"] = {**defaults, **sections.get("diffusion", {}), **expert["diffusion"], **TRAINED[method]}
    return config_from_dict(sections, source=f"<{method}>")


def needed_methods(method: str) -> tuple[str, ...]:
    """The trained methods whose models ``method`` samples or trains beside (none for a trained method)."""
    if method in CORRECTED:
        return (CORRECTED[method],)
    if method in EXPERT_OF:
        return (EXPERT_OF[method],) + ((COEFFICIENT_OF[method][0],) if method in COEFFICIENT_OF else ())
    return COMPOSED[method][:2] if method in COMPOSED else ()


def require_same_units(sampled: FieldNormalizer, other: FieldNormalizer, method: str) -> None:
    """Raise ValueError unless two models' normalisers hold the same statistics (so one state means one thing)."""
    ours, theirs = sampled.state_dict(), other.state_dict()
    if ours.keys() != theirs.keys() or not all(torch.equal(ours[key], theirs[key]) for key in ours):
        raise ValueError(f"{method}: the models it composes were trained in different normalised units")


def seconds_per_step(log: Path) -> float:
    """Mean wall time of a training step over a run's whole ``log.jsonl``."""
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    times = [line["seconds_per_step"] for line in lines if line.get("split") == "train"]
    return float(np.mean(times)) if times else float("nan")


def train_all(base: dict, methods: list[str], mesh, out: Path, workers: int, progress: bool) -> dict:
    """Train each trained method of ``methods`` (resuming finished or partial runs in ``out/runs``).

    Each low-noise expert (:data:`EXPERT_OF`) trains after the full-range methods, from
    its method's run in ``out/runs``, and with the frozen coefficient model of
    :data:`COEFFICIENT_OF` where it has one (whose units must be its own).

    Returns
    -------
    dict
        ``{method: DarcyExperiment}`` of the trained methods, in the order of ``methods``.
    """
    experiments = {}
    trained = [m for m in methods if m in TRAINED]
    for method in [m for m in trained if m not in EXPERT_OF] + [m for m in trained if m in EXPERT_OF]:
        experiment = DarcyExperiment(method_config(base, method), mesh, data_dir=out / "data",
                                     run_dir=out / "runs" / method, workers=workers, progress=progress)
        high, _ = _trained(base, EXPERT_OF[method], mesh, out, progress) if method in EXPERT_OF else (None, None)
        coefficient = None
        if method in COEFFICIENT_OF:
            coefficient, units = _trained(base, COEFFICIENT_OF[method][0], mesh, out, progress)
            require_same_units(experiment.fit_normalizer(), units, method)
        experiment.train(high, coefficient)
        experiments[method] = experiment
    return dict(sorted(experiments.items(), key=lambda item: trained.index(item[0])))


def _trained(base: dict, method: str, mesh, out: Path, progress: bool):
    """The EMA denoiser and normaliser of ``method``'s finished run in ``out/runs``."""
    return DarcyExperiment(method_config(base, method), mesh, data_dir=out / "data", run_dir=out / "runs" / method,
                           progress=progress).load_denoiser()


def balanced_groups(methods: list[str], jobs: int) -> list[list[str]]:
    """The trained methods of ``methods`` split into at most ``jobs`` groups of similar cost.

    The methods of :data:`COEFFICIENT_OF` are left out: they need a model of another
    group, and train after them all (:func:`train_all`). A low-noise expert stays in its
    full-range method's group, after it, when both are in ``methods`` (it trains from that
    run). Costliest first, each method with its expert to the group with the least cost so
    far (:data:`STEP_COST`); empty groups are dropped.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    trained = [m for m in methods if m in TRAINED and m not in COEFFICIENT_OF]
    units = {m: [m] for m in trained if EXPERT_OF.get(m) not in trained}
    for expert in [m for m in trained if EXPERT_OF.get(m) in trained]:
        units[EXPERT_OF[expert]].append(expert)
    groups: list[list[str]] = [[] for _ in range(jobs)]
    costs = [0.0] * jobs
    for unit in sorted(units.values(), key=lambda unit: -sum(STEP_COST[m] for m in unit)):
        cheapest = costs.index(min(costs))
        groups[cheapest] += unit
        costs[cheapest] += sum(STEP_COST[m] for m in unit)
    return [group for group in groups if group]


def _finished(checkpoint: Path, steps: int) -> bool:
    """Whether a run's last checkpoint exists and has reached ``steps``."""
    try:
        return load_checkpoint(checkpoint).step >= steps
    except CheckpointError:
        return False


def _train_group(base: dict, methods: list[str], mesh, out: Path, progress: bool) -> None:
    train_all(base, methods, mesh, out, workers=1, progress=progress)


def train_in_parallel(base: dict, methods: list[str], mesh, out: Path, workers: int, jobs: int, progress: bool) -> None:
    """Train the unfinished trained methods of ``methods`` in up to ``jobs`` processes (none for one group).

    The dataset is generated first, here, so that the processes share one file; each
    process trains its group (:func:`balanced_groups`) as :func:`train_all` would, so
    the runs are those of a sequential run, and a later :func:`train_all` resumes them
    (and trains the methods that :func:`balanced_groups` leaves out).
    A failure in any process is raised here; stopping this process stops them all.
    """
    unfinished = [m for m in methods if m in TRAINED
                  and not _finished(out / "runs" / m / LAST, method_config(base, m).training.steps)]
    groups = balanced_groups(unfinished, jobs)
    if len(groups) < 2:
        return
    first = groups[0][0]
    DarcyExperiment(method_config(base, first), mesh, data_dir=out / "data", run_dir=out / "runs" / first,
                    workers=workers, progress=progress).dataset()
    # spawn: a forked child would inherit the parent's initialised PETSc/MPI state. The pool's exit
    # terminates its workers when this process stops on an error or an interrupt; on Linux they are
    # also sent SIGTERM when it dies of a signal, so no training process outlives the benchmark.
    with multiprocessing.get_context("spawn").Pool(len(groups), initializer=_die_with_parent) as pool:
        pool.starmap(_train_group, [(base, group, mesh, out, progress) for group in groups], chunksize=1)
        pool.close()
        pool.join()


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def train_and_sample(
    base: dict, methods: list[str], mesh, out: Path, n_samples: int, cocogen: dict, workers: int, progress: bool
) -> tuple[dict, DarcyExperiment]:
    """Train each method (resuming finished or partial runs), then sample it.

    Returns
    -------
    runs : dict
        ``{method: {"rows", "seconds_per_step", "sample_seconds_per_sample", "log"}}``; a
        sampled-only method has its model's training cost, a composed one (:data:`COMPOSED`)
        the sum of its two methods' costs per step.
    experiment : DarcyExperiment
        The first trained method's experiment: the shared data, problem and layout.
    """
    experiments = train_all(base, methods, mesh, out, workers, progress)
    results = {method: _sample(experiment, n_samples) for method, experiment in experiments.items()}
    for method in [m for m in methods if m in CORRECTED]:
        trained = experiments[CORRECTED[method]]
        sampling = dataclasses.replace(trained.config.sampling, **cocogen)
        corrected = DarcyExperiment(dataclasses.replace(trained.config, sampling=sampling), mesh,
                                    data_dir=out / "data", run_dir=trained.run_dir, progress=progress)
        results[method] = _sample(corrected, n_samples)
    for method in [m for m in methods if m in COMPOSED]:
        *models, steps = COMPOSED[method]
        sampled, coefficient = (experiments[m] for m in models)
        results[method] = _sample(sampled, n_samples, wrap=_coefficient_of(coefficient, sampled, method, steps))
        results[method]["seconds_per_step"] = sum(results[m]["seconds_per_step"] for m in models)
    return results, next(iter(experiments.values()))


def _coefficient_of(source: DarcyExperiment, sampled: DarcyExperiment, method: str, steps: str):
    """A ``wrap`` of ``sampled.sample``: its denoiser with ``source``'s coefficient estimate at the steps ``steps``."""
    other, units = source.load_denoiser()
    if source.config.diffusion.T != sampled.config.diffusion.T:
        raise ValueError(f"{method}: the models it composes were trained with different numbers of timesteps")

    def wrap(model, normalizer):
        require_same_units(normalizer, units, method)
        return sampled.with_coefficient_of(model, other, steps)
    return wrap


def _sample(experiment: DarcyExperiment, n_samples: int, wrap=None) -> dict:
    t0 = time.perf_counter()
    rows = experiment.sample(n_samples, seed=1, wrap=wrap)
    seconds = time.perf_counter() - t0
    log = experiment.run_dir / "log.jsonl"
    return {"rows": rows, "seconds_per_step": seconds_per_step(log), "sample_seconds_per_sample": seconds / len(rows),
            "log": log}
