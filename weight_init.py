"""Initialisation of the video transformers and converters from other weight formats."""
import re

from torch import nn


def init_video_transformer_(model):
    """Initialise a VideoTransformer in place, following the seed repository.

    Linear layers: truncated normal (std 0.02), zero bias; patch embedding: Kaiming fan-in;
    learnable position tables and the class token: truncated normal (std 0.02); temporal_fc: zero,
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


def rename_keys(state_dict, pairs):
    """A copy of `state_dict` with key prefixes renamed by (source, target) pairs.

    '{}' in a pair stands for a layer index. The first matching pair wins; keys that match none
    are kept as they are, so strict loading reports them.
    """
    patterns = [(re.compile(re.escape(source).replace(r'\{\}', r'(\d+)') + r'(?=\.|$)'), target)
                for source, target in pairs]
    renamed = {}
    for key, value in state_dict.items():
        for pattern, target in patterns:
            match = pattern.match(key)
            if match:
                key = target.format(*match.groups()) + key[match.end():]
                break
        renamed[key] = value
    return renamed


def strip_prefix(state_dict, prefix):
    """Keys starting with `prefix` without it; other keys unchanged."""
    return {key[len(prefix):] if key.startswith(prefix) else key: value
            for key, value in state_dict.items()}


def _hf_timesformer_pairs(divided):
    """(transformers TimesformerModel, our backbone) key prefixes; the spatial attention of a
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
    return rename_keys(state_dict, _hf_timesformer_pairs(divided))


def convert_to_hf_timesformer(state_dict):
    """Our TimeSformer classifier keys -> transformers TimesformerForVideoClassification keys
    (bare TimesformerModel keys when there is no head.fc)."""
    divided = any('.temporal_attn.' in key for key in state_dict)
    pairs = [(ours, theirs) for theirs, ours in _hf_timesformer_pairs(divided)]
    converted = rename_keys(state_dict, pairs)
    if 'head.fc.weight' not in state_dict:
        return converted
    return {key if key.startswith('classifier.') else f'timesformer.{key}': value
            for key, value in converted.items()}
