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
