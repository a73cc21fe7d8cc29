"""Weight formats: the error every loader raises, key helpers and one pure converter per source.

A converter takes a state dict in a source's keys and returns a new one in our classifier's keys
(backbone.*, head.fc.*); it reads no file, builds no model and leaves its input alone. Keys it does
not know are passed through unchanged, so strict loading names them.
"""
import re

import torch
from einops import rearrange

OUR_FORMAT = 'videotransformer-pytorch'
HEAD_KEYS = ('head.fc.weight', 'head.fc.bias')
# transformers' hidden_act -> ours, and ours -> the name our transformers exports write. gelu_new,
# gelu_fast and gelu_pytorch_tanh all compute the tanh approximation (their constants differ in the
# 8th digit).
FROM_HF_ACTIVATION = {'gelu': 'gelu', 'gelu_python': 'gelu', 'gelu_new': 'gelu_tanh', 'gelu_fast': 'gelu_tanh',
                      'gelu_pytorch_tanh': 'gelu_tanh', 'quick_gelu': 'quick_gelu'}
TO_HF_ACTIVATION = {'gelu': 'gelu', 'gelu_tanh': 'gelu_pytorch_tanh', 'quick_gelu': 'quick_gelu'}


class WeightLoadError(ValueError):
    """A weights file that cannot be read, recognised, fitted to the requested model or written
    in the requested format."""


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


def count_layers(state_dict, prefix, separator='.'):
    """Number of layers `prefix` + index + separator among the keys."""
    pattern = re.compile(re.escape(prefix) + r'(\d+)' + re.escape(separator))
    indices = {int(match[1]) for match in map(pattern.match, state_dict) if match}
    return max(indices) + 1 if indices else 0


# ---------------------------------------------------------------------------------------------
# Converters: one per source format, state dict in, our keys out


