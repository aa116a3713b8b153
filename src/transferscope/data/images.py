"""The pixel path shared by the file and array datasets: decode, resize, and read on demand.

Every dataset ends as uint8 (C, H, W) images with C = 1 (grey) or 3 (RGB). ``data.image_size = S``
resizes each image so its shorter side is S (bilinear, antialiased) and crops the centre S x S
square; files go through PIL, arrays through torchvision's tensor ops (the two agree to within
rounding). Decoding many files uses every core: a process pool over chunks of files.

Two readers decode single images on demand for datasets too large for memory
(``data.memory_limit_gb``); both are plain picklable objects for DataLoader workers.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from transferscope.config import DataConfig
from transferscope.data.files import file_stats
from transferscope.data.fingerprint import files_digest, tensor_digest
from transferscope.data.registry import ImageData
from transferscope.errors import UserError

#: PIL modes with one value per pixel (plus alpha): decoded as grey ('L')
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
#: images per task sent to a decoding process
CHUNK = 256
#: below this many files, decoding stays in this process (starting a pool costs more)
MIN_PARALLEL = 2000

T = TypeVar("T")
R = TypeVar("R")


def image_extensions() -> frozenset[str]:
    """File name endings (lower case, with the dot) of every format PIL can open."""
    return frozenset(_formats())


def limit_bytes(cfg: DataConfig) -> int:
    """``data.memory_limit_gb`` in bytes (GB = 10^9 bytes)."""
    return int(cfg.memory_limit_gb * 1e9)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# ------------------------------------------------------------------------------------ decoding


def resize_crop_pil(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size`` (bilinear, antialiased), then the centre ``size`` x ``size`` square."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


@functools.cache
def _formats() -> dict[str, str]:
    Image.init()
    return {ext.lower(): fmt for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def _open(path: str) -> Image.Image:
    """PIL's open, trying the format its extension names first (a third faster on small JPEGs)."""
    fmt = _formats().get(os.path.splitext(path)[1].lower())
    if fmt is not None:
        try:
            return Image.open(path, formats=[fmt])
        except UnidentifiedImageError:
            pass  # content and extension disagree: let PIL identify it
    return Image.open(path)


def decode_file(path: str, mode: str | None = None, size: int | None = None) -> np.ndarray:
    """One image file as uint8 (H, W) if grey or (H, W, 3) if colour; ``mode`` ('L' or 'RGB')
    forces one of the two. Alpha is dropped, palettes are expanded."""
    with _open(path) as img:
        target = mode or ("L" if img.mode in GREY_MODES else "RGB")
        out = img.convert(target)
    if size is not None:
        out = resize_crop_pil(out, size)
    return np.array(out, dtype=np.uint8)  # a writable copy (torch warns on read-only arrays)


def _error(e: Exception) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def decode_chunk(task: tuple[Sequence[str], str | None, int | None]) -> list[tuple[np.ndarray | None, str | None]]:
    """Decode a chunk of files: (array, None) per readable file, (None, reason) per unreadable one."""
    paths, mode, size = task
    out: list[tuple[np.ndarray | None, str | None]] = []
    for p in paths:
        try:
            out.append((decode_file(p, mode, size), None))
        except Exception as e:  # noqa: BLE001  (any decoder failure means an unreadable file)
            out.append((None, _error(e)))
    return out


def probe_chunk(task: tuple[Sequence[str]]) -> list[tuple[bool, tuple[int, int], str | None]]:
    """Read only the headers of a chunk of files: (is grey, (width, height), error or None)."""
    (paths,) = task
    out: list[tuple[bool, tuple[int, int], str | None]] = []
    for p in paths:
        try:
            with _open(p) as img:
                out.append((img.mode in GREY_MODES, img.size, None))
        except Exception as e:  # noqa: BLE001
            out.append((False, (0, 0), _error(e)))
    return out


def map_chunks(fn: Callable[[tuple], list[R]], items: Sequence[T], *extra: Any) -> list[R]:
    """``fn((chunk, *extra))`` over chunks of ``items``, flattened in order; in a process pool over
    all cores when there are many items."""
    chunks = [(items[i : i + CHUNK], *extra) for i in range(0, len(items), CHUNK)]
    workers = min(cpu_count(), len(chunks))
    if len(items) < MIN_PARALLEL or workers < 2:
        results = [fn(c) for c in chunks]
    else:
        # fork on Linux (as DataLoader does): no re-import of the user's script, no start-up cost;
        # the workers only run PIL and NumPy. Elsewhere the platform's default (spawn).
        ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            results = list(pool.map(fn, chunks))
    return [r for chunk in results for r in chunk]


