"""Exponential moving average (EMA) of a model's weights, with a start step."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """Exponential moving average of the parameters of a model; buffers are copied.

    After training step ``step`` (counted from 1), :meth:`update` sets each
    averaged parameter ``a`` from the current parameter ``p`` as

    - ``a = p`` while ``step < start`` (the average follows the weights), and
    - ``a = decay * a + (1 - decay) * p`` from ``step >= start`` on.

    The average is kept under the keys of ``model.state_dict()``, so that
    ``model.load_state_dict(ema.averaged_state_dict())`` gives the averaged model.

    Parameters
    ----------
    model
        The model being trained; the average starts as a copy of its weights.
    decay
        Weight of the old average, in [0, 1).
    start
        First step at which weights are averaged rather than copied.
    """

    def __init__(self, model: nn.Module, decay: float, start: int = 0):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        if start < 0:
            raise ValueError(f"EMA start must be >= 0, got {start}")
        self.decay = float(decay)
        self.start = int(start)
        parameter_ids = {id(p) for p in model.parameters()}
        state = model.state_dict(keep_vars=True)
        self._averaged = {
            key for key, value in state.items() if id(value) in parameter_ids and value.is_floating_point()
        }
        self._shadow = {key: value.detach().clone() for key, value in state.items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold the current weights of ``model`` into the average after training step ``step``."""
        averaging = step >= self.start
        state = model.state_dict()
        for key, shadow in self._shadow.items():
            value = state[key]
            if averaging and key in self._averaged:
                shadow.lerp_(value, 1.0 - self.decay)
            else:
                shadow.copy_(value)

    def averaged_state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights, keyed like ``model.state_dict()`` (the tensors themselves, not copies)."""
        return dict(self._shadow)

    @contextmanager
    def applied_to(self, model: nn.Module) -> Iterator[nn.Module]:
        """Context in which ``model`` holds the averaged weights; its own weights come back after.

        Parameters
        ----------
        model
            The model the average was made from.
        """
        own = {key: value.detach().clone() for key, value in model.state_dict().items()}
        model.load_state_dict(self._shadow)
        try:
            yield model
        finally:
            model.load_state_dict(own)

    def state_dict(self) -> dict[str, Any]:
        """Decay, start and averaged weights, for checkpoints."""
        return {"decay": self.decay, "start": self.start, "shadow": self.averaged_state_dict()}

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`; the keys must match the model's.

        Parameters
        ----------
        state
            A dictionary made by :meth:`state_dict`.
        """
        shadow = state["shadow"]
        if set(shadow) != set(self._shadow):
            missing = sorted(set(self._shadow) - set(shadow))
            unexpected = sorted(set(shadow) - set(self._shadow))
            raise ValueError(f"EMA state does not fit the model: missing {missing}, unexpected {unexpected}")
        self.decay = float(state["decay"])
        self.start = int(state["start"])
        for key, value in shadow.items():
            self._shadow[key].copy_(value)
