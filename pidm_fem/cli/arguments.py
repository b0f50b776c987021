"""Argument types shared by the commands: counts that must be positive or non-negative."""

from __future__ import annotations

import argparse


def _integer(text: str, least: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a {what} integer, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be a {what} integer, got {value}")
    return value


def positive(text: str) -> int:
    """An integer of at least 1 (argparse type)."""
    return _integer(text, 1, "positive")


def non_negative(text: str) -> int:
    """An integer of at least 0 (argparse type)."""
    return _integer(text, 0, "non-negative")


def problem_option(text: str):
    """``KEY=VALUE`` (a YAML value) as a problem setting; InputError if malformed."""
    from pidm_fem.config_files import ConfigError, read_yaml
    from pidm_fem.errors import InputError

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise InputError(f"--option {text!r}: expected KEY=VALUE")
    try:
        return key.strip(), read_yaml(value)
    except ConfigError as err:
        raise InputError(f"--option {text!r}: {err}") from None
