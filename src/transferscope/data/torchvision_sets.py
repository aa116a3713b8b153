"""The standard image sets in torchvision's file layouts, train and test combined into one set.

``data.root`` is the folder torchvision would be given (default: ``<cache dir>/datasets``);
``data.download = true`` fetches missing files with torchvision's own download (ImageNet has none:
its files must be placed by hand). The files are read directly (pickles, IDX, .mat), which is
faster than torchvision's per-image datasets, and the result is cached like any decoded set.

Horizontal flips (``flip_ok``): allowed for CIFAR-10/100, ImageNet and Fashion-MNIST (a mirrored
cat, truck, sandal or shirt is still one: no class is defined by its handedness); not for MNIST
and SVHN, whose classes are digits (a mirrored 2, 3, 7 is not a digit).
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from transferscope.config import DataConfig
from transferscope.data.cache import CacheEntry, cache_dir, cache_key, note
from transferscope.data.files import check_folder, file_stats, os_error
from transferscope.data.imagefolder import images_from_files
from transferscope.data.images import from_arrays, limit_bytes
from transferscope.data.registry import ImageData, register_dataset
from transferscope.errors import UserError

#: where the Debian package dataset-fashion-mnist puts the original IDX files
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def _root(cfg: DataConfig) -> Path:
    return (Path(cfg.root).expanduser() if cfg.root else cache_dir(cfg) / "datasets").resolve()


def _download(cfg: DataConfig, root: Path, fetch: Callable[[], object], manual: str) -> None:
    """torchvision's real download into ``root``, its failures as one clear error."""
    note(f"downloading {cfg.dataset} into {root} (data.download = true)")
    try:
        root.mkdir(parents=True, exist_ok=True)
        fetch()
    except Exception as e:  # noqa: BLE001  (network, disk, checksum: all end the same way for the user)
        reason = " ".join(str(e).split())  # torchvision's messages span lines
        raise UserError(f"data.download: downloading {cfg.dataset} into {root} failed ({type(e).__name__}: {reason}); "
                        f"check the internet connection, or {manual}") from None


def _missing(cfg: DataConfig, folder: Path, files: list[str], manual: str) -> UserError:
    return UserError(f"data.root: {cfg.dataset} files not found in {folder} (missing: {', '.join(files[:4])}"
                     f"{', ...' if len(files) > 4 else ''}); set data.download = true to fetch them with "
                     f"torchvision, or {manual}")


def _cached(cfg: DataConfig, root: Path, files: list[Path], build: Callable[[], ImageData]) -> ImageData:
    """``build()`` once per set of source files and data.image_size; later loads read the cache."""
    entry = CacheEntry(cfg, cache_key(cfg, root, file_stats(root, files)))
    meta = entry.meta()
    data = entry.load() if meta is not None and entry.nbytes(meta) <= limit_bytes(cfg) else None
    if data is None:
        note(f"reading {cfg.dataset} from {root} ...")
        data = build()
        if data.x is not None and entry.save(data):
            note(f"read {len(data.y):,} images of {cfg.dataset}; cached in {entry.dir}, so later loads skip reading")
    return data


def _combined(cfg: DataConfig, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
              class_names: tuple[str, ...], *, flip_ok: bool, groups: dict[str, str] | None = None) -> ImageData:
    """Train and test arrays (N, C, H, W) uint8 as one set, the test images marked."""
    x = torch.from_numpy(np.ascontiguousarray(np.concatenate([train[0], test[0]])))
    y = torch.from_numpy(np.concatenate([train[1], test[1]]).astype(np.int64))
    is_test = torch.cat([torch.zeros(len(train[1]), dtype=torch.bool), torch.ones(len(test[1]), dtype=torch.bool)])
    return from_arrays(cfg, x, y, class_names, name=cfg.dataset, groups=groups, flip_ok=flip_ok, is_test=is_test)


# ------------------------------------------------------------------------------------ CIFAR


#: what a CIFAR batch file may ask the unpickler for: numpy's array reconstruction, and the
#: string-to-bytes conversion Python 3 writes for bytes in protocol 2 (dicts, lists, strings, bytes
#: and numbers need no lookup). Anything else (a function to call, a class to build) is not data,
#: and is refused before it runs.
CIFAR_PICKLE_GLOBALS = frozenset({
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"), ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
})


