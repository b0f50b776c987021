"""A run folder: one problem on one mesh, the methods trained on it, and what was made from them.

A run starts from a run file, the configuration sections of
:mod:`pidm_fem.training.config` and a ``run`` section::

    run:
      problem: darcy                 # or path/to/file.py:NAME (a FormProblem)
      mesh: ../meshes/unit_square.msh
      methods: [ddpm, pidm_mean]     # methods of the registry
      options: {}                    # settings of the problem's samples
    data: {n_train: 256}
    training: {steps: 2000}

Paths in the run file are relative to its folder. The run folder holds everything else,
so that a run is inspected, resumed, sampled and evaluated by its path alone::

    RUN_DIR/
      run.yaml               the run file as resolved (absolute paths, the mesh's fingerprint)
      data/                  the problem's sample files (HDF5): train, validation and test rows
      runs/<method>/         checkpoints (last.pt, best.pt) and log.jsonl of each trained method
      samples/<method>.npz   generated samples (``pidm-fem sample``)
      report/                results.json, results.md, figures, fields/*.pvd (``pidm-fem evaluate``)
      export/                VTU/PVD, XDMF, PNG and NPZ files (``pidm-fem export``)
      meshes/<mesh>/         the run's models sampled on another mesh (``--mesh``): its own
                             run.yaml, data/, samples/, report/ and export/, no checkpoints

A run folder of a benchmark (``benchmarks/darcy_mesh.py``, ``benchmarks/topopt_mesh.py``)
is one too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pidm_fem.atomic_files import atomic_path
from pidm_fem.config_files import ConfigError, read_yaml_file
from pidm_fem.errors import InputError
from pidm_fem.experiments.comparison import Study, check_study
from pidm_fem.experiments.methods import check_methods
from pidm_fem.physics.problem import Problem
from pidm_fem.physics.problems import ProblemOptionError, is_problem_file, resolve_spec

#: the resolved run file inside a run folder
RUN_FILE = "run.yaml"
#: the methods a run file without ``run.methods`` trains
DEFAULT_METHODS = ("ddpm", "pidm_mean")
_RUN_KEYS = {"problem", "mesh", "methods", "options"}


class RunFolderError(InputError):
    """A run file or run folder that cannot be used: one line naming it."""


@dataclass(frozen=True)
class RunSpec:
    """What a run is: its problem, mesh, methods, problem options and configuration sections."""

    problem: str
    mesh: str
    methods: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict)
    sections: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The run file of this run (YAML-serialisable)."""
        run = {"problem": self.problem, "mesh": self.mesh, "methods": list(self.methods), "options": dict(self.options)}
        return {"run": run, **{k: dict(v) for k, v in self.sections.items()}}


