"""Weight formats: tiny checkpoints fabricated in each source's exact key layout, randomised
everywhere, checked against an independent computation of that source's own forward pass."""
import argparse
import json
import logging
import math
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat
from safetensors.torch import save_file

from reference import layer_norm, linear, qkv_attention, randomise_, vit_features
from utils import count_parameters
from video_transformer import (TimeSformer, VideoClassifier, ViViT, load_model, timesformer_base_patch16_224,
                               timesformer_tiny, vivit_tiny)
from weight_init import (WeightLoadError, convert_hf_timesformer, convert_hf_vivit, convert_jax_vit,
                         convert_mae, convert_seed, convert_timm, convert_to_hf_timesformer,
                         inflate_image_model, resize_position_tables, save_hf_timesformer, save_weights)

ROOT = Path(__file__).resolve().parents[1]
DIM, HEADS, LAYERS, SIZE, PATCH, FRAMES, CLASSES = 32, 2, 2, 32, 8, 4, 5
GRID = SIZE // PATCH


def randn(*shape, generator):
    return torch.randn(shape, generator=generator) * 0.3


def random_state(shapes, seed=0):
    """{key: shape} -> {key: random tensor}, no zeros or ones anywhere."""
    generator = torch.Generator().manual_seed(seed)
    return {key: randn(*shape, generator=generator) for key, shape in shapes.items()}




