"""Initialisation of the video transformers, converters from other weight formats, and the loader.

A converter is a pure function per source format: a state dict in, a new one in our classifier's
keys out (backbone.*, head.fc.*). Keys it does not know are passed through unchanged, so strict
loading names them. `read_weights` reads a file safely, picks the converter by the keys and says
what the weights fix about the model; `load_model` in video_transformer.py builds from that.
"""
import argparse
import json
import logging
import math
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from transformer import num_token_frames, sine_cosine_table

logger = logging.getLogger(__name__)

OUR_FORMAT = 'videotransformer-pytorch'
HEAD_KEYS = ('head.fc.weight', 'head.fc.bias')


class WeightLoadError(ValueError):
    """A weights file that cannot be read, recognised or fitted to the requested model."""


def init_video_transformer_(model):
    """Initialise a VideoTransformer in place.

    Linear layers: truncated normal (std 0.02), zero bias, as timm and official TimeSformer do
    (the seed kept PyTorch's default Linear init). As in the seed: patch embedding Kaiming fan-in;
    learnable position tables and the class token truncated normal (std 0.02); temporal_fc zero,
    so divided attention starts as an image model applied to every frame.
    """
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    nn.init.kaiming_normal_(model.patch_embed.proj.weight, mode='fan_in', nonlinearity='relu')
    nn.init.zeros_(model.patch_embed.proj.bias)
    nn.init.trunc_normal_(model.cls_token, std=0.02)
    for name in ('pos_embed', 'time_embed'):
        table = getattr(model, name)
        if isinstance(table, nn.Parameter):
            nn.init.trunc_normal_(table, std=0.02)
    for name, module in model.named_modules():
        if name.endswith('temporal_fc'):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------------------------
# Key helpers


def rename_keys(state_dict, rules):
    """A copy of `state_dict` whose keys went through every (regex, replacement) rule in order."""
    rules = [(re.compile(pattern), replacement) for pattern, replacement in rules]
    renamed = {}
    for key, value in state_dict.items():
        for pattern, replacement in rules:
            key = pattern.sub(replacement, key, count=1)
        renamed[key] = value
    return renamed


def prefix_rules(pairs):
    """(source, target) key-prefix pairs, '{}' standing for a layer index -> rename_keys rules."""
    return [('^' + re.escape(source).replace(r'\{\}', r'(\d+)') + r'(?=\.|$)',
             target.replace('{}', r'\1')) for source, target in pairs]


def strip_prefix(state_dict, prefix):
    """Keys starting with `prefix` without it; other keys unchanged."""
    return {key.removeprefix(prefix): value for key, value in state_dict.items()}


def fuse_qkv(state_dict):
    """Separate `.q.`, `.k.`, `.v.` projections -> one `.qkv.` (q, k, v stacked on the output axis).

    A missing k bias is zero: MAE trains q and v biases only.
    """
    fused = dict(state_dict)
    for key in state_dict:
        match = re.fullmatch(r'(.+)\.q\.(weight|bias)', key)
        if not match:
            continue
        prefix, kind = match.groups()
        q = fused.pop(key)
        k = fused.pop(f'{prefix}.k.{kind}', None)
        v = fused.pop(f'{prefix}.v.{kind}')
        fused[f'{prefix}.qkv.{kind}'] = torch.cat((q, torch.zeros_like(q) if k is None else k, v))
    return fused


# ---------------------------------------------------------------------------------------------
# Converters: one per source format, state dict in, our keys out


def convert_seed(state_dict):
    """The seed repository (mmcv-style keys) -> our keys.

    Its Lightning checkpoints (backbone under `model.`, head `cls_head.cls_head`) of TimeSformer and
    ViViT in every attention type, and its ImageNet ViT file (`norms.0/1` beside the attention).
    q, k, v are packed as in nn.MultiheadAttention (`in_proj_*`), the same order as our qkv.
    A divided block's attentions.0 is the temporal one and attentions.1 the spatial one.
    """
    divided = any('.attentions.1.' in key for key in state_dict)
    return rename_keys(state_dict, [
        (r'^model\.', ''),
        (r'^cls_head\.cls_head\.', 'head.fc.'),
        (r'^transformer_layers\.(?:0\.)?layers\.(\d+)\.', r'backbone.blocks.\1.'),
        (r'^transformer_layers\.1\.layers\.(\d+)\.', r'backbone.temporal_blocks.\1.'),
        (r'\.attentions\.0\.', '.temporal_attn.' if divided else '.attn.'),
        (r'\.attentions\.1\.', '.spatial_attn.'),
        (r'\.norms\.0\.', '.attn.norm.'),
        (r'\.norms\.1\.', '.ffn.norm.'),
        (r'\.ffns\.0\.layers\.0\.0\.', '.ffn.fc1.'),
        (r'\.ffns\.0\.layers\.1\.', '.ffn.fc2.'),
        (r'\.ffns\.0\.', '.ffn.'),
        (r'\.attn\.in_proj_', '.attn.qkv.'),
        (r'\.attn\.out_proj\.', '.attn.proj.'),
        (r'^patch_embed\.projection\.', 'backbone.patch_embed.proj.'),
        (r'^(cls_token|pos_embed|time_embed|norm\.)', r'backbone.\1'),
    ])


# The representation layer (Linear + tanh before the head) of ImageNet-21k ViTs, JAX and timm
# names. Our head reads the final norm's class token directly, and a starting point drops the
# head anyway, so these keys are ignored.
REPRESENTATION_KEYS = ('pre_logits/kernel', 'pre_logits/bias', 'pre_logits.fc.weight', 'pre_logits.fc.bias')


