"""An exponential moving average of a model's weights, the model a stage evaluates and ships.

On a few thousand photos the weights after any one step carry that step's noise (BIQ2021
`val` SROCC moves by +-0.01 from epoch to epoch); their running average is a flatter, more
general solution at no extra compute. The decay warms up as in timm's ModelEmaV3,
min(decay, (1 + t) / (10 + t)), so the first steps do not pin the average to the weights the
stage started from.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay, self.updates = decay, 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        pairs = [(a, m) for a, m in zip(self.model.state_dict().values(), model.state_dict().values())]
        floats = [(a, m) for a, m in pairs if a.is_floating_point()]
        torch._foreach_lerp_([a for a, _ in floats], [m.detach() for _, m in floats], 1.0 - decay)
        for a, m in pairs:
            if not a.is_floating_point():
                a.copy_(m)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "weights": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.updates = state["updates"]
        self.model.load_state_dict(state["weights"])
