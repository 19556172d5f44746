"""Where tensors run: one setting, ``device``, for features, head, fine-tune, evaluation,
`predict` and the served model.

``auto`` is the first GPU when PyTorch sees one, else the CPU; ``cpu`` stays on the CPU even
on a GPU machine; ``cuda`` / ``cuda:N`` must exist, or the run stops naming the setting.
"""

from __future__ import annotations

import torch

from tlpipe.config import DEVICE_CHOICES, DEVICE_SETTING
from tlpipe.errors import SettingsError

CPU = torch.device("cpu")


def resolve_device(setting: str, key: str = "device") -> torch.device:
    """The torch device ``setting`` names here; ``key`` is what the message calls it."""
    if not DEVICE_SETTING.fullmatch(setting):
        raise SettingsError(f"{key}: {setting!r} is not a device; use {DEVICE_CHOICES}")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SettingsError(f"{key}: {setting!r}, but PyTorch sees no GPU here "
                                "(torch.cuda.is_available() is False); use auto or cpu")
        if device.index is not None and device.index >= count:
            raise SettingsError(f"{key}: {setting!r}, but this machine has {count} GPU(s), "
                                f"cuda:0 to cuda:{count - 1}")
    return device
