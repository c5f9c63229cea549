"""Data specs, splits, transforms, loaders and their errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from compressor.data import (
    DataBundle,
    ShardSampler,
    load_data,
    make_loader,
    stratified_split,
    subset,
)
from compressor.errors import DataError


def _labels(ds: torch.utils.data.Dataset) -> list[int]:  # type: ignore[type-arg]
    return [int(ds[i][1]) for i in range(len(ds))]  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ mnist5k
@pytest.fixture(scope="module")
def mnist() -> DataBundle:
    return load_data("mnist5k")


def test_mnist5k_splits(mnist: DataBundle) -> None:
    assert (len(mnist.train), len(mnist.val), len(mnist.test)) == (4000, 500, 500)
    assert len(mnist.train_eval) == 4000
    assert mnist.num_classes == 10 and mnist.input_shape == (1, 28, 28)
    assert np.bincount(_labels(mnist.test)).tolist() == [50] * 10  # stratified
    # no image is in two splits: compare raw pixels
    rows = {
        split: {bytes(img.numpy()) for img in getattr(mnist, split).images}
        for split in ("train", "val", "test")
    }
    assert (
        not rows["train"] & rows["val"]
        and not rows["train"] & rows["test"]
        and not rows["val"] & rows["test"]
    )


def test_mnist5k_is_deterministic_and_normalised(mnist: DataBundle) -> None:
    again = load_data("mnist5k")
    assert torch.equal(again.test.images, mnist.test.images)  # type: ignore[attr-defined]
    assert torch.equal(again.val.labels, mnist.val.labels)  # type: ignore[attr-defined]
    x = torch.stack([mnist.test[i][0] for i in range(200)])
    assert x.shape == (200, 1, 28, 28)
    assert abs(float(x.mean())) < 0.15 and 0.8 < float(x.std()) < 1.2
    assert mnist.meta() == {"dataset": "mnist5k", "input_shape": [1, 28, 28], "num_classes": 10,
                            "mean": [0.1307], "std": [0.3081]}  # fmt: skip


def test_augmentation_only_on_train(mnist: DataBundle) -> None:
    torch.manual_seed(0)
    a = [mnist.train[i][0] for i in range(8)]
    b = [mnist.train[i][0] for i in range(8)]
    assert any(not torch.equal(x, y) for x, y in zip(a, b, strict=True))  # random crops differ
    for split in (mnist.train_eval, mnist.val, mnist.test):
        assert torch.equal(split[3][0], split[3][0])
    assert torch.equal(mnist.train_eval.images, mnist.train.images)  # type: ignore[attr-defined]


def test_meta_sets_shape_channels_and_checks_classes() -> None:
    d = load_data("mnist5k", meta={"input_shape": [3, 32, 32], "num_classes": 10})
    assert d.input_shape == (3, 32, 32) and d.test[0][0].shape == (3, 32, 32) and len(d.mean) == 3
    d2 = load_data("mnist5k", meta={"input_shape": [1, 28, 28], "mean": [0.5], "std": [0.5]})
    assert d2.mean == (0.5,)
    with pytest.raises(DataError, match="100"):
        load_data("mnist5k", meta={"num_classes": 100})
    with pytest.raises(DataError, match="mean"):
        load_data("mnist5k", meta={"input_shape": [3, 28, 28], "mean": [0.1], "std": [0.3]})


@pytest.mark.parametrize("spec", ["", "mnist", "cifar10", "imagenet:/x", "mnist5k:extra"])
def test_bad_specs(spec: str) -> None:
    with pytest.raises(DataError, match="mnist5k|DIR"):
        load_data(spec)


# ---------------------------------------------------------------------------------------- cifar10
def _fake_cifar(root: Path, per_batch: int = 20, test: int = 20, corrupt: str | None = None) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", test)]:
        d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": [i % 10 for i in range(n)],
             b"batch_label": name.encode()}  # fmt: skip
        with open(root / name, "wb") as f:
            pickle.dump(d, f, protocol=2)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    if corrupt:
        (root / corrupt).write_bytes(b"not a pickle")
    return root


def test_cifar10_layout(tmp_path: Path) -> None:
    root = _fake_cifar(tmp_path / "cifar-10-batches-py")
    d = load_data(f"cifar10:{tmp_path}")  # the parent folder works too
    assert (len(d.train) + len(d.val), len(d.test)) == (100, 20)
    assert len(d.val) == 10 and d.classes[3] == "c3"
    assert d.input_shape == (3, 32, 32) and d.test[0][0].shape == (3, 32, 32)
    assert sorted(_labels(d.val)) == list(range(10))  # one per class, carved from train
    assert load_data(f"cifar10:{root}", meta={"input_shape": [1, 16, 16]}).train[0][0].shape == (1, 16, 16)


def test_cifar10_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_data(f"cifar10:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="data_batch_1"):
        load_data(f"cifar10:{tmp_path / 'empty'}")
    bad = _fake_cifar(tmp_path / "bad", corrupt="data_batch_3")
    with pytest.raises(DataError, match="data_batch_3"):
        load_data(f"cifar10:{bad}")


def test_cifar10_pickle_cannot_run_code(tmp_path: Path) -> None:
    root = _fake_cifar(tmp_path / "evil")

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("owned",))

    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": [0]}, f)
    with pytest.raises(DataError, match="refusing"):
        load_data(f"cifar10:{root}")


# ------------------------------------------------------------------------------------ imagefolder
def _fake_folder(root: Path, classes: int = 3, per_class: int = 6, size: int = 12) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 2)):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_imagefolder(tmp_path: Path) -> None:
    root = _fake_folder(tmp_path / "imgs")
    d = load_data(f"imagefolder:{root}")
    assert d.num_classes == 3 and d.classes == ["class0", "class1", "class2"]
    assert d.input_shape == (3, 12, 12)  # the images' own size
    assert len(d.test) == 6 and len(d.train) + len(d.val) == 18 and len(d.val) == 3
    x, y = next(iter(make_loader(d.train, 4, shuffle=True)))
    assert x.shape == (4, 3, 12, 12) and y.dtype == torch.long
    g = load_data(f"imagefolder:{root}", meta={"input_shape": [1, 8, 8], "num_classes": 3})
    assert g.test[0][0].shape == (1, 8, 8)


def test_imagefolder_errors(tmp_path: Path) -> None:
    root = _fake_folder(tmp_path / "imgs")
    with pytest.raises(DataError, match="classes but the model predicts 10"):
        load_data(f"imagefolder:{root}", meta={"num_classes": 10})
    (root / "val" / "class2" / "0.png").write_bytes(b"garbage")
    d = load_data(f"imagefolder:{root}")
    with pytest.raises(DataError, match="0.png"):
        [d.test[i] for i in range(len(d.test))]  # type: ignore[arg-type]
    with pytest.raises(DataError, match="train"):
        load_data(f"imagefolder:{tmp_path / 'missing'}")
    (tmp_path / "e" / "train").mkdir(parents=True)
    (tmp_path / "e" / "val").mkdir()
    with pytest.raises(DataError):
        load_data(f"imagefolder:{tmp_path / 'e'}")


# ---------------------------------------------------------------------------------------- helpers
def test_stratified_split_no_overlap() -> None:
    labels = np.repeat(np.arange(5), 20)
    a, b, c = stratified_split(labels, (12, 4, 0), seed=3)
    assert (len(a), len(b), len(c)) == (60, 20, 20)
    assert not set(a) & set(b) and not set(a) & set(c) and not set(b) & set(c)
    a2, _, _ = stratified_split(labels, (12, 4, 0), seed=3)
    assert np.array_equal(a, a2)


def test_loader_and_subset(tiny_data: DataBundle) -> None:
    loader = make_loader(tiny_data.train, 32, shuffle=True, seed=1)
    first = [y.tolist() for _, y in loader]
    again = [y.tolist() for _, y in make_loader(tiny_data.train, 32, shuffle=True, seed=1)]
    assert first == again and sum(map(len, first)) == len(tiny_data.train)
    assert len(make_loader(tiny_data.train, 32, drop_last=True)) == len(tiny_data.train) // 32
    s = subset(tiny_data.train, 10, seed=2)
    assert len(s) == 10 and _labels(s) == _labels(subset(tiny_data.train, 10, seed=2))
    assert subset(tiny_data.val, 10_000) is tiny_data.val
    with pytest.raises(DataError):
        make_loader(subset(tiny_data.val, 1), 0)


def test_shard_sampler_partitions() -> None:
    shards = [list(ShardSampler(11, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))
    assert [len(ShardSampler(11, r, 3)) for r in range(3)] == [4, 4, 3]
