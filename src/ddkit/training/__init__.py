"""Training: the loop (trainer.py), EMA, checkpoints, torchrun/DDP."""
