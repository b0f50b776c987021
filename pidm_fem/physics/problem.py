"""The problem interface: what a case study gives the generic layers above it.

A :class:`Problem` is everything the generic experiment (data, training, sampling,
evaluation) knows of a case study:

* its fields and their spaces (:attr:`~Problem.layout`), which of them the model
  generates and which condition it (:attr:`~Problem.conditions`: loads, supports,
  a volume fraction, ... given to the network, never noised), and which of the
  generated fields are the PDE's coefficients rather than its state;
* how to draw training sample ``i`` (:meth:`~Problem.sample`, seeded by its index) and
  a picklable factory of the same for worker processes;
* the batched residual as a differentiable torch function of packed rows (through the
  bridge), optional scalar functionals (equality, inequality and objective terms of the
  PIDM loss), an optional state solve (for the state misfit and the state error);
* the coordinates the network sees for each field (:meth:`~Problem.channel_maps`);
* the evaluation quantities specific to it: the nodal quadrature weights, the gauge of
  its samples, the trivial field, its regions and what makes a sample admissible.

A row packs every field of the layout (:class:`~pidm_fem.bridge.FieldLayout`); a field
may be scalar or vector, and fields may live on different spaces.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar, Union

import numpy as np
import torch

from pidm_fem.bridge import FieldLayout

#: a differentiable function of packed rows (B, total) -> (B, k)
RowFunction = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LinearCoordinates:
    """The network sees ``forward @ field`` of a field (per sample); ``inverse`` maps it back."""

    forward: np.ndarray
    inverse: np.ndarray


@dataclass(frozen=True)
class LogCoordinates:
    """The network sees ``log(field)`` of a positive field."""


#: the coordinates of one field that the network sees
Coordinates = Union[LinearCoordinates, LogCoordinates]
#: what a worker process calls to build a sample generator ``index -> row``
GeneratorFactory = Callable[[], Callable[[int], np.ndarray]]


class Problem(ABC):
    """A case study as the generic layers see it (see the module docstring).

    Subclasses set :attr:`name`, :attr:`layout`, :attr:`coefficient_fields` and
    :attr:`state_fields` and implement the abstract methods; the rest has defaults
    for a problem without conditions, functionals or regions.
    """

    #: short name, used in data file names and on the command line
    name: str
    #: every field of a sample row, in row order
    layout: FieldLayout
    #: generated fields that are data of the PDE (held fixed when the physics moves the state only)
    coefficient_fields: tuple[str, ...] = ()
    #: generated fields that are the PDE's state (what a state solve returns)
    state_fields: tuple[str, ...] = ()
    #: fields that condition the model (given, not generated)
    conditions: tuple[str, ...] = ()

    @property
    def generated(self) -> tuple[str, ...]:
        """The fields the model generates, in row order."""
        return tuple(name for name in self.layout.names if name not in self.conditions)

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """Fingerprint of the mesh and spaces the rows refer to (stored in data files and checkpoints)."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """JSON-serialisable settings that a sample depends on besides its index."""

    @abstractmethod
    def sample(self, index: int) -> np.ndarray:
        """Training sample ``index`` as one packed row (a deterministic function of the index)."""

    @abstractmethod
    def generator_factory(self) -> GeneratorFactory:
        """A picklable callable that builds :meth:`sample` in a worker process."""

    @abstractmethod
    def torch_residual(self, kind: str = "strong") -> RowFunction:
        """The batched residual of packed rows, (B, total) -> (B, m), differentiable.

        ``kind`` ``"strong"`` is the strong-form-equivalent nodal scaling that the
        evaluation reports; a problem may offer others (``"weak"``: the weak-form vector).
        """

    def functionals(self) -> Mapping[str, RowFunction]:
        """Scalar terms of the PIDM loss: any of ``"equality"``, ``"inequality"``, ``"objective"``.

        Each maps packed rows (B, total) to (B,), differentiably.
        """
        return {}

    def has_state_solve(self) -> bool:
        """Whether :meth:`solve_state` is implemented."""
        return False

    def solve_state(self, rows: np.ndarray) -> np.ndarray:
        """The state fields solved for each row's coefficient and condition fields.

        Parameters
        ----------
        rows
            (B, total) physical rows.

        Returns
        -------
        numpy.ndarray
            (B, n_state) state values in the gauge of :meth:`gauge`, the blocks of
            :attr:`state_fields` concatenated; NaN rows for inadmissible coefficients.
        """
        raise NotImplementedError(f"the {self.name} problem has no state solve")

    def torch_state_misfit(self) -> RowFunction:
        """The relative misfit of each row's state against its solved state, (B, total) -> (B, k).

        Differentiable with respect to the state; the solved state is a constant. Its
        squared sum is the squared relative state error that the evaluation reports.
        """
        raise NotImplementedError(f"the {self.name} problem has no state misfit")

    def channel_maps(self, representation: str) -> Mapping[str, Coordinates]:
        """``{field: coordinates}`` of the coordinates the network sees under ``representation``.

        ``"nodal"`` (every problem): the fields themselves, an empty mapping. A problem
        may offer others (Darcy: ``"elliptic"``).
        """
        if representation != "nodal":
            raise ValueError(f"the {self.name} problem has no {representation!r} representation "
                             "(set diffusion.representation: nodal)")
        return {}

    @abstractmethod
    def weights(self) -> np.ndarray:
        """Nodal quadrature weights of the generated fields' nodes (the lumped mass), shape (n,)."""

    def gauge(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` in the problem's gauge (for example a pressure of zero mean); a copy."""
        return np.array(self.layout.check(rows), dtype=np.float64)

    def regions(self) -> Mapping[str, np.ndarray]:
        """Named boolean node masks that the evaluation splits the residual over (none by default)."""
        return {}

    def inadmissible(self, rows: np.ndarray) -> np.ndarray:
        """A boolean per row: values that are not finite, or outside what the problem admits."""
        return ~np.all(np.isfinite(self.layout.check(rows)), axis=1)


class GeneratedProblem(Problem):
    """A problem whose samples come from a generator built from a settings record.

    Subclasses set ``data_settings`` (with ``as_dict()``) and ``generator`` (callable on an
    index, with a ``fingerprint``) and name the picklable factory ``settings -> generator``
    that worker processes call as :attr:`make_generator`.
    """

    data_settings: Any
    generator: Any
    make_generator: ClassVar[Callable[[Any], Callable[[int], np.ndarray]]]

    @property
    def fingerprint(self) -> str:
        return self.generator.fingerprint

    def settings(self) -> dict[str, Any]:
        return self.data_settings.as_dict()

    def sample(self, index: int) -> np.ndarray:
        return self.generator(index)

    def generator_factory(self) -> GeneratorFactory:
        return partial(type(self).make_generator, self.data_settings)


def residual_kind(kind: str, kinds: Sequence[str]) -> str:
    """``kind`` if it is one of ``kinds``; otherwise a ValueError naming them."""
    if kind not in kinds:
        raise ValueError(f"residual kind must be one of {tuple(kinds)}, got {kind!r}")
    return kind
