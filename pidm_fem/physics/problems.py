"""The problems by name: what ``--problem`` and the run folders refer to.

A problem is a registered name (``darcy``, ``topology``) or a user's file,
``path/to/file.py:NAME``, whose ``NAME`` is a :class:`~pidm_fem.physics.form_problem.FormProblem`
subclass (or any :class:`~pidm_fem.physics.problem.Problem` with ``from_options``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pidm_fem.errors import InputError
from pidm_fem.physics.darcy_flow import DarcyFlow
from pidm_fem.physics.problem import Problem
from pidm_fem.physics.topology import TopologyDesign

#: problem name -> factory ``(mesh, seed, **options) -> Problem``
PROBLEMS: dict[str, Callable[..., Problem]] = {"darcy": DarcyFlow.from_options, "topology": TopologyDesign.from_options}


class ProblemFileError(InputError):
    """A problem file that cannot be used; the message names the file and the fault."""


class ProblemOptionError(InputError):
    """A setting a problem does not have, or a value it refuses."""


def is_problem_file(spec: str) -> bool:
    """Whether ``spec`` names a user's problem file (``path.py:NAME``) rather than a registered problem."""
    path, sep, _ = str(spec).rpartition(":")
    return bool(sep) and path.endswith(".py")


def resolve_spec(spec: str) -> str:
    """``spec`` with the file of a problem file made absolute (a registered name unchanged)."""
    if not is_problem_file(spec):
        return spec
    path, _, name = spec.rpartition(":")
    return f"{os.path.abspath(path)}:{name}"


def _problem_class(spec: str) -> Callable[..., Problem]:
    """The factory ``NAME.from_options`` of the problem file ``path.py:NAME``."""
    path, _, name = spec.rpartition(":")
    file = Path(path)
    if not file.is_file():
        raise ProblemFileError(f"{file}: no such problem file")
    module_name = "pidm_fem_user_" + hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:12]
    module = sys.modules.get(module_name)
    if module is None:
        loader = importlib.util.spec_from_file_location(module_name, file)
        module = importlib.util.module_from_spec(loader)
        sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
        try:
            loader.loader.exec_module(module)
        except Exception as err:  # the user's code: report any error in one line
            del sys.modules[module_name]
            raise ProblemFileError(f"{file}: cannot load the problem file ({type(err).__name__}: {err})") from None
    cls = getattr(module, name, None)
    if cls is None:
        raise ProblemFileError(f"{file}: defines no {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Problem) and hasattr(cls, "from_options")):
        raise ProblemFileError(f"{file}: {name} is not a Problem subclass with from_options (see FormProblem)")
    return cls.from_options


def build_problem(spec: str, mesh: str, seed: int = 0, **options: Any) -> Problem:
    """The problem ``spec`` (a registered name or ``path.py:NAME``) on the mesh file ``mesh``.

    Raises
    ------
    ValueError
        If no problem of that name is registered.
    ProblemFileError
        If a problem file does not exist, does not load or lacks the class.
    ProblemOptionError
        For a setting the problem does not have or a value it refuses.
    """
    if is_problem_file(spec):
        factory = _problem_class(spec)
    elif spec in PROBLEMS:
        factory = PROBLEMS[spec]
    else:
        raise ValueError(f"unknown problem {spec!r}; registered problems: {', '.join(PROBLEMS)}, or path/to/file.py:NAME")
    try:
        problem = factory(mesh, seed, **options)
    except TypeError as err:
        raise ProblemOptionError(f"the {Path(spec).name} problem has no such setting ({err})") from None
    except ValueError as err:
        if isinstance(err, InputError):
            raise
        raise ProblemOptionError(str(err)) from None
    if is_problem_file(spec):
        problem.spec = resolve_spec(spec)
    return problem
