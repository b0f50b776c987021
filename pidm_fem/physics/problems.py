"""The registered problems, by name: what ``--problem NAME`` and the run folders refer to."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pidm_fem.physics.darcy_flow import DarcyFlow
from pidm_fem.physics.problem import Problem
from pidm_fem.physics.topology import TopologyDesign

#: problem name -> factory ``(mesh, seed, **options) -> Problem``
PROBLEMS: dict[str, Callable[..., Problem]] = {"darcy": DarcyFlow.from_options, "topology": TopologyDesign.from_options}


def build_problem(name: str, mesh: str, seed: int = 0, **options: Any) -> Problem:
    """The problem ``name`` on the mesh file ``mesh`` with data seed ``seed``.

    Raises
    ------
    ValueError
        If no problem of that name is registered.
    """
    if name not in PROBLEMS:
        raise ValueError(f"unknown problem {name!r}; registered problems: {', '.join(PROBLEMS)}")
    return PROBLEMS[name](mesh, seed, **options)
