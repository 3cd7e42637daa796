"""Where and in which precision a model runs: the one home of the config-to-torch mapping and the GPU check."""

import torch

from pipelines.config import ConfigError, Device, DType


TORCH_DTYPES = {DType.float32: torch.float32, DType.float16: torch.float16, DType.bfloat16: torch.bfloat16}


def checked_device(device: Device, key: str) -> torch.device:
    """``device`` as torch's; ``cuda`` without a visible GPU fails at once (never falls back to CPU silently).

    Raises:
        ConfigError: naming ``key`` (e.g. ``model.device``) and the fix.
    """
    if device == Device.cuda and not torch.cuda.is_available():
        raise ConfigError(f"{key}=cuda but no CUDA GPU is visible; pass {key}=cpu to run on CPU")
    return torch.device(device.value)
