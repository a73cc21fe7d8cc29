"""Building blocks shared by TimeSformer and ViViT, bottom-up.

Token layout inside the blocks: a video of T frames and P patches per frame is a sequence
(B, 1 + P*T, D): the class token first, then patch-major, time-minor (token 1 + p*T + t),
which is the order of the original TimeSformer checkpoints.
"""
import math

import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat
from torch import nn


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), the GELU of CLIP-style checkpoints."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {
    'gelu': nn.GELU,
    # tanh approximation; transformers calls it gelu_new / gelu_pytorch_tanh / gelu_fast.
    'gelu_tanh': lambda: nn.GELU(approximate='tanh'),
    'quick_gelu': QuickGELU,
}


def sine_cosine_table(num_positions, dim):
    """Fixed sinusoidal table (1, num_positions, dim), sin on even and cos on odd channels."""
    position = torch.arange(num_positions, dtype=torch.float64)[:, None]
    frequency = torch.pow(10000.0, -2 * (torch.arange(dim, dtype=torch.float64) // 2) / dim)
    angle = position * frequency
    table = torch.where(torch.arange(dim) % 2 == 0, angle.sin(), angle.cos())
    return table.float()[None]


def num_token_frames(num_frames, conv_type, tube_size):
    """Token frames the patch embedding makes of num_frames: one per tubelet of tube_size for Conv3d."""
    return num_frames // tube_size if conv_type == 'Conv3d' else num_frames


class PatchEmbed(nn.Module):
    """Frames to patch tokens: (B, T, C, H, W) -> (B, T', P, D), T' = T / tube_size.

    Conv2d embeds each frame; Conv3d embeds tubelets of `tube_size` frames.
    """

    def __init__(self, patch_size, in_channels, embed_dims, conv_type='Conv2d', tube_size=2):
        super().__init__()
        if conv_type == 'Conv2d':
            self.proj = nn.Conv2d(in_channels, embed_dims, patch_size, stride=patch_size)
        elif conv_type == 'Conv3d':
            kernel = (tube_size, patch_size, patch_size)
            self.proj = nn.Conv3d(in_channels, embed_dims, kernel, stride=kernel)
        else:
            raise ValueError(f"conv_type must be 'Conv2d' or 'Conv3d', got {conv_type!r}")

    def forward(self, x):
        if isinstance(self.proj, nn.Conv3d):
            x = self.proj(rearrange(x, 'b t c h w -> b c t h w'))
            return rearrange(x, 'b d t h w -> b t (h w) d')
        frames = self.proj(rearrange(x, 'b t c h w -> (b t) c h w'))
        return rearrange(frames, '(b t) d h w -> b t (h w) d', b=x.shape[0])


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample while training."""

    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self):
        return f'drop_prob={self.drop_prob:.3f}'


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection: (B, N, D) -> (B, N, D).

    Every operator below calls this one module; they choose space, time or both by regrouping
    tokens into the batch axis. `fused=False` computes softmax(QK^T / sqrt(d)) V explicitly,
    the same numbers as SDPA; `keep_weights=True` takes that path too and keeps the last softmax
    weights (B, heads, N, N), detached, in `weights` (utils.record_attention sets it).
    """

    def __init__(self, dim, num_heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'embed_dims {dim} is not divisible by num_heads {num_heads}')
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.fused = True
        self.keep_weights = False
        self.weights = None
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def split_heads(self, x):
        """(B, N, D) -> q, k, v, each (B, heads, N, D / heads)."""
        qkv = rearrange(self.qkv(x), 'b n (three h d) -> three b h n d', three=3, h=self.num_heads)
        return qkv.unbind(0)

    def attend(self, q, k, v):
        """Scaled dot-product attention on (B, heads, N, d) -> (B, heads, N, d)."""
        dropout = self.attn_drop if self.training else 0.0
        if self.fused and not self.keep_weights:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        weights = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1)
        if self.keep_weights:
            self.weights = weights.detach()
        return F.dropout(weights, dropout, training=self.training) @ v

    def merge_heads(self, x):
        """(B, heads, N, d) -> (B, N, D) through the output projection."""
        return self.proj_drop(self.proj(rearrange(x, 'b h n d -> b n (h d)')))

    def forward(self, x):
        return self.merge_heads(self.attend(*self.split_heads(x)))


class PreNormAttention(nn.Module):
    """x + DropPath(Attention(LayerNorm(x))) over all tokens given: (B, N, D) -> (B, N, D).

    Joint space-time attention when the tokens are a whole video, space-only attention when
    they are one frame.
    """

    def __init__(self, dim, num_heads, norm_eps, qkv_bias, dropout_p, drop_path):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, dropout_p, dropout_p)
        self.drop_path = DropPath(drop_path)

    def forward(self, x, num_frames=None):
        return x + self.drop_path(self.attn(self.norm(x)))


