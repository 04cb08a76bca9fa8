"""The smallest training run the command-line tests start from: a 2-D MLP on 64 points of
``moons``, T=25, one step, nothing but the checkpoint written."""

MLP_TOML = """
[model]
preset = "mlp-2d"
hidden = 16
depth = 1
time_dim = 8
[data]
name = "moons"
num_samples = 64
[diffusion]
T = 25
[optim]
warmup_steps = 0
[train]
max_steps = 1
batch_size = 8
sample_every = 0
progress = false
tensorboard = false
"""

MLP_CONFIG = {
    "model": {"preset": "mlp-2d", "hidden": 16, "depth": 1, "time_dim": 8},
    "data": {"name": "moons"},
    "diffusion": {"T": 25},
    "train": {"max_steps": 1},
}


def write_checkpoint(path, config: dict, net=None):
    """A checkpoint at ``path`` of ``config``'s model (``net``, or freshly initialised), with
    its parameters as the EMA weights: what ``load_trained`` and ``ddkit export`` read."""
    from ddkit import checkpoint as ckpt
    from ddkit.config import config_from_dict, config_to_dict

    cfg = config_from_dict(config)
    net = cfg.model.build() if net is None else net
    tensors = ckpt.state_to_tensors("model", net.state_dict())
    tensors |= ckpt.state_to_tensors("ema", dict(net.named_parameters()))
    ckpt.save_checkpoint(path, tensors, {"config": config_to_dict(cfg), "step": 1})
    return path


def one_line_error(capsys, *words):
    """Assert that what was printed on stderr is one line holding each of ``words``."""
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    for w in words:
        assert w in err, err