def convert_timm(state_dict):
    """timm ViT, and official TimeSformer (`model.` prefix; its vit.py is timm's) -> our keys.

    Official divided blocks add temporal_norm1, temporal_attn and temporal_fc to the ViT block.
    REPRESENTATION_KEYS are dropped.
    """
    divided = any('.temporal_attn.' in key for key in state_dict)
    spatial = 'spatial_attn' if divided else 'attn'
    state_dict = {key: value for key, value in state_dict.items()
                  if key.removeprefix('model.') not in REPRESENTATION_KEYS}
    return rename_keys(state_dict, [
        (r'^model\.', ''),
        (r'^blocks\.(\d+)\.norm1\.', rf'backbone.blocks.\1.{spatial}.norm.'),
        (r'^blocks\.(\d+)\.attn\.', rf'backbone.blocks.\1.{spatial}.attn.'),
        (r'^blocks\.(\d+)\.temporal_norm1\.', r'backbone.blocks.\1.temporal_attn.norm.'),
        (r'^blocks\.(\d+)\.temporal_attn\.', r'backbone.blocks.\1.temporal_attn.attn.'),
        (r'^blocks\.(\d+)\.temporal_fc\.', r'backbone.blocks.\1.temporal_attn.temporal_fc.'),
        (r'^blocks\.(\d+)\.norm2\.', r'backbone.blocks.\1.ffn.norm.'),
        (r'^blocks\.(\d+)\.mlp\.', r'backbone.blocks.\1.ffn.'),
        (r'^patch_embed\.proj\.', 'backbone.patch_embed.proj.'),
        (r'^(cls_token|pos_embed|time_embed|norm\.)', r'backbone.\1'),
        (r'^head\.', 'head.fc.'),
    ])


# The pretraining decoder of an MAE checkpoint, unused by an encoder.
MAE_DECODER = re.compile(r'^(decoder\.|encoder_to_decoder\.|mask_token$)')


def convert_mae(state_dict):
    """MAE-pytorch pretraining checkpoint (`encoder.blocks.N...`) -> our keys, decoder dropped.

    Its attention trains q and v biases only (k's is zero). It has no class token, and its fixed
    sine-cosine position table is not in the state dict; both stay as the model initialises them.
    """
    encoder = {key.removeprefix('encoder.'): value for key, value in state_dict.items()
               if not MAE_DECODER.match(key)}
    encoder = rename_keys(encoder, [(r'\.attn\.q_bias$', '.attn.q.bias'), (r'\.attn\.v_bias$', '.attn.v.bias')])
    return convert_timm(fuse_qkv(encoder))


def convert_jax_vit(state_dict):
    """Original ViT / AugReg `.npz` (JAX names and layouts) -> our keys.

    JAX kernels are (in, out), attention kernels (D, heads, head_dim) and (heads, head_dim, D).
    REPRESENTATION_KEYS are dropped.
    """
    source = {key: value for key, value in state_dict.items() if key not in REPRESENTATION_KEYS}
    take = source.pop
    converted = {
        'backbone.patch_embed.proj.weight': rearrange(take('embedding/kernel'), 'h w c d -> d c h w'),
        'backbone.patch_embed.proj.bias': take('embedding/bias'),
        'backbone.cls_token': take('cls'),
        'backbone.pos_embed': take('Transformer/posembed_input/pos_embedding'),
        'backbone.norm.weight': take('Transformer/encoder_norm/scale'),
        'backbone.norm.bias': take('Transformer/encoder_norm/bias'),
    }
    if 'head/kernel' in source:
        converted['head.fc.weight'] = take('head/kernel').T
        converted['head.fc.bias'] = take('head/bias')
    for index in range(count_layers(state_dict, 'Transformer/encoderblock_', '/')):
        block, ours = f'Transformer/encoderblock_{index}/', f'backbone.blocks.{index}.'
        attention = block + 'MultiHeadDotProductAttention_1/'
        qkv = ('query', 'key', 'value')
        converted.update({
            ours + 'attn.norm.weight': take(block + 'LayerNorm_0/scale'),
            ours + 'attn.norm.bias': take(block + 'LayerNorm_0/bias'),
            ours + 'attn.attn.qkv.weight': torch.cat(
                [rearrange(take(f'{attention}{name}/kernel'), 'd h e -> (h e) d') for name in qkv]),
            ours + 'attn.attn.qkv.bias': torch.cat([take(f'{attention}{name}/bias').flatten() for name in qkv]),
            ours + 'attn.attn.proj.weight': rearrange(take(attention + 'out/kernel'), 'h e d -> d (h e)'),
            ours + 'attn.attn.proj.bias': take(attention + 'out/bias'),
            ours + 'ffn.norm.weight': take(block + 'LayerNorm_2/scale'),
            ours + 'ffn.norm.bias': take(block + 'LayerNorm_2/bias'),
            ours + 'ffn.fc1.weight': take(block + 'MlpBlock_3/Dense_0/kernel').T,
            ours + 'ffn.fc1.bias': take(block + 'MlpBlock_3/Dense_0/bias'),
            ours + 'ffn.fc2.weight': take(block + 'MlpBlock_3/Dense_1/kernel').T,
            ours + 'ffn.fc2.bias': take(block + 'MlpBlock_3/Dense_1/bias'),
        })
    return {**converted, **source}