class TemporalAttention(PreNormAttention):
    """Attention across frames at each patch position, patch tokens only:
    (B, 1 + P*T, D) -> (B, 1 + P*T, D). The residual branch goes through `temporal_fc`.
    """

    def __init__(self, dim, num_heads, norm_eps, qkv_bias, dropout_p, drop_path):
        super().__init__(dim, num_heads, norm_eps, qkv_bias, dropout_p, drop_path)
        self.temporal_fc = nn.Linear(dim, dim)

    def forward(self, x, num_frames):
        cls_token, patches = x[:, :1], x[:, 1:]
        tubes = rearrange(patches, 'b (p t) d -> (b p) t d', t=num_frames)
        update = self.temporal_fc(self.drop_path(self.attn(self.norm(tubes))))
        update = rearrange(update, '(b p) t d -> b (p t) d', b=x.shape[0])
        return torch.cat((cls_token, patches + update), dim=1)


class SpatialAttention(PreNormAttention):
    """Attention within each frame: (B, 1 + P*T, D) -> (B, 1 + P*T, D).

    The class token joins every frame and its T outputs are averaged back into one. The seed's
    ViViT fact_encoder at commit 37e1801 ran it on each frame's own tokens (1 + P) with T = T':
    patch i joined group i mod T'.
    """

    def forward(self, x, num_frames):
        cls_token, patches = x[:, :1], x[:, 1:]
        frames = rearrange(patches, 'b (p t) d -> (b t) p d', t=num_frames)
        frames = torch.cat((repeat(cls_token, 'b 1 d -> (b t) 1 d', t=num_frames), frames), dim=1)
        update = self.drop_path(self.attn(self.norm(frames)))
        cls_update = reduce(update[:, :1], '(b t) 1 d -> b 1 d', 'mean', t=num_frames)
        patch_update = rearrange(update[:, 1:], '(b t) p d -> b (p t) d', t=num_frames)
        return x + torch.cat((cls_update, patch_update), dim=1)


class ClassTokenTemporalAttention(PreNormAttention):
    """Attention over a video's class token and frame tokens, the residual branch through
    `temporal_fc`: (B, 1 + T', D) -> (B, 1 + T', D). The temporal encoder of the seed's ViViT
    fact_encoder at commit 37e1801 (its DividedTemporalAttentionWithPreNorm with the class token).
    """

    def __init__(self, dim, num_heads, norm_eps, qkv_bias, dropout_p, drop_path):
        super().__init__(dim, num_heads, norm_eps, qkv_bias, dropout_p, drop_path)
        self.temporal_fc = nn.Linear(dim, dim)

    def forward(self, x, num_frames=None):
        return x + self.temporal_fc(self.drop_path(self.attn(self.norm(x))))


