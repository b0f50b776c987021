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
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args, get_origin, get_type_hints

import torch
import yaml

from pidm_fem.atomic_files import atomic_path

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "DiffusionConfig",
    "TrainingConfig",
    "SamplingConfig",
    "RunConfig",
    "config_from_dict",
    "config_to_dict",
    "trained_configuration",
    "load_config",
    "save_config",
]


class ConfigError(ValueError):
    """A configuration that cannot be used; the message is one line naming the key (and file)."""


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
    """The denoiser: raster U-Net or mesh-native network, its width and attention.

    ``field_views: true`` also hands the network each linearly mapped field in its
    physical coordinates (under elliptic coordinates, the pressure beside its Laplacian).
    ``gradient_views: true`` hands it the recovered nodal gradient (x and y) of every
    field in its physical coordinates (of the pressure, not of its Laplacian).
    ``input_products: true`` adds products of two learned linear forms of the node
    inputs to the mesh denoiser's first features (any quadratic form of its inputs,
    such as the dot product of two gradient views, is then one exact feature).
    ``output_modes: M > 0`` confines each channel of the clean estimate to the training
    data's M leading principal components (:class:`~pidm_fem.diffusion.SubspaceDenoiser`).
    ``expert_width > 0`` (a low-noise expert only) is the width of the expert's own network;
    the frozen denoisers beside it keep ``width``, that of the runs they come from.
    """

    name: ClassVar[str] = "model"
    kind: Literal["unet", "mesh"] = _key("unet")
    width: int = _key(32, _at_least(1))
    attention: bool = _key(True)
    field_views: bool = _key(False)
    gradient_views: bool = _key(False)
    input_products: bool = _key(False)
    output_modes: int = _key(0, _at_least(0))
    expert_width: int = _key(0, _at_least(0))


@dataclass(frozen=True)
class DiffusionConfig(_Section):
    """The diffusion process and the loss: method, weights and the x0 estimate of the residual.

    ``expert_below`` > 0 makes the run a low-noise expert: trained on the steps
    ``t < expert_below`` only, beside a frozen full-range denoiser, and sampled with it.
    ``frozen_coefficient`` takes the estimate of the problem's coefficient fields, at
    every step of training and sampling, from a frozen denoiser of another run; the
    run's own network learns the other fields. With ``frozen_coefficient_steps: high``
    (an expert only) it does so at the full-range model's steps ``t >= expert_below``
    only, and the expert estimates every field below. ``expert_start`` (an expert only)
    is the expert network's first weights: "scratch" (a fresh network) or "full_range" (a
    copy of the full-range denoiser's, which the expert then trains on its own steps).
    ``coefficient_input`` (with ``frozen_coefficient`` at every step) is what the run's own
    network sees of the coefficient fields: "noisy" (their channels of x_t, as every
    denoiser) or "estimate" (the frozen denoiser's clean estimate in their place, the
    coefficient its estimate of the other fields is composed with).
    """

    name: ClassVar[str] = "diffusion"
    T: int = _key(100, _at_least(1))
    method: Literal["pidm", "ddpm", "physics_guided"] = _key("pidm")
    c_data: float = _key(1.0, _at_least(0))
    c_residual: float = _key(1e-3, _at_least(0))
    residual: Literal["strong", "weak", "preconditioned"] = _key("strong")
    representation: Literal["nodal", "elliptic"] = _key("nodal")
    residual_gradient: Literal["all", "state"] = _key("all")
    physics_t_fraction: float = _key(1.0, _fraction)
    prediction: Literal["x0", "v"] = _key("x0")
    x0_estimation: Literal["mean", "sample"] = _key("mean")
    sample_steps: int = _key(4, _at_least(1))
    min_snr_gamma: float = _key(5.0, _above(0))
    cond_dropout: float = _key(0.1, _in_interval(0, 1, closed_high=False))
    c_state: float = _key(0.0, _at_least(0))
    state_on: Literal["all", "trajectory"] = _key("all")
    trajectory_every: int = _key(0, _at_least(0))
    trajectory_steps: int = _key(10, _at_least(1))
    trajectory_t_fraction: float = _key(0.5, _fraction)
    trajectory_eta: float = _key(0.0, _in_interval(0, 1, closed_high=True))
    expert_below: int = _key(0, _at_least(0))
    expert_start: Literal["scratch", "full_range"] = _key("scratch")
    frozen_coefficient: bool = _key(False)
    frozen_coefficient_steps: Literal["all", "high"] = _key("all")
    coefficient_input: Literal["noisy", "estimate"] = _key("noisy")
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
    steps: int = _key(10000, _at_least(1))
    batch_size: int = _key(32, _at_least(1))
    lr: float = _key(1e-4, _above(0))
    lr_schedule: Literal["constant", "cosine"] = _key("constant")
    grad_clip: float = _key(1.0, _above(0))
    ema_decay: float = _key(0.99, _in_interval(0, 1, closed_high=False))
    ema_start: int = _key(1000, _at_least(0))
    val_every: int = _key(500, _at_least(0))
    checkpoint_every: int = _key(500, _at_least(0))
    keep_every: int = _key(0, _at_least(0))
    log_every: int = _key(10, _at_least(1))
    seed: int = _key(0, _at_least(0))
    device: str = _key("cpu", _torch_device)