def _hf_timesformer_pairs(divided):
    """(transformers TimesformerModel, our classifier) key prefixes; the spatial attention of a
    divided block is our `spatial_attn`, the only attention of the other types our `attn`."""
    spatial = 'spatial_attn' if divided else 'attn'
    return [
        ('embeddings.cls_token', 'backbone.cls_token'),
        ('embeddings.position_embeddings', 'backbone.pos_embed'),
        ('embeddings.time_embeddings', 'backbone.time_embed'),
        ('embeddings.patch_embeddings.projection', 'backbone.patch_embed.proj'),
        ('encoder.layer.{}.temporal_layernorm', 'backbone.blocks.{}.temporal_attn.norm'),
        ('encoder.layer.{}.temporal_attention.attention.qkv', 'backbone.blocks.{}.temporal_attn.attn.qkv'),
        ('encoder.layer.{}.temporal_attention.output.dense', 'backbone.blocks.{}.temporal_attn.attn.proj'),
        ('encoder.layer.{}.temporal_dense', 'backbone.blocks.{}.temporal_attn.temporal_fc'),
        ('encoder.layer.{}.layernorm_before', f'backbone.blocks.{{}}.{spatial}.norm'),
        ('encoder.layer.{}.attention.attention.qkv', f'backbone.blocks.{{}}.{spatial}.attn.qkv'),
        ('encoder.layer.{}.attention.output.dense', f'backbone.blocks.{{}}.{spatial}.attn.proj'),
        ('encoder.layer.{}.layernorm_after', 'backbone.blocks.{}.ffn.norm'),
        ('encoder.layer.{}.intermediate.dense', 'backbone.blocks.{}.ffn.fc1'),
        ('encoder.layer.{}.output.dense', 'backbone.blocks.{}.ffn.fc2'),
        ('layernorm', 'backbone.norm'),
        ('classifier', 'head.fc'),
    ]


def convert_hf_timesformer(state_dict):
    """transformers TimesformerForVideoClassification (or bare TimesformerModel) -> our keys.

    backbone.* from the model, head.fc.* when the classifier is there. Same token order and qkv
    packing as ours, so only names change.
    """
    state_dict = strip_prefix(state_dict, 'timesformer.')
    divided = any('.temporal_attention.' in key for key in state_dict)
    return rename_keys(state_dict, prefix_rules(_hf_timesformer_pairs(divided)))


def convert_to_hf_timesformer(state_dict):
    """Our TimeSformer classifier keys -> transformers TimesformerForVideoClassification keys
    (bare TimesformerModel keys when there is no head.fc)."""
    divided = any('.temporal_attn.' in key for key in state_dict)
    pairs = [(ours, theirs) for theirs, ours in _hf_timesformer_pairs(divided)]
    converted = rename_keys(state_dict, prefix_rules(pairs))
    if 'head.fc.weight' not in state_dict:
        return converted
    return {key if key.startswith('classifier.') else f'timesformer.{key}': value
            for key, value in converted.items()}


def convert_hf_vivit(state_dict, num_time_steps):
    """transformers VivitForVideoClassification or VivitModel -> our joint-attention ViViT keys.

    Both namings: `layers.N.attention.{q,k,v,o}_proj` + `mlp.fc1/2` (transformers 5) and
    `encoder.layer.N.attention.attention.{query,key,value}` + `intermediate/output.dense` (4.x).
    Its one position table runs over tubelets time-major (t, h, w); ours is patch-major, time-minor,
    so the rows are permuted, which needs the checkpoint's `num_time_steps` (frames / tubelet depth).
    The bare model's pooler is dropped: the classification head reads the class token instead.
    """
    state_dict = {key: value for key, value in strip_prefix(state_dict, 'vivit.').items()
                  if not key.startswith('pooler.')}
    state_dict = fuse_qkv(rename_keys(state_dict, [
        (r'^embeddings\.cls_token$', 'backbone.cls_token'),
        (r'^embeddings\.position_embeddings$', 'backbone.pos_embed'),
        (r'^embeddings\.patch_embeddings\.projection\.', 'backbone.patch_embed.proj.'),
        (r'^(?:layers|encoder\.layer)\.(\d+)\.', r'backbone.blocks.\1.'),
        (r'\.layernorm_before\.', '.attn.norm.'),
        (r'\.layernorm_after\.', '.ffn.norm.'),
        (r'\.attention\.(?:q_proj|attention\.query)\.', '.attn.attn.q.'),
        (r'\.attention\.(?:k_proj|attention\.key)\.', '.attn.attn.k.'),
        (r'\.attention\.(?:v_proj|attention\.value)\.', '.attn.attn.v.'),
        (r'\.attention\.(?:o_proj|output\.dense)\.', '.attn.attn.proj.'),
        (r'\.(?:mlp\.fc1|intermediate\.dense)\.', '.ffn.fc1.'),
        (r'\.(?:mlp\.fc2|output\.dense)\.', '.ffn.fc2.'),
        (r'^layernorm\.', 'backbone.norm.'),
        (r'^classifier\.', 'head.fc.'),
    ]))
    table = state_dict.get('backbone.pos_embed')
    if table is not None:
        patches = rearrange(table[:, 1:], 'b (t p) d -> b (p t) d', t=num_time_steps)
        state_dict['backbone.pos_embed'] = torch.cat((table[:, :1], patches), dim=1)
    return state_dict


# ---------------------------------------------------------------------------------------------
# From an image model to a video model, and position tables to other sizes


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