class RefusedPickle(pickle.UnpicklingError):
    """A pickle that asks for something a dataset file never holds."""


class _DataUnpickler(pickle.Unpickler):
    """pickle's reader restricted to :data:`CIFAR_PICKLE_GLOBALS`: a file is parsed, never executed."""

    def find_class(self, module: str, name: str):
        # numpy 1 wrote numpy.core.*, numpy 2 numpy._core.* (the real CIFAR files: numpy.core.multiarray)
        current = "numpy._core" + module[len("numpy.core"):] if module.startswith("numpy.core") else module
        if (current, name) not in CIFAR_PICKLE_GLOBALS:
            raise RefusedPickle(f"{module}.{name}")
        return super().find_class(current, name)


def _unpickle(path: Path) -> dict:
    """A CIFAR batch file (a pickled dict of arrays, lists and strings), read by a restricted
    unpickler: a file that asks for any other type (a tampered download that would run code) is
    refused with one line, and nothing in it runs."""
    try:
        with open(path, "rb") as f:
            return _DataUnpickler(f, encoding="latin1").load()
    except OSError as e:
        raise os_error(path, e) from None
    except RefusedPickle as e:
        raise UserError(f"data.root: {path} is not a plain CIFAR batch file: it asks to load {e}, which a dataset "
                        "file never needs (only dicts, lists, strings, bytes, numbers and numpy arrays are read); "
                        "refused without running it. Delete it and fetch the dataset again from its source") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError) as e:
        raise UserError(f"data.root: cannot read {path} ({type(e).__name__}: {e}); the file is damaged: "
                        "delete it and fetch it again (data.download = true)") from None


def _fetch_archive(dataset) -> Callable[[str], object]:
    """Download and extract ``dataset``'s archive (a torchvision CIFAR class: its ``url``, ``filename``
    and ``tgz_md5``), the checksum verified, without constructing the dataset: torchvision's own
    reader unpickles the batch files unrestricted; ours (:func:`_unpickle`) reads them after."""
    from torchvision.datasets.utils import download_and_extract_archive

    return lambda root: download_and_extract_archive(dataset.url, root, filename=dataset.filename,
                                                     md5=dataset.tgz_md5)


def _cifar(cfg: DataConfig, folder_name: str, train_files: list[str], test_file: str, meta_file: str,
           url: str, fetch: Callable[[str], object]) -> tuple[Path, list[Path]]:
    root = _root(cfg)
    folder = root / folder_name
    names = [*train_files, test_file, meta_file]
    manual = f"download {url} and extract it into {root}"
    check_folder(root)
    check_folder(folder)
    if any(not (folder / n).is_file() for n in names):
        if not cfg.download:
            raise _missing(cfg, folder, [n for n in names if not (folder / n).is_file()], manual)
        _download(cfg, root, lambda: fetch(str(root)), manual)
    return root, [folder / n for n in names]


def _cifar_arrays(batches: list[dict], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32)
    y = np.concatenate([np.asarray(b[label_key]) for b in batches])
    return x, y


@register_dataset("cifar10", "CIFAR-10 (torchvision files, data.download): 10 classes, 60,000 32x32 RGB images "
                  "(50,000 train / 10,000 test)")
