"""The run configuration: one YAML file, read into nested frozen dataclasses.

A file has up to five sections (``data``, ``model``, ``diffusion``,
``training``, ``sampling``); missing sections and keys take their defaults.
Every value is checked when the configuration is built: an unknown key, a
value of the wrong type or a value out of range raises :class:`ConfigError`
with one line that names the file and the dotted key, for example::

    run.yaml: training.lr: must be > 0, got -1.0
    run.yaml: training.lrr: unknown key (did you mean lr?)

Integers are accepted for float keys; booleans are never numbers. Floats may
be written ``1e-4`` (plain YAML 1.1 would read that as a string).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, Union, get_args, get_origin, get_type_hints

import torch
import yaml

from pidm_fem.atomic_files import atomic_path
from pidm_fem.config_files import ConfigError, read_yaml, read_yaml_file

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "DiffusionConfig",
    "TrainingConfig",
    "SamplingConfig",
    "ExpertConfig",
    "CocogenConfig",
    "PRESETS",
    "merge_sections",
    "read_yaml",
    "read_yaml_file",
    "RunConfig",
    "config_from_dict",
    "config_to_dict",
    "trained_configuration",
    "load_config",
    "save_config",
]



_Check = Callable[[Any], "str | None"]


def _at_least(bound: float) -> _Check:
    return lambda value: None if value >= bound else f"must be >= {bound}, got {value}"


def _above(bound: float) -> _Check:
    return lambda value: None if value > bound else f"must be > {bound}, got {value}"


def _in_interval(low: float, high: float, closed_high: bool) -> _Check:
    bracket = "]" if closed_high else ")"

    def check(value: float) -> str | None:
        inside = low <= value <= high if closed_high else low <= value < high
        return None if inside else f"must be in [{low}, {high}{bracket}, got {value}"

    return check


def _fraction(value: float) -> str | None:
    return None if 0 < value <= 1 else f"must be in (0, 1], got {value}"


def _optional(check: _Check) -> _Check:
    return lambda value: None if value is None else check(value)


def _torch_device(value: str) -> str | None:
    try:
        torch.device(value)
    except RuntimeError:
        return f"must be a torch device such as 'cpu' or 'cuda:0', got {value!r}"
    return None


def _key(default: Any, check: _Check | None = None) -> Any:
    """A configuration key with its default value and an optional range check."""
    return field(default=default, metadata={"check": check})


@dataclass(frozen=True)
class _Section:
    """Base of the sections: checks and converts every value after construction."""

    name: ClassVar[str]

    def __post_init__(self) -> None:
        hints = _type_hints(type(self))
        for item in fields(self):
            value = _converted(getattr(self, item.name), hints[item.name], f"{self.name}.{item.name}")
            check = item.metadata.get("check")
            problem = check(value) if check is not None else None
            if problem is not None:
                raise ConfigError(f"{self.name}.{item.name}: {problem}")
            object.__setattr__(self, item.name, value)


@dataclass(frozen=True)
class DataConfig(_Section):
    """Sizes of the data splits and the seed that draws them."""

    name: ClassVar[str] = "data"
    n_train: int = _key(1000, _at_least(1))
    n_val: int = _key(64, _at_least(0))
    n_test: int = _key(64, _at_least(0))
    seed: int = _key(0, _at_least(0))


@dataclass(frozen=True)
class ModelConfig(_Section):
    """The denoiser: mesh-native network or raster U-Net, its width and what it sees.

    ``field_views: true`` also hands the network each linearly mapped field in its
    physical coordinates (under elliptic coordinates, the pressure beside its Laplacian).
    ``gradient_views: true`` hands it the recovered nodal gradient (x and y) of every
    field in its physical coordinates. ``input_products: true`` adds products of two
    learned linear forms of the node inputs to the mesh denoiser's first features (any
    quadratic form of its inputs, such as the dot product of two gradient views, is then
    one exact feature).
    """

    name: ClassVar[str] = "model"
    kind: Literal["unet", "mesh"] = _key("mesh")
    width: int = _key(16, _at_least(1))
    attention: bool = _key(True)
    field_views: bool = _key(True)
    gradient_views: bool = _key(True)
    input_products: bool = _key(True)


@dataclass(frozen=True)
class DiffusionConfig(_Section):
    """The diffusion process and the loss: method, weights and the x0 estimate of the residual.

    ``role`` is set by a method of the registry (:mod:`pidm_fem.experiments.methods`):
    ``model`` trains a denoiser for every step; ``expert`` trains a low-noise expert for
    the steps ``t < expert.below`` beside a frozen full-range denoiser and is sampled with
    it; ``expert_on_frozen_coefficient`` does the same while the estimate of the problem's
    coefficient fields comes, at every step of training and sampling, from a frozen
    denoiser of another run (the expert's network learns the other fields).
    """

    name: ClassVar[str] = "diffusion"
    T: int = _key(100, _at_least(1))
    method: Literal["pidm", "ddpm", "physics_guided"] = _key("pidm")
    role: Literal["model", "expert", "expert_on_frozen_coefficient"] = _key("model")
    c_data: float = _key(1.0, _at_least(0))
    c_residual: float = _key(1e-3, _at_least(0))
    residual: Literal["strong", "weak", "preconditioned"] = _key("strong")
    representation: Literal["nodal", "elliptic"] = _key("elliptic")
    residual_gradient: Literal["all", "state"] = _key("state")
    physics_t_fraction: float = _key(1.0, _fraction)
    prediction: Literal["x0", "v"] = _key("v")
    x0_estimation: Literal["mean", "sample"] = _key("mean")
    sample_steps: int = _key(2, _at_least(1))
    min_snr_gamma: float = _key(5.0, _above(0))
    cond_dropout: float = _key(0.1, _in_interval(0, 1, closed_high=False))
    c_state: float = _key(0.0, _at_least(0))
    state_on: Literal["all", "trajectory"] = _key("all")
    trajectory_every: int = _key(0, _at_least(0))
    trajectory_steps: int = _key(10, _at_least(1))
    trajectory_t_fraction: float = _key(0.5, _fraction)
    trajectory_eta: float = _key(0.0, _in_interval(0, 1, closed_high=True))
    c_eq: float = _key(0.0, _at_least(0))
    c_ineq: float = _key(0.0, _at_least(0))
    lambda_opt: float = _key(0.0, _at_least(0))


@dataclass(frozen=True)
class TrainingConfig(_Section):
    """The optimisation loop: steps, batch, Adam and its learning rate, clipping, EMA, intervals, seed and device.

    ``lr_schedule`` "constant" keeps ``lr`` at every step; "cosine" takes it from ``lr`` at
    the first step down a half cosine that would reach 0 one step after ``steps``
    (a function of the step alone, so a resumed run continues it exactly; resuming with more
    ``steps`` stretches the rest of the curve, raising the learning rate again).
    ``val_every`` and ``checkpoint_every`` of 0 mean only at the end;
    ``keep_every`` > 0 also keeps a step-numbered checkpoint every that many steps.
    """

    name: ClassVar[str] = "training"
    steps: int = _key(3000, _at_least(1))
    batch_size: int = _key(16, _at_least(1))
    lr: float = _key(1e-3, _above(0))
    lr_schedule: Literal["constant", "cosine"] = _key("constant")
    grad_clip: float = _key(1.0, _above(0))
    ema_decay: float = _key(0.99, _in_interval(0, 1, closed_high=False))
    ema_start: int = _key(500, _at_least(0))
    val_every: int = _key(250, _at_least(0))
    checkpoint_every: int = _key(100, _at_least(0))
    keep_every: int = _key(0, _at_least(0))
    log_every: int = _key(25, _at_least(1))
    seed: int = _key(0, _at_least(0))
    device: str = _key("cpu", _torch_device)


@dataclass(frozen=True)
class SamplingConfig(_Section):
    """Sampling: sampler, DDIM steps and eta, guidance scale of physics-guided models, sample count."""

    name: ClassVar[str] = "sampling"
    sampler: Literal["ddpm", "ddim"] = _key("ddim")
    ddim_steps: int = _key(50, _at_least(1))
    eta: float = _key(0.0, _in_interval(0, 1, closed_high=True))
    guidance_scale: float = _key(3.0, _at_least(0))
    n_samples: int = _key(128, _at_least(1))


@dataclass(frozen=True)
class ExpertConfig(_Section):
    """The low-noise expert of a method that has one: its steps ``t < below``, network and optimiser.

    ``width``, ``steps``, ``lr`` and ``lr_schedule`` of null take the ``model`` and
    ``training`` values; a run of ``steps`` starts its EMA at ``min(training.ema_start, steps // 2)``.
    """

    name: ClassVar[str] = "expert"
    below: int = _key(10, _at_least(1))
    width: Optional[int] = _key(32, _optional(_at_least(1)))
    steps: Optional[int] = _key(4500, _optional(_at_least(1)))
    lr: Optional[float] = _key(4e-3, _optional(_above(0)))
    lr_schedule: Optional[Literal["constant", "cosine"]] = _key(None)


@dataclass(frozen=True)
class CocogenConfig(_Section):
    """CoCoGen (Jacobsen et al.): residual-gradient corrections of the samples of the methods ``apply_to``.

    ``during`` corrections in each of the last denoising steps and ``after`` more after
    sampling, each a gradient step of the squared residual from the trial step ``step``
    (normalised units), with a per-sample Armijo line search when ``line_search``;
    ``gradient: state`` changes the state fields only (the coefficient is the sample's).
    """

    name: ClassVar[str] = "cocogen"
    apply_to: tuple[str, ...] = _key(())
    during: int = _key(5, _at_least(0))
    after: int = _key(400, _at_least(0))
    step: float = _key(1e-3, _above(0))
    line_search: bool = _key(True)
    gradient: Literal["all", "state"] = _key("state")


@dataclass(frozen=True)
class RunConfig:
    """The whole run configuration; checks the keys that depend on each other (the one place that does)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    cocogen: CocogenConfig = field(default_factory=CocogenConfig)

    def __post_init__(self) -> None:
        T = self.diffusion.T
        if self.diffusion.role != "model" and self.diffusion.method == "physics_guided":
            raise ConfigError("diffusion.role: a low-noise expert cannot be physics_guided (no condition channels)")
        if self.expert.below > T:
            raise ConfigError(f"expert.below: must be at most diffusion.T ({T}), got {self.expert.below}")
        if self.diffusion.representation == "nodal" and self.model.field_views:
            raise ConfigError(
                "model.field_views: no field is linearly mapped; it needs diffusion.representation: elliptic"
            )
        if self.training.batch_size > self.data.n_train:
            raise ConfigError(f"training.batch_size: must be at most data.n_train ({self.data.n_train}), "
                              f"got {self.training.batch_size}")
        for key, value in (
            ("diffusion.sample_steps", self.diffusion.sample_steps),
            ("diffusion.trajectory_steps", self.diffusion.trajectory_steps),
            ("sampling.ddim_steps", self.sampling.ddim_steps),
            ("cocogen.during", self.cocogen.during),
        ):
            if value > T:
                raise ConfigError(f"{key}: must be <= diffusion.T ({T}), got {value}")


#: named presets under a run file's own sections (``preset: NAME``): ``project`` is the library's
#: defaults (the project's measured-best choices, docs/method.md); ``paper`` is the reference
#: implementation's: the network sees the raw fields, predicts x0, and the residual is
#: differentiated with respect to every field
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "project": {},
    "paper": {
        "model": {"field_views": False, "gradient_views": False, "input_products": False},
        "diffusion": {"representation": "nodal", "prediction": "x0", "residual_gradient": "all"},
    },
}


@cache
def _type_hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _converted(value: Any, annotation: Any, key: str) -> Any:
    """``value`` as the type ``annotation`` asks for, or a ConfigError naming ``key``."""
    got = f"got {type(value).__name__} {value!r}"
    if get_origin(annotation) is Union and type(None) in get_args(annotation):
        if value is None:
            return None
        (inner,) = [arg for arg in get_args(annotation) if arg is not type(None)]
        return _converted(value, inner, key)
    if get_origin(annotation) is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: must be a list, {got}")
        (inner,) = get_args(annotation)[:1]
        return tuple(_converted(item, inner, f"{key}[{i}]") for i, item in enumerate(value))
    if get_origin(annotation) is Literal:
        choices = get_args(annotation)
        if isinstance(value, str) and value in choices:
            return value
        listed = ", ".join(repr(c) for c in choices)
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{key}: must be one of {listed}, got {value!r}{hint}")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: must be true or false, {got}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: must be an integer, {got}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{key}: must be a finite number, got {value}")
            return float(value)
        raise ConfigError(f"{key}: must be a number, {got}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: must be a string, {got}")
    raise TypeError(f"{key}: unsupported annotation {annotation!r}")


def _unknown(key: str, known: list[str], what: str) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return ConfigError(f"{key}: unknown {what}{hint}")


def _build(d: Any) -> RunConfig:
    if d is None:
        d = {}
    if not isinstance(d, Mapping):
        raise ConfigError(f"must be a mapping of sections, got {type(d).__name__}")
    sections = _type_hints(RunConfig)
    d = dict(d)
    preset = d.pop("preset", "project")
    if preset not in PRESETS:
        raise ConfigError(f"preset: must be one of {', '.join(map(repr, PRESETS))}, got {preset!r}")
    d = merge_sections(PRESETS[preset], d)
    built = {}
    for section, values in d.items():
        if section not in sections:
            raise _unknown(str(section), list(sections), "section")
        if values is None:
            values = {}
        if not isinstance(values, Mapping):
            raise ConfigError(f"{section}: must be a mapping of keys to values, got {type(values).__name__}")
        cls = sections[section]
        known = [item.name for item in fields(cls)]
        for key in values:
            if key not in known:
                raise _unknown(f"{section}.{key}", known, "key")
        built[section] = cls(**values)
    return RunConfig(**built)


def merge_sections(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base``'s sections updated key by key from ``overrides``' (a section that is not a mapping replaces)."""
    merged = {section: dict(values) if isinstance(values, Mapping) else values for section, values in base.items()}
    for section, values in overrides.items():
        if isinstance(values, Mapping) and isinstance(merged.get(section), dict):
            merged[section].update(values)
        else:
            merged[section] = dict(values) if isinstance(values, Mapping) else values
    return merged


def config_from_dict(d: Mapping[str, Any] | None, source: str = "<dict>") -> RunConfig:
    """Build and check a configuration from nested mappings.

    Parameters
    ----------
    d
        ``{section: {key: value}}``; missing sections and keys take defaults,
        ``None`` gives the default configuration. An optional ``preset`` entry names the
        :data:`PRESETS` entry under the given sections (default ``project``).
    source
        Name used at the start of error messages (the file name when loading).

    Returns
    -------
    RunConfig
        The checked configuration.

    Raises
    ------
    ConfigError
        One line ``"<source>: <section>.<key>: <problem>"``.
    """
    try:
        return _build(d)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def config_to_dict(config: RunConfig) -> dict[str, dict[str, Any]]:
    """The configuration as nested plain dictionaries (YAML- and JSON-serialisable; tuples as lists)."""
    return {
        section: {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}
        for section, values in dataclasses.asdict(config).items()
    }


#: diffusion keys of PIDM's state misfit and trajectory states
_TRAJECTORY_KEYS = ("c_state", "state_on", "trajectory_every", "trajectory_steps", "trajectory_t_fraction",
                    "trajectory_eta")
#: diffusion keys that a method's loss never reads: its trained weights do not depend on them
_KEYS_UNREAD_IN_TRAINING = {
    "ddpm": ("c_residual", "residual", "residual_gradient", "physics_t_fraction", "x0_estimation", "sample_steps",
             "cond_dropout", *_TRAJECTORY_KEYS),
    "physics_guided": ("c_residual", "residual_gradient", "physics_t_fraction", "x0_estimation", "sample_steps",
                       *_TRAJECTORY_KEYS),
    "pidm": ("cond_dropout",),
}
#: the expert keys that shape an expert run's model (the others set its optimiser)
_EXPERT_MODEL_KEYS = ("below", "width")


#: sections that no training step reads
_SAMPLING_SECTIONS = ("sampling", "cocogen")


def trained_configuration(config: Mapping[str, Any]) -> dict[str, Any]:
    """A configuration dict without what its run's training never reads.

    Left out: the sampling sections, the diffusion keys that the method's loss never
    reads, and the expert section of a run that is no expert (only its split and width
    for one: the registry writes an expert's steps and learning rate into its training
    section). Two runs whose trained configurations are equal train the same weights: a
    DDPM checkpoint serves a configuration with other PIDM-loss settings.

    Parameters
    ----------
    config
        Nested sections as :func:`config_to_dict` writes them (or a checkpoint stores them).
    """
    trimmed = {section: dict(values) if isinstance(values, Mapping) else values
               for section, values in config.items() if section not in _SAMPLING_SECTIONS}
    diffusion = trimmed.get("diffusion")
    if isinstance(diffusion, dict):
        for key in _KEYS_UNREAD_IN_TRAINING.get(diffusion.get("method"), ()):
            diffusion.pop(key, None)
        expert = trimmed.pop("expert", None)
        if diffusion.get("role", "model") != "model" and isinstance(expert, Mapping):
            trimmed["expert"] = {key: expert.get(key) for key in _EXPERT_MODEL_KEYS}
    return trimmed


def load_config(path: str | os.PathLike) -> RunConfig:
    """Read and check a YAML configuration file.

    Parameters
    ----------
    path
        The YAML file; an empty file gives the default configuration.

    Returns
    -------
    RunConfig
        The checked configuration.

    Raises
    ------
    ConfigError
        One line starting with ``path``: a missing or unreadable file, invalid
        YAML, an unknown key or a bad value.
    """
    return config_from_dict(read_yaml_file(path), str(path))


def save_config(config: RunConfig, path: str | os.PathLike) -> Path:
    """Write ``config`` as YAML (atomically) so that :func:`load_config` gives it back.

    Parameters
    ----------
    config
        The configuration.
    path
        Destination file; its folder is created if needed.

    Returns
    -------
    Path
        ``path``.
    """
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    return Path(path)