class FactorisedDotProductAttention(PreNormAttention):
    """ViViT model 4: half of the heads attend within a frame, half across frames.

    (B, 1 + P*T, D) -> (B, 1 + P*T, D). The class token joins every group of both halves and
    its outputs are averaged back, as in the divided spatial operator.
    """

    def __init__(self, dim, num_heads, norm_eps, qkv_bias, dropout_p, drop_path):
        if num_heads % 2:
            raise ValueError(f'fact_dot_product needs an even num_heads, got {num_heads}')
        super().__init__(dim, num_heads, norm_eps, qkv_bias, dropout_p, drop_path)

    # (group, ungroup) patterns of the spatial and the temporal half of the heads.
    SPATIAL_GROUPS = ('b h (p t) d -> (b t) h p d', '(b t) h p d -> b h (p t) d')
    TEMPORAL_GROUPS = ('b h (p t) d -> (b p) h t d', '(b p) h t d -> b h (p t) d')

    def _attend_grouped(self, q, k, v, patterns, num_frames):
        """Attention within token groups for q, k, v (B, h, 1 + P*T, d) -> (B, h, 1 + P*T, d)."""
        group, ungroup = patterns
        batch = q.shape[0]

        def with_cls_token(tensor):
            patches = rearrange(tensor[:, :, 1:], group, t=num_frames)
            cls_token = repeat(tensor[:, :, :1], 'b h 1 d -> (b g) h 1 d', g=patches.shape[0] // batch)
            return torch.cat((cls_token, patches), dim=2)

        out = self.attn.attend(with_cls_token(q), with_cls_token(k), with_cls_token(v))
        cls_out = reduce(out[:, :, :1], '(b g) h 1 d -> b h 1 d', 'mean', b=batch)
        patch_out = rearrange(out[:, :, 1:], ungroup, b=batch, t=num_frames)
        return torch.cat((cls_out, patch_out), dim=2)

    def forward(self, x, num_frames):
        q, k, v = self.attn.split_heads(self.norm(x))
        half = self.attn.num_heads // 2
        spatial = self._attend_grouped(q[:, :half], k[:, :half], v[:, :half],
                                       self.SPATIAL_GROUPS, num_frames)
        temporal = self._attend_grouped(q[:, half:], k[:, half:], v[:, half:],
                                        self.TEMPORAL_GROUPS, num_frames)
        return x + self.drop_path(self.attn.merge_heads(torch.cat((spatial, temporal), dim=1)))


class FFN(nn.Module):
    """x + DropPath(Linear-GELU-Linear(LayerNorm(x))), hidden width mlp_ratio * D: (B, N, D) -> (B, N, D)."""

    def __init__(self, dim, hidden_dim, norm_eps, activation, dropout_p, drop_path):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = ACTIVATIONS[activation]()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.dropout = nn.Dropout(dropout_p)
        self.drop_path = DropPath(drop_path)

    def forward(self, x):
        hidden = self.dropout(self.act(self.fc1(self.norm(x))))
        return x + self.drop_path(self.dropout(self.fc2(hidden)))


# The attention operators of a block, by attention type. fact_encoder builds its spatial and
# temporal encoders from the seed's operator names: 'self_attn' in both (its later commits, the
# released ViViT weights), or 'space_attn' and 'time_attn' (its commit 37e1801).
OPERATORS = {
    'divided_space_time': {'temporal_attn': TemporalAttention, 'spatial_attn': SpatialAttention},
    'joint_space_time': {'attn': PreNormAttention},
    'space_only': {'attn': PreNormAttention},
    'fact_dot_product': {'attn': FactorisedDotProductAttention},
    'self_attn': {'attn': PreNormAttention},
    'space_attn': {'attn': SpatialAttention},
    'time_attn': {'attn': ClassTokenTemporalAttention},
}


class Block(nn.Module):
    """The attention operators of `operators` (an OPERATORS key) in order, then the FFN:
    (B, N, D) -> (B, N, D)."""

    def __init__(self, operators, dim, num_heads, norm_eps, qkv_bias, activation,
                 mlp_ratio, dropout_p, drop_path):
        super().__init__()
        for name, operator in OPERATORS[operators].items():
            self.add_module(name, operator(dim, num_heads, norm_eps, qkv_bias, dropout_p, drop_path))
        self.attention_names = tuple(OPERATORS[operators])
        self.ffn = FFN(dim, int(dim * mlp_ratio), norm_eps, activation, dropout_p, drop_path)

    def forward(self, x, num_frames=None):
        for name in self.attention_names:
            x = getattr(self, name)(x, num_frames)
        return self.ffn(x)


class ClassificationHead(nn.Module):
    """Dropout and a linear layer: (B, D) -> (B, num_classes)."""

    def __init__(self, dim, num_classes, dropout_p=0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout_p)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x):
        return self.fc(self.dropout(x))
