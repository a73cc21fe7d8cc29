"""Small helpers shared by the models, benchmarks and command lines."""
import csv
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from transformer import Attention


def count_parameters(model):
    """Number of parameters of a module."""
    return sum(parameter.numel() for parameter in model.parameters())


def set_attention_fused(model, fused):
    """Compute every attention of `model` through SDPA (True) or the explicit softmax path."""
    for module in model.modules():
        if isinstance(module, Attention):
            module.fused = fused
    return model


def count_flops(model, video):
    """Multiply-adds of one forward pass per video of `video` (B, T, C, H, W).

    The papers' (fvcore) convention counts one multiply-add as one FLOP; this follows it.
    Attention runs on the explicit path so its matrix products are counted.
    """
    attentions = [module for module in model.modules() if isinstance(module, Attention)]
    fused = [attention.fused for attention in attentions]
    set_attention_fused(model, False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(video)
    finally:
        for attention, was_fused in zip(attentions, fused):
            attention.fused = was_fused
    return counter.get_total_flops() / 2 / video.shape[0]


def write_csv(rows, path):
    """Rows (dicts with the same keys) to a CSV file at `path`, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + '.partial')
    try:
        with partial.open('w', newline='') as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        partial.replace(path)  # an interrupted write never leaves a truncated file at `path`
    finally:
        partial.unlink(missing_ok=True)