@dataclass(frozen=True)
class SamplingConfig(_Section):
    """Sampling: sampler, DDIM steps and eta, guidance scale, CoCoGen corrections, sample count."""

    name: ClassVar[str] = "sampling"
    sampler: Literal["ddpm", "ddim"] = _key("ddpm")
    ddim_steps: int = _key(50, _at_least(1))
    eta: float = _key(0.0, _in_interval(0, 1, closed_high=True))
    guidance_scale: float = _key(3.0, _at_least(0))
    cocogen_during: int = _key(0, _at_least(0))
    cocogen_after: int = _key(0, _at_least(0))
    cocogen_step: float = _key(1e-3, _above(0))
    cocogen_line_search: bool = _key(False)
    cocogen_gradient: Literal["all", "state"] = _key("all")
    n_samples: int = _key(64, _at_least(1))


@dataclass(frozen=True)
class RunConfig:
    """The whole run configuration; checks the keys that depend on each other."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def __post_init__(self) -> None:
        T = self.diffusion.T
        if self.diffusion.expert_start != "scratch" and not self.diffusion.expert_below:
            raise ConfigError(
                f"diffusion.expert_start: {self.diffusion.expert_start!r} needs an expert run "
                "(diffusion.expert_below > 0)"
            )
        expert_width = self.model.expert_width
        if expert_width and not self.diffusion.expert_below:
            raise ConfigError("model.expert_width: needs an expert run (diffusion.expert_below > 0)")
        if expert_width not in (0, self.model.width) and self.diffusion.expert_start == "full_range":
            raise ConfigError(
                f"diffusion.expert_start: 'full_range' copies the full-range network (width {self.model.width}) "
                f"into the expert, whose model.expert_width is {expert_width}"
            )
        if self.diffusion.coefficient_input == "estimate" and not (
            self.diffusion.frozen_coefficient and self.diffusion.frozen_coefficient_steps == "all"
        ):
            raise ConfigError(
                "diffusion.coefficient_input: 'estimate' needs a frozen coefficient at every step "
                "(frozen_coefficient: true, frozen_coefficient_steps: all)"
            )
        for key, value in (
            ("diffusion.sample_steps", self.diffusion.sample_steps),
            ("diffusion.trajectory_steps", self.diffusion.trajectory_steps),
            ("sampling.ddim_steps", self.sampling.ddim_steps),
            ("sampling.cocogen_during", self.sampling.cocogen_during),
        ):
            if value > T:
                raise ConfigError(f"{key}: must be <= diffusion.T ({T}), got {value}")


@cache
def _type_hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _converted(value: Any, annotation: Any, key: str) -> Any:
    """``value`` as the type ``annotation`` asks for, or a ConfigError naming ``key``."""
    got = f"got {type(value).__name__} {value!r}"
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


def config_from_dict(d: Mapping[str, Any] | None, source: str = "<dict>") -> RunConfig:
    """Build and check a configuration from nested mappings.

    Parameters
    ----------
    d
        ``{section: {key: value}}``; missing sections and keys take defaults,
        ``None`` gives the default configuration.
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
    """The configuration as nested plain dictionaries (YAML- and JSON-serialisable)."""
    return dataclasses.asdict(config)


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


def trained_configuration(config: Mapping[str, Any]) -> dict[str, Any]:
    """A configuration dict without the diffusion keys that its method's training never reads.

    Two runs whose trained configurations are equal train the same weights: a DDPM
    checkpoint serves a configuration with other PIDM-loss settings (the CoCoGen
    baseline of a PIDM study), but not one with another schedule or model.

    Parameters
    ----------
    config
        Nested sections as :func:`config_to_dict` writes them (or a checkpoint stores them).
    """
    trimmed = {section: dict(values) if isinstance(values, Mapping) else values for section, values in config.items()}
    diffusion = trimmed.get("diffusion")
    if isinstance(diffusion, dict):
        for key in _KEYS_UNREAD_IN_TRAINING.get(diffusion.get("method"), ()):
            diffusion.pop(key, None)
    return trimmed


class _StrictLoader(yaml.SafeLoader):
    """YAML safe loader that reads ``1e-4`` as a float and refuses duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_problem(err: yaml.YAMLError) -> str:
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark = err.problem_mark
        return f"{err.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(err).split())


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
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"{source}: cannot read the file ({err.strerror})") from None
    try:
        d = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: invalid YAML: {_yaml_problem(err)}") from None
    return config_from_dict(d, source)


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
