"""Fuzzing the command line in-process: several hundred generated bad inputs -- every command x
each option x bad values, mutated TOML configs, hostile files and image folders.  For each: no
exception escapes ``ddkit.cli.main`` (argparse's SystemExit aside), exit status 2 (1 only for
the documented runtime failures), exactly one line on stderr with no traceback, and nothing
written to the working folder.  A case that would block (a FIFO opened for reading) fails after
``CASE_TIMEOUT`` seconds instead of hanging."""

from __future__ import annotations

import os
import signal
import socket
import struct
import zlib
from pathlib import Path

import pytest
import torch
from tiny_run import MLP_TOML

from ddkit.cli import main

CASE_TIMEOUT = 10  # seconds; every case takes well under one

IMG_TOML = """
[model]
arch = "unet"
image_size = 8
in_channels = 1
base_channels = 8
channel_mult = [1]
num_res_blocks = 1
attention_resolutions = []
dropout = 0.0
groups = 8
[data]
name = "folder"
path = "{folder}"
channels = 1
[diffusion]
T = 25
[optim]
warmup_steps = 0
[train]
max_steps = 1
batch_size = 4
sample_every = 0
progress = false
tensorboard = false
"""


def _png(width: int, height: int, payload: bytes | None = None) -> bytes:
    """A gray PNG of the given header size; ``payload`` None makes a valid image (zeros)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    if payload is None:
        payload = zlib.compress(b"".join(b"\0" + bytes(width) for _ in range(height)))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", payload) + chunk(b"IEND", b"")
    )


def _train(toml: str, out: Path) -> Path:
    from ddkit.config import load_config
    from ddkit.training.trainer import Trainer

    f = out.with_suffix(".toml")
    f.write_text(toml)
    trainer = Trainer(load_config([f], [f'train.out_dir="{out}"']), log=lambda *a: None)
    trainer.fit()
    return trainer.last_checkpoint


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> dict[str, str]:
    """Paths the cases name: tiny checkpoints, special files, hostile configs and folders."""
    root = tmp_path_factory.mktemp("fuzz-assets")
    a: dict[str, Path] = {}
    a["mlp_ckpt"] = _train(MLP_TOML, root / "mlp")
    a["mlp"] = root / "mlp"
    folder = root / "images"
    folder.mkdir()
    for i in range(6):
        (folder / f"{i}.png").write_bytes(_png(8, 8))
    a["folder"] = folder
    a["img_ckpt"] = _train(IMG_TOML.format(folder=folder), root / "img")
    a["img"] = root / "img"
    a["cfg"] = root / "mlp.toml"
    a["imgcfg"] = root / "img.toml"

    import torch

    from ddkit import checkpoint as ckpt

    tensors, meta = ckpt.load_checkpoint(a["mlp_ckpt"])
    meta.pop("path")
    for name, value in (("nan", float("nan")), ("huge", 1e30)):
        broken = {
            k: torch.full_like(v, value) if k.startswith(("model/", "ema/")) else v
            for k, v in tensors.items()
        }
        a[f"{name}_ckpt"] = root / f"{name}.safetensors"
        ckpt.save_checkpoint(a[f"{name}_ckpt"], broken, meta)

    a["dir"] = root / "empty-dir"
    a["dir"].mkdir()
    a["missing"] = root / "no-such-file"
    a["fifo"] = root / "fifo"
    os.mkfifo(a["fifo"])
    a["fifo_link"] = root / "fifo-link.toml"
    a["fifo_link"].symlink_to(a["fifo"])
    a["socket"] = root / "sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(a["socket"]))
    sock.close()
    a["dangling"] = root / "dangling"
    a["dangling"].symlink_to(root / "nowhere")
    a["file"] = root / "plain-file"
    a["file"].write_text("x")
    a["empty"] = root / "empty.toml"
    a["empty"].write_bytes(b"")
    a["nonutf8"] = root / "latin1.toml"
    a["nonutf8"].write_bytes(b'[model]\npreset = "caf\xe9"\n')
    a["garbage"] = root / "garbage.safetensors"
    a["garbage"].write_bytes(os.urandom(256))
    a["truncated_ckpt"] = root / "truncated.safetensors"
    a["truncated_ckpt"].write_bytes(Path(a["mlp_ckpt"]).read_bytes()[:300])
    a["big"] = root / "big.toml"
    a["big"].write_text(MLP_TOML + "#" + "x" * (2 << 20) + "\n")
    n = 100_000
    deep = {
        "deep_array": "[train]\nx = " + "[" * n + "]" * n + "\n",
        "deep_inline": "[train]\nx = " + "{a=" * n + "1" + "}" * n + "\n",
        "deep_dotted": "a" + ".a" * n + " = 1\n",
        "deep_header": "[a" + ".a" * n + "]\n",
        "deep_quoted": '"a"' + '."a"' * n + " = 1\n",
    }
    for name, text in deep.items():
        a[name] = root / f"{name}.toml"
        a[name].write_text(text)
    a["truncated_toml"] = root / "truncated.toml"
    a["truncated_toml"].write_text(MLP_TOML[: len(MLP_TOML) // 2] + "[tra")
    for name, kind in (("cuda", "cuda"), ("tpu", "tpu"), ("meta", "meta")):
        a[f"{name}_cfg"] = root / f"{name}.toml"
        a[f"{name}_cfg"].write_text(MLP_TOML.replace("[train]\n", f'[train]\ndevice = "{kind}"\n'))
    return {k: str(v) for k, v in a.items()}


class CaseTimeout(BaseException):
    """A case ran past ``CASE_TIMEOUT`` (a BaseException, so that no ``except OSError`` or
    ``except Exception`` in the code under test turns it into an ordinary error)."""


# ---- the cases --------------------------------------------------------------------------------
BAD_INT = ["0", "-1", "1.5", "nan", "inf", "", "abc", "1e3", "٣x", str(2**63), str(2**64), "-0x1"]
BAD_SEED = ["-1", str(2**63), str(2**64), "1.5", "nan", "", "x", "1e400", "-99999999999999999999"]
BAD_FLOAT = ["nan", "inf", "-inf", "-1", "", "abc", "1e400", "-1e-9", "NaN", "infinity"]
BAD_NAME = ["", "garbage", "ddím", "x" * 5000, "a\nb", "\udcff"]
BAD_DEVICE = ["cuda:99", "tpu", "meta", "garbage", "", "mps", "xla", "cpu:0", "CPU"]
BAD_DEVICE += [] if torch.cuda.is_available() else ["cuda", "cuda:0"]
BAD_OUT = ["{file}", "{file}/sub", "{fifo}", "{socket}", "/proc/ddkit-fuzz", "", "/dev/null/x"]
BAD_CKPT = ["{dir}", "{missing}", "{nonutf8}", "{empty}", "{garbage}", "{cfg}", "{socket}"]
BAD_CKPT += ["{truncated_ckpt}", "{dangling}", "/dev/null"]
# reading a FIFO as a checkpoint is refused by ddkit.checkpoint (not in this change's files)
CKPT_BLOCKS = ["{fifo}", "{fifo_link}"]
HUGE = "1000000000000"

# each base is valid as it stands: a case changes one thing
SAMPLE = ["sample", "{mlp}", "--steps", "3", "--num", "4", "--out", "o"]
EVAL_BPD = ["eval", "{mlp}", "--bpd", "--ode-steps", "5", "--bpd-num", "4", "--out", "o"]
EVAL_INV = ["eval", "{img}", "--inversion", "--inversion-steps", "5", "--split", "train"]
EVAL_INV += ["--out", "o"]
EVAL_FID = ["eval", "{img}", "--fid", "--steps", "3", "--num", "4", "--out", "o"]
EVAL_SWEEP = ["eval", "{img}", "--sweep", "--nfe", "5", "--num", "4", "--out", "o"]
EVAL_FOLDER = ["eval", "{img}", "--bpd", "--bpd-methods", "vlb", "--split", "train"]
EVAL_FOLDER += ["--out", "o"]

# hostile files added to the image checkpoint's data folder (``folder:<name>:<kind>``)
HOSTILE = {
    "fifo.png": "fifo",
    "fifo-link.png": "fifo-link",
    "socket.png": "socket",
    "zero.png": "dev-zero",
    "dangling.png": "dangling",
    "empty.png": "empty",
    "text.png": "text",
    "truncated.png": "truncated",
    "bomb.png": "bomb",
    "big.png": "bomb-warning",
    "wide.png": "other-size",
    "random.jpg": "random",
}


def _with(base: list[str], option: str, value: str) -> list[str]:
    """``base`` with ``option`` set to ``value`` (replacing it when present)."""
    argv = list(base)
    if option in argv:
        argv[argv.index(option) + 1] = value
        return argv
    return [*argv, option, value]


def _words(option: str, value: str = "") -> list[str]:
    """What the one line must mention (any of them) for a bad ``option``: its name (with '-' or
    '_'), or 'memory' for a huge value."""
    name = option.lstrip("-")
    words = [name, name.replace("-", "_"), name.replace("-", " ")]
    return [*words, "memory"] if value.lstrip("-").isdigit() and len(value) > 9 else words


def _cases():
    cases = []

    def add(argv, words, codes=(2,), setup=None, marks=(), limit=CASE_TIMEOUT):
        name = " ".join(a if len(a) < 40 else a[:20] + "..." for a in argv)
        name = name.encode("unicode_escape").decode() + (f" [{setup}]" if setup else "")
        cases.append(pytest.param(argv, words, codes, setup, limit, id=name, marks=marks))

    def options(base, table):
        for opt, values in table:
            for v in values:
                add(_with(base, opt, v), _words(opt, v))

    # sample: every option x bad values
    options(
        SAMPLE,
        (
            ("--steps", [*BAD_INT, "26", HUGE]),
            ("--num", [*BAD_INT, HUGE, str(2**62)]),
            ("--batch-size", BAD_INT),
            ("--grid", BAD_INT),
            ("--seed", BAD_SEED),
            ("--eta", BAD_FLOAT),
            ("--sampler", [*BAD_NAME, "DDIM"]),
            ("--spacing", BAD_NAME),
            ("--clip-x0", BAD_NAME),
            ("--weights", BAD_NAME),
            ("--device", BAD_DEVICE),
            ("--out", BAD_OUT),
        ),
    )
    options([*SAMPLE, "--sampler", "ddpm"], [("--variance", BAD_NAME)])
    add([*SAMPLE, "--sampler", "ddpm", "--eta", "0.5"], ["eta"])
    add(_with([*SAMPLE, "--spacing", "log_snr"], "--steps", "26"), ["steps"])
    for v in [*BAD_CKPT, *CKPT_BLOCKS]:
        add(["sample", v, *SAMPLE[2:]], ["checkpoint"])
    for v in ("{nan_ckpt}", "{huge_ckpt}"):
        add(["sample", v, *SAMPLE[2:]], ["NaN or infinite"], codes=(1,))
    add(SAMPLE, ["samples.npz"], setup="dir:o/samples.npz")
    add(SAMPLE, ["sampler.json"], setup="fifo:o/sampler.json")
    add([*SAMPLE, "--unknown"], ["--unknown"])
    add(["sample"], ["checkpoint"])

    # eval: options x bad values, and combinations that are not allowed
    options(
        EVAL_BPD,
        (
            ("--split", BAD_NAME),
            ("--ref-split", BAD_NAME),
            ("--bpd-num", BAD_INT),
            ("--ode-num", BAD_INT),
            ("--ode-steps", [*BAD_INT, "25", HUGE]),
            ("--probes", [*BAD_INT, HUGE]),
            ("--seed", BAD_SEED),
            ("--device", BAD_DEVICE),
            ("--out", BAD_OUT),
            ("--cache", ["{file}", "{fifo}", "/proc/ddkit-fuzz"]),
            ("--weights", BAD_NAME),
            ("--bpd-methods", BAD_NAME),
        ),
    )
    options(
        EVAL_INV,
        (
            ("--inversion-steps", [*BAD_INT, "26"]),
            ("--inversion-num", BAD_INT),
            ("--split", ["test", *BAD_NAME]),
        ),
    )
    options(
        EVAL_FID,
        (
            ("--num", ["1", "0", "-1", HUGE]),
            ("--batch-size", BAD_INT),
            ("--steps", [*BAD_INT, "26"]),
            ("--sampler", BAD_NAME),
            ("--spacing", BAD_NAME),
            ("--eta", BAD_FLOAT),
            ("--clip-x0", BAD_NAME),
            ("--ref-split", BAD_NAME),
            ("--feature-net", ["{missing}", "{dir}", "{fifo}", "{garbage}", "{empty}", "{cfg}"]),
            ("--inception", ["{missing}", "{dir}", "{fifo}", "{garbage}", "{empty}", "{cfg}"]),
        ),
    )
    options(EVAL_SWEEP, (("--families", ["garbage", "", "DDPM"]), ("--nfe", BAD_INT)))
    add([*EVAL_FID, "--inception", "{garbage}", "--feature-net", "{garbage}"], ["inception"])
    add(["eval", "{mlp}", *EVAL_FID[2:]], ["FID"])
    add(["eval", "{mlp}", *EVAL_SWEEP[2:]], ["FID"])
    add(["eval", "{mlp}", "--out", "o"], ["measure"])
    for v in BAD_CKPT:
        add(["eval", v, *EVAL_BPD[2:]], ["checkpoint"])
    add(EVAL_BPD, ["eval.json"], setup="dir:o/eval.json")
    for name, kind in HOSTILE.items():
        add(EVAL_FOLDER, [name], setup=f"folder:{name}:{kind}")

    # train: config files, --set overrides, resume
    for v in ["{dir}", "{missing}", "{nonutf8}", "{fifo}", "{fifo_link}", "{socket}", "/dev/null"]:
        add(["train", v], ["config file"])
    for v in ["/dev/zero", "{garbage}", "{big}", "{truncated_toml}", "{dangling}"]:
        add(["train", v], ["config file"])
    add(["train", "{empty}"], ["[model]"])
    for name in ("deep_array", "deep_inline", "deep_dotted", "deep_header", "deep_quoted"):
        add(["train", "{cfg}", f"{{{name}}}"], [f"{name}.toml"])
    for name in ("tpu_cfg", "meta_cfg") + (() if torch.cuda.is_available() else ("cuda_cfg",)):
        add(["train", f"{{{name}}}"], ["train.device"])
    for text, words in _bad_overrides():
        add(["train", "{cfg}", "--set", text], words)
    for text, words in _bad_image_overrides():
        add(["train", "{imgcfg}", "--set", text], words)
    every = ["train", "{cfg}", "--set", "train.sample_every=1", "--set"]
    add([*every, "train.sample_num=10**12"], ["sample_num"])
    add([*every, f"train.sample_num={HUGE}"], ["memory"])
    add(["train"], ["config file"])
    add(["train", "{cfg}", "--set", 'train.out_dir="o"'], ["train.out_dir"], setup="file:o")
    add(["train", "{cfg}", "--set", 'train.out_dir="o/run"'], ["train.out_dir"], setup="file:o")
    add(["train", "{cfg}", "--set", 'train.init_from="{fifo}"'], ["init_from"])
    add(["train", "--resume", "{mlp}", "{cfg}"], ["--resume"])
    add(["train", "--resume", "{mlp}", "--set", "optim.lr=1e-3"], ["optim.lr"])
    add(["train", "--resume", "{mlp}", "--set", 'train.out_dir="o"'], ["out_dir"], setup="file:o")
    for v in ["{missing}", "{dir}", "{garbage}"]:
        add(["train", "--resume", v], ["checkpoint"])

    # verify
    options(
        ["verify"],
        (
            ("--nfe", [*BAD_INT, "1001", HUGE]),
            ("--n-2d", [*BAD_INT, HUGE]),
            ("--n-64d", [*BAD_INT, HUGE]),
            ("--floor-reps", [*BAD_INT, HUGE]),
            ("--seed", BAD_SEED),
            ("--sampler", BAD_NAME),
            ("--config", BAD_NAME),
            ("--out", BAD_OUT),
        ),
    )

    # features
    for v in [*BAD_NAME, "spiral", "folder", "hf"]:
        add(["features", "--data", v], ["data"])
    options(["features", "--data", "digits"], (("--epochs", BAD_INT), ("--seed", BAD_SEED)))
    add(["features", "--data", "digits", "--cache", "{file}"], ["--cache"])
    for v in ("{fifo}", "{missing}", "{file}"):
        add(["features", "--data", "fashion_mnist", "--path", v], ["IDX"])

    # demo
    options(["demo"], (("--scale", [*BAD_FLOAT, "0", "1001", "-0"]), ("--out", BAD_OUT)))
    add(["demo"], ["spiral"], setup="file:demo-out/spiral")

    # the top level
    add([], ["command"])
    add(["no-such-command"], ["no-such-command"])
    return cases


def _bad_overrides() -> list[tuple[str, list[str]]]:
    """(``section.key=value``, words of its one line) for overrides of the tiny MLP config that
    must be refused."""
    out = []
    keys = {
        "model": ["hidden", "depth", "time_dim", "dim", "dropout", "learn_sigma", "preset"],
        "data": ["name", "num_samples", "seed", "split", "path", "image_size"],
        "diffusion": ["T", "schedule", "prediction", "loss", "variance", "zero_terminal_snr"],
        "optim": ["lr", "betas", "eps", "weight_decay", "warmup_steps", "ema_decay", "grad_clip"],
        "train": ["max_steps", "batch_size", "grad_accum", "seed", "out_dir", "device"],
    }
    wrong = ['"text"', "true", "[1, 2]", "{a = 1}", "nan", "inf", "-inf", "-1", str(2**64)]
    wrong += ["1979-05-27", "[[[[[[[[1]]]]]]]]"]
    for section, names in keys.items():
        for key in names:
            words = [f"{section}.{key}", f"{section}:", "memory", "learn_sigma"]
            words += [f"{key} ", f"{key}="] if len(key) > 1 else []
            for value in wrong:
                if (key, value) in (("out_dir", '"text"'), ("zero_terminal_snr", "true")):
                    continue
                out.append((f"{section}.{key}={value}", words))
            out.append((f"{section}.no_such_key=1", ["no_such_key"]))
    for text in (
        "model.hidden=10000000000",
        "model.depth=1000000000000",
        "model.time_dim=10000000000",
        "data.num_samples=1000000000000",
        "diffusion.T=1000000000000",
        "train.batch_size=1000000000000",
    ):
        out.append((text, ["memory"]))
    out += [(t, ["seed"]) for t in ("train.seed=9223372036854775808", "train.seed=-1")]
    out += [("data.seed=9223372036854775808", ["seed"])]
    out += [("train.max_steps=0", ["max_steps"]), ("train.max_steps=1.5", ["max_steps"])]
    out += [('train.sample_sampler="x"', ["sampler"]), ('train.out_dir=""', ["out_dir"])]
    out += [('train.init_from="/no/such/run"', ["init_from"]), ("optim.lr=1e400", ["lr"])]
    out += [("nosection.x=1", ["nosection"]), ("x=1", ["x"]), ("a.b.c=1", ["a.b.c"])]
    out += [("=1", ["override"]), ("train.", ["train."]), ("model.hidden", ["model.hidden"])]
    out += [("model.hidden=" + "[" * 5000 + "]" * 5000, ["nested"])]
    out += [("model.x=" + "{a=" * 3000 + "1" + "}" * 3000, ["nested"])]
    out += [("model.x=" + "a." * 100 + "a=1", ["model.x"]), ("data.name=" + "x" * 10000, ["data"])]
    return out


def _bad_image_overrides() -> list[tuple[str, list[str]]]:
    """Overrides of the tiny U-Net config that must be refused, with words of the line."""
    return [
        ("model.image_size=1048576", ["memory"]),
        ("data.image_size=1048576", ["memory"]),
        ("model.base_channels=1048576", ["memory"]),
        ("model.channel_mult=[1, 1000000]", ["memory"]),
        ("model.channel_mult=[]", ["channel_mult"]),
        ("model.channel_mult=[0]", ["channel_mult"]),
        ("model.channel_mult=[1.5]", ["channel_mult"]),
        ("model.num_res_blocks=1000000000", ["memory"]),
        ("model.attention_resolutions=[3]", ["attention"]),
        ("model.groups=0", ["groups"]),
        ("model.num_heads=-1", ["num_heads"]),
        ("model.in_channels=0", ["in_channels"]),
        ("model.dropout=1.0", ["dropout"]),
        ("data.channels=2", ["channels"]),
        ('data.on_corrupt="ignore"', ["on_corrupt"]),
    ]


CASES = _cases()


# ---- the runner -------------------------------------------------------------------------------
def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _hostile(path: Path, kind: str, assets: dict[str, str]) -> None:
    """Make the hostile file ``kind`` at ``path`` (in the image checkpoint's data folder)."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "fifo-link":
        path.symlink_to(assets["fifo"])
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "dangling":
        path.symlink_to(path.with_name("nowhere"))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not an image\n")
    elif kind == "truncated":
        path.write_bytes(_png(8, 8)[:45])
    elif kind == "bomb":  # 20000 x 20000 declared: above twice PIL's MAX_IMAGE_PIXELS
        path.write_bytes(_png(20000, 20000, payload=zlib.compress(b"\0" * 64)))
    elif kind == "bomb-warning":  # 10000 x 10000 declared: above MAX_IMAGE_PIXELS only
        path.write_bytes(_png(10000, 10000, payload=zlib.compress(b"\0" * 64)))
    elif kind == "other-size":
        path.write_bytes(_png(16, 8))
    elif kind == "random":
        path.write_bytes(b"\xff\xd8\xff" + os.urandom(200))


def _setup(spec: str | None, cwd: Path, assets: dict[str, str]) -> Path | None:
    """Make what ``spec`` asks for; returns a file to remove afterwards (outside ``cwd``)."""
    if spec is None:
        return None
    kind, rel = spec.split(":", 1)
    if kind == "folder":
        name, what = rel.split(":")
        path = Path(assets["folder"]) / name
        _hostile(path, what, assets)
        return path
    p = cwd / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    if kind == "file":
        p.write_text("x")
    elif kind == "dir":
        p.mkdir()
    elif kind == "fifo":
        os.mkfifo(p)
    return None


def _timeout(signum, frame):
    raise CaseTimeout("the case ran past its time limit (blocked?)")


def _fill(arg: str, assets: dict[str, str]) -> str:
    for key, value in assets.items():
        arg = arg.replace("{" + key + "}", value)
    return arg


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path_factory.getbasetemp() / "fuzz-cache"))


@pytest.mark.parametrize("argv, words, codes, setup, limit", CASES)
def test_bad_input(argv, words, codes, setup, limit, assets, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    extra = _setup(setup, tmp_path, assets)
    before = _tree(tmp_path)
    argv = [_fill(a, assets) for a in argv]
    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(limit)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's refusals
        code = e.code
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        if extra is not None:
            extra.unlink()
    out, err = capsys.readouterr()
    assert "Traceback" not in err + out, err
    lines = err.splitlines()
    assert len(lines) == 1, f"stderr must be one line, got {len(lines)}: {err!r}"
    assert code in codes, f"exit {code}, expected {codes}: {err!r}"
    assert "error" in lines[0], err
    named = any(w.lower() in lines[0].lower() for w in words)
    assert named, f"the line names none of {words}: {err!r}"
    assert _tree(tmp_path) == before, f"written: {_tree(tmp_path) - before}"


def test_there_are_several_hundred_cases():
    assert len(CASES) >= 400