def inflate_image_model(state_dict, config):
    """Image-model weights in our keys (per-frame blocks `blocks.N.attn`, Conv2d patches) -> the
    video model `config` describes, and the keys it leaves to the model's own initialisation.
    Position tables keep their size (see resize_position_tables).

    Divided blocks, as official TimeSformer does: the image attention goes into the spatial slot,
    temporal_fc is zero, and the temporal attention is a copy of the image one ('repeat') or keeps
    the model's initialisation ('set_zero'). The seed did it the other way round (the image
    attention in its temporal slot) and its 'set_zero' zeroed every copied weight, LayerNorm
    included, which leaves a branch no gradient can ever reach. fact_encoder: the temporal layers
    copy the first spatial ones ('repeat'), or keep their initialisation with the last projection
    of each residual branch zero, so that they start as the identity ('set_zero'). The time table
    starts at zero, so a static video gives the image model's features, as official TimeSformer
    starts from ImageNet.
    """
    inflated, left_at_init = {}, []
    divided = config.attention_type == 'divided_space_time'

    def add_temporal(key, value, branch_output=False):
        if config.copy_strategy == 'repeat':
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
                         branch_output=re.match(r'(attn\.attn\.proj|ffn\.fc2)\.', f'{operator}.{rest}') is not None)

    dim = config.embed_dims
    reference = inflated['backbone.patch_embed.proj.weight']
    if divided:
        for index in range(count_layers(inflated, 'backbone.blocks.')):
            prefix = f'backbone.blocks.{index}.temporal_attn.temporal_fc.'
            inflated[prefix + 'weight'] = reference.new_zeros(dim, dim)
            inflated[prefix + 'bias'] = reference.new_zeros(dim)
    if config.conv_type == 'Conv3d':
        inflated['backbone.patch_embed.proj.weight'] = inflate_patch_kernel(
            reference, config.tube_size, config.extend_strategy)
    time_rows = config.position_table_rows.get('time_embed')
    if time_rows is not None:
        inflated['backbone.time_embed'] = reference.new_zeros(1, time_rows, dim)
    table = inflated.get('backbone.pos_embed')
    if config.pos_emb_type == 'joint' and table is not None:
        patches = repeat(table[:, 1:], 'b p d -> b (p t) d', t=config.num_time_steps)
        inflated['backbone.pos_embed'] = torch.cat((table[:, :1], patches), dim=1)
    return inflated, tuple(left_at_init)


def _resize_grid(tables, size):
    """Patch tables over a square grid (N, g*g, D) -> (N, size*size, D), bicubic.

    The seed's formula (DINO's): a scale factor of (size + 0.1) / g rather than an output size.
    interpolate samples at the scale it is given, so seed checkpoints at another img_size give the
    seed's numbers; the 0.1 keeps floating-point error from flooring the output below `size`.
    """
    grid = math.isqrt(tables.shape[1])
    images = rearrange(tables.float(), 'n (h w) d -> n d h w', h=grid)
    scale = (size + 0.1) / grid
    images = F.interpolate(images, scale_factor=(scale, scale), mode='bicubic', align_corners=False)
    return rearrange(images, 'n d h w -> n (h w) d').to(tables.dtype)


