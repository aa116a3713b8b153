"""Decoded datasets cached on disk, so a dataset's files are decoded once, not once per study.

An entry is two files in the cache directory (``data.cache_dir``, else ``$TRANSFERSCOPE_CACHE``,
else ``~/.cache/transferscope``), named ``<dataset>-<key>``:

- ``.safetensors``: the uint8 images ``x`` (N, C, H, W), labels ``y`` and, where the dataset has
  an official test split, ``is_test``; absent for datasets that stream from their files;
- ``.json``: class names, groups, flip, skipped files, image shape and count (so a set that streams
  need not probe its files again), and the data's fingerprint (so a cache hit does not hash the
  images again). Written last: it marks a complete entry.

The key is a hash of what determines the decoded images: the dataset name, the absolute root,
``data.image_size``, ``data.skip_corrupt`` and every source file's relative path, size and
modification time. Changing, adding or removing a file gives a new key (the old entry is simply
no longer used; deleting the cache directory is always safe). Making a file readable changes
neither its size nor its modification time, so the loader that skipped unreadable files checks
them again on a hit (see :mod:`transferscope.data.imagefolder`). Writes go to a temporary file that
``os.replace`` renames, so a crash or a parallel study never leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from transferscope.atomic import atomic_write
from transferscope.config import DataConfig
from transferscope.data.registry import ImageData

#: bump when the decoded pixels of an unchanged file would differ (e.g. a new resize method) or
#: an entry's contents change (2: the data's fingerprint in the .json)
FORMAT = 2


def cache_dir(cfg: DataConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    env = os.environ.get("TRANSFERSCOPE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "transferscope"


def cache_key(cfg: DataConfig, root: Path, files: list[tuple[str, int, int]], **extra: Any) -> str:
    h = hashlib.sha256()
    head = {"format": FORMAT, "dataset": cfg.dataset, "root": str(Path(root).resolve()),
            "image_size": cfg.image_size, "skip_corrupt": cfg.skip_corrupt, **extra}
    h.update(json.dumps(head, sort_keys=True).encode())
    for rel, size, mtime in files:
        h.update(f"\n{rel}\t{size}\t{mtime}".encode())
    return h.hexdigest()[:24]


def note(message: str) -> None:
    """The one line a loader prints (to stderr) when it decodes files and fills the cache."""
    print(f"transferscope: {message}", file=sys.stderr, flush=True)


class CacheEntry:
    """One cached dataset: ``load`` returns None on a miss (or an unreadable entry)."""

    def __init__(self, cfg: DataConfig, key: str):
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", cfg.dataset)
        self.dir = cache_dir(cfg)
        self.json = self.dir / f"{safe}-{key}.json"
        self.tensors = self.dir / f"{safe}-{key}.safetensors"

    def meta(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.json.read_text())
        except (OSError, ValueError):
            return None

    @staticmethod
    def nbytes(meta: dict[str, Any]) -> int:
        """The decoded size of a cached set in bytes."""
        c, h, w = meta["shape"]
        return meta["images"] * c * h * w

    def load(self) -> ImageData | None:
        """The cached in-memory dataset, or None (a miss, or an entry for a streamed set)."""
        meta = self.meta()
        if meta is None or meta.get("stream"):
            return None
        from safetensors.torch import load_file

        try:
            t = load_file(self.tensors)
        except Exception:  # noqa: BLE001  (a damaged entry is rebuilt)
            return None
        return ImageData(x=t["x"], y=t["y"], is_test=t.get("is_test"), class_names=tuple(meta["class_names"]),
                         groups=meta["groups"], name=meta["name"], flip_ok=meta["flip_ok"],
                         skipped=tuple(meta["skipped"]), fingerprint=meta.get("fingerprint", ""))

    def save(self, data: ImageData, **meta: Any) -> bool:
        """Store an in-memory dataset, or (``data.reader`` set) the metadata ``meta`` of a streamed one.
        Whether the entry was written: a cache that cannot be written is reported and otherwise ignored."""
        from safetensors.torch import save_file

        record = {"format": FORMAT, "name": data.name, "class_names": list(data.class_names), "groups": data.groups,
                  "flip_ok": data.flip_ok, "skipped": list(data.skipped), "stream": data.x is None,
                  "shape": list(data.image_shape), "images": len(data.y), "fingerprint": data.fingerprint,
                  **meta}
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            if data.x is not None:
                tensors = {"x": data.x.contiguous(), "y": data.y.contiguous()}
                if data.is_test is not None:
                    tensors["is_test"] = data.is_test.contiguous()
                atomic_write(self.tensors, lambda p: save_file(tensors, str(p)))
            atomic_write(self.json, lambda p: p.write_text(json.dumps(record)))
        except OSError as e:
            note(f"cannot write the dataset cache in {self.dir} ({e}); continuing without it "
                 "(set data.cache_dir or TRANSFERSCOPE_CACHE to a writable folder)")
            return False
        return True

