"""YAML run and problem files, read strictly: ``1e-4`` is a float, duplicate keys are refused.

:class:`ConfigError` is the one-line error of every configuration: a run file, a problem
file, a key of either.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from pidm_fem.errors import InputError


class ConfigError(InputError):
    """A configuration that cannot be used; the message is one line naming the key (and file)."""


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


def read_yaml(text: str) -> Any:
    """Parse YAML ``text`` as run files are read (``1e-4`` a float, duplicate keys refused).

    Raises
    ------
    ConfigError
        ``invalid YAML: <problem> (line, column)``.
    """
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"invalid YAML: {_yaml_problem(err)}") from None


def read_yaml_file(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML run file's sections, unchecked (an empty file has none).

    Raises
    ------
    ConfigError
        One line starting with ``path``: a missing or unreadable file, invalid YAML, or
        a document that is not a mapping.
    """
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the file ({err.strerror})") from None
    try:
        data = read_yaml(text)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: must be a mapping of sections, got {type(data).__name__}")
    return dict(data)
