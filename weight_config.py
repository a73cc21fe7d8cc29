"""What weights say about the model: config fields read from our keys (infer_config), the
conventions sources share, and SourceWeights, what every source's reader returns.
"""
import math
from dataclasses import dataclass
from pathlib import Path

from transformer import num_token_frames
from video_transformer import ARCHITECTURES
from weight_formats import WeightLoadError, count_layers


# Config fields that describe the network's structure; a source that records them fixes them.
STRUCTURAL_FIELDS = (
    'arch', 'attention_type', 'num_frames', 'img_size', 'patch_size', 'embed_dims', 'num_heads',
    'num_transformer_layers', 'num_time_transformer_layers', 'fact_encoder_attention', 'in_channels',
    'conv_type', 'tube_size', 'use_learnable_pos_emb', 'pos_emb_type', 'pooling', 'num_pooler_layers', 'mlp_ratio',
    'qkv_bias', 'num_classes',
)


# Config fields of earlier versions that describe how a model was started, not the model: saved
# configs that carry them still load.
RETIRED_FIELDS = ('pretrained', 'copy_strategy', 'extend_strategy')


def current_fields(config, path):
    """A saved config dict in today's fields: retired fields left out, the original repository's
    return_cls_token as the pooling it names; a WeightLoadError naming `path` when it is no dict."""
    if not isinstance(config, dict):
        raise WeightLoadError(f'{path}: its config is {type(config).__name__} {config!r:.40}, not the fields of a '
                              f'model; put the config.json saved with the weights beside them')
    config = {name: value for name, value in config.items() if name not in RETIRED_FIELDS}
    if 'return_cls_token' in config:
        config['pooling'] = 'cls_token' if config.pop('return_cls_token') else 'mean'
    return config

# Attention types whose weights have the same keys and shapes: either agrees with such weights.
SAME_KEYS = {'joint_space_time': 'fact_dot_product', 'fact_dot_product': 'joint_space_time'}


def default_num_heads(embed_dims):
    """Heads of width 64, the convention of every standard ViT size from tiny to large."""
    return max(1, embed_dims // 64)


def infer_config(state_dict, path, pos_emb_type='separate', arch=None):
    """Config fields that our classifier keys determine: sizes from shapes, variant from the keys.

    Joint space-time and fact_dot_product share their keys (SAME_KEYS); a model without stored
    position tables leaves the attention type open. A fact_encoder whose temporal layers have a
    temporal_fc is the original repository's 37e1801 layout (fact_encoder_attention 'divided'). A joint position
    table leaves the image size and frame count open (its length is their product); one passed as
    'separate' is refused where the keys show it (temporal layers but no time table, or no square
    grid). `arch` names the architecture of tubelet weights without position tables (VideoMAE,
    V-JEPA 2); else tubelets mean ViViT. `path` names the file.
    """
    proj = state_dict['backbone.patch_embed.proj.weight']
    dim = proj.shape[0]
    fields = {
        'embed_dims': dim, 'in_channels': proj.shape[1], 'patch_size': proj.shape[-1],
        'conv_type': 'Conv3d' if proj.ndim == 5 else 'Conv2d',
        'num_transformer_layers': count_layers(state_dict, 'backbone.blocks.'),
        'mlp_ratio': state_dict['backbone.blocks.0.ffn.fc1.weight'].shape[0] / dim,
        'qkv_bias': 'qv' if any(key.endswith('.q_bias') for key in state_dict)
        else 'qkv' if any(key.endswith('.qkv.bias') for key in state_dict) else 'none',
    }
    tube_size = 1
    if proj.ndim == 5:
        tube_size = proj.shape[2]
        fields.update(arch=arch or 'vivit', tube_size=tube_size)
    if arch in ('videomae', 'vjepa2'):
        fields = {**ARCHITECTURES[arch].arch_defaults, **fields}
        if 'head.pooler.query' in state_dict:
            fields['num_pooler_layers'] = count_layers(state_dict, 'head.pooler.blocks.')
    time_layers = count_layers(state_dict, 'backbone.temporal_blocks.')
    if time_layers:
        divided = any(key.startswith('backbone.temporal_blocks.') and '.temporal_fc.' in key for key in state_dict)
        fields.update(arch='vivit', attention_type='fact_encoder', num_time_transformer_layers=time_layers,
                      fact_encoder_attention='divided' if divided else 'self_attn')
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


@dataclass
class SourceWeights:
    """Weights read from a file in our classifier keys, and what they say about the model.

    fixed: config fields the weights or their own config determine; defaults: the source's
    conventions for fields the weights leave open; missing_ok: our keys the source never has (a key
    ending in '.' stands for every key under it); notes: what reading left out, for the summary line;
    preprocessing: Preprocessing fields the source was trained with (img_size and short_side its
    own), None for image models and files that do not say.
    """

    path: Path
    format: str
    state_dict: dict
    fixed: dict
    defaults: dict
    class_names: list | None = None
    missing_ok: tuple = ()
    preprocessing: dict | None = None
    notes: tuple = ()

    @property
    def num_time_steps(self):
        """Token frames of the checkpoint's position tables, when it records its frame count."""
        frames = self.fixed.get('num_frames')
        if frames is None:
            return None
        return num_token_frames(frames, self.fixed.get('conv_type'), self.fixed.get('tube_size', 1))


def merge_fixed(from_weights, from_config, path):
    """Fields from the weights and from their config file, which must agree."""
    for name, value in from_config.items():
        if name in from_weights and from_weights[name] != value:
            raise WeightLoadError(f'{path}: its config says {name}={value!r}, '
                                  f'its weights {name}={from_weights[name]!r}')
    return {**from_weights, **from_config}


# The conventions of official TimeSformer, timm, MAE, the JAX ViTs and transformers for fields
# their weights leave open; a source that differs (the original repository's norm_eps) says so.
SOURCE_DEFAULTS = {'norm_eps': 1e-6, 'final_norm_eps': 1e-6, 'activation': 'gelu'}


def source_defaults(state_dict, **differences):
    """A source's conventions for fields its weights (our keys) leave open: SOURCE_DEFAULTS with
    `differences`, and heads of width 64 in case the source does not record its head count."""
    return {'num_heads': default_num_heads(state_dict['backbone.patch_embed.proj.weight'].shape[0]),
            **SOURCE_DEFAULTS, **differences}