# ------------------------------------------------------------------------------------ tensors


def to_chw(arr: np.ndarray, channels: int) -> torch.Tensor:
    """(H, W) or (H, W, 3) uint8 -> (channels, H, W); a grey image becomes 3 equal channels."""
    t = torch.from_numpy(np.ascontiguousarray(arr))
    t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
    if t.shape[0] != channels:
        t = t.expand(channels, -1, -1)
    return t.contiguous()


def resize_crop_tensor(x: torch.Tensor, size: int, batch: int = 2048) -> torch.Tensor:
    """uint8 (N, C, H, W) -> (N, C, size, size): shorter side to ``size``, centre crop."""
    from torchvision.transforms.v2 import functional as F

    if x.shape[-2:] == (size, size):
        return x
    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=torch.uint8)
    for i in range(0, x.shape[0], batch):
        part = F.resize(x[i : i + batch], [size], antialias=True)
        out[i : i + batch] = F.center_crop(part, [size, size])
    return out


# ------------------------------------------------------------------------------------ readers


@dataclass
class FileReader:
    """Decodes image ``i`` from ``paths[i]`` on demand ('L' or 'RGB', resized when ``size`` is set)."""

    paths: list[str]
    mode: str
    size: int | None
    shape: tuple[int, int, int]

    def __len__(self) -> int:
        return len(self.paths)

    def fingerprint(self) -> str:
        """A digest of the files (paths relative to their common folder, sizes, modification
        times) and of how they are decoded. Loaders that know the dataset root give ImageData its
        fingerprint instead (from the statistics they took anyway)."""
        root = os.path.commonpath(self.paths) if self.paths else ""
        root = root if os.path.isdir(root) else os.path.dirname(root)
        return files_digest(file_stats(root, self.paths), mode=self.mode, size=self.size, shape=list(self.shape))

    def read(self, index: int) -> torch.Tensor:
        path = self.paths[index]
        try:
            arr = decode_file(path, self.mode, self.size)
        except Exception as e:  # noqa: BLE001
            raise UserError(f"cannot decode image file {path} ({_error(e)}); fix or remove it, "
                            "or set data.skip_corrupt = true") from None
        if arr.shape[:2] != self.shape[1:]:
            raise UserError(f"image file {path} is {arr.shape[1]}x{arr.shape[0]}, the others "
                            f"{self.shape[2]}x{self.shape[1]}; set data.image_size to resize every image")
        return to_chw(arr, self.shape[0])


@dataclass
class ArrayReader:
    """Resizes image ``i`` of an in-memory uint8 (N, C, H, W) tensor on demand (for sets whose
    resized images would exceed the memory limit)."""

    x: torch.Tensor
    size: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.x.shape[1], self.size, self.size)

    def fingerprint(self) -> str:
        return tensor_digest(self.x, resize=self.size)

    def __len__(self) -> int:
        return self.x.shape[0]

    def read(self, index: int) -> torch.Tensor:
        return resize_crop_tensor(self.x[index : index + 1], self.size)[0]


def from_arrays(cfg: DataConfig, x: torch.Tensor, y: torch.Tensor, class_names: tuple[str, ...], *, name: str,
                groups: dict[str, str] | None = None, flip_ok: bool = False,
                is_test: torch.Tensor | None = None) -> ImageData:
    """ImageData from images already in memory at their native size, resized to ``data.image_size``:
    at once when the result fits ``data.memory_limit_gb``, else image by image as they stream."""
    common: dict[str, Any] = {"y": y, "class_names": class_names, "groups": groups or {}, "name": name,
                              "flip_ok": flip_ok, "is_test": is_test}
    size = cfg.image_size
    if size is None or x.shape[-2:] == (size, size):
        return ImageData(x=x, **common)
    if x.shape[0] * x.shape[1] * size * size > limit_bytes(cfg):
        return ImageData(reader=ArrayReader(x, size), **common)
    return ImageData(x=resize_crop_tensor(x, size), **common)
