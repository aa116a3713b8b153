"""Device and numeric precision of a run: bf16 autocast and channels_last where they help."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from transferscope.config import TrainConfig
from transferscope.errors import UserError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"execution.device: {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("execution.device: CUDA was asked for but no CUDA device is available; use auto or cpu")
    return device


def cpu_has_bf16() -> bool:
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


@dataclass(frozen=True)
class Numerics:
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype; None: fp32
    channels_last: bool

    @classmethod
    def resolve(cls, cfg: TrainConfig, device: torch.device) -> Numerics:
        precision = cfg.precision
        if precision == "auto":
            bf16 = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_bf16()
            precision = "bf16" if bf16 else "fp32"
        if precision == "fp16" and device.type == "cpu":
            raise UserError("train.precision: fp16 autocast is for GPUs; on the CPU use bf16, fp32 or auto")
        return cls(device, _DTYPES.get(precision), cfg.channels_last)

    @property
    def name(self) -> str:
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, "fp32")  # type: ignore[arg-type]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` for the block, restored after (a calibration or
    a benchmark timing as a worker of ``execution.threads`` runs)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
