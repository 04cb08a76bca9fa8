"""The Python entry points: any tensor, array or torch Dataset trains; a model samples in
memory exactly as the command line does; FID of known Gaussians; "memory" data is never
silently replaced."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ddkit
from ddkit.data import DataConfig, DataError, load_dataset
from ddkit.training.trainer import Trainer

CONFIG = {
    "model": {"preset": "mlp-2d", "hidden": 16, "depth": 1, "time_dim": 8},
    "diffusion": {"T": 25},
    "optim": {"warmup_steps": 0},
    "train": {"max_steps": 2, "batch_size": 8, "sample_every": 0, "progress": False},
}


class Pairs(torch.utils.data.Dataset):
    """A map-style torch Dataset of (x, label) pairs."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_as_dataset_takes_tensors_arrays_and_torch_datasets():
    x = torch.rand(10, 2) * 2 - 1
    for data in (x, x.numpy(), Pairs(x, torch.arange(10) % 3)):
        ds = ddkit.as_dataset(data)
        assert ds.shape == (2,) and len(ds) == 10 and not ds.quantized
        assert torch.equal(ds.get_batch(torch.arange(10)), x)
    assert torch.equal(
        ddkit.as_dataset(Pairs(x, torch.arange(10) % 3)).labels, torch.arange(10) % 3
    )
    images = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    ds = ddkit.as_dataset(images)
    assert ds.quantized and torch.equal(ds.get_batch(torch.arange(4)), images.float() / 127.5 - 1)
    with pytest.raises(DataError, match=r"\[-1, 1\]"):
        ddkit.as_dataset(x * 3)
    with pytest.raises(DataError, match="uint8 images or floats"):
        ddkit.as_dataset(torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(DataError, match="not a tensor, an array or a torch Dataset"):
        ddkit.as_dataset({"x": 1})


def test_train_sample_load_and_resume_from_python(tmp_path):
    x = torch.rand(64, 2) * 2 - 1
    trained = ddkit.train(CONFIG, dataset=x, out_dir=tmp_path / "run", log=lambda s: None)
    assert trained.config.data.name == "memory" and trained.step == 2
    a = trained.sample(5, steps=3, seed=1)
    b = ddkit.load(tmp_path / "run").sample(5, steps=3, seed=1)
    assert a.shape == (5, 2) and torch.equal(a, b)
    with pytest.raises(DataError, match="pass it again"):  # nothing silently stands in
        load_dataset(DataConfig("memory"))
    resumed = Trainer.from_checkpoint(
        tmp_path / "run", train_overrides={"max_steps": 3}, dataset=x, log=lambda s: None
    )
    resumed.fit()
    assert resumed.step == 3


def test_fid_of_two_gaussian_samples_is_their_frechet_distance():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 2, generator=g, dtype=torch.float64)
    b = torch.randn(20000, 2, generator=g, dtype=torch.float64) * 2 + torch.tensor([3.0, 0.0])
    # closed form for N(0, I) and N(m, 4 I): |m|^2 + tr(I + 4I - 2 (4 I)^(1/2)) = 9 + 2
    got = ddkit.fid(a, b, features=lambda v: v)
    assert abs(got - 11.0) < 0.3
    with pytest.raises(ValueError, match="exactly one"):
        ddkit.fid(a, b)
    with pytest.raises(ValueError, match="differ in shape"):
        ddkit.fid(a, np.zeros((5, 3)), features=lambda v: v)


def test_as_dataset_takes_a_tensordataset_and_refuses_bad_labels_and_nan():
    x = torch.rand(6, 2) * 2 - 1
    ds = ddkit.as_dataset(torch.utils.data.TensorDataset(x))  # items are 1-tuples
    assert torch.equal(ds.get_batch(torch.arange(6)), x) and ds.labels is None
    labelled = ddkit.as_dataset(torch.utils.data.TensorDataset(x, torch.arange(6)))
    assert torch.equal(labelled.labels, torch.arange(6))
    with pytest.raises(DataError, match="one integer class index"):
        ddkit.as_dataset(Pairs(x, ["a"] * 6))
    with pytest.raises(DataError, match="NaN"):
        ddkit.as_dataset(torch.full((3, 2), float("nan")))
    with pytest.raises(DataError, match=r"look like \[N, H, W, C\]"):
        ddkit.as_dataset(torch.zeros(2, 28, 28, 1, dtype=torch.uint8))


def test_train_from_a_toml_file_with_a_dataset_records_memory_data(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text(
        '[model]\npreset = "mlp-2d"\nhidden = 16\ndepth = 1\ntime_dim = 8\n'
        '[data]\nname = "folder"\npath = "/nowhere"\nimage_size = 28\n'
        "[diffusion]\nT = 25\n[optim]\nwarmup_steps = 0\n"
        "[train]\nmax_steps = 1\nbatch_size = 8\nsample_every = 0\nprogress = false\n"
    )
    x = torch.rand(16, 2) * 2 - 1
    trained = ddkit.train(toml, dataset=x, out_dir=tmp_path / "r", log=lambda s: None)
    assert trained.config.data.name == "memory" and trained.config.data.image_size is None


class Counted(torch.utils.data.Dataset):
    """A torch Dataset of ``n`` items that counts the items read."""

    def __init__(self, n, shape=(1, 4, 4), odd=None):
        self.n, self.shape, self.odd, self.reads = n, shape, odd, 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.reads += 1
        shape = (1, 5, 5) if i == self.odd else self.shape
        return torch.full(shape, i % 256, dtype=torch.uint8), i % 3


def test_a_torch_dataset_too_big_for_memory_is_refused_after_one_item(monkeypatch):
    """The estimate (items x the first item's bytes) is checked before the rest is read."""
    from ddkit import resources

    data = Counted(1000)
    monkeypatch.setattr(resources, "available_memory", lambda device="cpu": (10_000, "test"))
    words = r"1000 items of \[1, 4, 4\], torch.uint8\) needs about 15.6 KiB.*Subset"
    with pytest.raises(ValueError, match=words):
        ddkit.as_dataset(data)
    assert data.reads == 1


def test_reading_a_torch_dataset_shows_progress_and_names_a_misshapen_item(monkeypatch):
    import io

    from ddkit.data import memory

    stream = io.StringIO()

    class Shown(memory.Progress):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "stream": stream, "delay": 0.0})

    monkeypatch.setattr(memory, "Progress", Shown)
    ds = ddkit.as_dataset(Counted(10))
    assert torch.equal(ds.labels, torch.arange(10) % 3) and ds.quantized
    assert torch.equal(ds.get_batch(torch.tensor([7]))[0, 0, 0, 0], torch.tensor(7 / 127.5 - 1))
    assert "reading the torch Dataset: 10/10 items (100%)" in stream.getvalue()
    with pytest.raises(DataError, match=r"item 4 is torch.uint8 \[1, 5, 5\] but item 0"):
        ddkit.as_dataset(Counted(10, odd=4))


def test_an_npy_file_larger_than_memory_is_refused_before_it_is_read(tmp_path, monkeypatch):
    from ddkit import resources
    from ddkit.data import read_array_file

    np.save(tmp_path / "x.npy", np.zeros((100, 1, 8, 8), dtype=np.uint8))
    monkeypatch.setattr(resources, "available_memory", lambda device="cpu": (1000, "test"))
    with pytest.raises(ValueError, match=r"uint8 \[100, 1, 8, 8\]\) needs about 6.2 KiB"):
        read_array_file(tmp_path / "x.npy")
    monkeypatch.undo()
    assert len(read_array_file(tmp_path / "x.npy")) == 100