def _resize_time(tables, length):
    """Time tables (N, T, D) -> (N, length, D), linear; our choice, the seed has none for time."""
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
    class token's row kept. A joint table (1, 1 + P*T', D) needs the checkpoint's
    `source_time_steps` to be split; `path` names the file in errors. Returns the new state dict
    and notes of what changed.
    """
    resized, notes = dict(state_dict), []
    rows = config.position_table_rows
    table = state_dict.get('backbone.pos_embed')
    target = rows['pos_embed']
    if table is not None and table.shape[1] != target:
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


# ---------------------------------------------------------------------------------------------
# What the weights say about the model


# Config fields that describe the network's structure; a source that records them fixes them.
STRUCTURAL_FIELDS = (
    'arch', 'attention_type', 'num_frames', 'img_size', 'patch_size', 'embed_dims', 'num_heads',
    'num_transformer_layers', 'num_time_transformer_layers', 'in_channels', 'conv_type', 'tube_size',
    'use_learnable_pos_emb', 'pos_emb_type', 'mlp_ratio', 'qkv_bias', 'num_classes',
)


# Attention types whose weights have the same keys and shapes: either agrees with such weights.
SAME_KEYS = {'joint_space_time': 'fact_dot_product', 'fact_dot_product': 'joint_space_time'}


def count_layers(state_dict, prefix, separator='.'):
    """Number of layers `prefix` + index + separator among the keys."""
    pattern = re.compile(re.escape(prefix) + r'(\d+)' + re.escape(separator))
    indices = {int(match[1]) for match in map(pattern.match, state_dict) if match}
    return max(indices) + 1 if indices else 0


def default_num_heads(embed_dims):
    """Heads of width 64, the convention of every standard ViT size from tiny to large."""
    return max(1, embed_dims // 64)


def infer_config(state_dict, path, pos_emb_type='separate'):
    """Config fields that our classifier keys determine: sizes from shapes, variant from the keys.

    Joint space-time and fact_dot_product share their keys (SAME_KEYS); a model without stored
    position tables leaves the attention type open. A joint position table leaves the image size
    and frame count open (its length is their product); one passed as 'separate' is refused where
    the keys show it (temporal layers but no time table, or no square grid). `path` names the file.
    """
    proj = state_dict['backbone.patch_embed.proj.weight']
    dim = proj.shape[0]
    fields = {
        'embed_dims': dim, 'in_channels': proj.shape[1], 'patch_size': proj.shape[-1],
        'conv_type': 'Conv3d' if proj.ndim == 5 else 'Conv2d',
        'num_transformer_layers': count_layers(state_dict, 'backbone.blocks.'),
        'mlp_ratio': state_dict['backbone.blocks.0.ffn.fc1.weight'].shape[0] / dim,
        'qkv_bias': any(key.endswith('.qkv.bias') for key in state_dict),
    }
    tube_size = 1
    if proj.ndim == 5:
        tube_size = proj.shape[2]
        fields.update(arch='vivit', tube_size=tube_size)
    time_layers = count_layers(state_dict, 'backbone.temporal_blocks.')
    if time_layers:
        fields.update(arch='vivit', attention_type='fact_encoder', num_time_transformer_layers=time_layers)
    elif any('.temporal_attn.' in key for key in state_dict):
        fields['attention_type'] = 'divided_space_time'
    elif 'backbone.time_embed' in state_dict or pos_emb_type == 'joint':
        fields['attention_type'] = 'joint_space_time'
    elif 'backbone.pos_embed' in state_dict:
        fields.update(arch='timesformer', attention_type='space_only')
    if 'head.fc.weight' in state_dict:
        fields['num_classes'] = state_dict['head.fc.weight'].shape[0]
    table = state_dict.get('backbone.pos_embed')
    if table is not None:
        fields['use_learnable_pos_emb'] = True
    if table is not None and pos_emb_type == 'separate':
        grid = math.isqrt(table.shape[1] - 1)
        temporal = proj.ndim == 5 or fields.get('attention_type') == 'divided_space_time'
        if grid * grid != table.shape[1] - 1 or (temporal and 'backbone.time_embed' not in state_dict):
            # Image size and frame count only multiply in a joint table: guessing would be wrong.
            raise WeightLoadError(f"{path}: pos_embed has {table.shape[1]} rows, not a class token and a "
                                  f"square grid: a pos_emb_type 'joint' table? Put the config.json saved with "
                                  f"the weights beside them")
        fields['img_size'] = grid * fields['patch_size']
    table = state_dict.get('backbone.time_embed')
    if table is not None:
        fields['num_frames'] = (table.shape[1] - (1 if time_layers else 0)) * tube_size
    return fields


# ---------------------------------------------------------------------------------------------
# Reading files safely


# Classes that checkpoints name outside their weights, read as an inert placeholder instead of
# being imported: Lightning 1.x keyed callback states by class, MAE-style scripts store argparse.
class _Placeholder:
    """Stands in for a class a checkpoint names beside its weights; it runs no code."""


SAFE_PLACEHOLDERS = [(_Placeholder, name) for name in (
    'pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint',
    'pytorch_lightning.callbacks.early_stopping.EarlyStopping',
    'pytorch_lightning.callbacks.lr_monitor.LearningRateMonitor',
)] + [argparse.Namespace]


def _read_torch(path):
    """torch.save file -> its object, weights only (no arbitrary code on unpickling)."""
    try:
        with torch.serialization.safe_globals(SAFE_PLACEHOLDERS):
            return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:
        refused = re.search(r'Unsupported global: GLOBAL ([\w.]+)', str(error))
        if refused:
            raise WeightLoadError(
                f'{path}: refused, it needs arbitrary unpickling ({refused[1]}); only tensors, '
                f'containers, numbers and strings are read. If you trust the file, re-save its '
                f'state dict with torch.save(torch.load(path, weights_only=False)["state_dict"], ...)'
            ) from None
        raise WeightLoadError(f'{path}: not a readable checkpoint (corrupt, truncated or not a '
                              f'weights file: {type(error).__name__})') from None


def _read_npz(path):
    """NumPy .npz of arrays -> {name: tensor}; object arrays (pickles) are refused."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return {name: torch.from_numpy(np.array(arrays[name])) for name in arrays.files}
    except ValueError as error:
        # NumPy raises ValueError both for object arrays and for a malformed .npy header.
        if 'allow_pickle' in str(error):
            raise WeightLoadError(f'{path}: refused, it holds pickled objects ({error})') from None
        raise WeightLoadError(f'{path}: a corrupt .npz ({error})') from None
    except TypeError:
        # A member without the .npy magic comes back as raw bytes, which no tensor holds.
        raise WeightLoadError(f'{path}: a corrupt .npz (a member is not a .npy array)') from None
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        raise WeightLoadError(f'{path}: not a readable .npz ({type(error).__name__})') from None


def _read_safetensors(path):
    try:
        return load_file(path, device='cpu')
    except (SafetensorError, OSError) as error:
        raise WeightLoadError(f'{path}: not a readable safetensors file ({error})') from None


