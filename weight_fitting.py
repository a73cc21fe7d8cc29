"""Weights fitted to a model of another shape: an image model inflated to a video model, and
position tables resized to other frame counts and image sizes. Pure functions on state dicts in
our keys; the model's config says what to fit them to.
"""
import math
import re

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from weight_formats import WeightLoadError, count_layers


def is_image_model(state_dict, pos_emb_type='separate'):
    """True for our keys of a per-frame model: no time table, no temporal layers, 2-D patches and
    a per-frame position table (a joint table spans all frames of a joint space-time model)."""
    return (pos_emb_type == 'separate' and 'backbone.time_embed' not in state_dict
            and not any('temporal_' in key for key in state_dict)
            and state_dict['backbone.patch_embed.proj.weight'].ndim == 4)


def inflate_patch_kernel(weight, tube_size, extend_strategy):
    """Conv2d kernel (D, C, p, p) -> Conv3d kernel (D, C, tube_size, p, p).

    'temporal_avg' spreads it evenly over the tubelet's frames; 'center_frame' puts it on the
    middle frame only. Either way a static tubelet gives the image kernel's response.
    """
    if extend_strategy == 'temporal_avg':
        return repeat(weight, 'd c h w -> d c t h w', t=tube_size) / tube_size
    if extend_strategy == 'center_frame':
        kernel = weight.new_zeros(weight.shape[:2] + (tube_size,) + weight.shape[2:])
        kernel[:, :, tube_size // 2] = weight
        return kernel
    raise ValueError(f"extend_strategy must be 'temporal_avg' or 'center_frame', got {extend_strategy!r}")


def inflate_image_model(state_dict, config, copy_strategy='repeat', extend_strategy='temporal_avg'):
    """Image-model weights in our keys (per-frame blocks `blocks.N.attn`, Conv2d patches) -> the
    video model `config` describes, and the keys it leaves to the model's own initialisation.
    Position tables keep their size (see resize_position_tables).

    Divided blocks, as official TimeSformer does: the image attention goes into the spatial slot,
    temporal_fc is zero, and the temporal attention is a copy of the image one ('repeat') or keeps
    the model's initialisation ('set_zero'). The original repository did it the other way round (the image
    attention in its temporal slot) and its 'set_zero' zeroed every copied weight, LayerNorm
    included, which leaves a branch no gradient can ever reach. fact_encoder: the temporal layers
    copy the first spatial ones ('repeat'), or keep their initialisation with the last projection
    of each residual branch zero, so that they start as the identity ('set_zero'); the original repository's
    37e1801 layout (fact_encoder_attention 'divided') adds a zero temporal_fc. The time table
    starts at zero, so a static video gives the image model's features, as official TimeSformer
    starts from ImageNet.
    """
    inflated, left_at_init = {}, []
    divided = config.attention_type == 'divided_space_time'
    # The last projection of each temporal residual branch; a zero temporal_fc ends the attention
    # branch of the 37e1801 layout (a second zero before it would block every gradient).
    branch_outputs = r'ffn\.fc2\.' if config.fact_encoder_attention == 'divided' else r'(attn\.attn\.proj|ffn\.fc2)\.'

    def add_temporal(key, value, branch_output=False):
        if copy_strategy == 'repeat':
            inflated[key] = value.clone()
        elif branch_output:
            inflated[key] = torch.zeros_like(value)
        else:
            left_at_init.append(key)

    for key, value in state_dict.items():
        match = re.fullmatch(r'backbone\.blocks\.(\d+)\.(attn|ffn)\.(.+)', key)
        if match is None:
            inflated[key] = value
            continue
        index, operator, rest = int(match[1]), match[2], match[3]
        if divided and operator == 'attn':
            inflated[f'backbone.blocks.{index}.spatial_attn.{rest}'] = value
            add_temporal(f'backbone.blocks.{index}.temporal_attn.{rest}', value)
        else:
            inflated[key] = value
        if config.attention_type == 'fact_encoder' and index < config.num_time_transformer_layers:
            add_temporal(f'backbone.temporal_blocks.{index}.{operator}.{rest}', value,
                         branch_output=re.match(branch_outputs, f'{operator}.{rest}') is not None)

    dim = config.embed_dims
    reference = inflated['backbone.patch_embed.proj.weight']
    temporal_fcs = []
    if divided:
        temporal_fcs = [f'backbone.blocks.{index}.temporal_attn.temporal_fc.'
                        for index in range(count_layers(inflated, 'backbone.blocks.'))]
    elif config.fact_encoder_attention == 'divided':
        temporal_fcs = [f'backbone.temporal_blocks.{index}.attn.temporal_fc.'
                        for index in range(config.num_time_transformer_layers)]
    for prefix in temporal_fcs:
        inflated[prefix + 'weight'] = reference.new_zeros(dim, dim)
        inflated[prefix + 'bias'] = reference.new_zeros(dim)
    if config.conv_type == 'Conv3d':
        inflated['backbone.patch_embed.proj.weight'] = inflate_patch_kernel(
            reference, config.tube_size, extend_strategy)
    time_rows = config.position_table_rows.get('time_embed')
    if time_rows is not None:
        inflated['backbone.time_embed'] = reference.new_zeros(1, time_rows, dim)
    table = inflated.get('backbone.pos_embed')
    if config.pos_emb_type == 'joint' and table is not None:
        patches = repeat(table[:, 1:], 'b p d -> b (p t) d', t=config.num_time_steps)
        inflated['backbone.pos_embed'] = torch.cat((table[:, :1], patches), dim=1)
    return inflated, tuple(left_at_init)


def _resize_grid(tables, size):
    """Patch tables over a square grid (N, g*g, D) -> (N, size*size, D), bicubic; unchanged when g
    is already `size` (the original repository's scale factor below is not the identity at the same size).

    The original repository's formula (DINO's): a scale factor of (size + 0.1) / g rather than an output size.
    interpolate samples at the scale it is given, so the original repository's checkpoints at another img_size give the
    the original repository's numbers; the 0.1 keeps floating-point error from flooring the output below `size`.
    """
    grid = math.isqrt(tables.shape[1])
    if grid == size:
        return tables
    images = rearrange(tables.float(), 'n (h w) d -> n d h w', h=grid)
    scale = (size + 0.1) / grid
    images = F.interpolate(images, scale_factor=(scale, scale), mode='bicubic', align_corners=False)
    return rearrange(images, 'n d h w -> n (h w) d').to(tables.dtype)


def _resize_time(tables, length):
    """Time tables (N, T, D) -> (N, length, D), linear (our choice, the original repository has none for time);
    unchanged when T is already `length`."""
    if tables.shape[1] == length:
        return tables
    lines = F.interpolate(rearrange(tables.float(), 'n t d -> n d t'), size=length,
                          mode='linear', align_corners=False)
    return rearrange(lines, 'n d t -> n t d').to(tables.dtype)


def _check_rows(table, config, source_time_steps, path):
    """Raise unless pos_embed (1, rows, D) can be a table of `config.pos_emb_type`: a class row and
    a square grid, per token frame (`source_time_steps` of them) for a joint one."""
    joint = config.pos_emb_type == 'joint'
    if joint and source_time_steps is None:
        raise WeightLoadError(f"{path}: its pos_embed ({table.shape[1]} rows) needs resizing to "
                              f"pos_emb_type 'joint', but the weights do not record their frame count")
    patches, left = divmod(table.shape[1] - 1, source_time_steps if joint else 1)
    if left or math.isqrt(patches) ** 2 != patches:
        raise WeightLoadError(f"{path}: its pos_embed has {table.shape[1]} rows, not a class row and a square "
                              f"grid{' per token frame' if joint else ''} as pos_emb_type "
                              f"{config.pos_emb_type!r} needs (a {'separate' if joint else 'joint'!r} table?)")


def resize_position_tables(state_dict, config, source_time_steps=None, path='the weights'):
    """Position tables in our keys resized to `config`: the patch grid bicubic, time linear, the
    class token's row kept, and an axis already at its size left alone. A joint table (1, 1 + P*T', D) needs the checkpoint's
    `source_time_steps` to be split; `path` names the file in errors. Returns the new state dict
    and notes of what changed.
    """
    resized, notes = dict(state_dict), []
    rows = config.position_table_rows
    table = state_dict.get('backbone.pos_embed')
    target = rows.get('pos_embed')
    if table is not None and target is not None and table.shape[1] != target:
        _check_rows(table, config, source_time_steps, path)
        grid = math.isqrt(config.num_patches)
        if config.pos_emb_type == 'joint':
            frames = rearrange(table[:, 1:], '1 (p t) d -> t p d', t=source_time_steps)
            tubes = rearrange(_resize_grid(frames, grid), 't p d -> p t d')
            patches = rearrange(_resize_time(tubes, config.num_time_steps), 'p t d -> 1 (p t) d')
        else:
            patches = _resize_grid(table[:, 1:], grid)
        resized['backbone.pos_embed'] = torch.cat((table[:, :1], patches), dim=1)
        notes.append(f'pos_embed {table.shape[1]} -> {target} rows')
    table = state_dict.get('backbone.time_embed')
    if table is not None and 'time_embed' in rows and table.shape[1] != rows['time_embed']:
        kept = rows['time_embed'] - config.num_time_steps  # fact_encoder's class row
        steps = _resize_time(table[:, kept:], config.num_time_steps)
        resized['backbone.time_embed'] = torch.cat((table[:, :kept], steps), dim=1)
        notes.append(f'time_embed {table.shape[1]} -> {rows["time_embed"]} rows')
    return resized, notes