def video(batch=2, frames=FRAMES, size=SIZE, seed=1):
    return torch.randn(batch, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# Independent references: plain torch over each source's own keys






def mha(x, state, prefix, heads):
    """nn.MultiheadAttention's own forward on (N, L, D), weights as the seed stores them."""
    x = x.transpose(0, 1)
    out, _ = F.multi_head_attention_forward(
        x, x, x, x.shape[-1], heads, state[prefix + '.in_proj_weight'], state[prefix + '.in_proj_bias'],
        None, None, False, 0.0, state[prefix + '.out_proj.weight'], state[prefix + '.out_proj.bias'],
        training=False, need_weights=False)
    return out.transpose(0, 1)




def seed_forward(state, clip, attention_type, heads):
    """The seed's TimeSformer / ViViT forward and head, step by step as its code runs them.

    LayerNorm eps 1e-5 in the blocks, 1e-6 at the end; the class token of fact_encoder is the
    seed's x[:b, 0], so call it with one video at a time.
    """
    s = {key.removeprefix('model.'): value for key, value in state.items()}
    batch, frames = clip.shape[:2]
    kernel = s['patch_embed.projection.weight']
    if kernel.ndim == 5:
        x = F.conv3d(rearrange(clip, 'b t c h w -> b c t h w'), kernel, s['patch_embed.projection.bias'],
                     stride=kernel.shape[2:])
        x = rearrange(x, 'b c t h w -> (b t) (h w) c')
        frames //= kernel.shape[2]
    else:
        x = F.conv2d(rearrange(clip, 'b t c h w -> (b t) c h w'), kernel, s['patch_embed.projection.bias'],
                     stride=kernel.shape[2:])
        x = rearrange(x, 'b c h w -> b (h w) c')
    x = torch.cat((repeat(s['cls_token'], '1 1 d -> n 1 d', n=x.shape[0]), x), dim=1) + s['pos_embed']
    if attention_type not in ('space_only', 'fact_encoder'):
        cls_token = x[:batch, :1]
        x = rearrange(x[:, 1:], '(b t) p d -> (b p) t d', b=batch) + s['time_embed']
        x = torch.cat((cls_token, rearrange(x, '(b p) t d -> b (p t) d', b=batch)), dim=1)

    def block(x, prefix, divided):
        if divided:
            cls_token, patches = x[:, :1], x[:, 1:]
            query = rearrange(patches, 'b (p t) d -> (b p) t d', t=frames)
            out = mha(layer_norm(query, s, prefix + '.attentions.0.norm', 1e-5), s,
                      prefix + '.attentions.0.attn', heads)
            out = linear(out, s, prefix + '.attentions.0.temporal_fc')
            x = torch.cat((cls_token, patches + rearrange(out, '(b p) t d -> b (p t) d', b=x.shape[0])), dim=1)
            cls_token, patches = x[:, :1], x[:, 1:]
            query = rearrange(patches, 'b (p t) d -> (b t) p d', t=frames)
            query = torch.cat((repeat(cls_token, 'b 1 d -> (b t) 1 d', t=frames), query), dim=1)
            out = mha(layer_norm(query, s, prefix + '.attentions.1.norm', 1e-5), s,
                      prefix + '.attentions.1.attn', heads)
            cls_out = reduce(out[:, :1], '(b t) 1 d -> b 1 d', 'mean', t=frames)
            x = x + torch.cat((cls_out, rearrange(out[:, 1:], '(b t) p d -> b (p t) d', t=frames)), dim=1)
        else:
            x = x + mha(layer_norm(x, s, prefix + '.attentions.0.norm', 1e-5), s, prefix + '.attentions.0.attn', heads)
        hidden = F.gelu(linear(layer_norm(x, s, prefix + '.ffns.0.norm', 1e-5), s, prefix + '.ffns.0.layers.0.0'))
        return x + linear(hidden, s, prefix + '.ffns.0.layers.1')

    if attention_type == 'fact_encoder':
        for index in range(LAYERS):
            x = block(x, f'transformer_layers.0.layers.{index}', False)
        cls_token = x[:batch, :1]
        x = reduce(rearrange(x[:, 1:], '(b t) p d -> b t p d', b=batch), 'b t p d -> b t d', 'mean')
        x = torch.cat((cls_token, x), dim=1) + s['time_embed']
        for index in range(2):
            x = block(x, f'transformer_layers.1.layers.{index}', False)
    else:
        for index in range(LAYERS):
            x = block(x, f'transformer_layers.layers.{index}', attention_type == 'divided_space_time')
    if attention_type == 'space_only':
        x = reduce(rearrange(x, '(b t) p d -> b t p d', b=batch), 'b t p d -> b p d', 'mean')
    return F.linear(layer_norm(x, s, 'norm', 1e-6)[:, 0], state['cls_head.cls_head.weight'],
                    state['cls_head.cls_head.bias'])


def official_forward(state, clip, heads, eps=1e-6):
    """facebookresearch/TimeSformer vit.py (divided, joint or space_only), on its `model.` keys."""
    s = {key.removeprefix('model.'): value for key, value in state.items()}
    batch, frames = clip.shape[:2]
    kernel = s['patch_embed.proj.weight']
    x = F.conv2d(rearrange(clip, 'b t c h w -> (b t) c h w'), kernel, s['patch_embed.proj.bias'],
                 stride=kernel.shape[2:])
    x = rearrange(x, 'n d h w -> n (h w) d')
    x = torch.cat((repeat(s['cls_token'], '1 1 d -> n 1 d', n=x.shape[0]), x), dim=1) + s['pos_embed']
    divided = 'blocks.0.temporal_fc.weight' in s
    space_only = 'time_embed' not in s
    if not space_only:
        cls_token = x[:batch, :1]
        x = rearrange(x[:, 1:], '(b t) n m -> (b n) t m', b=batch) + s['time_embed']
        x = torch.cat((cls_token, rearrange(x, '(b n) t m -> b (n t) m', b=batch)), dim=1)
    for index in range(LAYERS):
        p = f'blocks.{index}.'
        if divided:
            xt = rearrange(x[:, 1:], 'b (n t) m -> (b n) t m', t=frames)
            res = qkv_attention(layer_norm(xt, s, p + 'temporal_norm1', eps), s, p + 'temporal_attn', heads)
            res = linear(rearrange(res, '(b n) t m -> b (n t) m', b=batch), s, p + 'temporal_fc')
            xt = x[:, 1:] + res
            init_cls = x[:, :1]
            xs = rearrange(xt, 'b (n t) m -> (b t) n m', t=frames)
            xs = torch.cat((repeat(init_cls, 'b 1 m -> (b t) 1 m', t=frames), xs), dim=1)
            res = qkv_attention(layer_norm(xs, s, p + 'norm1', eps), s, p + 'attn', heads)
            cls_res = reduce(res[:, :1], '(b t) 1 m -> b 1 m', 'mean', b=batch)
            res = rearrange(res[:, 1:], '(b t) n m -> b (n t) m', b=batch)
            x = torch.cat((init_cls, xt), dim=1) + torch.cat((cls_res, res), dim=1)
        else:
            x = x + qkv_attention(layer_norm(x, s, p + 'norm1', eps), s, p + 'attn', heads)
        x = x + linear(F.gelu(linear(layer_norm(x, s, p + 'norm2', eps), s, p + 'mlp.fc1')), s, p + 'mlp.fc2')
    if space_only:
        x = reduce(x, '(b t) n m -> b n m', 'mean', b=batch)
    return linear(layer_norm(x, s, 'norm', eps)[:, 0], s, 'head')




# ---------------------------------------------------------------------------------------------
# Key layouts of each source, {key: shape}


def seed_layout(attention_type, dim=DIM, layers=LAYERS, size=SIZE, patch=PATCH, frames=FRAMES,
                classes=CLASSES, tube=0, time_layers=2):
    """The seed's Lightning state dict: TimeSformer (tube=0) or ViViT (Conv3d tubelets)."""
    steps = frames // tube if tube else frames
    patches = (size // patch) ** 2
    shapes = {'model.cls_token': (1, 1, dim), 'model.pos_embed': (1, 1 + patches, dim)}
    if attention_type == 'fact_encoder':
        shapes['model.time_embed'] = (1, 1 + steps, dim)
    elif attention_type != 'space_only':
        shapes['model.time_embed'] = (1, steps, dim)
    kernel = (dim, 3, tube, patch, patch) if tube else (dim, 3, patch, patch)
    shapes.update({'model.patch_embed.projection.weight': kernel, 'model.patch_embed.projection.bias': (dim,)})

    def block(prefix, divided):
        for attention in ('attentions.0', 'attentions.1') if divided else ('attentions.0',):
            shapes.update({
                f'{prefix}.{attention}.norm.weight': (dim,), f'{prefix}.{attention}.norm.bias': (dim,),
                f'{prefix}.{attention}.attn.in_proj_weight': (3 * dim, dim),
                f'{prefix}.{attention}.attn.in_proj_bias': (3 * dim,),
                f'{prefix}.{attention}.attn.out_proj.weight': (dim, dim),
                f'{prefix}.{attention}.attn.out_proj.bias': (dim,)})
            if attention == 'attentions.0' and divided:
                shapes.update({f'{prefix}.{attention}.temporal_fc.weight': (dim, dim),
                               f'{prefix}.{attention}.temporal_fc.bias': (dim,)})
        shapes.update({
            f'{prefix}.ffns.0.norm.weight': (dim,), f'{prefix}.ffns.0.norm.bias': (dim,),
            f'{prefix}.ffns.0.layers.0.0.weight': (4 * dim, dim), f'{prefix}.ffns.0.layers.0.0.bias': (4 * dim,),
            f'{prefix}.ffns.0.layers.1.weight': (dim, 4 * dim), f'{prefix}.ffns.0.layers.1.bias': (dim,)})

    if attention_type == 'fact_encoder':
        for index in range(layers):
            block(f'model.transformer_layers.0.layers.{index}', False)
        for index in range(time_layers):
            block(f'model.transformer_layers.1.layers.{index}', False)
    else:
        for index in range(layers):
            block(f'model.transformer_layers.layers.{index}', attention_type == 'divided_space_time')
    shapes.update({'model.norm.weight': (dim,), 'model.norm.bias': (dim,),
                   'cls_head.cls_head.weight': (classes, dim), 'cls_head.cls_head.bias': (classes,)})
    return shapes


def timm_layout(attention_type='image', prefix='', dim=DIM, classes=CLASSES):
    """timm ViT ('image') or official TimeSformer blocks (`model.` prefix in its .pyth)."""
    shapes = {'cls_token': (1, 1, dim), 'pos_embed': (1, 1 + GRID * GRID, dim),
              'patch_embed.proj.weight': (dim, 3, PATCH, PATCH), 'patch_embed.proj.bias': (dim,)}
    if attention_type in ('divided_space_time', 'joint_space_time'):
        shapes['time_embed'] = (1, FRAMES, dim)
    for index in range(LAYERS):
        p = f'blocks.{index}.'
        names = ['norm1', 'attn.qkv', 'attn.proj', 'norm2', 'mlp.fc1', 'mlp.fc2']
        if attention_type == 'divided_space_time':
            names += ['temporal_norm1', 'temporal_attn.qkv', 'temporal_attn.proj', 'temporal_fc']
        for name in names:
            out = {'attn.qkv': 3 * dim, 'temporal_attn.qkv': 3 * dim, 'mlp.fc1': 4 * dim}.get(name, dim)
            inner = 4 * dim if name == 'mlp.fc2' else dim
            shapes[p + name + '.weight'] = (out,) if 'norm' in name else (out, inner)
            shapes[p + name + '.bias'] = (out,)
    shapes.update({'norm.weight': (dim,), 'norm.bias': (dim,), 'head.weight': (classes, dim), 'head.bias': (classes,)})
    return {prefix + key: shape for key, shape in shapes.items()}


def test_seed_layout_is_the_released_checkpoints(shared_dir):
    listed = {}
    for line in (shared_dir / 'formats' / 'seed_timesformer_b_k600_keys.txt').read_text().splitlines():
        if line and not line.startswith('#'):
            key, shape = line.split('\t')
            listed[key] = tuple(int(size) for size in shape.strip('()').split(',') if size.strip())
    ours = seed_layout('divided_space_time', dim=768, layers=12, size=224, patch=16, frames=8, classes=600)
    # The file lists block 0 only; blocks 1..11 repeat it.
    assert {key: shape for key, shape in ours.items() if not re.search(r'layers\.layers\.[1-9]', key)} == listed
    assert sum(np.prod(shape) for shape in ours.values()) == 121_720_152
    # The README's claim: our TimeSformer-B/16 preset with a 600-class head has the same count.
    assert count_parameters(VideoClassifier(timesformer_base_patch16_224(num_classes=600))) == 121_720_152


# ---------------------------------------------------------------------------------------------
# The seed's checkpoints


SEED_VARIANTS = [('divided_space_time', 0), ('space_only', 0), ('joint_space_time', 0),
                 ('fact_encoder', 2), ('joint_space_time', 2), ('divided_space_time', 2)]


def save_lightning(path, state_dict, **extras):
    torch.save({'epoch': 3, 'global_step': 120, 'pytorch-lightning_version': '1.3.8',
                'state_dict': state_dict, 'optimizer_states': [{'state': {}, 'param_groups': [{'lr': 0.1}]}],
                'lr_schedulers': [{'last_epoch': 3, 'lr_lambdas': [None]}], **extras}, path)
    return path


@pytest.mark.parametrize('attention_type, tube', SEED_VARIANTS)
def test_seed_checkpoint_matches_the_seed_forward(tmp_path, attention_type, tube):
    state = random_state(seed_layout(attention_type, tube=tube))
    path = save_lightning(tmp_path / 'seed.ckpt', state)
    model = load_model(path, num_heads=HEADS, num_frames=FRAMES)  # space_only keeps no frame count
    expected_arch = 'vivit' if tube or attention_type == 'fact_encoder' else 'timesformer'
    assert (model.config.arch, model.config.attention_type) == (expected_arch, attention_type)
    assert (model.config.norm_eps, model.config.final_norm_eps) == (1e-5, 1e-6)
    clip = video()
    with torch.no_grad():
        logits = model(clip)
        # fact_encoder: the seed's x[:b, 0] is each video's own first frame only at batch 1.
        expected = torch.cat([seed_forward(state, clip[i:i + 1], attention_type, HEADS) for i in range(2)])
    assert logits.shape == (2, CLASSES)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


def test_seed_heads_default_to_width_64(tmp_path):
    path = save_lightning(tmp_path / 'seed.ckpt', random_state(seed_layout('divided_space_time', dim=128)))
    assert load_model(path).config.num_heads == 2


def test_converters_leave_their_input_alone():
    vit = random_state(timm_layout())
    mae = {'encoder.blocks.0.attn.q_bias': torch.randn(DIM), 'encoder.blocks.0.attn.v_bias': torch.randn(DIM),
           'encoder.blocks.0.attn.qkv.weight': torch.randn(3 * DIM, DIM), 'mask_token': torch.randn(1, 1, DIM)}
    hf = {'vivit.embeddings.position_embeddings': torch.randn(1, 33, DIM), 'vivit.layers.0.attention.q_proj.weight':
          torch.randn(DIM, DIM), 'vivit.layers.0.attention.k_proj.weight': torch.randn(DIM, DIM),
          'vivit.layers.0.attention.v_proj.weight': torch.randn(DIM, DIM)}
    image = {'backbone.' + key: value for key, value in vit.items() if not key.startswith('head')}
    image = {key.replace('norm1', 'attn.norm'): value for key, value in image.items()}
    config = vivit_tiny(attention_type='joint_space_time', pos_emb_type='joint', img_size=48)
    cases = [(convert_seed, random_state(seed_layout('divided_space_time'))), (convert_timm, vit),
             (convert_mae, mae), (lambda state: convert_hf_vivit(state, 2), hf),
             (convert_jax_vit, {key: torch.from_numpy(value) for key, value in jax_layout(vit).items()}),
             (lambda state: inflate_image_model(state, config), image),
             (lambda state: resize_position_tables(state, config, 2), {'backbone.pos_embed': torch.randn(1, 33, DIM)})]
    for convert, state in cases:
        before = {key: value.clone() for key, value in state.items()}
        convert(state)
        assert state.keys() == before.keys() and all(torch.equal(state[key], before[key]) for key in state)


# ---------------------------------------------------------------------------------------------
# Official TimeSformer and timm


@pytest.mark.parametrize('attention_type', ['divided_space_time', 'joint_space_time', 'space_only'])
def test_official_timesformer_matches_its_forward(tmp_path, attention_type):
    state = random_state(timm_layout(attention_type, prefix='model.'))
    torch.save({'epoch': 15, 'model_state': state, 'optimizer_state': {}, 'cfg': 'MODEL:\n  ARCH: vit\n'},
               tmp_path / 'TimeSformer_divST_8x32_224_K400.pyth')
    model = load_model(tmp_path / 'TimeSformer_divST_8x32_224_K400.pyth', num_heads=HEADS, num_frames=FRAMES)
    assert model.config.attention_type == attention_type
    clip = video()
    with torch.no_grad():
        torch.testing.assert_close(model(clip), official_forward(state, clip, HEADS), atol=1e-5, rtol=0)


def jax_layout(state):
    """A timm ViT state dict written the way the original JAX ViT .npz stores it."""
    arrays = {'cls': state['cls_token'], 'Transformer/posembed_input/pos_embedding': state['pos_embed'],
              'embedding/kernel': rearrange(state['patch_embed.proj.weight'], 'd c h w -> h w c d'),
              'embedding/bias': state['patch_embed.proj.bias'],
              'Transformer/encoder_norm/scale': state['norm.weight'], 'Transformer/encoder_norm/bias': state['norm.bias'],
              'head/kernel': state['head.weight'].T, 'head/bias': state['head.bias']}
    for index in range(LAYERS):
        p, block = f'blocks.{index}.', f'Transformer/encoderblock_{index}/'
        attention = block + 'MultiHeadDotProductAttention_1/'
        for name, weight, bias in zip(('query', 'key', 'value'), state[p + 'attn.qkv.weight'].chunk(3),
                                      state[p + 'attn.qkv.bias'].chunk(3)):
            arrays[f'{attention}{name}/kernel'] = rearrange(weight, '(h e) d -> d h e', h=HEADS)
            arrays[f'{attention}{name}/bias'] = rearrange(bias, '(h e) -> h e', h=HEADS)
        arrays[attention + 'out/kernel'] = rearrange(state[p + 'attn.proj.weight'], 'd (h e) -> h e d', h=HEADS)
        arrays[attention + 'out/bias'] = state[p + 'attn.proj.bias']
        for jax_name, name in (('LayerNorm_0', 'norm1'), ('LayerNorm_2', 'norm2')):
            arrays[f'{block}{jax_name}/scale'] = state[p + name + '.weight']
            arrays[f'{block}{jax_name}/bias'] = state[p + name + '.bias']
        for dense, name in (('Dense_0', 'mlp.fc1'), ('Dense_1', 'mlp.fc2')):
            arrays[f'{block}MlpBlock_3/{dense}/kernel'] = state[p + name + '.weight'].T
            arrays[f'{block}MlpBlock_3/{dense}/bias'] = state[p + name + '.bias']
    return {key: value.numpy() for key, value in arrays.items()}


def seed_vit_layout(state):
    """A timm ViT state dict in the seed's own (mmcv) ViT file layout."""
    seed = {'cls_token': state['cls_token'], 'pos_embed': state['pos_embed'],
            'patch_embed.projection.weight': state['patch_embed.proj.weight'],
            'patch_embed.projection.bias': state['patch_embed.proj.bias'],
            'norm.weight': state['norm.weight'], 'norm.bias': state['norm.bias']}
    for index in range(LAYERS):
        p, layer = f'blocks.{index}.', f'transformer_layers.layers.{index}.'
        for name, ours in (('attentions.0.attn.in_proj_weight', 'attn.qkv.weight'),
                           ('attentions.0.attn.in_proj_bias', 'attn.qkv.bias'),
                           ('attentions.0.attn.out_proj.weight', 'attn.proj.weight'),
                           ('attentions.0.attn.out_proj.bias', 'attn.proj.bias'),
                           ('norms.0.weight', 'norm1.weight'), ('norms.0.bias', 'norm1.bias'),
                           ('norms.1.weight', 'norm2.weight'), ('norms.1.bias', 'norm2.bias'),
                           ('ffns.0.layers.0.0.weight', 'mlp.fc1.weight'), ('ffns.0.layers.0.0.bias', 'mlp.fc1.bias'),
                           ('ffns.0.layers.1.weight', 'mlp.fc2.weight'), ('ffns.0.layers.1.bias', 'mlp.fc2.bias')):
            seed[layer + name] = state[p + ours]
    return seed


def write_vit(state, tmp_path, container):
    """A timm-layout ViT in one of the containers users bring."""
    if container == 'pth':
        torch.save(state, tmp_path / 'vit.pth')
        return tmp_path / 'vit.pth'
    if container == 'safetensors':
        save_file(state, tmp_path / 'vit.safetensors')
        return tmp_path / 'vit.safetensors'
    if container == 'npz':
        np.savez(tmp_path / 'vit.npz', **jax_layout(state))
        return tmp_path / 'vit.npz'
    torch.save({'state_dict': seed_vit_layout(state)}, tmp_path / 'vit_base_patch16_224.pth')
    return tmp_path / 'vit_base_patch16_224.pth'


@pytest.mark.parametrize('container', ['pth', 'safetensors', 'npz', 'seed-vit'])
@pytest.mark.parametrize('copy_strategy', ['repeat', 'set_zero'])
def test_timesformer_from_an_image_vit_reproduces_it_on_a_static_video(tmp_path, container, copy_strategy):
    vit = random_state(timm_layout())
    config = timesformer_tiny(pretrained=str(write_vit(vit, tmp_path, container)), norm_eps=1e-6,
                              copy_strategy=copy_strategy)
    model = TimeSformer(config).eval()
    frame = video(batch=2, frames=1)[:, 0]
    with torch.no_grad():
        features = model(repeat(frame, 'b c h w -> b t c h w', t=FRAMES))
    torch.testing.assert_close(features, vit_features(vit, frame, HEADS), atol=1e-5, rtol=0)
    block = model.blocks[0]
    copied = torch.equal(block.temporal_attn.attn.qkv.weight, block.spatial_attn.attn.qkv.weight)
    assert copied == (copy_strategy == 'repeat')
    assert block.temporal_attn.attn.qkv.weight.abs().min() > 0 and block.temporal_attn.norm.weight.all()
    assert not block.temporal_attn.temporal_fc.weight.any()


@pytest.mark.parametrize('copy_strategy', ['repeat', 'set_zero'])
@pytest.mark.parametrize('preset', [timesformer_tiny, vivit_tiny])
def test_temporal_layers_inflated_from_a_vit_learn(tmp_path, preset, copy_strategy):
    # The seed's set_zero zeroed every copied weight: no gradient ever reached those layers.
    path = write_vit(random_state(timm_layout()), tmp_path, 'pth')
    model = VideoClassifier(preset(pretrained=str(path), copy_strategy=copy_strategy, norm_eps=1e-6))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    clip = video(frames=model.config.num_frames)
    for _ in range(3):  # the zero projection opens the branch to gradients after one step
        optimizer.zero_grad()
        F.cross_entropy(model(clip), torch.tensor([0, 1])).backward()
        optimizer.step()
    temporal = {name: parameter.grad for name, parameter in model.named_parameters() if 'temporal' in name}
    stuck = [name for name, grad in temporal.items() if not grad.any()]
    assert temporal and not stuck


@pytest.mark.parametrize('container', ['pth', 'npz'])
def test_in21k_representation_layer_is_ignored(tmp_path, container):
    # ImageNet-21k ViTs carry a pre_logits Linear before their head: timm and JAX names.
    vit = random_state(timm_layout())
    pre_logits = random_state({'weight': (DIM, DIM), 'bias': (DIM,)}, seed=5)
    if container == 'pth':
        torch.save({**vit, 'pre_logits.fc.weight': pre_logits['weight'], 'pre_logits.fc.bias': pre_logits['bias']},
                   tmp_path / 'vit.pth')
    else:
        np.savez(tmp_path / 'vit.npz', **jax_layout(vit), **{'pre_logits/kernel': pre_logits['weight'].T.numpy(),
                                                             'pre_logits/bias': pre_logits['bias'].numpy()})
    model = TimeSformer(timesformer_tiny(pretrained=str(tmp_path / f'vit.{container}'), norm_eps=1e-6)).eval()
    frame = video(batch=2, frames=1)[:, 0]
    with torch.no_grad():
        features = model(repeat(frame, 'b c h w -> b t c h w', t=FRAMES))
    torch.testing.assert_close(features, vit_features(vit, frame, HEADS), atol=1e-5, rtol=0)


def test_space_only_timesformer_from_a_vit_reproduces_it(tmp_path):
    vit = random_state(timm_layout())
    model = TimeSformer(timesformer_tiny(attention_type='space_only', norm_eps=1e-6,
                                         pretrained=str(write_vit(vit, tmp_path, 'pth')))).eval()
    frame = video(batch=1, frames=1)[:, 0]
    with torch.no_grad():
        features = model(repeat(frame, 'b c h w -> b t c h w', t=FRAMES))
    torch.testing.assert_close(features, vit_features(vit, frame, HEADS), atol=1e-5, rtol=0)


@pytest.mark.parametrize('extend_strategy', ['temporal_avg', 'center_frame'])
def test_vivit_from_a_vit_inflates_patches_and_copies_temporal_layers(tmp_path, extend_strategy):
    vit = random_state(timm_layout())
    model = ViViT(vivit_tiny(pretrained=str(write_vit(vit, tmp_path, 'pth')), extend_strategy=extend_strategy,
                             num_time_transformer_layers=2, img_size=48)).eval()
    kernel = model.patch_embed.proj.weight
    assert kernel.shape == (DIM, 3, 2, PATCH, PATCH)
    torch.testing.assert_close(kernel.sum(dim=2), vit['patch_embed.proj.weight'])
    if extend_strategy == 'center_frame':
        assert not kernel[:, :, 0].any()
    for index in range(2):
        for name, value in model.temporal_blocks[index].state_dict().items():
            assert torch.equal(value, model.blocks[index].state_dict()[name])
    # set_zero: the temporal layers keep their init and start as the identity.
    fresh = ViViT(vivit_tiny(pretrained=str(tmp_path / 'vit.pth'), copy_strategy='set_zero',
                             num_time_transformer_layers=2, img_size=48)).eval()
    block = fresh.temporal_blocks[0]
    assert not block.attn.attn.proj.weight.any() and not block.ffn.fc2.weight.any()
    assert not torch.equal(block.attn.attn.qkv.weight, fresh.blocks[0].attn.attn.qkv.weight)
    tokens = torch.randn(2, 3, DIM)
    torch.testing.assert_close(block(tokens), tokens)
    assert model.pos_embed.shape == (1, 1 + 36, DIM)
    torch.testing.assert_close(model.pos_embed[:, 0], vit['pos_embed'][:, 0])
    assert not model.time_embed.any()


def test_joint_vivit_from_a_vit_spreads_positions_over_time(tmp_path):
    vit = random_state(timm_layout())
    model = ViViT(vivit_tiny(attention_type='joint_space_time', pos_emb_type='joint', img_size=48,
                             pretrained=str(write_vit(vit, tmp_path, 'safetensors'))))
    table = model.pos_embed
    assert table.shape == (1, 1 + 36 * 2, DIM) and model.time_embed is None
    torch.testing.assert_close(table[:, 0], vit['pos_embed'][:, 0])
    assert torch.equal(table[:, 1::2], table[:, 2::2])  # both time steps of a patch share its row


def test_mae_encoder_initialises_the_backbone(tmp_path, caplog):
    generator = torch.Generator().manual_seed(3)
    encoder = {('encoder.' + key): value for key, value in random_state(timm_layout(), seed=3).items()
               if not key.startswith(('head.', 'cls_token', 'pos_embed'))}
    q_bias, v_bias = randn(DIM, generator=generator), randn(DIM, generator=generator)
    for index in range(LAYERS):
        del encoder[f'encoder.blocks.{index}.attn.qkv.bias']
        encoder[f'encoder.blocks.{index}.attn.q_bias'] = q_bias
        encoder[f'encoder.blocks.{index}.attn.v_bias'] = v_bias
    decoder = {'decoder.blocks.0.norm1.weight': randn(16, generator=generator),
               'decoder.norm.weight': randn(16, generator=generator),
               'encoder_to_decoder.weight': randn(16, DIM, generator=generator),
               'mask_token': randn(1, 1, 16, generator=generator)}
    torch.save({'model': {**encoder, **decoder}, 'epoch': 799, 'args': argparse.Namespace(mask_ratio=0.75)},
               tmp_path / 'pretrain_mae_vit_base_mask_0.75_400e.pth')
    torch.manual_seed(0)
    untrained = TimeSformer(timesformer_tiny())
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO):
        model = TimeSformer(timesformer_tiny(pretrained=str(tmp_path / 'pretrain_mae_vit_base_mask_0.75_400e.pth')))
    assert 'format mae' in caplog.text and "missing keys ['cls_token']" in caplog.text
    assert 'sine-cosine' in caplog.text
    # MAE-pytorch's get_sinusoid_encoding_table, computed as it does in float64 NumPy.
    angles = np.arange(GRID * GRID)[:, None] / np.power(10000, 2 * (np.arange(DIM) // 2) / DIM)
    angles[:, 0::2], angles[:, 1::2] = np.sin(angles[:, 0::2]), np.cos(angles[:, 1::2])
    torch.testing.assert_close(model.pos_embed[0, 1:], torch.tensor(angles, dtype=torch.float))
    assert torch.equal(model.pos_embed[:, 0], untrained.pos_embed[:, 0])
    qkv = model.blocks[1].spatial_attn.attn.qkv
    assert torch.equal(qkv.weight, encoder['encoder.blocks.1.attn.qkv.weight'])
    assert torch.equal(qkv.bias, torch.cat((q_bias, torch.zeros(DIM), v_bias)))
    assert torch.equal(model.norm.weight, encoder['encoder.norm.weight'])
    assert 0 < model.cls_token.std() < 0.05  # truncated normal, not from the file
    converted = convert_mae({**encoder, **decoder})
    assert not any(key.startswith(('decoder', 'encoder_to_decoder', 'mask_token')) for key in converted)


# ---------------------------------------------------------------------------------------------
# Hugging Face transformers

transformers = pytest.importorskip('transformers')


def hf_timesformer(attention_type='divided_space_time', **changes):
    config = transformers.TimesformerConfig(
        image_size=SIZE, patch_size=PATCH, num_frames=FRAMES, hidden_size=DIM, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, intermediate_size=4 * DIM, num_labels=CLASSES,
        id2label={index: f'action {index}' for index in range(CLASSES)}, attention_type=attention_type,
        **changes)
    return randomise_(transformers.TimesformerForVideoClassification(config)).eval()


def hf_vivit(**changes):
    config = transformers.VivitConfig(
        image_size=SIZE, num_frames=FRAMES, tubelet_size=[2, PATCH, PATCH], hidden_size=DIM,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=4 * DIM, num_labels=CLASSES,
        **changes)
    return randomise_(transformers.VivitForVideoClassification(config)).eval()


def max_abs(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize('attention_type, changes', [
    ('divided_space_time', {}),
    ('joint_space_time', {}),
    ('divided_space_time', {'hidden_act': 'gelu_fast', 'layer_norm_eps': 1e-5}),
])
def test_hf_timesformer_folder_matches_transformers(tmp_path, attention_type, changes):
    reference = hf_timesformer(attention_type, **changes)
    reference.save_pretrained(tmp_path)
    model = load_model(tmp_path)
    assert model.class_names == [f'action {index}' for index in range(CLASSES)]
    assert model.config.activation == ('gelu_tanh' if changes else 'gelu')
    clip = video()
    with torch.no_grad():
        assert max_abs(model(clip), reference(clip).logits) < 1e-4


def test_hf_timesformer_space_only_is_refused(tmp_path):
    hf_timesformer('space_only').save_pretrained(tmp_path)
    with pytest.raises(WeightLoadError, match='classifies every frame') as error:
        load_model(tmp_path)
    assert str(tmp_path) in str(error.value)
    # Without config.json the missing time table says space_only.
    (tmp_path / 'config.json').unlink()
    with pytest.raises(WeightLoadError, match='classifies every frame'):
        load_model(tmp_path)


def test_hf_timesformer_bare_model_gives_backbone_keys():
    config = transformers.TimesformerConfig(image_size=SIZE, patch_size=PATCH, num_frames=FRAMES,
                                            hidden_size=DIM, num_hidden_layers=LAYERS,
                                            num_attention_heads=HEADS, intermediate_size=4 * DIM)
    reference = randomise_(transformers.TimesformerModel(config)).eval()
    converted = convert_hf_timesformer(reference.state_dict())
    assert all(key.startswith('backbone.') for key in converted)
    backbone = TimeSformer(timesformer_tiny(norm_eps=1e-6)).eval()
    backbone.load_state_dict({key.removeprefix('backbone.'): value for key, value in converted.items()})
    clip = video(batch=1)
    with torch.no_grad():
        assert max_abs(backbone(clip), reference(clip).last_hidden_state[:, 0]) < 1e-4
    assert convert_to_hf_timesformer(converted).keys() == reference.state_dict().keys()


OLD_VIVIT_NAMES = [('layers.', 'encoder.layer.'), ('attention.q_proj', 'attention.attention.query'),
                   ('attention.k_proj', 'attention.attention.key'), ('attention.v_proj', 'attention.attention.value'),
                   ('attention.o_proj', 'attention.output.dense'), ('mlp.fc1', 'intermediate.dense'),
                   ('mlp.fc2', 'output.dense')]


@pytest.mark.parametrize('naming', ['transformers-5', 'transformers-4'])
def test_hf_vivit_matches_transformers(tmp_path, naming):
    reference = hf_vivit()
    reference.config.save_pretrained(tmp_path)
    state = reference.state_dict()
    if naming == 'transformers-4':
        for new, old in OLD_VIVIT_NAMES:
            state = {key.replace(new, old): value for key, value in state.items()}
    torch.save(state, tmp_path / 'pytorch_model.bin')
    model = load_model(tmp_path / 'pytorch_model.bin')
    assert (model.config.arch, model.config.pos_emb_type, model.config.activation) == ('vivit', 'joint', 'gelu_tanh')
    clip = video()
    with torch.no_grad():
        assert max_abs(model(clip), reference(clip).logits) < 1e-4


def test_hf_vivit_position_rows_become_patch_major():
    table = torch.arange(1 + 2 * 16, dtype=torch.float)[None, :, None]  # row index as the value
    converted = convert_hf_vivit({'vivit.embeddings.position_embeddings': table}, num_time_steps=2)
    rows = converted['backbone.pos_embed'][0, :, 0].long().tolist()
    # ours: 1 + p*T + t holds theirs: 1 + t*P + p
    assert rows[:5] == [0, 1, 17, 2, 18]


# ---------------------------------------------------------------------------------------------
# Our own files and export


def test_export_round_trip_is_exact(tmp_path):
    model = randomise_(VideoClassifier(vivit_tiny(attention_type='fact_dot_product', num_classes=3),
                                       class_names=['a', 'b', 'c'])).eval()
    save_weights(model, tmp_path / 'export')
    loaded = load_model(tmp_path / 'export')
    assert loaded.config == model.config and loaded.class_names == ['a', 'b', 'c']
    assert all(torch.equal(value, loaded.state_dict()[key]) for key, value in model.state_dict().items())
    clip = video()
    with torch.no_grad():
        assert torch.equal(loaded(clip), model(clip))
    assert json.loads((tmp_path / 'export' / 'config.json').read_text())['format'] == 'videotransformer-pytorch'


def test_failed_export_leaves_the_previous_one_intact(tmp_path):
    model = randomise_(VideoClassifier(timesformer_tiny(norm_eps=1e-6))).eval()
    save_weights(model, tmp_path / 'ours')
    save_hf_timesformer(model, tmp_path / 'hf')
    before = {path: path.read_bytes() for path in tmp_path.rglob('*') if path.is_file()}
    # Tied weights: safetensors refuses tensors that share memory, after the export has begun.
    tied = randomise_(VideoClassifier(timesformer_tiny(norm_eps=1e-6), class_names=list('abcd'))).eval()
    tied.backbone.blocks[1].ffn.fc1.weight = tied.backbone.blocks[0].ffn.fc1.weight
    for save, folder in ((save_weights, 'ours'), (save_hf_timesformer, 'hf')):
        with pytest.raises(RuntimeError, match='share memory'):
            save(tied, tmp_path / folder)
    assert {path: path.read_bytes() for path in tmp_path.rglob('*') if path.is_file()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ['hf', 'ours']  # no staging left
    (tmp_path / 'file').write_text('keep')
    with pytest.raises(WeightLoadError, match='file: exists and is not a folder'):
        save_weights(model, tmp_path / 'file')
    assert (tmp_path / 'file').read_text() == 'keep'


def test_training_checkpoint_loads(tmp_path):
    model = randomise_(VideoClassifier(timesformer_tiny(num_classes=2), class_names=['x', 'y'])).eval()
    state = {f'model.{key}': value for key, value in model.state_dict().items()}
    torch.save({'epoch': 1, 'state_dict': state, 'hparams_name': 'kwargs',
                'hyper_parameters': {'config': model.config.to_dict(), 'class_names': ['x', 'y'], 'lr': 1e-3}},
               tmp_path / 'last.ckpt')
    loaded = load_model(tmp_path / 'last.ckpt')
    assert loaded.config == model.config and loaded.class_names == ['x', 'y']
    clip = video()
    with torch.no_grad():
        assert torch.equal(loaded(clip), model(clip))


def test_class_names_that_do_not_fit_the_head_are_left_out_with_a_warning(tmp_path, caplog):
    model = VideoClassifier(timesformer_tiny(num_classes=2))
    torch.save({'state_dict': {f'model.{key}': value for key, value in model.state_dict().items()},
                'hyper_parameters': {'config': model.config.to_dict(), 'class_names': ['x', 'y', 'z']}},
               tmp_path / 'last.ckpt')
    with caplog.at_level(logging.WARNING):
        loaded = load_model(tmp_path / 'last.ckpt')
    assert loaded.class_names is None
    assert 'its 3 class names do not match its 2 classes' in caplog.text


def test_export_command_writes_both_folders(tmp_path):
    state = random_state(seed_layout('divided_space_time'))
    path = save_lightning(tmp_path / 'seed.ckpt', state)
    # transformers has one LayerNorm eps, the seed two (1e-5 and 1e-6): -hf asks to choose one.
    for flags, folder in (([], 'ours'), (['-hf'], 'refused'), (['-hf', '-set', 'norm_eps=1e-6'], 'hf')):
        done = subprocess.run([sys.executable, 'export_weights.py', str(path), str(tmp_path / folder),
                               '-num_heads', str(HEADS), *flags], cwd=ROOT, capture_output=True, text=True)
        assert 'format seed' in done.stderr
        if folder == 'refused':
            assert done.returncode == 1 and 'one LayerNorm eps' in done.stderr.splitlines()[-1]
        else:
            assert done.returncode == 0, done.stderr
    clip = video()
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / 'ours')(clip), load_model(path, num_heads=HEADS)(clip))
        reference = transformers.TimesformerForVideoClassification.from_pretrained(tmp_path / 'hf').eval()
        expected = load_model(path, num_heads=HEADS, norm_eps=1e-6)(clip)
        assert max_abs(reference(clip).logits, expected) < 1e-4


@pytest.mark.parametrize('flags, output, message', [
    (['-set', 'img_size'], 'out', "-set takes FIELD=VALUE, got 'img_size'"),
    (['-set', 'activation=nope'], 'out', 'activation must be one of'),
    ([], 'taken/out', 'taken/out'),  # a file where the output's parent folder should be
])
def test_export_command_errors_are_one_line(tmp_path, flags, output, message):
    path = save_lightning(tmp_path / 'seed.ckpt', random_state(seed_layout('space_only')))
    (tmp_path / 'taken').write_text('')
    done = subprocess.run([sys.executable, 'export_weights.py', str(path), str(tmp_path / output),
                           '-num_heads', str(HEADS), *flags], cwd=ROOT, capture_output=True, text=True)
    errors = [line for line in done.stderr.splitlines() if line.startswith('export_weights.py:')]
    assert done.returncode == 1 and len(errors) == 1 and message in errors[0], done.stderr
    assert 'Traceback' not in done.stderr


def test_hf_export_loads_in_transformers_and_back(tmp_path):
    model = randomise_(VideoClassifier(timesformer_tiny(norm_eps=1e-6, num_classes=3),
                                       class_names=['a', 'b', 'c'])).eval()
    save_hf_timesformer(model, tmp_path / 'hf')
    reference = transformers.TimesformerForVideoClassification.from_pretrained(tmp_path / 'hf').eval()
    assert reference.config.id2label == {0: 'a', 1: 'b', 2: 'c'}
    expected = convert_to_hf_timesformer(model.state_dict())
    assert all(torch.equal(value, expected[key]) for key, value in reference.state_dict().items())
    clip = video()
    with torch.no_grad():
        assert max_abs(reference(clip).logits, model(clip)) < 1e-4
    loaded = load_model(tmp_path / 'hf')
    assert all(torch.equal(value, loaded.state_dict()[key]) for key, value in model.state_dict().items())


# ---------------------------------------------------------------------------------------------
# Position tables at other sizes, overrides and heads


def cubic_resampling(source, target, scale, a=-0.75):
    """(target, source) matrix of Keys' cubic convolution (PyTorch's a = -0.75) sampling source
    pixel (i + 0.5) / scale - 0.5 for output i, edges clamped: bicubic interpolation by hand."""
    def kernel(x):
        x = abs(x)
        return (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1 if x <= 1 else a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a

    matrix = torch.zeros(target, source, dtype=torch.float64)
    for row in range(target):
        position = (row + 0.5) / scale - 0.5
        floor = math.floor(position)
        for offset in (-1, 0, 1, 2):
            matrix[row, min(max(floor + offset, 0), source - 1)] += kernel(position - floor - offset)
    return matrix


def test_positions_resize_by_the_seed_formula_in_space_linear_in_time(tmp_path):
    state = random_state(seed_layout('divided_space_time'))
    path = save_lightning(tmp_path / 'seed.ckpt', state)
    model = load_model(path, num_heads=HEADS, img_size=48, num_frames=8)
    pos, time = state['model.pos_embed'], state['model.time_embed']
    # The seed's (DINO's) formula: scale factor (g + 0.1) / N, not output size g.
    resampling = cubic_resampling(GRID, 6, (6 + 0.1) / GRID)
    grid = rearrange(pos[0, 1:].double(), '(h w) d -> d h w', h=GRID)
    expected = rearrange(resampling @ grid @ resampling.T, 'd h w -> 1 (h w) d').float()
    torch.testing.assert_close(model.backbone.pos_embed, torch.cat((pos[:, :1], expected), dim=1))
    by_size = F.interpolate(grid[None].float(), size=(6, 6), mode='bicubic', align_corners=False)
    assert not torch.allclose(rearrange(by_size, '1 d h w -> 1 (h w) d'), expected, atol=1e-3)
    expected = F.interpolate(rearrange(time, '1 t d -> 1 d t'), size=8, mode='linear', align_corners=False)
    torch.testing.assert_close(model.backbone.time_embed, rearrange(expected, '1 d t -> 1 t d'))
    assert model(video(frames=8, size=48)).shape == (2, CLASSES)


def test_joint_table_resizes_per_axis():
    config = vivit_tiny(attention_type='joint_space_time', pos_emb_type='joint', num_frames=8, img_size=48)
    # Row 1 + p*T' + t holds space[p] * time[t]: both resizings are linear and act on one axis
    # each, so the result is the product of the per-axis resizings, and a (p t)/(t p) mix-up shows.
    space, time = torch.randn(GRID * GRID, DIM).double(), torch.randn(2, DIM).double()
    patches = torch.einsum('pd,td->ptd', space, time)
    table = torch.cat((torch.randn(1, DIM).double(), rearrange(patches, 'p t d -> (p t) d')))[None].float()
    resized, notes = resize_position_tables({'backbone.pos_embed': table}, config, source_time_steps=2)
    resampling = cubic_resampling(GRID, 6, (6 + 0.1) / GRID)
    space = rearrange(resampling @ rearrange(space, '(h w) d -> d h w', h=GRID) @ resampling.T, 'd h w -> (h w) d')
    time = rearrange(F.interpolate(rearrange(time, 't d -> 1 d t'), size=4, mode='linear'), '1 d t -> t d')
    expected = rearrange(torch.einsum('pd,td->ptd', space, time), 'p t d -> 1 (p t) d').float()
    assert resized['backbone.pos_embed'].shape == (1, 1 + 36 * 4, DIM) and notes
    assert torch.equal(resized['backbone.pos_embed'][:, 0], table[:, 0])
    torch.testing.assert_close(resized['backbone.pos_embed'][:, 1:], expected, atol=1e-5, rtol=1e-4)
    config = config.replace(img_size=SIZE)
    same, notes = resize_position_tables({'backbone.pos_embed': table}, config.replace(num_frames=4), 2)
    assert same['backbone.pos_embed'] is table and not notes


@pytest.mark.parametrize('frames', [4, 8])  # 1 + 16*2 rows, and 1 + 16*4 = 1 + 8*8
def test_joint_table_for_a_separate_model_is_one_clear_error(tmp_path, frames):
    joint = vivit_tiny(attention_type='joint_space_time', pos_emb_type='joint', num_frames=frames)
    model = VideoClassifier(joint)
    save_weights(model, tmp_path / 'export')
    torch.save(model.state_dict(), tmp_path / 'bare.pt')
    separate = joint.replace(pos_emb_type='separate')
    with pytest.raises(WeightLoadError, match="export.*pos_emb_type='joint'") as error:
        ViViT(separate.replace(pretrained=str(tmp_path / 'export')))
    assert '\n' not in str(error.value)
    # Without its config.json the rows cannot tell image size from frame count.
    with pytest.raises(WeightLoadError, match='bare.pt.*config.json') as error:
        load_model(tmp_path / 'bare.pt')
    assert '\n' not in str(error.value)
    table = model.backbone.pos_embed.detach()
    if frames == 4:
        with pytest.raises(WeightLoadError, match="'joint' table"):
            resize_position_tables({'backbone.pos_embed': table}, separate.replace(img_size=48), path='x.pt')


@pytest.mark.parametrize('attention_type,pos_emb_type', [('joint_space_time', 'joint'), ('space_only', 'separate')])
def test_per_frame_and_joint_timesformer_weights_are_told_apart(tmp_path, attention_type, pos_emb_type):
    # 1 + 16 patches * 4 frames = 1 + 8*8 rows: a joint table looks like a per-frame one at 64 px.
    config = timesformer_tiny(attention_type=attention_type, pos_emb_type=pos_emb_type)
    model = randomise_(VideoClassifier(config)).eval()
    save_weights(model, tmp_path / 'export')
    started = TimeSformer(config.replace(pretrained=str(tmp_path / 'export'))).eval()
    clip = video()
    with torch.no_grad():
        torch.testing.assert_close(started(clip), model.backbone(clip), atol=0, rtol=0)
    torch.save(model.state_dict(), tmp_path / 'bare.pt')
    with pytest.raises(WeightLoadError, match='bare.pt: without their config.*config.json'):
        load_model(tmp_path / 'bare.pt')


def test_overrides_that_agree_are_hints_and_others_are_errors(tmp_path):
    path = save_lightning(tmp_path / 'seed.ckpt', random_state(seed_layout('divided_space_time')))
    load_model(path, num_heads=HEADS, arch='timesformer', attention_type='divided_space_time',
               embed_dims=DIM, num_classes=CLASSES, dropout_p=0.1)
    for wrong in ({'embed_dims': 64}, {'attention_type': 'space_only'}, {'arch': 'vivit', 'conv_type': 'Conv3d'},
                  {'num_classes': 7}):
        with pytest.raises(WeightLoadError, match=str(path)):
            load_model(path, num_heads=HEADS, **wrong)
    with pytest.raises(TypeError, match='num_head'):
        load_model(path, num_head=HEADS)


def test_new_head_only_when_asked(tmp_path, caplog):
    path = save_lightning(tmp_path / 'seed.ckpt', random_state(seed_layout('divided_space_time')))
    with pytest.raises(WeightLoadError, match='drop_head'):
        load_model(path, num_heads=HEADS, class_names=['a', 'b'])
    with caplog.at_level(logging.INFO, logger='video_transformer'):
        model = load_model(path, num_heads=HEADS, class_names=['a', 'b'], drop_head=True)
    assert model.head.fc.out_features == 2 and model.class_names == ['a', 'b']
    assert "format seed" in caplog.text and "missing keys ['head.fc.bias', 'head.fc.weight']" in caplog.text


def test_heads_in_the_file_must_match_the_model(tmp_path):
    hf_timesformer().save_pretrained(tmp_path)
    with pytest.raises(WeightLoadError, match='heads'):
        TimeSformer(timesformer_tiny(num_heads=4, pretrained=str(tmp_path)))


def test_video_checkpoint_as_pretrained_drops_its_head(tmp_path):
    state = random_state(seed_layout('divided_space_time'))
    path = save_lightning(tmp_path / 'k600.ckpt', state)
    model = TimeSformer(timesformer_tiny(pretrained=str(path), num_frames=8))
    assert torch.equal(model.blocks[1].temporal_attn.temporal_fc.weight,
                       state['model.transformer_layers.layers.1.attentions.0.temporal_fc.weight'])
    assert model.time_embed.shape == (1, 8, DIM)


# ---------------------------------------------------------------------------------------------
# Files that are missing, broken or hostile


class Harmless:
    """A class a hostile pickle could name; loading must never import or build it."""


class Tripwire:
    """Unpickling it creates the file `marker`: the code a hostile checkpoint would run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def hostile_files(tmp_path):
    model_state = VideoClassifier(timesformer_tiny()).state_dict()
    torch.save({'state_dict': model_state, 'extra': Harmless()}, tmp_path / 'class.ckpt')
    torch.save({'state_dict': Tripwire(tmp_path / 'ran')}, tmp_path / 'reduce.ckpt')
    (tmp_path / 'reduce.pkl').write_bytes(pickle.dumps({'state_dict': Tripwire(tmp_path / 'ran')}))
    torch.save({'state_dict': model_state}, tmp_path / 'good.pt')
    data = (tmp_path / 'good.pt').read_bytes()
    (tmp_path / 'truncated.pt').write_bytes(data[:len(data) // 2])
    save_file({'backbone.cls_token': torch.ones(1, 1, 4)}, tmp_path / 'good.safetensors')
    (tmp_path / 'truncated.safetensors').write_bytes((tmp_path / 'good.safetensors').read_bytes()[:-8])
    (tmp_path / 'random.bin').write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                                        dtype=torch.uint8).numpy().tobytes())
    (tmp_path / 'empty.pth').write_bytes(b'')
    np.savez(tmp_path / 'objects.npz', x=np.array([{'a': 1}], dtype=object))
    with zipfile.ZipFile(tmp_path / 'corrupt.npz', 'w') as archive:
        archive.writestr('x.npy', b'\x93NUMPY\x01\x00\x10\x00{not a header}\n')
    with zipfile.ZipFile(tmp_path / 'bytes.npz', 'w') as archive:
        archive.writestr('x.npy', b'not an array')
    torch.save({'conv.weight': torch.ones(2), 'fc.bias': torch.ones(2)}, tmp_path / 'unknown.pth')
    torch.save([torch.ones(2)], tmp_path / 'list.pth')
    (tmp_path / 'folder').mkdir()


@pytest.mark.filterwarnings('ignore:Detected pickle protocol')
@pytest.mark.parametrize('name, message', [
    ('class.ckpt', r'refused, it needs arbitrary unpickling \([\w.]*Harmless\)'),
    ('reduce.ckpt', r'refused, it needs arbitrary unpickling \((builtins\.)?getattr\)'),  # torch 2.6 names the module
    ('reduce.pkl', 'not a readable checkpoint'),
    ('truncated.pt', 'not a readable checkpoint'),
    ('truncated.safetensors', 'not a readable safetensors file'),
    ('random.bin', 'not a readable checkpoint'),
    ('empty.pth', 'empty'),
    ('objects.npz', 'refused, it holds pickled objects'),
    ('corrupt.npz', 'a corrupt .npz'),
    ('bytes.npz', 'a corrupt .npz'),
    ('unknown.pth', 'unknown weight format'),
    ('list.pth', 'holds a list'),
    ('folder', 'folder without'),
    ('missing.pth', 'no such file'),
])
def test_bad_files_get_one_clear_error(tmp_path, name, message):
    hostile_files(tmp_path)
    with pytest.raises(WeightLoadError, match=message) as error:
        load_model(tmp_path / name)
    assert str(tmp_path / name) in str(error.value) and '\n' not in str(error.value)
    assert not (tmp_path / 'ran').exists()


def test_the_hostile_checkpoint_would_run_code_if_unpickled(tmp_path):
    # Keeps the test above honest: its tripwire does fire under a plain torch.load.
    hostile_files(tmp_path)
    torch.load(tmp_path / 'reduce.ckpt', weights_only=False)
    assert (tmp_path / 'ran').exists()


def test_lightning_1_callback_classes_are_read_as_placeholders(tmp_path):
    # Lightning 1.3 (the seed's) keyed callback states by the callback class itself; torch.save
    # stores such a class by its import path, which Lightning 2 keeps.
    from pytorch_lightning.callbacks import ModelCheckpoint, ModelSummary
    state = random_state(seed_layout('divided_space_time'))
    path = save_lightning(tmp_path / 'seed.ckpt', state,
                          callbacks={ModelCheckpoint: {'best_model_score': torch.tensor(0.5)}})
    assert load_model(path, num_heads=HEADS).head.fc.out_features == CLASSES
    path = save_lightning(tmp_path / 'other.ckpt', state, callbacks={ModelSummary: {}})
    with pytest.raises(WeightLoadError, match=r'refused, it needs arbitrary unpickling \([\w.]*ModelSummary\)'):
        load_model(path, num_heads=HEADS)