def read_file(path):
    """A weights file -> its top-level object. The container is sniffed from the bytes:
    safetensors, .npz (a zip of .npy) or torch.save (zip or legacy pickle)."""
    path = Path(path)
    if not path.is_file():
        raise WeightLoadError(f'{path}: no such file')
    with open(path, 'rb') as stream:
        start = stream.read(9)
    if not start:
        raise WeightLoadError(f'{path}: the file is empty')
    if len(start) == 9 and start[8:9] == b'{' and int.from_bytes(start[:8], 'little') < path.stat().st_size:
        return _read_safetensors(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if names and all(name.endswith('.npy') for name in names):
            return _read_npz(path)
    return _read_torch(path)


def _read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise WeightLoadError(f'{path}: not a readable JSON file ({error})') from None


WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')


def locate(path):
    """A weights file or folder -> (weights file, the config.json beside it or None)."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
        if not found:
            raise WeightLoadError(f'{path}: folder without {" or ".join(WEIGHT_FILES)}')
        path = found[0]
    elif not path.exists():
        raise WeightLoadError(f'{path}: no such file or folder')
    sidecar = path.parent / 'config.json'
    return path, (_read_json(sidecar) if sidecar.is_file() else None)


# Entries under which checkpoints nest their state dict: Lightning / the seed, official
# TimeSformer, MAE and DeiT.
WRAPPERS = ('state_dict', 'model_state', 'model')


def unwrap(payload, path):
    """Top-level object of a checkpoint -> (state dict of tensors, the other top-level entries)."""
    if not isinstance(payload, dict):
        raise WeightLoadError(f'{path}: holds a {type(payload).__name__}, not a state dict')
    for key in WRAPPERS:
        if isinstance(payload.get(key), dict):
            extras = {name: value for name, value in payload.items() if name != key}
            payload = payload[key]
            break
    else:
        extras = {}
    state_dict = {key: value for key, value in payload.items() if isinstance(value, torch.Tensor)}
    if not state_dict:
        raise WeightLoadError(f'{path}: holds no tensors')
    return state_dict, extras


# ---------------------------------------------------------------------------------------------
# One loader: the format from the keys, then what it fixes about the model


@dataclass
class SourceWeights:
    """Weights read from a file in our classifier keys, and what they say about the model.

    fixed: config fields the weights or their own config determine; defaults: the source's
    conventions for fields the weights leave open; missing_ok: our keys the source never has.
    """

    path: Path
    format: str
    state_dict: dict
    fixed: dict
    defaults: dict
    class_names: list | None = None
    missing_ok: tuple = ()

    @property
    def num_time_steps(self):
        """Token frames of the checkpoint's position tables, when it records its frame count."""
        frames = self.fixed.get('num_frames')
        if frames is None:
            return None
        return num_token_frames(frames, self.fixed.get('conv_type'), self.fixed.get('tube_size', 1))


def _merge_fixed(from_weights, from_config, path):
    """Fields from the weights and from their config file, which must agree."""
    for name, value in from_config.items():
        if name in from_weights and from_weights[name] != value:
            raise WeightLoadError(f'{path}: its config says {name}={value!r}, '
                                  f'its weights {name}={from_weights[name]!r}')
    return {**from_weights, **from_config}


def _defaults(state_dict, **conventions):
    """A source's conventions, and heads of width 64 where it does not record them."""
    return {'num_heads': default_num_heads(state_dict['backbone.patch_embed.proj.weight'].shape[0]),
            **conventions}


def _read_ours(state_dict, extras, sidecar, path):
    if any(key.startswith('model.backbone.') for key in state_dict):
        # A training checkpoint: the classifier lives under `model.` of the LightningModule.
        state_dict = {key.removeprefix('model.'): value for key, value in state_dict.items()
                      if key.startswith('model.')}
    if sidecar is not None and sidecar.get('format') == OUR_FORMAT:
        meta = sidecar
    else:
        meta = extras.get('hyper_parameters') or {}
    config = meta.get('config')
    if config is None:
        if 'backbone.pos_embed' in state_dict and is_image_model(state_dict):
            raise WeightLoadError(f"{path}: without their config these weights could be per-frame (a per-frame "
                                  f"pos_embed) or joint space-time (a pos_embed over every frame); put the "
                                  f"config.json saved with them beside them")
        return SourceWeights(path, OUR_FORMAT, state_dict, infer_config(state_dict, path),
                             _defaults(state_dict), meta.get('class_names'))
    fixed = {name: config[name] for name in STRUCTURAL_FIELDS if name in config}
    defaults = {name: value for name, value in config.items()
                if name not in STRUCTURAL_FIELDS and name != 'pretrained'}
    return SourceWeights(path, OUR_FORMAT, state_dict, fixed, defaults, meta.get('class_names'))


def _read_seed(state_dict, extras, sidecar, path):
    converted = convert_seed(state_dict)
    defaults = _defaults(converted, norm_eps=1e-5, final_norm_eps=1e-6, activation='gelu')
    return SourceWeights(path, 'seed', converted, infer_config(converted, path), defaults)


def _read_timm(state_dict, extras, sidecar, path):
    converted = convert_timm(state_dict)
    defaults = _defaults(converted, norm_eps=1e-6, final_norm_eps=1e-6, activation='gelu')
    return SourceWeights(path, 'timm', converted, infer_config(converted, path), defaults)


def _read_mae(state_dict, extras, sidecar, path):
    converted = convert_mae(state_dict)
    defaults = _defaults(converted, norm_eps=1e-6, final_norm_eps=1e-6, activation='gelu')
    return SourceWeights(path, 'mae', converted, infer_config(converted, path), defaults,
                         missing_ok=('backbone.cls_token', 'backbone.pos_embed'))


def _read_jax_vit(state_dict, extras, sidecar, path):
    converted = convert_jax_vit(state_dict)
    heads = state_dict['Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel'].shape[1]
    defaults = {'norm_eps': 1e-6, 'final_norm_eps': 1e-6, 'activation': 'gelu'}
    return SourceWeights(path, 'jax-vit', converted, {**infer_config(converted, path), 'num_heads': heads}, defaults)


# transformers' hidden_act -> ours. gelu_new, gelu_fast and gelu_pytorch_tanh all compute the tanh
# approximation (their constants differ in the 8th digit).
HF_ACTIVATIONS = {'gelu': 'gelu', 'gelu_python': 'gelu', 'gelu_new': 'gelu_tanh', 'gelu_fast': 'gelu_tanh',
                  'gelu_pytorch_tanh': 'gelu_tanh', 'quick_gelu': 'quick_gelu'}


def _hf_common(config, path, default_activation):
    """Fields of a transformers config shared by TimeSformer and ViViT."""
    activation = config.get('hidden_act', default_activation)
    if activation not in HF_ACTIVATIONS:
        raise WeightLoadError(f'{path}: hidden_act {activation!r} is not one of {sorted(HF_ACTIVATIONS)}')
    eps = config.get('layer_norm_eps', 1e-6)
    fixed = {'num_heads': config.get('num_attention_heads', 12), 'img_size': config.get('image_size', 224)}
    defaults = {'activation': HF_ACTIVATIONS[activation], 'norm_eps': eps, 'final_norm_eps': eps}
    labels = config.get('id2label')
    class_names = [labels[key] for key in sorted(labels, key=int)] if labels else None
    return fixed, defaults, class_names


def _read_hf_timesformer(state_dict, extras, sidecar, path):
    converted = convert_hf_timesformer(state_dict)
    from_weights = infer_config(converted, path)
    attention_type = (sidecar or {}).get('attention_type', from_weights.get('attention_type'))
    if attention_type == 'space_only':
        raise WeightLoadError(f"{path}: transformers' space_only TimeSformer classifies every frame on its "
                              f"own; ours averages the frames before the final norm and cannot reproduce it")
    if sidecar is None:
        defaults = _defaults(converted, norm_eps=1e-6, final_norm_eps=1e-6, activation='gelu')
        return SourceWeights(path, 'hf-timesformer', converted, from_weights, defaults)
    fixed, defaults, class_names = _hf_common(sidecar, path, 'gelu')
    fixed.update(arch='timesformer', num_frames=sidecar.get('num_frames', 8),
                 attention_type=sidecar.get('attention_type', 'divided_space_time'))
    return SourceWeights(path, 'hf-timesformer', converted, _merge_fixed(from_weights, fixed, path),
                         defaults, class_names)


def _read_hf_vivit(state_dict, extras, sidecar, path):
    if sidecar is None:
        raise WeightLoadError(f'{path}: a transformers ViViT needs its config.json beside it '
                              f'(frames and image size order its position table)')
    tubelet = sidecar.get('tubelet_size', [2, 16, 16])
    if tubelet[1] != tubelet[2]:
        raise WeightLoadError(f'{path}: tubelet_size {tubelet} is not square in space')
    frames = sidecar.get('num_frames', 32)
    converted = convert_hf_vivit(state_dict, frames // tubelet[0])
    fixed, defaults, class_names = _hf_common(sidecar, path, 'gelu_fast')
    fixed.update(arch='vivit', attention_type='joint_space_time', pos_emb_type='joint', num_frames=frames)
    from_weights = infer_config(converted, path, pos_emb_type='joint')
    return SourceWeights(path, 'hf-vivit', converted, _merge_fixed(from_weights, fixed, path),
                         defaults, class_names)


# Formats by a key pattern only they have (matched at the start of a key), checked in order.
FORMATS = (
    (OUR_FORMAT, r'(model\.)?backbone\.', _read_ours),
    ('seed', r'(model\.)?transformer_layers\.|cls_head\.cls_head\.', _read_seed),
    ('hf-timesformer', r'(timesformer\.)?encoder\.layer\.\d+\.attention\.attention\.qkv\.', _read_hf_timesformer),
    ('hf-vivit', r'(vivit\.)?(layers\.\d+\.attention\.q_proj|encoder\.layer\.\d+\.attention\.attention\.query)\.',
     _read_hf_vivit),
    ('mae', r'encoder\.blocks\.\d+\.', _read_mae),
    ('timm', r'(model\.)?blocks\.\d+\.attn\.qkv\.', _read_timm),
    ('jax-vit', r'Transformer/encoderblock_\d+/', _read_jax_vit),
)


def detect_format(state_dict):
    """The FORMATS entry (name, pattern, reader) whose key pattern `state_dict` has, or None."""
    for entry in FORMATS:
        if any(re.match(entry[1], key) for key in state_dict):
            return entry
    return None


def read_weights(path):
    """A weights file or folder -> SourceWeights, the format read from the keys."""
    weights_file, sidecar = locate(path)
    state_dict, extras = unwrap(read_file(weights_file), weights_file)
    entry = detect_format(state_dict)
    if entry is None:
        sample = ', '.join(sorted(state_dict)[:4])
        raise WeightLoadError(f'{weights_file}: unknown weight format (keys like {sample}); expected '
                              f'{", ".join(name for name, _, _ in FORMATS)}')
    name, _, reader = entry
    try:
        return reader(state_dict, extras, sidecar, weights_file)
    except KeyError as error:
        raise WeightLoadError(f'{weights_file}: looks like {name} but lacks {error}') from None


def load_state_dict_strictly(module, state_dict, path, expected_missing=()):
    """Load `state_dict` into `module`: every key must fit, only `expected_missing` may be absent.

    Returns the missing keys (a subset of `expected_missing`).
    """
    own = module.state_dict()
    unexpected = sorted(set(state_dict) - set(own))
    missing = sorted(set(own) - set(state_dict))
    surprising = [key for key in missing if key not in expected_missing]
    mismatched = [f'{key} {tuple(value.shape)} vs {tuple(own[key].shape)}'
                  for key, value in state_dict.items() if key in own and value.shape != own[key].shape]
    problems = [f'{label}: {", ".join(keys[:6])}{" ..." if len(keys) > 6 else ""}'
                for label, keys in (('missing', surprising), ('unexpected', unexpected),
                                    ('wrong shape (file vs model)', mismatched)) if keys]
    if problems:
        raise WeightLoadError(f'{path}: weights do not fit the model; {"; ".join(problems)}')
    module.load_state_dict(state_dict, strict=False)
    return missing


def init_from_pretrained_(model, path):
    """Initialise a VideoTransformer in place from any supported weights at `path`.

    Image models (timm, .npz, MAE, the seed's ViT) are inflated by the config's extend_strategy
    and copy_strategy; video models load as they are. Position tables are resized to the config,
    a classification head is not used, and with fixed sine-cosine positions the checkpoint's
    learnt tables are left out. MAE's patch positions are its fixed sine-cosine table.
    """
    config = model.config
    source = read_weights(path)
    heads = source.fixed.get('num_heads', config.num_heads)
    if heads != config.num_heads:
        raise WeightLoadError(f'{source.path}: has {heads} heads, the model {config.num_heads}')
    state_dict = {key: value for key, value in source.state_dict.items() if key not in HEAD_KEYS}
    notes = []
    if not config.use_learnable_pos_emb:
        for name in ('pos_embed', 'time_embed'):
            if state_dict.pop(f'backbone.{name}', None) is not None:
                notes.append(f'{name} left out: the model keeps its sine-cosine table')
    elif source.format == 'mae':
        # MAE-pytorch computes its table (P rows, no class row) instead of storing it; MAE has no
        # class token, so the class row keeps the model's own init.
        patches = sine_cosine_table(config.num_patches, config.embed_dims)
        state_dict['backbone.pos_embed'] = torch.cat((model.pos_embed[:, :1].detach(), patches), dim=1)
        notes.append("pos_embed patch rows from MAE's fixed sine-cosine table, class row from the model's init")
    time_steps = source.num_time_steps
    kind = source.fixed.get('pos_emb_type', config.pos_emb_type)
    left_at_init = ()
    if is_image_model(state_dict, source.fixed.get('pos_emb_type', 'separate')):
        state_dict, left_at_init = inflate_image_model(state_dict, config)
        time_steps = config.num_time_steps  # a joint table now spans the model's frames
    elif 'backbone.pos_embed' in state_dict and kind != config.pos_emb_type:
        # Rows alone cannot always tell: 1 + P*T' may be 1 + a square.
        raise WeightLoadError(f'{source.path}: has a {kind!r} position table; start from it with '
                              f'pos_emb_type={kind!r}, not {config.pos_emb_type!r}')
    state_dict, resized = resize_position_tables(state_dict, config, time_steps, source.path)
    state_dict = strip_prefix(state_dict, 'backbone.')
    expected = tuple(key.removeprefix('backbone.') for key in source.missing_ok + left_at_init)
    missing = load_state_dict_strictly(model, state_dict, source.path, expected)
    logger.info('Initialised %s %s from %s: format %s; missing keys %s; unexpected keys []%s',
                config.arch, config.attention_type, source.path, source.format, missing,
                ''.join(f'; {note}' for note in notes + resized))


# ---------------------------------------------------------------------------------------------
# Export


def _named_tables(model):
    """Classifier state dict, with fixed sine-cosine tables included (they are not persistent)."""
    state_dict = model.state_dict()
    for name in ('pos_embed', 'time_embed'):
        table = getattr(model.backbone, name)
        if table is not None:
            state_dict[f'backbone.{name}'] = table
    return state_dict


def _write_folder(directory, tensors, config):
    """Write `tensors` as directory/model.safetensors and `config` as directory/config.json.

    Both are written into a temporary folder beside `directory` first and then moved into place
    with os.replace, so a failure never leaves a half-written file over a good export, and the
    window for new weights beside an old config.json is two renames.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise WeightLoadError(f'{directory}: exists and is not a folder')
    text = json.dumps(config, indent=2) + '\n'
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f'.{directory.name}.', dir=directory.parent))
    try:
        save_file(tensors, staging / 'model.safetensors', metadata={'format': 'pt'})
        (staging / 'config.json').write_text(text)
        for name in ('model.safetensors', 'config.json'):
            os.replace(staging / name, directory / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def save_weights(model, directory):
    """Write a VideoClassifier as directory/model.safetensors (our keys) + directory/config.json
    ({'format', 'config', 'class_names'}), which load_model reads back exactly."""
    tensors = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    meta = {'format': OUR_FORMAT, 'config': model.config.to_dict(), 'class_names': model.class_names}
    return _write_folder(directory, tensors, meta)


def hf_timesformer_config(config, class_names=None):
    """transformers' TimesformerConfig fields (a dict) for our TimeSformer `config`; ValueError for
    one transformers cannot express."""
    activation = {'gelu': 'gelu', 'gelu_tanh': 'gelu_pytorch_tanh', 'quick_gelu': 'quick_gelu'}[config.activation]
    unsupported = [
        (config.conv_type == 'Conv2d', 'Conv2d patches'),
        (config.pos_emb_type == 'separate', "pos_emb_type 'separate'"),
        # transformers' space_only classifies every frame instead of averaging them.
        (config.attention_type in ('divided_space_time', 'joint_space_time'), 'divided or joint attention'),
        (config.norm_eps == config.final_norm_eps,
         f'one LayerNorm eps (norm_eps {config.norm_eps} vs final_norm_eps {config.final_norm_eps})'),
        (config.return_cls_token, 'the class token as output'),
    ]
    needed = [what for holds, what in unsupported if not holds]
    if needed:
        raise ValueError(f'transformers TimeSformer needs {", ".join(needed)}')
    names = class_names or [f'LABEL_{index}' for index in range(config.num_classes)]
    return {
        'model_type': 'timesformer', 'architectures': ['TimesformerForVideoClassification'],
        'image_size': config.img_size, 'patch_size': config.patch_size, 'num_channels': config.in_channels,
        'num_frames': config.num_frames, 'hidden_size': config.embed_dims,
        'num_hidden_layers': config.num_transformer_layers, 'num_attention_heads': config.num_heads,
        'intermediate_size': int(config.embed_dims * config.mlp_ratio), 'hidden_act': activation,
        'hidden_dropout_prob': config.dropout_p, 'attention_probs_dropout_prob': config.dropout_p,
        'initializer_range': 0.02, 'layer_norm_eps': config.norm_eps, 'qkv_bias': config.qkv_bias,
        # drop_path_rate stays out: transformers 5.23 types it as int and rejects a float.
        'attention_type': config.attention_type,
        'id2label': {str(index): name for index, name in enumerate(names)},
        'label2id': {name: index for index, name in enumerate(names)},
    }


def save_hf_timesformer(model, directory):
    """Write a TimeSformer VideoClassifier as a transformers TimesformerForVideoClassification
    folder (config.json + model.safetensors) that `from_pretrained` loads."""
    hf_config = hf_timesformer_config(model.config, model.class_names)
    tensors = {key: value.detach().contiguous()
               for key, value in convert_to_hf_timesformer(_named_tables(model)).items()}
    return _write_folder(directory, tensors, hf_config)
