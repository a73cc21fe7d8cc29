"""Small helpers shared by the models, benchmarks and command lines."""
import csv
import json
import os
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from transformer import Attention


def reject_unknown(names, known, message, error=ValueError):
    """Raise `error`(f'{message} {unknown}') when `names` hold any not in `known`, all of them named
    (sorted): the one check of config fields, keyword arguments and settings."""
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise error(f'{message} {unknown}')


def counted(number, noun):
    """'1 frame', '3 frames': a count and its noun in the singular or the plural (nouns that take -s)."""
    return f'{number} {noun}' if number == 1 else f'{number} {noun}s'


def count_parameters(model):
    """Number of parameters of a module."""
    return sum(parameter.numel() for parameter in model.parameters())


def set_attention_fused(model, fused):
    """Compute every attention of `model` through SDPA (True) or the explicit softmax path."""
    for module in model.modules():
        if isinstance(module, Attention):
            module.fused = fused
    return model


@contextmanager
def record_attention(model):
    """Within the block every Attention of `model` runs its explicit softmax path and keeps its
    last softmax weights, detached, as `.weights` (B*groups, heads, N, N); yields {module name:
    Attention}. Read them inside the block; on exit SDPA is back and the weights are dropped.

    The groups are the operator's: TimeSformer's divided `spatial_attn` and space_only's `attn`
    hold (B*T, heads, 1 + P, 1 + P), one map per frame with the class token first; fact_encoder's
    spatial blocks (B*T', heads, 1 + P, 1 + P), or in the original repository's 37e1801 layout T' groups of each
    frame's patches. fact_dot_product attends twice per block, its temporal half of the heads last.
    The logits are SDPA's, to rounding.

        with record_attention(model) as attentions:
            logits = model(video)
            maps = [attentions[f'backbone.blocks.{i}.spatial_attn.attn'].weights for i in range(depth)]
    """
    attentions = {name: module for name, module in model.named_modules() if isinstance(module, Attention)}
    for attention in attentions.values():
        attention.keep_weights = True
    try:
        yield attentions
    finally:
        for attention in attentions.values():
            attention.keep_weights, attention.weights = False, None


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


@contextmanager
def atomic_write(path, mode='w', **open_options):
    """Write `path` through the file handle this yields: the bytes go to a hidden partial file beside
    it, synced to disk, then renamed into place, so a crash, a kill or a full disk never leaves a
    truncated file where a good one was; on any error the partial file is removed and the error
    propagates. Creates the folder. The one atomic file writer of the repository."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f'.{path.name}.partial')
    try:
        with open(partial, mode, **open_options) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_json(values, path):
    """`values` as indented JSON at `path`, replacing the file atomically (atomic_write)."""
    with atomic_write(path) as handle:
        handle.write(json.dumps(values, indent=2) + '\n')


def write_csv(rows, path):
    """Rows (dicts with the same keys) to a CSV file at `path`, replaced atomically (atomic_write)."""
    with atomic_write(path, newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
