"""A SIMP problem on a user's mesh, from a YAML file: supports, loads, material and settings.

The file (every section but ``supports`` and ``loads`` optional)::

    supports:                          # kind: fixed | roller_x | roller_y
      - {kind: roller_x, boundary: 1}  # on a boundary id of the mesh
      - {kind: roller_y, point: [60, 0]}            # at the vertex nearest a point
      - {kind: fixed, segment: [[0, 0], [0, 20]]}   # on the vertices of a segment
    loads:
      - {point: [0, 20], force: [0, -1]}            # whole, at the nearest vertex
      - {boundary: 4, traction: [0, -0.05]}         # force per length on a boundary id
      - {body_force: [0, -0.001]}                   # force per area
    material: {E0: 1.0, nu: 0.3, penal: 3.0, E_min: 1.0e-9, plane: stress}
    simp: {volfrac: 0.5, rmin: 2.4, filter: density, optimizer: oc, max_iterations: 500,
           tolerance: 0.01, move: 0.2, projection: false, beta_max: 32}
    degree: 1                          # displacement degree, 1 or 2
    solver: direct                     # direct (MUMPS) | iterative (CG + GAMG)

Every fault is a one-line :class:`ProblemFileError` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from pidm_fem.errors import InputError, one_line
from pidm_fem.physics.elasticity import BodyForce, Elasticity, Material, PointLoad, Support, Traction
from pidm_fem.topopt.simp import SIMPSettings

SECTIONS = ("supports", "loads", "material", "simp", "degree", "solver")


class ProblemFileError(InputError):
    """A problem file that cannot be used: one line naming the file and the key."""

    def __init__(self, path: str | os.PathLike, problem: str):
        super().__init__(f"{path}: {one_line(problem)}")


def _pair(value: Any, where: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: must be two numbers [x, y], got {value!r}") from None
    return x, y


def _support(entry: Any, where: str) -> Support:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: must be a mapping, got {entry!r}")
    unknown = set(entry) - {"kind", "boundary", "point", "segment"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    segment = entry.get("segment")
    if segment is not None:
        if not isinstance(segment, (list, tuple)) or len(segment) != 2:
            raise ValueError(f"{where}.segment: must be two points [[x0, y0], [x1, y1]]")
        segment = (_pair(segment[0], f"{where}.segment"), _pair(segment[1], f"{where}.segment"))
    point = _pair(entry["point"], f"{where}.point") if "point" in entry else None
    boundary = entry.get("boundary")
    if boundary is not None and (not isinstance(boundary, int) or isinstance(boundary, bool)):
        raise ValueError(f"{where}.boundary: must be an integer boundary id, got {boundary!r}")
    try:
        return Support(entry.get("kind", "fixed"), boundary=boundary, point=point, segment=segment)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def _load(entry: Any, where: str):
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: must be a mapping, got {entry!r}")
    keys = set(entry)
    if keys == {"point", "force"}:
        return PointLoad(_pair(entry["point"], f"{where}.point"), _pair(entry["force"], f"{where}.force"))
    if keys == {"boundary", "traction"}:
        if not isinstance(entry["boundary"], int) or isinstance(entry["boundary"], bool):
            raise ValueError(f"{where}.boundary: must be an integer boundary id, got {entry['boundary']!r}")
        return Traction(entry["boundary"], _pair(entry["traction"], f"{where}.traction"))
    if keys == {"body_force"}:
        return BodyForce(_pair(entry["body_force"], f"{where}.body_force"))
    raise ValueError(f"{where}: a load is {{point, force}}, {{boundary, traction}} or {{body_force}}, "
                     f"got keys {sorted(keys)}")


def _section(cls, values: Any, where: str, **overrides: Any):
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ValueError(f"{where}: must be a mapping, got {values!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (known: {', '.join(sorted(known))})")
    try:
        return cls(**{**values, **{k: v for k, v in overrides.items() if v is not None}})
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None


def read_problem(path: str | os.PathLike, mesh, **simp_overrides: Any) -> tuple[Elasticity, SIMPSettings]:
    """The elasticity problem on ``mesh`` and the SIMP settings of a problem file.

    Parameters
    ----------
    path
        The YAML file (see the module's description).
    mesh
        The Firedrake mesh it refers to.
    simp_overrides
        ``simp`` keys given on the command line (None values are ignored).

    Raises
    ------
    ProblemFileError
        One line naming the file and the key: unreadable YAML, unknown keys, a boundary id
        the mesh lacks, a load off the domain, a volume fraction outside (0, 1), ...
    """
    from pidm_fem.config_files import ConfigError, read_yaml_file

    path = Path(path)
    try:
        data = read_yaml_file(path)
    except ConfigError as err:
        raise ProblemFileError(path, str(err).removeprefix(f"{path}: ")) from None
    try:
        unknown = set(data) - set(SECTIONS)
        if unknown:
            raise ValueError(f"unknown sections {sorted(unknown)} (known: {', '.join(SECTIONS)})")
        for name in ("supports", "loads"):
            if not isinstance(data.get(name), list) or not data[name]:
                raise ValueError(f"{name}: must be a non-empty list")
        supports = [_support(entry, f"supports[{i}]") for i, entry in enumerate(data["supports"])]
        loads = [_load(entry, f"loads[{i}]") for i, entry in enumerate(data["loads"])]
        material = _section(Material, data.get("material"), "material")
        settings = _section(SIMPSettings, data.get("simp"), "simp", **simp_overrides)
        elasticity = Elasticity(mesh, supports, loads, material=material, degree=data.get("degree", 1),
                                solver=data.get("solver", "direct"))
    except ValueError as err:
        raise ProblemFileError(path, str(err)) from None
    return elasticity, settings