def load_cifar10(cfg: DataConfig) -> ImageData:
    from torchvision.datasets import CIFAR10

    train = [f"data_batch_{i}" for i in range(1, 6)]
    root, files = _cifar(cfg, "cifar-10-batches-py", train, "test_batch", "batches.meta",
                         "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                         _fetch_archive(CIFAR10))

    def build() -> ImageData:
        meta = _unpickle(files[-1])
        return _combined(cfg, _cifar_arrays([_unpickle(f) for f in files[:5]], "labels"),
                         _cifar_arrays([_unpickle(files[5])], "labels"), tuple(meta["label_names"]), flip_ok=True)

    return _cached(cfg, root, files, build)


@register_dataset("cifar100", "CIFAR-100 (torchvision files, data.download): 100 classes in 20 superclasses "
                  "(the groups), 60,000 32x32 RGB images (50,000 train / 10,000 test)")
def load_cifar100(cfg: DataConfig) -> ImageData:
    from torchvision.datasets import CIFAR100

    root, files = _cifar(cfg, "cifar-100-python", ["train"], "test", "meta",
                         "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                         _fetch_archive(CIFAR100))

    def build() -> ImageData:
        train, test, meta = (_unpickle(f) for f in files)
        fine, coarse = tuple(meta["fine_label_names"]), tuple(meta["coarse_label_names"])
        both = [train, test]
        pairs = {(f, c) for b in both for f, c in zip(b["fine_labels"], b["coarse_labels"])}
        groups = {fine[f]: coarse[c] for f, c in sorted(pairs)}
        return _combined(cfg, _cifar_arrays([train], "fine_labels"), _cifar_arrays([test], "fine_labels"), fine,
                         flip_ok=True, groups=groups)

    return _cached(cfg, root, files, build)


# ------------------------------------------------------------------------------------ MNIST, Fashion-MNIST

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format: big-endian header, uint8 data), plain or gzip-compressed."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except PermissionError as e:
        raise os_error(path, e) from None
    except (OSError, EOFError) as e:
        raise UserError(f"data.root: cannot read {path} ({e}); the file is damaged, fetch it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"data.root: {path} is not a uint8 IDX file (the MNIST format)")
    nd = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(nd))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * nd)
    if data.size != int(np.prod(dims)):
        raise UserError(f"data.root: {path} is truncated ({data.size} of {int(np.prod(dims))} values)")
    return data.reshape(dims)


def _find_idx(folders: list[Path]) -> list[Path] | None:
    """The four IDX files (plain or .gz) in the first folder that has all of them."""
    for folder in folders:
        found = []
        for name in IDX_FILES:
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    found.append(candidate)
                    break
        if len(found) == len(IDX_FILES):
            return found
    return None


def _mnist_like(cfg: DataConfig, root: Path, subfolder: str, fetch: Callable[[str], object], url: str,
                class_names: tuple[str, ...], flip_ok: bool) -> ImageData:
    folders = [root / subfolder / "raw", root]
    for folder in (root, root / subfolder, *folders):
        check_folder(folder)
    files = _find_idx(folders)
    manual = f"put the four IDX files ({', '.join(IDX_FILES)}, .gz or not) from {url} into {root}"
    if files is None:
        if not cfg.download:
            raise _missing(cfg, folders[0], [f"{n}[.gz]" for n in IDX_FILES], manual)
        _download(cfg, root, lambda: fetch(str(root)), manual)
        files = _find_idx(folders)
        if files is None:
            raise _missing(cfg, folders[0], list(IDX_FILES), manual)

    def build() -> ImageData:
        xtr, ytr, xte, yte = (read_idx(f) for f in files)
        return _combined(cfg, (xtr[:, None], ytr), (xte[:, None], yte), class_names, flip_ok=flip_ok)

    return _cached(cfg, root, files, build)


@register_dataset("mnist", "MNIST handwritten digits (torchvision files, data.download): 10 classes, "
                  "70,000 28x28 grey images (60,000 train / 10,000 test)")
def load_mnist(cfg: DataConfig) -> ImageData:
    from torchvision.datasets import MNIST

    return _mnist_like(cfg, _root(cfg), "MNIST", lambda r: MNIST(r, train=True, download=True),
                       "https://ossci-datasets.s3.amazonaws.com/mnist/", tuple(str(i) for i in range(10)), flip_ok=False)


@register_dataset("fashion-mnist", "Fashion-MNIST (torchvision files, data.download; default root: Debian package "
                  "dataset-fashion-mnist): 10 classes, 70,000 28x28 grey images (60,000 train / 10,000 test)")
def load_fashion_mnist(cfg: DataConfig) -> ImageData:
    from torchvision.datasets import FashionMNIST

    root = _root(cfg)
    if cfg.root is None and _find_idx([DEBIAN_FASHION_MNIST]) is not None:
        root = DEBIAN_FASHION_MNIST
    return _mnist_like(cfg, root, "FashionMNIST", lambda r: FashionMNIST(r, train=True, download=True),
                       "https://github.com/zalandoresearch/fashion-mnist (or apt-get install dataset-fashion-mnist)",
                       FASHION_CLASSES, flip_ok=True)


# ------------------------------------------------------------------------------------ SVHN


@register_dataset("svhn", "SVHN house-number digits (torchvision files, data.download): 10 classes, 99,289 32x32 "
                  "RGB images (73,257 train / 26,032 test; 'extra' unused)")
