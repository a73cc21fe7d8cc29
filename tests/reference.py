"""Independent plain-torch references shared by the model and weight tests: each source's own
forward pass written from its code, over its own keys."""
import math

import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat


def randomise_(module, std=0.2, seed=0):
    """Every parameter of `module` drawn from N(0, std) in place, so that no zero-initialised part
    (temporal_fc) and no one hides a path or a bug. Returns the module."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return module


def layer_norm(x, state, prefix, eps):
    return F.layer_norm(x, x.shape[-1:], state[prefix + '.weight'], state[prefix + '.bias'], eps)


def linear(x, state, prefix):
    return F.linear(x, state[prefix + '.weight'], state.get(prefix + '.bias'))


def qkv_attention(x, state, prefix, heads):
    """timm's Attention: softmax(q k^T / sqrt(d)) v through proj, q, k, v stacked in qkv."""
    q, k, v = (rearrange(part, 'n l (h e) -> n h l e', h=heads)
               for part in linear(x, state, prefix + '.qkv').chunk(3, dim=-1))
    weights = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(dim=-1)
    return linear(rearrange(weights @ v, 'n h l e -> n l (h e)'), state, prefix + '.proj')


def vit_features(state, image, heads, eps=1e-6, final_eps=None):
    """A timm ViT's class-token features (B, D) on images (B, C, H, W), from its timm keys."""
    kernel = state['patch_embed.proj.weight']
    x = rearrange(F.conv2d(image, kernel, state['patch_embed.proj.bias'], stride=kernel.shape[-1]),
                  'n d h w -> n (h w) d')
    x = torch.cat((repeat(state['cls_token'], '1 1 d -> n 1 d', n=x.shape[0]), x), dim=1) + state['pos_embed']
    layers = 1 + max(int(key.split('.')[1]) for key in state if key.startswith('blocks.'))
    for index in range(layers):
        p = f'blocks.{index}.'
        x = x + qkv_attention(layer_norm(x, state, p + 'norm1', eps), state, p + 'attn', heads)
        hidden = F.gelu(linear(layer_norm(x, state, p + 'norm2', eps), state, p + 'mlp.fc1'))
        x = x + linear(hidden, state, p + 'mlp.fc2')
    return layer_norm(x, state, 'norm', eps if final_eps is None else final_eps)[:, 0]


def count_indices(state, prefix):
    """Layers `prefix` + index + '.' among the keys."""
    return len({key[len(prefix):].split('.')[0] for key in state if key.startswith(prefix)})


def mha(x, state, prefix, heads):
    """nn.MultiheadAttention's own forward on (N, L, D), weights as the original repository stores them."""
    x = x.transpose(0, 1)
    out, _ = F.multi_head_attention_forward(
        x, x, x, x.shape[-1], heads, state[prefix + '.in_proj_weight'], state[prefix + '.in_proj_bias'],
        None, None, False, 0.0, state[prefix + '.out_proj.weight'], state[prefix + '.out_proj.bias'],
        training=False, need_weights=False)
    return out.transpose(0, 1)