def read_run_file(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> RunSpec:
    """The run of a run file, its paths made absolute, its methods checked.

    ``overrides`` (``{section: {key: value}}``) update the file's sections.

    Raises
    ------
    RunFolderError
        One line naming the file: no ``run`` section, a missing or unknown key, an unknown
        method or one without the methods it needs.
    """
    from pidm_fem.training.config import merge_sections

    path = Path(path)
    try:
        sections = read_yaml_file(path)
    except ConfigError as err:
        raise RunFolderError(str(err)) from None
    run = sections.pop("run", None)
    if not isinstance(run, dict):
        raise RunFolderError(f"{path}: no run section (run: problem, mesh, methods, options)")
    unknown = sorted(set(run) - _RUN_KEYS)
    if unknown:
        raise RunFolderError(f"{path}: run.{unknown[0]}: unknown key (keys: {', '.join(sorted(_RUN_KEYS))})")
    for key in ("problem", "mesh"):
        if not isinstance(run.get(key), str):
            raise RunFolderError(f"{path}: run.{key}: required (a string)")
    methods = run.get("methods", list(DEFAULT_METHODS))
    if isinstance(methods, str):
        methods = [methods]
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
        raise RunFolderError(f"{path}: run.methods: expected a list of method names")
    options = run.get("options") or {}
    if not isinstance(options, dict):
        raise RunFolderError(f"{path}: run.options: expected a mapping of problem settings")
    try:
        check_methods(methods, ())
    except (ConfigError, ValueError) as err:
        raise RunFolderError(f"{path}: run.methods: {err}") from None
    base = path.parent
    problem = run["problem"]
    if is_problem_file(problem):
        problem = resolve_spec(str(base / problem) if not os.path.isabs(problem) else problem)
    mesh = os.path.abspath(base / run["mesh"])
    sections = merge_sections(sections, overrides or {})
    return RunSpec(problem, mesh, tuple(methods), options, sections)


def run_file_of(path: str | os.PathLike) -> Path:
    """The run file of a run folder (``RUN_DIR/run.yaml``), or RunFolderError."""
    path = Path(path)
    if not path.is_dir():
        raise RunFolderError(f"{path}: no such run folder")
    if not (path / RUN_FILE).is_file():
        raise RunFolderError(f"{path}: not a run folder (no {RUN_FILE}; make one with pidm-fem train RUN.yaml)")
    return path / RUN_FILE


@dataclass(frozen=True)
class RunFolder:
    """A run and its folder.

    Attributes
    ----------
    path
        The run folder.
    spec
        The run.
    trained_in
        For the run's models on another mesh (:meth:`on_mesh`): the run folder whose
        ``runs/`` hold the checkpoints. None for a run folder with its own.
    """

    path: Path
    spec: RunSpec
    trained_in: Path | None = None

    @classmethod
    def open(cls, path: str | os.PathLike) -> "RunFolder":
        """The run folder ``path`` (it must hold ``run.yaml``)."""
        return cls(Path(path), read_run_file(run_file_of(path)))

    @property
    def runs(self) -> Path:
        """The folder of the methods' checkpoints and logs (``runs/<method>/``)."""
        return (self.trained_in or self.path) / "runs"

    def on_mesh(self, mesh: str | os.PathLike, options: Mapping[str, Any] | None = None) -> "RunFolder":
        """The run's models on another mesh, in ``meshes/<mesh file's stem>/`` (``options`` update the run's).

        Its ``run.yaml`` (written by :meth:`save`) names that mesh; nothing is trained there.

        Raises
        ------
        RunFolderError
            If ``meshes/<stem>`` already holds the run on another mesh file or with other options.
        """
        if self.trained_in is not None:
            raise RunFolderError(f"{self.path}: already the run on another mesh; open the run folder itself")
        mesh = os.path.abspath(mesh)
        spec = RunSpec(self.spec.problem, mesh, self.spec.methods, {**self.spec.options, **(options or {})},
                       self.spec.sections)
        path = self.path / "meshes" / Path(mesh).stem
        if (path / RUN_FILE).is_file():
            held = read_run_file(path / RUN_FILE)
            if (held.mesh, dict(held.options)) != (spec.mesh, dict(spec.options)):
                raise RunFolderError(f"{path}: holds this run on {held.mesh} with options {dict(held.options)}; "
                                     f"not {mesh} with {dict(spec.options)}")
        return RunFolder(path, spec, self.path)

    def study(self, workers: int = 1, progress: bool = True) -> Study:
        """The comparison of the run's methods in this folder."""
        return Study(self.spec.problem, self.spec.mesh, self.spec.sections, self.path, workers, progress,
                     source=str(self.path / RUN_FILE), options=self.spec.options,
                     trained_on_other_mesh=None if self.trained_in is None else self.runs)

    def build(self, workers: int = 1, progress: bool = True) -> tuple[Study, Problem]:
        """The study and its problem, every method checked before any work.

        Raises
        ------
        InputError
            A mesh that does not load, a problem that cannot be built, a configuration or a
            checkpoint in the folder that cannot be resumed (one line each).
        """
        study = self.study(workers, progress)
        try:
            problem = study.build_problem()
        except ProblemOptionError as err:
            raise RunFolderError(f"{self.path / RUN_FILE}: run.options: {err}") from None
        except InputError:
            raise
        except ValueError as err:  # an unknown problem name
            raise RunFolderError(f"{self.path / RUN_FILE}: run.problem: {err}") from None
        check_study(study, problem, list(self.spec.methods))
        return study, problem

    def save(self) -> None:
        """Write the folder's ``run.yaml`` (atomically)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path / RUN_FILE) as tmp:
            tmp.write_text(yaml.safe_dump(self.spec.as_dict(), sort_keys=False))


def start_run(run_file: str | os.PathLike, out: str | os.PathLike,
              overrides: Mapping[str, Any] | None = None) -> RunFolder:
    """The run folder ``out`` of a run file: a new one, or an existing one of the same run.

    Nothing is written: :meth:`RunFolder.save` writes ``run.yaml`` once the run is checked.

    Raises
    ------
    RunFolderError
        If ``out`` holds another run (another problem, mesh, options or configuration).
    """
    spec = read_run_file(run_file, overrides)
    out = Path(out)
    if (out / RUN_FILE).is_file():
        held = read_run_file(out / RUN_FILE)
        if (held.problem, held.mesh, dict(held.options), held.sections) != (
                spec.problem, spec.mesh, dict(spec.options), spec.sections):
            raise RunFolderError(f"{out}: holds another run (its {RUN_FILE} differs from {run_file}); "
                                 "choose another --out or resume it with pidm-fem train " + str(out))
        spec = RunSpec(spec.problem, spec.mesh, tuple(dict.fromkeys(held.methods + spec.methods)), spec.options,
                       spec.sections)
    return RunFolder(out, spec)


def methods_or_all(folder: RunFolder, methods: Sequence[str] | None) -> list[str]:
    """``methods`` (each one of the run's) or every method of the run."""
    for method in methods or ():
        if method not in folder.spec.methods:
            raise RunFolderError(f"{folder.path}: no method {method!r} in this run "
                                 f"(methods: {', '.join(folder.spec.methods)})")
    return list(methods or folder.spec.methods)
