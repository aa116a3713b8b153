"""A labelled image set in one NumPy ``.npz`` file (``data.dataset = "npz"``, ``data.root`` the file).

Keys (``np.savez(path, x=..., y=...)``):

- ``x``: the images, (N, H, W) grey, (N, H, W, C) or (N, C, H, W) with C = 1 or 3; uint8, or
  float in [0, 1] (scaled to 0..255), or integers/bools within 0..255;
- ``y``: (N,) integer labels 0..K-1, every class with at least one image;
- ``class_names`` (optional): (K,) strings, in label order (default "0", "1", ...);
- ``groups`` (optional): (K,) group names, one per class, or (M, 2) pairs [class name, group];
- ``x_test``, ``y_test`` (optional, together): the official test images, same image shape as ``x``.

No pickled objects are read (``allow_pickle=False``). Each way a file can be wrong gets its own
message: not a zip archive at all (a single ``.npy`` array, a pickle, anything else), a damaged
archive or member, an object array, a missing or unknown key, a wrong shape, dtype or value range.
The file is loaded whole, so it is not cached again; ``data.image_size`` resizes as for every
dataset. Flips are allowed for colour images only (the same heuristic as
:mod:`transferscope.data.imagefolder`).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from transferscope.config import DataConfig
from transferscope.data.files import os_error
from transferscope.data.images import from_arrays
from transferscope.data.registry import ImageData, register_dataset
from transferscope.errors import UserError

KEYS = ("x", "y", "class_names", "groups", "x_test", "y_test")
#: how a zip archive (an .npz) starts: a local file header, or the end record of an empty archive
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
#: how NumPy's .npy format (a single array, np.save) starts
NPY_MAGIC = b"\x93NUMPY"
WRITE = "write it with np.savez(path, x=images, y=labels)"


def _member(z: np.lib.npyio.NpzFile, key: str) -> str:
    """The archive member behind ``key`` (``x.npy`` for key ``x``)."""
    return f"{key}.npy" if f"{key}.npy" in z.zip.namelist() else key


def _holds_objects(z: np.lib.npyio.NpzFile, key: str) -> bool:
    """Whether member ``key`` is a .npy array of Python objects (which only pickle can read)."""
    try:
        with z.zip.open(_member(z, key)) as f:
            version = np.lib.format.read_magic(f)
            read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read:
                return False
            return read[version](f)[2].hasobject
    except Exception:  # noqa: BLE001  (a damaged header: not an object array)
        return False


def _array(z: np.lib.npyio.NpzFile, key: str, where: Path) -> np.ndarray:
    try:
        arr = z[key]
    except Exception as e:  # noqa: BLE001  (a damaged member fails anywhere in NumPy's reader)
        if _holds_objects(z, key):
            raise UserError(f"{where}: {key}: an array of Python objects, which is not read (it would need "
                            "pickle); store numbers as a numeric array and names as a plain string array, e.g. "
                            "np.array(['cat', 'dog'])") from None
        raise UserError(f"{where}: {key}: the array is damaged and cannot be read ({type(e).__name__}: {e}); "
                        f"{WRITE}") from None
    if not isinstance(arr, np.ndarray):
        raise UserError(f"{where}: {key}: the archive member {_member(z, key)} is not a NumPy array (.npy data); "
                        f"{WRITE}")
    return arr


def _open(path: Path) -> np.lib.npyio.NpzFile:
    """The .npz archive at ``path``; a UserError naming the real cause when it is not one."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(NPY_MAGIC))
    except FileNotFoundError:
        raise UserError(f"data.root: file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"data.root: {path} is a folder; npz needs a .npz file (a folder of images is read with "
                        "data.dataset = 'imagefolder')") from None
    except OSError as e:
        raise os_error(path, e) from None
    if head.startswith(NPY_MAGIC):
        raise UserError(f"data.root: {path} holds a single array (a .npy file, as np.save writes); npz needs a "
                        f".npz archive with x and y: {WRITE}")
    if not head.startswith(ZIP_MAGIC):
        what = ("an empty file" if not head else "a Python pickle" if head[:1] == b"\x80"
                else "not a zip archive")
        raise UserError(f"data.root: {path} is not a .npz file ({what}; a .npz is a zip archive of .npy arrays); "
                        f"{WRITE}")
    try:
        z = np.load(path, allow_pickle=False)
    except OSError as e:
        if isinstance(e, PermissionError):
            raise os_error(path, e) from None
        raise UserError(f"data.root: {path} is a damaged zip archive ({e}); {WRITE}") from None
    except (ValueError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"data.root: {path} is a damaged zip archive ({type(e).__name__}: {e}); {WRITE}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):  # np.load decides by the same magic: not expected
        raise UserError(f"data.root: {path} is not a .npz archive; {WRITE}")
    return z


def images(arr: np.ndarray, key: str, where: Path) -> torch.Tensor:
    """Any accepted image array -> uint8 (N, C, H, W)."""
    shape = tuple(arr.shape)
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4:
        if arr.shape[1] in (1, 3) and arr.shape[3] not in (1, 3):
            pass  # (N, C, H, W)
        elif arr.shape[3] in (1, 3):
            arr = arr.transpose(0, 3, 1, 2)  # (N, H, W, C)
        else:
            raise UserError(f"{where}: {key}: shape {shape} has no channel axis of size 1 or 3; "
                            "expected (N, H, W), (N, H, W, C) or (N, C, H, W) with C = 1 (grey) or 3 (RGB)")
    else:
        raise UserError(f"{where}: {key}: shape {shape} is not an image array; expected (N, H, W), (N, H, W, C) "
                        "or (N, C, H, W) with C = 1 or 3")
    if arr.shape[0] == 0:
        raise UserError(f"{where}: {key}: no images")
    if 0 in arr.shape[2:]:
        raise UserError(f"{where}: {key}: shape {shape} has images of zero height or width")
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.bool_:
        out = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        lo, hi = float(np.min(arr)), float(np.max(arr))
        if not (0.0 <= lo and hi <= 1.0):  # also catches NaN
            raise UserError(f"{where}: {key}: float images must lie in [0, 1] (found {lo:g} .. {hi:g}); "
                            "divide by 255, or store uint8")
        out = np.rint(arr * 255.0).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(np.min(arr)), int(np.max(arr))
        if lo < 0 or hi > 255:
            raise UserError(f"{where}: {key}: integer images must lie in 0..255 (found {lo} .. {hi})")
        out = arr.astype(np.uint8)
    else:
        raise UserError(f"{where}: {key}: dtype {arr.dtype} is not an image type; use uint8 or float in [0, 1]")
    return torch.from_numpy(np.ascontiguousarray(out))


def labels(arr: np.ndarray, key: str, n: int, where: Path) -> np.ndarray:
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise UserError(f"{where}: {key}: labels must be a 1-D integer array (got {arr.dtype} {tuple(arr.shape)}); "
                        "map class names to 0..K-1 and store the names as class_names")
    if arr.shape[0] != n:
        raise UserError(f"{where}: {key}: {arr.shape[0]} labels for {n} images; give one label per image")
    if n and arr.min() < 0:
        raise UserError(f"{where}: {key}: negative label {int(arr.min())}; labels are 0..K-1")
    return arr.astype(np.int64)


def _names(arr: np.ndarray, key: str, where: Path) -> tuple[str, ...]:
    if arr.ndim != 1 or arr.dtype.kind not in "US":
        raise UserError(f"{where}: {key}: expected a 1-D array of strings (got {arr.dtype} {tuple(arr.shape)})")
    return tuple(str(v.decode() if isinstance(v, bytes) else v) for v in arr.tolist())


def _groups(arr: np.ndarray, names: tuple[str, ...], where: Path) -> dict[str, str]:
    if arr.ndim == 1:
        values = _names(arr, "groups", where)
        if len(values) != len(names):
            raise UserError(f"{where}: groups: {len(values)} group names for {len(names)} classes; give one per "
                            "class (in label order) or (M, 2) pairs [class name, group]")
        return dict(zip(names, values))
    if arr.ndim == 2 and arr.shape[1] == 2 and arr.dtype.kind in "US":
        pairs = [(str(c), str(g)) for c, g in arr.tolist()]
        unknown = [c for c, _ in pairs if c not in names]
        if unknown:
            raise UserError(f"{where}: groups: unknown class {unknown[0]!r}; classes are: {', '.join(names[:20])}")
        return dict(pairs)
    raise UserError(f"{where}: groups: expected (K,) group names or (M, 2) pairs [class name, group] "
                    f"(got {arr.dtype} {tuple(arr.shape)})")


@register_dataset("npz", "a NumPy .npz file (data.root): x (N,H,W[,C]) or (N,C,H,W), y, optional class_names, "
                  "groups, x_test, y_test")
def load_npz(cfg: DataConfig) -> ImageData:
    if cfg.download:
        raise UserError("data.download: npz reads a file already on disk and has nothing to download; "
                        "set data.download = false")
    if cfg.root is None:
        raise UserError("data.root: npz needs data.root, the path of a .npz file with arrays x and y")
    path = Path(cfg.root).expanduser().resolve()
    z = _open(path)
    with z:
        keys = set(z.files)
        unknown = sorted(keys - set(KEYS))
        if unknown:
            raise UserError(f"{path}: unknown key {unknown[0]!r}; allowed keys: {', '.join(KEYS)}")
        for need in ("x", "y"):
            if need not in keys:
                raise UserError(f"{path}: no array {need!r} (found: {', '.join(sorted(keys)) or 'none'}); "
                                "npz needs x (images) and y (labels)")
        if ("x_test" in keys) != ("y_test" in keys):
            raise UserError(f"{path}: x_test and y_test go together; give both or neither")
        x = images(_array(z, "x", path), "x", path)
        y = labels(_array(z, "y", path), "y", x.shape[0], path)
        is_test = None
        if "x_test" in keys:
            xt = images(_array(z, "x_test", path), "x_test", path)
            if xt.shape[1:] != x.shape[1:]:
                raise UserError(f"{path}: x_test: images are {tuple(xt.shape[1:])} (C, H, W), x's are "
                                f"{tuple(x.shape[1:])}; both need the same shape")
            yt = labels(_array(z, "y_test", path), "y_test", xt.shape[0], path)
            x, y = torch.cat([x, xt]), np.concatenate([y, yt])
            is_test = torch.cat([torch.zeros(len(y) - len(yt), dtype=torch.bool), torch.ones(len(yt), dtype=torch.bool)])
        if "class_names" in keys:
            names = _names(_array(z, "class_names", path), "class_names", path)
            if len(set(names)) != len(names):
                dup = next(n for n in names if names.count(n) > 1)
                raise UserError(f"{path}: class_names: {dup!r} appears twice; class names must be unique")
            if y.max() >= len(names):
                raise UserError(f"{path}: y: label {int(y.max())} but only {len(names)} class_names (labels 0.."
                                f"{len(names) - 1})")
        else:
            names = tuple(str(i) for i in range(int(y.max()) + 1))
        empty = np.flatnonzero(np.bincount(y, minlength=len(names)) == 0)
        if len(empty):
            raise UserError(f"{path}: y: class(es) {', '.join(names[i] for i in empty[:5])} have no images; "
                            "every class needs at least one (labels 0..K-1 without gaps)")
        groups = _groups(_array(z, "groups", path), names, path) if "groups" in keys else {}
    return from_arrays(cfg, x, torch.from_numpy(y), names, name=f"npz:{path.stem}", groups=groups,
                       flip_ok=x.shape[1] == 3, is_test=is_test)