def load_svhn(cfg: DataConfig) -> ImageData:
    from scipy.io import loadmat
    from torchvision.datasets import SVHN

    root = _root(cfg)
    names = ["train_32x32.mat", "test_32x32.mat"]
    manual = f"download {', '.join(names)} from http://ufldl.stanford.edu/housenumbers/ into {root}"
    check_folder(root)
    if any(not (root / n).is_file() for n in names):
        if not cfg.download:
            raise _missing(cfg, root, [n for n in names if not (root / n).is_file()], manual)
        _download(cfg, root, lambda: [SVHN(str(root), split=s, download=True) for s in ("train", "test")], manual)
    files = [root / n for n in names]

    def part(path: Path) -> tuple[np.ndarray, np.ndarray]:
        try:
            mat = loadmat(path)
        except PermissionError as e:
            raise os_error(path, e) from None
        except Exception as e:  # noqa: BLE001
            raise UserError(f"data.root: cannot read {path} ({e}); the file is damaged, fetch it again") from None
        y = mat["y"].reshape(-1).astype(np.int64)
        y[y == 10] = 0  # SVHN labels the digit 0 as 10
        return np.transpose(mat["X"], (3, 2, 0, 1)), y  # (H, W, C, N) -> (N, C, H, W)

    return _cached(cfg, root, files, lambda: _combined(cfg, part(files[0]), part(files[1]),
                                                       tuple(str(i) for i in range(10)), flip_ok=False))


# ------------------------------------------------------------------------------------ ImageNet

IMAGENET_MANUAL = ("download ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and ILSVRC2012_devkit_t12.tar.gz "
                   "from https://image-net.org/download-images (free registration) into {root}; torchvision "
                   "unpacks them there on first use (train/ and val/ with one folder per WordNet id, meta.bin)")


@register_dataset("imagenet", "ImageNet ILSVRC-2012 (torchvision layout, manual download): 1,000 classes named by "
                  "WordNet id (readable names: data.semantic.imagenet_names()), 1,281,167 train + 50,000 val "
                  "images of varying size (set data.image_size); streamed unless they fit memory")
def load_imagenet(cfg: DataConfig, decode: bool = True) -> ImageData:
    from torchvision.datasets import ImageNet


    root = _root(cfg)
    check_folder(root)
    manual = IMAGENET_MANUAL.format(root=root)
    if cfg.download:
        raise UserError(f"data.download: ImageNet cannot be downloaded automatically; {manual}")
    needs = {"ILSVRC2012_devkit_t12.tar.gz": ["meta.bin", "ILSVRC2012_devkit_t12.tar.gz"],
             "ILSVRC2012_img_train.tar": ["train", "ILSVRC2012_img_train.tar"],
             "ILSVRC2012_img_val.tar": ["val", "ILSVRC2012_img_val.tar"]}
    missing = [k for k, alts in needs.items() if not any((root / a).exists() for a in alts)]
    if missing:
        raise UserError(f"data.root: ImageNet files not found in {root} (missing: {', '.join(missing)}, or their "
                        f"unpacked forms meta.bin, train/, val/); {manual}")
    if cfg.image_size is None:
        raise UserError("data.image_size: ImageNet images differ in size; set data.image_size (e.g. 224, or 64 "
                        "for a quick study) to resize the shorter side and crop the centre square")
    try:
        parts = [ImageNet(str(root), split=s) for s in ("train", "val")]
    except PermissionError as e:
        raise os_error(e.filename or root, e, "file or folder") from None
    except (RuntimeError, OSError) as e:
        raise UserError(f"data.root: cannot read ImageNet in {root} ({e}); {manual}") from None
    wnids = tuple(parts[0].wnids)
    if tuple(parts[1].wnids) != wnids:
        raise UserError(f"data.root: ImageNet train/ and val/ in {root} have different classes")
    paths = [p for part in parts for p, _ in part.samples]
    labels = np.array([c for part in parts for _, c in part.samples], dtype=np.int64)
    is_test = np.concatenate([np.zeros(len(parts[0].samples), bool), np.ones(len(parts[1].samples), bool)])
    return images_from_files(cfg, root, paths, labels, is_test, wnids, {}, name="imagenet", mode="RGB", flip_ok=True,
                             decode=decode)
