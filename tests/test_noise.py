"""ddkit.noise: the Philox4x32-10 block function against Random123's published known answers, the
C kernel against the PyTorch definition bit for bit, the output against N(0, 1) (moments, the
distribution function, tails, independence), and its use by the samplers and `ddkit sample`."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from tiny_run import MLP_CONFIG, one_line_error, write_checkpoint

from ddkit import cpu, generation, noise
from ddkit.cpu import philox as kernel
from ddkit.noise import PhiloxNoise, philox4x32_10, reference_normal
from ddkit.samplers._common import rademacher_like, randn_like

# Random123's known-answer vectors for Philox4x32-10: (counter words, key words, output words)
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]
needs_kernel = pytest.mark.skipif(
    kernel.library() is None, reason="no C compiler: the Philox kernel is not built"
)


@pytest.mark.parametrize("counter,key,want", KNOWN_ANSWERS)
def test_the_block_function_gives_random123s_known_answers(counter, key, want):
    got = philox4x32_10(counter, key[0] | key[1] << 32)
    assert tuple(int(w) for w in got) == want


@needs_kernel
@pytest.mark.parametrize("counter,key,want", KNOWN_ANSWERS)
def test_the_kernels_block_function_gives_the_known_answers(counter, key, want):
    first = counter[0] | counter[1] << 32
    words = kernel.words(first, 1, counter[2], counter[3], key[0] | key[1] << 32)[0]
    assert tuple(int(w) for w in words) == want


@needs_kernel
def test_the_kernels_words_equal_the_definition_across_tiles_and_the_wrap():
    first = 2**64 - 300  # 600 blocks: several tiles of the kernel, the counter wrapping past 0
    got = kernel.words(first, 600, 7, 2**32 - 1, 0x0123456789ABCDEF)
    b = (torch.arange(600, dtype=torch.int64) + (first - 2**63)) ^ -(2**63)  # first + i mod 2^64
    lo, hi = b & noise.MASK, (b >> 32) & noise.MASK
    want = torch.stack(philox4x32_10((lo, hi, 7, 2**32 - 1), 0x0123456789ABCDEF), 1)
    assert torch.equal(got, want)


def test_multiply_high_low_is_exact_for_32_bit_words():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**32, 10_000, dtype=np.uint64).tolist() + [0, 1, 2**32 - 1]
    for m in (noise.M0, noise.M1, 2**32 - 1):
        hi, lo = noise._mulhilo(torch.tensor(a, dtype=torch.int64), m)
        want = [v * m for v in a]
        assert hi.tolist() == [w >> 32 for w in want]
        assert lo.tolist() == [w & 0xFFFFFFFF for w in want]


def test_box_muller_matches_its_closed_form():
    """The float32 arithmetic against sqrt(-2 ln u1) (cos, sin)(2 pi u2) in float64, on words
    spanning every quarter turn and the extreme uniforms (u1 = 2**-24 and 1)."""
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2**32, 200_000, dtype=np.int64)
    c = rng.integers(0, 2**32, 200_000, dtype=np.int64)
    a[:4] = [0, 255, 2**32 - 1, 2**32 - 256]
    c[:4] = [0, 2**32 - 1, 2**31, 2**30]
    z0, z1 = noise._box_muller(torch.from_numpy(a), torch.from_numpy(c))
    u1 = ((a >> 8) + 1) / 2**24
    u2 = (c >> 8) / 2**24
    r = np.sqrt(-2 * np.log(u1))
    want0, want1 = r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)
    err = np.maximum(np.abs(z0.double().numpy() - want0), np.abs(z1.double().numpy() - want1))
    assert err.max() < 4e-6 * max(1.0, r.max())  # a few float32 ulps of r
    assert float(z0[2]) == 0.0 and float(z1[2]) == 0.0  # u1 = 1: r = 0 exactly
    assert abs(float(z0[0]) - math.sqrt(48 * math.log(2))) < 1e-5  # u1 = 2**-24, angle 0


@needs_kernel
@pytest.mark.parametrize("n", [1, 3, 4, 5, 17, 1023, 4097, 65_539, 300_001])
def test_the_kernel_computes_the_definition_bit_for_bit(n):
    for seed, stream, std in ((0, 0, 1.0), (2**64 - 1, 2**40 + 5, 0.37), (123_456_789, 7, 3.0)):
        want = reference_normal(n, seed, stream, std)
        got = kernel.normal_(torch.empty(n), seed, stream, noise._f32(std), noise._TABLE)
        assert torch.equal(got, want), (n, seed, stream, std, int((got != want).sum()))


@needs_kernel
def test_the_numbers_do_not_depend_on_threads_or_on_the_length():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = PhiloxNoise(5).normal((200_003,))
        torch.set_num_threads(2)
        two = PhiloxNoise(5).normal((200_003,))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)
    assert torch.equal(PhiloxNoise(5).normal((1_001,)), one[:1_001])  # element i is element i
    with cpu.disabled("philox"):  # the PyTorch definition, as without a compiler
        assert torch.equal(PhiloxNoise(5).normal((7, 11, 13)).flatten(), one[: 7 * 11 * 13])


def test_the_output_is_standard_normal():
    """2**22 numbers: mean, variance, skewness and excess kurtosis within 5 standard errors; the
    largest gap to the normal CDF (Kolmogorov-Smirnov) below its 0.1% critical value; the tail
    shares P(|z| > 2, 3, 4) within 5 binomial standard errors; |z| <= sqrt(48 ln 2)."""
    n = 2**22
    z = PhiloxNoise(2026).normal((n,)).double()
    se = 1 / math.sqrt(n)
    assert abs(float(z.mean())) < 5 * se
    assert abs(float(z.var()) - 1) < 5 * math.sqrt(2) * se
    assert abs(float((z**3).mean())) < 5 * math.sqrt(15) * se
    assert abs(float((z**4).mean()) - 3) < 5 * math.sqrt(96) * se
    zs = torch.sort(z[: 2**20]).values
    cdf = 0.5 * (1 + torch.erf(zs / math.sqrt(2)))
    i = torch.arange(1, len(zs) + 1, dtype=torch.float64)
    ks = float(torch.maximum(i / len(zs) - cdf, cdf - (i - 1) / len(zs)).max())
    assert ks < 1.95 / math.sqrt(len(zs))
    for k in (2, 3, 4):
        p = math.erfc(k / math.sqrt(2))
        share = float((z.abs() > k).double().mean())
        assert abs(share - p) < 5 * math.sqrt(p * (1 - p) / n), (k, share, p)
    assert float(z.abs().max()) <= math.sqrt(48 * math.log(2)) + 1e-6


def test_neighbours_draws_and_seeds_are_uncorrelated():
    """Correlations within 5 standard errors of 0: neighbours at lags 1 to 8 (within a Box-Muller
    pair, across pairs and blocks), the squares of a pair's two numbers (dependence a plain
    correlation misses), consecutive draws of one source and the same draw of adjacent seeds."""
    n = 2**20
    src = PhiloxNoise(7)
    z = src.normal((n,)).double()
    z_next = src.normal((n,)).double()
    z_seed = PhiloxNoise(8).normal((n,)).double()
    bound = 5 / math.sqrt(n / 2)

    def corr(a, b):
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).mean() / (a.std() * b.std()))

    for lag in range(1, 9):
        assert abs(corr(z[:-lag], z[lag:])) < bound, lag
    assert abs(corr(z[0::2] ** 2, z[1::2] ** 2)) < bound
    assert abs(corr(z, z_next)) < bound
    assert abs(corr(z, z_seed)) < bound


def test_a_source_is_reproducible_and_advances():
    a, b = PhiloxNoise(3), PhiloxNoise(3)
    first = a.normal((4, 5))
    assert torch.equal(first, b.normal((4, 5)))
    assert a.stream == 1 and not torch.equal(a.normal((4, 5)), first)
    assert torch.equal(PhiloxNoise(3, stream=1).normal((4, 5)), b.normal((4, 5)))
    scaled = PhiloxNoise(3).normal((4, 5), std=0.25)
    assert torch.equal(scaled, first * np.float32(0.25))
    wide = PhiloxNoise(3).normal((4, 5), std=0.25, dtype=torch.float64)
    assert wide.dtype == torch.float64 and torch.equal(wide, first.double() * 0.25)
    assert "seed=3" in repr(a)


def test_bad_scales_are_refused_and_defaults_are_float32_on_the_cpu():
    src = PhiloxNoise(4)
    for std in (-1.0, math.inf, math.nan, "1", True):
        with pytest.raises(ValueError, match=r"std=.* must be a finite number >= 0"):
            src.normal((3,), std=std)
    z = src.normal((2, 3), std=0)
    assert z.dtype == torch.float32 and z.device.type == "cpu" and not z.any()
    assert src.normal((0, 5)).shape == (0, 5)


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, True, "3", None])
def test_bad_seeds_are_refused(seed):
    with pytest.raises(ValueError, match=r"seed=.* must be an integer in \[0, 2\*\*64\)"):
        PhiloxNoise(seed)


def test_samplers_draw_from_a_noise_source():
    x = torch.zeros(64, 3, 8, 8)
    z = randn_like(x, PhiloxNoise(11), std=2.0)
    assert torch.equal(z, PhiloxNoise(11).normal(x.shape, std=2.0))
    signs = rademacher_like(x.double(), PhiloxNoise(12))
    assert signs.dtype == torch.float64 and set(signs.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(signs.mean())) < 5 / math.sqrt(signs.numel())


def test_without_a_compiler_the_definition_draws_the_same_numbers(monkeypatch, tmp_path):
    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    kernel.library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="could not build the Philox noise CPU kernel"):
            z = PhiloxNoise(9).normal((3, 1000))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert torch.equal(PhiloxNoise(9).normal((3, 1000)), z)  # warned once
    finally:
        kernel.library.cache_clear()
    assert torch.equal(z.flatten(), reference_normal(3000, 9, 0))


@pytest.fixture
def checkpoint(tmp_path):
    return write_checkpoint(tmp_path / "mlp.safetensors", MLP_CONFIG)


def test_generate_draws_stochastic_noise_from_the_chosen_source(checkpoint):
    from ddkit.trained import SampleSpec, load_trained

    trained = load_trained(checkpoint)

    def draw(spec, **kw):
        return generation.generate(trained, spec, 6, seed=1, batch_size=4, **kw)

    ddpm, ddim = SampleSpec("ddpm", 5), SampleSpec("ddim", 5)
    philox = draw(ddpm)
    assert torch.equal(philox, draw(ddpm)) and torch.equal(philox, draw(ddpm, noise="philox"))
    assert not torch.equal(philox, draw(ddpm, noise="torch"))
    # the initial noise comes from torch's generator either way: DDIM eta=0 is unchanged
    assert torch.equal(draw(ddim, noise="torch"), draw(ddim, noise="philox"))
    with pytest.raises(ValueError, match="noise 'curand' is not allowed; allowed: philox, torch"):
        draw(ddpm, noise="curand")
    assert generation.noise_source(None, "cpu") == "philox"
    assert generation.noise_source(None, "cuda:0") == "torch"


def test_cli_noise_option(checkpoint, tmp_path, capsys):
    from ddkit import cli

    assert cli.NOISE_SOURCES == generation.NOISE_SOURCES
    args = ["sample", str(checkpoint), "--sampler", "ddpm", "--steps", "4", "--num", "3"]
    assert cli.main([*args, "--noise", "torch", "--out", str(tmp_path / "s")]) == 0
    assert json.loads((tmp_path / "s" / "sampler.json").read_text())["noise"] == "torch"
    assert cli.main([*args, "--out", str(tmp_path / "d")]) == 0
    assert json.loads((tmp_path / "d" / "sampler.json").read_text())["noise"] == "philox"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli.main([*args, "--noise", "curand", "--out", str(tmp_path / "x")])
    assert exit_.value.code == 2
    one_line_error(capsys, "--noise", "curand")
    assert not (tmp_path / "x").exists()


def test_eval_checks_the_noise_source_before_any_work(checkpoint, tmp_path):
    from ddkit.evaluation.run import evaluate

    with pytest.raises(ValueError, match="noise 'curand' is not allowed"):
        evaluate(checkpoint, fid=True, noise="curand", out=tmp_path / "e")
    assert not (tmp_path / "e").exists()