def convert_original(state_dict):
    """The original repository (mmcv-style keys) -> our keys.

    Its Lightning checkpoints (backbone under `model.`, head `cls_head.cls_head`) of TimeSformer and
    ViViT in every attention type, and its ImageNet ViT file (`norms.0/1` beside the attention).
    q, k, v are packed as in nn.MultiheadAttention (`in_proj_*`), the same order as our qkv.
    A divided block's attentions.0 is the temporal one and attentions.1 the spatial one. At commit
    37e1801 the temporal encoder of ViViT's fact_encoder has a temporal_fc after its attention
    (`transformer_layers.1.layers.N.attentions.0.temporal_fc`), kept as `temporal_blocks.N.attn.temporal_fc`.
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


# The pretraining decoder of an MAE or VideoMAE checkpoint (MAE-pytorch's, MCG-NJU's and transformers'),
# unused by an encoder.
PRETRAINING_DECODER = re.compile(r'^(decoder\.|encoder_to_decoder\.|mask_token$|position_embeddings$)')


def convert_mae(state_dict):
    """MAE-pytorch pretraining checkpoint (`encoder.blocks.N...`) -> our keys, decoder dropped.

    Its attention trains q and v biases only (k's is zero). It has no class token, and its fixed
    sine-cosine position table is not in the state dict; both stay as the model initialises them.
    """
    encoder = {key.removeprefix('encoder.'): value for key, value in state_dict.items()
               if not PRETRAINING_DECODER.match(key)}
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


# Keys of VideoMAE and V-JEPA 2 blocks, transformers' names -> ours, after the layer prefix.
HF_BLOCK_RULES = [
    (r'\.(?:layernorm_before|norm1)\.', '.attn.norm.'),
    (r'\.(?:layernorm_after|norm2)\.', '.ffn.norm.'),
    (r'\.attention\.attention\.(?:q_bias|query\.bias)$', '.attn.attn.q_bias'),
    (r'\.attention\.attention\.(?:v_bias|value\.bias)$', '.attn.attn.v_bias'),
    (r'\.attention(?:\.attention)?\.query\.', '.attn.attn.q.'),
    (r'\.attention(?:\.attention)?\.key\.', '.attn.attn.k.'),
    (r'\.attention(?:\.attention)?\.value\.', '.attn.attn.v.'),
    (r'\.attention\.(?:output\.dense|proj)\.', '.attn.attn.proj.'),
    (r'\.(?:intermediate\.dense|mlp\.fc1)\.', '.ffn.fc1.'),
    (r'\.(?:output\.dense|mlp\.fc2)\.', '.ffn.fc2.'),
]


def convert_hf_videomae(state_dict):
    """transformers VideoMAEForVideoClassification, VideoMAEModel or VideoMAEForPreTraining -> our keys,
    the pretraining decoder dropped.

    q and v biases stay separate (`q_bias`, `v_bias`: transformers 4.x names them so, 5.x `query.bias`
    and `value.bias`); the separate q, k, v weights are fused. fc_norm is our final norm.
    """
    encoder = {key: value for key, value in strip_prefix(state_dict, 'videomae.').items()
               if not PRETRAINING_DECODER.match(key)}
    return fuse_qkv(rename_keys(encoder, [
        (r'^embeddings\.patch_embeddings\.projection\.', 'backbone.patch_embed.proj.'),
        (r'^encoder\.layer\.(\d+)\.', r'backbone.blocks.\1.'),
        *HF_BLOCK_RULES,
        (r'^fc_norm\.', 'backbone.norm.'),
        (r'^classifier\.', 'head.fc.'),
    ]))


def convert_videomae(state_dict):
    """MCG-NJU VideoMAE checkpoints -> our keys: fine-tuned (`run_class_finetuning.py`: `blocks.N.attn.qkv`,
    `attn.q_bias`, `attn.v_bias`, `fc_norm`, `head`) or pretrained (`encoder.` prefix; the decoder and
    the encoder's own final norm, which fine-tuning replaces by a new fc_norm, are dropped)."""
    pretraining = any(key.startswith('encoder.') for key in state_dict)
    encoder = {key.removeprefix('encoder.'): value for key, value in state_dict.items()
               if not PRETRAINING_DECODER.match(key) and not (pretraining and key.startswith('encoder.norm.'))}
    return rename_keys(encoder, [
        (r'^patch_embed\.proj\.', 'backbone.patch_embed.proj.'),
        (r'^blocks\.(\d+)\.norm1\.', r'backbone.blocks.\1.attn.norm.'),
        (r'^blocks\.(\d+)\.attn\.', r'backbone.blocks.\1.attn.attn.'),
        (r'^blocks\.(\d+)\.norm2\.', r'backbone.blocks.\1.ffn.norm.'),
        (r'^blocks\.(\d+)\.mlp\.', r'backbone.blocks.\1.ffn.'),
        (r'^fc_norm\.', 'backbone.norm.'),
        (r'^head\.', 'head.fc.'),
    ])


def convert_hf_vjepa2(state_dict):
    """transformers VJEPA2ForVideoClassification or VJEPA2Model -> our keys, the predictor dropped.

    The encoder's separate q, k, v are fused; the attentive pooler becomes our head's pooler: its
    self-attention layers `head.pooler.blocks.N`, its query's cross-attention `head.pooler.norm`,
    `cross_attn` and `ffn`.
    """
    state_dict = {key: value for key, value in strip_prefix(state_dict, 'vjepa2.').items()
                  if not key.startswith('predictor.')}
    return fuse_qkv(rename_keys(state_dict, [
        (r'^encoder\.embeddings\.patch_embeddings\.proj\.', 'backbone.patch_embed.proj.'),
        (r'^encoder\.layer\.(\d+)\.', r'backbone.blocks.\1.'),
        (r'^encoder\.layernorm\.', 'backbone.norm.'),
        (r'^pooler\.query_tokens$', 'head.pooler.query'),
        (r'^pooler\.self_attention_layers\.(\d+)\.layer_norm1\.', r'head.pooler.blocks.\1.attn.norm.'),
        (r'^pooler\.self_attention_layers\.(\d+)\.self_attn\.(q|k|v)_proj\.', r'head.pooler.blocks.\1.attn.attn.\2.'),
        (r'^pooler\.self_attention_layers\.(\d+)\.self_attn\.out_proj\.', r'head.pooler.blocks.\1.attn.attn.proj.'),
        (r'^pooler\.self_attention_layers\.(\d+)\.layer_norm2\.', r'head.pooler.blocks.\1.ffn.norm.'),
        (r'^pooler\.self_attention_layers\.(\d+)\.mlp\.', r'head.pooler.blocks.\1.ffn.'),
        (r'^pooler\.cross_attention_layer\.layer_norm1\.', 'head.pooler.norm.'),
        (r'^pooler\.cross_attention_layer\.cross_attn\.(q|k|v)_proj\.', r'head.pooler.cross_attn.\1.'),
        (r'^pooler\.cross_attention_layer\.layer_norm2\.', 'head.pooler.ffn.norm.'),
        (r'^pooler\.cross_attention_layer\.mlp\.', 'head.pooler.ffn.'),
        (r'^classifier\.', 'head.fc.'),
        *HF_BLOCK_RULES,  # after the pooler's, whose layers have some of the same names
    ]))


def split_qkv(state_dict):
    """Our fused `.qkv.` projections -> separate `.q.`, `.k.`, `.v.` (the inverse of fuse_qkv); a
    VideoMAE attention's `q_bias` and `v_bias` stay as they are."""
    split = {}
    for key, value in state_dict.items():
        match = re.fullmatch(r'(.+)\.qkv\.(weight|bias)', key)
        if match is None:
            split[key] = value
            continue
        for name, part in zip('qkv', value.chunk(3)):
            split[f'{match[1]}.{name}.{match[2]}'] = part
    return split


# Our block keys -> transformers' VideoMAELayer keys, after the layer prefix (q, k, v split apart by
# split_qkv; the q and v biases under the names transformers 4 wrote, which transformers 5 also reads).
TO_HF_VIDEOMAE_LAYER_RULES = [
    (r'\.attn\.norm\.', '.layernorm_before.'),
    (r'\.attn\.attn\.q_bias$', '.attention.attention.q_bias'),
    (r'\.attn\.attn\.v_bias$', '.attention.attention.v_bias'),
    (r'\.attn\.attn\.q\.', '.attention.attention.query.'),
    (r'\.attn\.attn\.k\.', '.attention.attention.key.'),
    (r'\.attn\.attn\.v\.', '.attention.attention.value.'),
    (r'\.attn\.attn\.proj\.', '.attention.output.dense.'),
    (r'\.ffn\.norm\.', '.layernorm_after.'),
    (r'\.ffn\.fc1\.', '.intermediate.dense.'),
    (r'\.ffn\.fc2\.', '.output.dense.'),
]


def convert_to_hf_videomae(state_dict):
    """Our VideoMAE classifier keys -> transformers VideoMAEForVideoClassification keys (a backbone
    alone -> the `videomae.` keys of any VideoMAE class)."""
    if any(key.endswith('.qkv.bias') for key in state_dict):
        raise WeightLoadError("transformers' VideoMAE has no key bias: only qkv_bias 'qv' or 'none' converts")
    return rename_keys(split_qkv(state_dict), [
        (r'^backbone\.patch_embed\.proj\.', 'videomae.embeddings.patch_embeddings.projection.'),
        (r'^backbone\.blocks\.(\d+)\.', r'videomae.encoder.layer.\1.'),
        *TO_HF_VIDEOMAE_LAYER_RULES,
        (r'^backbone\.norm\.', 'fc_norm.'),
        (r'^head\.fc\.', 'classifier.'),
    ])


def convert_to_hf_vjepa2(state_dict):
    """Our V-JEPA 2 classifier keys -> transformers VJEPA2ForVideoClassification keys (no predictor)."""
    return rename_keys(split_qkv(state_dict), [
        (r'^backbone\.patch_embed\.proj\.', 'vjepa2.encoder.embeddings.patch_embeddings.proj.'),
        (r'^backbone\.blocks\.(\d+)\.attn\.norm\.', r'vjepa2.encoder.layer.\1.norm1.'),
        (r'^backbone\.blocks\.(\d+)\.attn\.attn\.(q|k|v)\.', r'vjepa2.encoder.layer.\1.attention.\2.'),
        (r'^backbone\.blocks\.(\d+)\.attn\.attn\.proj\.', r'vjepa2.encoder.layer.\1.attention.proj.'),
        (r'^backbone\.blocks\.(\d+)\.ffn\.norm\.', r'vjepa2.encoder.layer.\1.norm2.'),
        (r'^backbone\.blocks\.(\d+)\.ffn\.', r'vjepa2.encoder.layer.\1.mlp.'),
        (r'\.attention\.q\.', '.attention.query.'),
        (r'\.attention\.k\.', '.attention.key.'),
        (r'\.attention\.v\.', '.attention.value.'),
        (r'^backbone\.norm\.', 'vjepa2.encoder.layernorm.'),
        (r'^head\.pooler\.query$', 'pooler.query_tokens'),
        (r'^head\.pooler\.blocks\.(\d+)\.attn\.norm\.', r'pooler.self_attention_layers.\1.layer_norm1.'),
        (r'^head\.pooler\.blocks\.(\d+)\.attn\.attn\.(q|k|v)\.', r'pooler.self_attention_layers.\1.self_attn.\2_proj.'),
        (r'^head\.pooler\.blocks\.(\d+)\.attn\.attn\.proj\.', r'pooler.self_attention_layers.\1.self_attn.out_proj.'),
        (r'^head\.pooler\.blocks\.(\d+)\.ffn\.norm\.', r'pooler.self_attention_layers.\1.layer_norm2.'),
        (r'^head\.pooler\.blocks\.(\d+)\.ffn\.', r'pooler.self_attention_layers.\1.mlp.'),
        (r'^head\.pooler\.norm\.', 'pooler.cross_attention_layer.layer_norm1.'),
        (r'^head\.pooler\.cross_attn\.(q|k|v)\.', r'pooler.cross_attention_layer.cross_attn.\1_proj.'),
        (r'^head\.pooler\.ffn\.norm\.', 'pooler.cross_attention_layer.layer_norm2.'),
        (r'^head\.pooler\.ffn\.', 'pooler.cross_attention_layer.mlp.'),
        (r'^head\.fc\.', 'classifier.'),
    ])