def original_forward(state, clip, attention_type, heads):
    """The original repository's TimeSformer / ViViT forward and head, step by step as its code runs them.

    LayerNorm eps 1e-5 in the blocks, 1e-6 at the end; the class token of fact_encoder is the
    the original repository's x[:b, 0], so call it with one video at a time. A fact_encoder whose temporal layers
    have a temporal_fc is the layout of commit 37e1801 (see original_37e1801_spatial and _temporal).
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

    def ffn(x, prefix):
        hidden = F.gelu(linear(layer_norm(x, s, prefix + '.ffns.0.norm', 1e-5), s, prefix + '.ffns.0.layers.0.0'))
        return x + linear(hidden, s, prefix + '.ffns.0.layers.1')

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
        return ffn(x, prefix)

    if attention_type == 'fact_encoder':
        commit_37e1801 = any(key.startswith('transformer_layers.1.') and '.temporal_fc.' in key for key in s)
        for index in range(count_indices(s, 'transformer_layers.0.layers.')):
            prefix = f'transformer_layers.0.layers.{index}'
            if commit_37e1801:
                x = ffn(original_37e1801_spatial(x, s, prefix, heads, groups=frames), prefix)
            else:
                x = block(x, prefix, False)
        cls_token = x[:batch, :1]
        x = reduce(rearrange(x[:, 1:], '(b t) p d -> b t p d', b=batch), 'b t p d -> b t d', 'mean')
        x = torch.cat((cls_token, x), dim=1) + s['time_embed']
        for index in range(count_indices(s, 'transformer_layers.1.layers.')):
            prefix = f'transformer_layers.1.layers.{index}'
            if commit_37e1801:
                x = ffn(original_37e1801_temporal(x, s, prefix, heads), prefix)
            else:
                x = block(x, prefix, False)
    else:
        for index in range(count_indices(s, 'transformer_layers.layers.')):
            x = block(x, f'transformer_layers.layers.{index}', attention_type == 'divided_space_time')
    if attention_type == 'space_only':
        x = reduce(rearrange(x, '(b t) p d -> b t p d', b=batch), 'b t p d -> b p d', 'mean')
    return F.linear(layer_norm(x, s, 'norm', 1e-6)[:, 0], state['cls_head.cls_head.weight'],
                    state['cls_head.cls_head.bias'])


def original_37e1801_spatial(x, s, prefix, heads, groups):
    """DividedSpatialAttentionWithPreNorm of the original repository at 37e1801 as its ViViT spatial encoder ran it:
    on one frame's tokens (N, 1 + P, D) with num_frames = T' = `groups`. Its rearrange
    'b (p t) d -> (b t) p d' puts patch i in group i mod T'; the class token joins every group,
    its outputs are averaged over the groups; the residual is the whole input."""
    cls_token, patches = x[:, :1], x[:, 1:]
    outputs = [mha(layer_norm(torch.cat((cls_token, patches[:, group::groups]), dim=1), s,
                              prefix + '.attentions.0.norm', 1e-5), s, prefix + '.attentions.0.attn', heads)
               for group in range(groups)]
    update = torch.empty_like(x)
    update[:, :1] = torch.stack([output[:, :1] for output in outputs]).mean(dim=0)
    for group, output in enumerate(outputs):
        update[:, 1 + group::groups] = output[:, 1:]
    return x + update


def original_37e1801_temporal(x, s, prefix, heads):
    """DividedTemporalAttentionWithPreNorm (use_cls_token=True, num_frames = T') of the original repository at
    37e1801 as its ViViT temporal encoder ran it, on (B, 1 + T', D): its p = T' // T' = 1 patch
    position leaves one sequence of the class token and the frame tokens; temporal_fc follows the
    attention and the residual is the whole input."""
    out = mha(layer_norm(x, s, prefix + '.attentions.0.norm', 1e-5), s, prefix + '.attentions.0.attn', heads)
    return x + linear(out, s, prefix + '.attentions.0.temporal_fc')


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
    for index in range(count_indices(s, 'blocks.')):
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


def videomae_logits(state, clip, heads, eps=1e-6):
    """MCG-NJU VideoMAE's classifier (modeling_finetune.py) on clips (B, T, C, H, W), from its keys:
    Conv3d tubelets flattened time-major, its float64 sine-cosine table over the tubelet index, blocks
    whose qkv bias is (q_bias, 0, v_bias), the mean of the tokens through fc_norm, the head."""
    kernel = state['patch_embed.proj.weight']
    x = F.conv3d(rearrange(clip, 'b t c h w -> b c t h w'), kernel, state['patch_embed.proj.bias'],
                 stride=kernel.shape[2:])
    x = rearrange(x, 'b d t h w -> b (t h w) d')
    position = torch.arange(x.shape[1], dtype=torch.float64)[:, None]
    channel = torch.arange(x.shape[2], dtype=torch.float64)
    angles = position / torch.pow(10000, 2 * (channel // 2) / x.shape[2])
    angles[:, 0::2], angles[:, 1::2] = angles[:, 0::2].sin(), angles[:, 1::2].cos()
    x = x + angles.float()
    for index in range(count_indices(state, 'blocks.')):
        p = f'blocks.{index}.'
        bias = torch.cat((state[p + 'attn.q_bias'], torch.zeros_like(state[p + 'attn.v_bias']), state[p + 'attn.v_bias']))
        q, k, v = (rearrange(part, 'n l (h e) -> n h l e', h=heads) for part in
                   F.linear(layer_norm(x, state, p + 'norm1', eps), state[p + 'attn.qkv.weight'], bias).chunk(3, dim=-1))
        weights = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(dim=-1)
        x = x + linear(rearrange(weights @ v, 'n h l e -> n l (h e)'), state, p + 'attn.proj')
        x = x + linear(F.gelu(linear(layer_norm(x, state, p + 'norm2', eps), state, p + 'mlp.fc1')), state, p + 'mlp.fc2')
    return linear(layer_norm(x.mean(dim=1), state, 'fc_norm', eps), state, 'head')
