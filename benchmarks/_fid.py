"""What the FID benchmarks share: a trained run with its feature network and reference
features, and the first line of their output."""

from __future__ import annotations

import time

import torch
from _machine import cpu_name

from ddkit.evaluation.quality import feature_network, reference_features
from ddkit.trained import load_trained


def load_for_fid(run: str, ref_num: int):
    """(trained, featnet, ref): the run, the features FID is computed on for its data set and
    those of ``ref_num`` training images."""
    trained = load_trained(run)
    featnet = feature_network(trained)
    return trained, featnet, reference_features(featnet, trained.config.data, ref_num)


def header(title: str, run: str, trained, featnet, ref, num: int) -> str:
    """``# title, date, torch, CPU, threads; run and step; metric of num samples vs ref``."""
    return (
        f"# {title}, {time.strftime('%Y-%m-%d')}, torch {torch.__version__}, {cpu_name()}, "
        f"{torch.get_num_threads()} threads; {run} step {trained.step}; "
        f"{featnet.metric_name} of {num} samples vs {len(ref)} training images"
    )
