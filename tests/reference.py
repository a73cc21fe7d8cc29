"""Independent plain-torch references shared by the model and weight tests."""
import torch
import torch.nn.functional as F
from einops import rearrange, repeat


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
