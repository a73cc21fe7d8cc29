"""Tiny weights in each source's exact key layout, and the files users bring them in."""
import numpy as np
import torch
from einops import rearrange
from safetensors.torch import save_file

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
# Key layouts of each source, {key: shape}


def original_layout(attention_type, dim=DIM, layers=LAYERS, size=SIZE, patch=PATCH, frames=FRAMES,
                classes=CLASSES, tube=0, time_layers=2, commit=None):
    """The original repository's Lightning state dict: TimeSformer (tube=0) or ViViT (Conv3d tubelets). With
    commit='37e1801', ViViT fact_encoder's temporal layers have a temporal_fc after attention."""
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
            if commit == '37e1801':
                prefix = f'model.transformer_layers.1.layers.{index}.attentions.0.temporal_fc'
                shapes.update({f'{prefix}.weight': (dim, dim), f'{prefix}.bias': (dim,)})
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

ORIGINAL_VARIANTS = [('divided_space_time', 0), ('space_only', 0), ('joint_space_time', 0),
                 ('fact_encoder', 2), ('joint_space_time', 2), ('divided_space_time', 2)]


def save_lightning(path, state_dict, **extras):
    """A checkpoint in the layout of the original repository's Lightning 1.3 (its released .ckpt files)."""
    torch.save({'epoch': 3, 'global_step': 120, 'pytorch-lightning_version': '1.3.8',
                'state_dict': state_dict, 'optimizer_states': [{'state': {}, 'param_groups': [{'lr': 0.1}]}],
                'lr_schedulers': [{'last_epoch': 3, 'lr_lambdas': [None]}], **extras}, path)
    return path


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


def original_vit_layout(state):
    """A timm ViT state dict in the original repository's own (mmcv) ViT file layout."""
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
    torch.save({'state_dict': original_vit_layout(state)}, tmp_path / 'vit_base_patch16_224.pth')
    return tmp_path / 'vit_base_patch16_224.pth'
