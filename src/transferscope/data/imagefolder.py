"""Any folder of labelled images (``data.dataset = "imagefolder"``, ``data.root`` the folder).

Three layouts, detected from the folders themselves:

- ``ROOT/<class>/<image>``: one folder per class; no official test split (each task's classes are
  split into train/val/test per class, seeded);
- ``ROOT/train/<class>/<image>`` with ``ROOT/test/...`` or ``ROOT/val/...``: the test (or, without
  one, the val) images are the official test images. With all three, val images join train (a
  task's validation images are carved from its training images);
- one more level, ``ROOT/[split/]<group>/<class>/<image>``: the parent folder is the class's group
  (Omniglot's alphabets and characters), class names are ``group/class``; ``split.kind = "groups"``
  then splits by group.

Class order is the sorted class names. Every format PIL can open is read (by file extension; other
files are ignored); images become grey ('L') when every one is grey or binary, else RGB. Folders of
different depths, empty class folders, or class folders that hold both images and folders are
errors that name the folder. An unreadable image is an error naming the file, or with
``data.skip_corrupt = true`` it is left out and listed in ``ImageData.skipped``; a cached set
that left files out checks those again, and is decoded again once one of them can be read. A
folder that cannot be listed (no permission) is always an error: leaving out a class folder would
change the classes.

A set that fits ``data.memory_limit_gb`` is decoded once (on all cores) and cached (see
:mod:`transferscope.data.cache`); a larger one streams from its files through a
:class:`~transferscope.data.images.FileReader`. Horizontal flips are allowed for colour images
(photos) and not for grey ones (characters, digits, scans), a heuristic stated in ``flip_ok``.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from transferscope.config import DataConfig
from transferscope.data.cache import CacheEntry, cache_key, note
from transferscope.data.files import file_stats, list_dir, os_error
from transferscope.data.fingerprint import data_fingerprint, files_digest
from transferscope.data.images import (
    FileReader,
    decode_chunk,
    decode_file,
    image_extensions,
    limit_bytes,
    map_chunks,
    probe_chunk,
    to_chw,
)
from transferscope.data.registry import ImageData, register_dataset
from transferscope.errors import UserError

TRAIN_NAMES = ("train",)
TEST_NAMES = ("test", "val", "valid", "validation")  # in order of preference for the official test split
LAYOUTS = ("ROOT/<class>/<image>, ROOT/{train,test|val}/<class>/<image>, "
           "or ROOT/[train,test|val/]<group>/<class>/<image>")


@dataclass(frozen=True)
class FolderScan:
    """The images of a folder tree: absolute paths, labels, official-test flags, classes, groups."""

    paths: list[str]
    labels: np.ndarray  # int64 (N,)
    is_test: np.ndarray | None  # bool (N,)
    class_names: tuple[str, ...]
    groups: dict[str, str]


#: why an unreadable class folder stops the load even with data.skip_corrupt
NOT_SKIPPED = ("data.skip_corrupt skips unreadable image files, not folders: leaving out a class folder "
               "would change the classes")


def _visible_dirs(folder: Path) -> list[os.DirEntry]:
    return sorted((e for e in list_dir(folder) if e.is_dir() and not e.name.startswith(".")), key=lambda e: e.name)


def _images_in(folder: str, exts: frozenset[str], what: str = "class folder") -> tuple[list[str], list[str]]:
    """(sorted image file paths, sorted visible subfolder names) directly inside ``folder``."""
    files, dirs = [], []
    for e in list_dir(folder, what, hint=NOT_SKIPPED if "class" in what else ""):
        if e.name.startswith("."):
            continue
        if e.is_dir():
            dirs.append(e.name)
        elif os.path.splitext(e.name)[1].lower() in exts:
            files.append(e.path)
    return sorted(files), sorted(dirs)


def _classes_in(folder: Path, exts: frozenset[str]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """{class name: image paths} and {class name: group} of one split folder (or of ROOT)."""
    stray, tops = _images_in(str(folder), exts, "folder")
    if stray:
        raise UserError(f"data.root: {folder} holds image files directly (e.g. {Path(stray[0]).name}); "
                        f"imagefolder needs a folder per class: {LAYOUTS}")
    if not tops:
        raise UserError(f"data.root: {folder} has no class folders; expected {LAYOUTS}")
    flat: dict[str, list[str]] = {}
    nested: dict[str, tuple[str, list[str]]] = {}
    for top in tops:
        files, subs = _images_in(str(folder / top), exts)
        if files and subs:
            raise UserError(f"data.root: {folder / top} holds both images and folders ({subs[0]}/); a class "
                            f"folder holds only images, a group folder only class folders ({LAYOUTS})")
        if files:
            flat[top] = files
            continue
        if not subs:
            raise UserError(f"data.root: folder {folder / top} has no image files "
                            f"(readable formats: {', '.join(sorted(e[1:] for e in exts)[:12])}, ...)")
        for sub in subs:
            inner, deeper = _images_in(str(folder / top / sub), exts)
            if deeper:
                raise UserError(f"data.root: {folder / top / sub / deeper[0]} is nested too deep; imagefolder "
                                f"reads at most two folder levels: {LAYOUTS}")
            if not inner:
                raise UserError(f"data.root: folder {folder / top / sub} has no image files")
            nested[f"{top}/{sub}"] = (top, inner)
    if flat and nested:
        a, b = next(iter(flat)), next(iter(nested)).split("/")[0]
        raise UserError(f"data.root: mixed folder depths in {folder}: {a}/ holds images (a class) but {b}/ "
                        f"holds folders (a group of classes); use one layout for all: {LAYOUTS}")
    if flat:
        return flat, {}
    return {c: files for c, (_, files) in nested.items()}, {c: g for c, (g, _) in nested.items()}


def scan_folder(root: Path) -> FolderScan:
    """Detect the layout of ``root`` and list its images (see the module docstring)."""
    exts = image_extensions()
    tops = [e.name for e in _visible_dirs(root)]
    tests = [t for t in TEST_NAMES if t in tops]
    if "train" in tops and tests:
        others = [t for t in tops if t not in TRAIN_NAMES + TEST_NAMES]
        if others:
            raise UserError(f"data.root: {root} has split folders (train/, {tests[0]}/) and other folders "
                            f"({', '.join(others[:5])}); put every class inside the split folders")
        test_dir = tests[0]
        splits = sorted(((t, t == test_dir) for t in tops if t in TRAIN_NAMES + TEST_NAMES),
                        key=lambda s: (s[1], s[0] != "train", s[0]))  # train first, the test split last
    else:
        splits = [("", False)]
    per_split = []
    for sub, is_test in splits:
        classes, groups = _classes_in(root / sub if sub else root, exts)
        per_split.append((sub, is_test, classes, groups))
    names = sorted(per_split[0][2])
    for sub, _, classes, _ in per_split[1:]:
        if sorted(classes) != names:
            only_a = sorted(set(names) - set(classes))
            only_b = sorted(set(classes) - set(names))
            first = per_split[0][0]
            raise UserError(f"data.root: the split folders of {root} have different classes: "
                            + "; ".join(x for x in (f"only in {first}/: {', '.join(only_a[:5])}" if only_a else "",
                                                    f"only in {sub}/: {', '.join(only_b[:5])}" if only_b else "") if x)
                            + "; every class needs images in each split folder")
    index = {c: i for i, c in enumerate(names)}
    paths: list[str] = []
    labels: list[np.ndarray] = []
    flags: list[np.ndarray] = []
    groups: dict[str, str] = {}
    for _, is_test, classes, grp in per_split:
        groups.update(grp)
        for c in names:
            paths.extend(classes[c])
            labels.append(np.full(len(classes[c]), index[c], dtype=np.int64))
            flags.append(np.full(len(classes[c]), is_test))
    has_test = len(per_split) > 1
    return FolderScan(paths, np.concatenate(labels), np.concatenate(flags) if has_test else None,
                      tuple(names), {c: groups[c] for c in names} if groups else {})


# ------------------------------------------------------------------------------------ decoding


def _unreadable(cfg: DataConfig, paths: Sequence[str], errors: dict[int, str]) -> None:
    if errors and not cfg.skip_corrupt:
        i, reason = next(iter(sorted(errors.items())))
        more = f" (and {len(errors) - 1} more unreadable files)" if len(errors) > 1 else ""
        if reason.startswith("PermissionError"):
            raise UserError(f"cannot read image file {paths[i]} (permission denied){more}; make it readable "
                            f"(e.g. chmod u+r {shlex.quote(paths[i])}), or set data.skip_corrupt = true to skip "
                            "unreadable files")
        raise UserError(f"cannot decode image file {paths[i]} ({reason}){more}; fix or remove it, "
                        "or set data.skip_corrupt = true to skip unreadable files")


def _readable_again(skipped: Sequence[str]) -> list[str]:
    """The files a cache entry lists as skipped that decode now (made readable again: chmod changes
    neither size nor modification time, so the cache key cannot tell). Only these are read."""
    out = []
    for p in skipped:
        try:
            decode_file(p)
        except Exception:  # noqa: BLE001  (still unreadable)
            continue
        out.append(p)
    return out


def _size_error(root: Path, paths: Sequence[str], sizes: dict[tuple[int, int], int]) -> UserError:
    examples = ", ".join(f"{w}x{h} ({os.path.relpath(paths[i], root)})" for (w, h), i in list(sizes.items())[:3])
    return UserError(f"data.image_size: the images in {root} differ in size (e.g. {examples}); set "
                     "data.image_size (e.g. data.image_size = 64) to resize the shorter side of every image "
                     "to that size and crop the centre square")


def _decode_all(cfg: DataConfig, root: Path, paths: Sequence[str], mode: str | None) -> tuple[torch.Tensor, list[int]]:
    """Decode every file (all cores): uint8 (N', C, H, W) of the readable ones and the indices of
    unreadable ones (an error unless ``data.skip_corrupt``)."""
    results = map_chunks(decode_chunk, paths, mode, cfg.image_size)
    errors = {i: err for i, (_, err) in enumerate(results) if err is not None}
    _unreadable(cfg, paths, errors)
    arrays = [(i, a) for i, (a, _) in enumerate(results) if a is not None]
    if not arrays:
        raise UserError(f"data.root: no readable images in {root}")
    sizes: dict[tuple[int, int], int] = {}
    for i, a in arrays:
        sizes.setdefault((a.shape[1], a.shape[0]), i)
    if len(sizes) > 1:
        raise _size_error(root, paths, sizes)
    ndims = {a.ndim for _, a in arrays}
    if len(ndims) == 1:  # all grey or all colour: one stack
        x = torch.from_numpy(np.stack([a for _, a in arrays]))
        x = x.unsqueeze(1) if ndims == {2} else x.permute(0, 3, 1, 2).contiguous()
    else:  # some grey among colour images: grey becomes three equal channels
        (w, h), = sizes
        x = torch.empty((len(arrays), 3, h, w), dtype=torch.uint8)
        for j, (_, a) in enumerate(arrays):
            x[j] = to_chw(a, 3)
    return x, sorted(errors)


def _probe_all(cfg: DataConfig, root: Path, paths: Sequence[str]) -> tuple[str, tuple[int, int] | None, list[int]]:
    """Headers only: colour mode for the whole set, the common (width, height) (None when sizes
    differ), and the unreadable files."""
    results = map_chunks(probe_chunk, paths)
    errors = {i: err for i, (_, _, err) in enumerate(results) if err is not None}
    _unreadable(cfg, paths, errors)
    ok = [(i, grey, size) for i, (grey, size, err) in enumerate(results) if err is None]
    sizes: dict[tuple[int, int], int] = {}
    for i, _, size in ok:
        sizes.setdefault(size, i)
    if len(sizes) > 1 and cfg.image_size is None:
        raise _size_error(root, paths, sizes)
    mode = "L" if all(grey for _, grey, _ in ok) else "RGB"
    return mode, next(iter(sizes)) if len(sizes) == 1 else None, sorted(errors)


def images_from_files(cfg: DataConfig, root: Path, paths: list[str], labels: np.ndarray,
                      is_test: np.ndarray | None, class_names: tuple[str, ...], groups: dict[str, str], *,
                      name: str, mode: str | None = None, flip_ok: bool | None = None,
                      decode: bool = True) -> ImageData:
    """ImageData from image files: from the cache when it has them, else decoded into memory (and
    cached) when they fit ``data.memory_limit_gb``, else streamed by a FileReader.
    ``mode`` ('L'/'RGB') forces a colour mode; ``flip_ok`` None means: flip colour images only.
    Without ``decode``, files not in the cache are not decoded (nor probed, nor cached): they stream,
    with the colour mode and size of the first (for a plan; a run decodes and checks them all)."""
    stats = file_stats(root, paths)
    entry = CacheEntry(cfg, cache_key(cfg, root, stats, mode=mode))

    def build(keep: list[int], skipped: list[int], *, x: torch.Tensor | None = None,
              reader: FileReader | None = None, fingerprint: str = "") -> ImageData:
        y = torch.from_numpy(labels[keep])
        test = None if is_test is None else torch.from_numpy(is_test[keep])
        if reader is not None and not fingerprint:  # streamed: the files' statistics, not their pixels
            digest = files_digest([stats[i] for i in keep], mode=reader.mode, size=reader.size,
                                  shape=list(reader.shape))
            fingerprint = data_fingerprint(digest, y, test, class_names, groups)
        channels = x.shape[1] if x is not None else reader.shape[0]  # type: ignore[union-attr]
        return ImageData(y=y, class_names=class_names, groups=groups, name=name,
                         flip_ok=channels == 3 if flip_ok is None else flip_ok, is_test=test,
                         skipped=tuple(paths[i] for i in skipped), x=x, reader=reader, fingerprint=fingerprint)

    meta = entry.meta()
    if meta is not None and meta["skipped"]:
        again = _readable_again(meta["skipped"])
        if again:
            note(f"{len(again)} image file(s) of {name} skipped before as unreadable can be read now "
                 f"(e.g. {again[0]}); decoding them again")
            meta = None
    if meta is not None:
        fits = entry.nbytes(meta) <= limit_bytes(cfg)
        cached = entry.load() if fits and not meta["stream"] else None
        if cached is not None:
            return cached
        if not fits:  # seen before (streamed, or decoded under a larger limit): stream without probing
            gone = set(meta["skipped"])
            keep = [i for i, p in enumerate(paths) if p not in gone]
            shape = tuple(meta["shape"])
            reader = FileReader([paths[i] for i in keep], "L" if shape[0] == 1 else "RGB", cfg.image_size, shape)
            return build(keep, [i for i, p in enumerate(paths) if p in gone], reader=reader,
                         fingerprint=meta.get("fingerprint", "") if meta["stream"] else "")

    if not decode:
        first = decode_file(paths[0], mode, cfg.image_size)
        shape = (1 if first.ndim == 2 else 3, *first.shape[:2])
        return build(list(range(len(paths))), [],
                     reader=FileReader(paths, "L" if shape[0] == 1 else "RGB", cfg.image_size, shape))
    # the decoded size, at most (colour): from data.image_size or the first image's size
    if cfg.image_size is not None:
        h = w = cfg.image_size
    else:
        try:
            h, w = decode_file(paths[0]).shape[:2]
        except Exception:  # noqa: BLE001  (reported by the full pass below)
            h = w = 0
    fits = len(paths) * (1 if mode == "L" else 3) * h * w <= limit_bytes(cfg)
    skipped: list[int] = []
    if not fits and not (mode is not None and cfg.image_size is not None):
        # headers only: the exact colour mode and size, and whether the set fits after all (grey)
        mode, size, skipped = _probe_all(cfg, root, paths)
        w, h = (cfg.image_size, cfg.image_size) if cfg.image_size is not None else size  # type: ignore[misc]
        fits = (len(paths) - len(skipped)) * (1 if mode == "L" else 3) * h * w <= limit_bytes(cfg)
    if fits:
        note(f"decoding {len(paths):,} images of {name} ...")
        x, skipped = _decode_all(cfg, root, paths, mode)
        gone = set(skipped)
        data = build([i for i in range(len(paths)) if i not in gone], skipped, x=x)
        if entry.save(data):
            note(f"decoded {len(data.y):,} images of {name}; cached in {entry.dir}, so later loads skip decoding")
        return data

    note(f"{name}: {len(paths):,} images of {w}x{h} exceed data.memory_limit_gb = {cfg.memory_limit_gb}; "
         "they stream from their files")
    gone = set(skipped)
    keep = [i for i in range(len(paths)) if i not in gone]
    shape = (1 if mode == "L" else 3, h, w)
    data = build(keep, skipped, reader=FileReader([paths[i] for i in keep], mode or "RGB", cfg.image_size, shape))
    entry.save(data)
    return data


def folder_root(cfg: DataConfig, what: str) -> Path:
    if cfg.download:
        raise UserError(f"data.download: {what} reads files already on disk and has nothing to download; "
                        "set data.download = false")
    if cfg.root is None:
        raise UserError(f"data.root: {what} needs data.root, the folder of images ({LAYOUTS})")
    root = Path(cfg.root).expanduser()
    try:
        root.stat()
    except FileNotFoundError:
        raise UserError(f"data.root: folder not found: {root}") from None
    except OSError as e:  # e.g. a parent folder that may not be entered
        raise os_error(root, e, "folder") from None
    if not root.is_dir():
        hint = " (a .npz file is read with data.dataset = 'npz')" if root.suffix == ".npz" else ""
        raise UserError(f"data.root: {root} is a file; {what} needs a folder{hint}")
    return root.resolve()


@register_dataset("imagefolder", "any folder of images: ROOT/<class>/<img>, ROOT/{train,test}/<class>/<img>, "
                  "or ROOT/[split/]<group>/<class>/<img> (groups); every PIL format; sizes as found "
                  "(or data.image_size)")
def load_imagefolder(cfg: DataConfig, decode: bool = True) -> ImageData:
    root = folder_root(cfg, "imagefolder")
    scan = scan_folder(root)
    return images_from_files(cfg, root, scan.paths, scan.labels, scan.is_test, scan.class_names, scan.groups,
                             name=f"imagefolder:{root.name}", decode=decode)
