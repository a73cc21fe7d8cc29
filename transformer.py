"""Building blocks shared by TimeSformer, ViViT, VideoMAE and V-JEPA 2, bottom-up.

Token layout inside the blocks: a video of T frames and P patches per frame is a sequence
(B, 1 + P*T, D): the class token first (for the models that have one), then patch-major,
time-minor (token 1 + p*T + t), which is the order of the original TimeSformer checkpoints.
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


def rotary_tables(time_steps, height, width, head_dim, device=None):
    """3-D rotary embedding of every token (patch-major, time-minor): cos and sin, each (N, head_dim).

    As V-JEPA 2: the head dimension's first three sections of 2 * (head_dim // 6) channels rotate by
    the token's time step, row and column; the remaining channels are not rotated (cos 1, sin 0).
    Within a section of s channels, channel i turns at frequency 10000^-(i mod s/2) / (s/2), while
    apply_rotary pairs neighbouring channels: V-JEPA 2's layout, kept so its weights give its numbers.
    """
    section = 2 * (head_dim // 3 // 2)
    token = torch.arange(time_steps * height * width, device=device)
    patch = token // time_steps
    positions = (token % time_steps, patch // width, patch % width)
    omega = 1.0 / 10000 ** (torch.arange(section // 2, dtype=torch.float32, device=device) / (section / 2))
    angles = torch.cat([torch.outer(position.float(), omega).repeat(1, 2) for position in positions], dim=1)
    rest = head_dim - 3 * section
    cos = torch.cat((angles.cos(), angles.new_ones(len(token), rest)), dim=1)
    sin = torch.cat((angles.sin(), angles.new_zeros(len(token), rest)), dim=1)
    return cos, sin


def apply_rotary(x, rotary):
    """Rotate queries or keys (B, heads, N, d) by rotary_tables' (cos, sin): each neighbouring channel
    pair (a, b) -> (a cos - b sin, b cos + a sin)."""
    cos, sin = (table.to(x.dtype) for table in rotary)
    pairs = rearrange(x, '... (d two) -> ... d two', two=2)
    turned = rearrange(torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1), '... d two -> ... (d two)')
    return x * cos + turned * sin


# The patch embeddings: each frame on its own (Conv2d) or tubelets of tube_size frames (Conv3d).
CONV_TYPES = ('Conv2d', 'Conv3d')


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
            raise ValueError(f'conv_type must be one of {CONV_TYPES}, got {conv_type!r}')

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
    tokens into the batch axis. qkv_bias: 'qkv' (a bias on all three), 'qv' (learnt q and v biases,
    k's zero, as VideoMAE) or 'none'. `rotary` (rotary_tables' cos and sin) turns queries and keys
    (V-JEPA 2); `cross` lets other queries attend to the tokens (an attentive pooler's).
    out_proj=False leaves out the output projection (V-JEPA 2's pooling cross-attention has none).
    `fused=False` computes softmax(QK^T / sqrt(d)) V explicitly, the same numbers as SDPA;
    `keep_weights=True` takes that path too and keeps the last softmax weights (B, heads, N, N),
    detached, in `weights` (utils.record_attention sets it).
    """

    def __init__(self, dim, num_heads, qkv_bias='qkv', attn_drop=0.0, proj_drop=0.0, out_proj=True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'embed_dims {dim} is not divisible by num_heads {num_heads}')
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.fused = True
        self.keep_weights = False
        self.weights = None
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias == 'qkv')
        if qkv_bias == 'qv':
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim) if out_proj else nn.Identity()
        self.proj_drop = nn.Dropout(proj_drop)

    def qkv_bias(self):
        """The bias of the fused projection (3D,), or None."""
        if hasattr(self, 'q_bias'):
            return torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        return self.qkv.bias

    def split_heads(self, x, rotary=None):
        """(B, N, D) -> q, k, v, each (B, heads, N, D / heads); q and k rotated by `rotary`."""
        qkv = F.linear(x, self.qkv.weight, self.qkv_bias())
        q, k, v = rearrange(qkv, 'b n (three h d) -> three b h n d', three=3, h=self.num_heads).unbind(0)
        if rotary is not None:
            q, k = apply_rotary(q, rotary), apply_rotary(k, rotary)
        return q, k, v

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

    def cross(self, queries, tokens):
        """Queries (B, M, D) attend to tokens (B, N, D) -> (B, M, D): q projected from the queries,
        k and v from the tokens, with the same fused weights."""
        weight, bias = self.qkv.weight.chunk(3), self.qkv_bias()
        bias = (None,) * 3 if bias is None else bias.chunk(3)
        q, k, v = (rearrange(F.linear(source, part, part_bias), 'b n (h d) -> b h n d', h=self.num_heads)
                   for source, part, part_bias in zip((queries, tokens, tokens), weight, bias))
        return self.merge_heads(self.attend(q, k, v))

    def forward(self, x, rotary=None):
        return self.merge_heads(self.attend(*self.split_heads(x, rotary)))


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

    def forward(self, x, num_frames=None, rotary=None):
        return x + self.drop_path(self.attn(self.norm(x), rotary))


class TemporalAttention(PreNormAttention):
    """Attention across frames at each patch position, patch tokens only:
    (B, 1 + P*T, D) -> (B, 1 + P*T, D). The residual branch goes through `temporal_fc`.
    """

    def __init__(self, dim, num_heads, norm_eps, qkv_bias, dropout_p, drop_path):
        super().__init__(dim, num_heads, norm_eps, qkv_bias, dropout_p, drop_path)
        self.temporal_fc = nn.Linear(dim, dim)

    def forward(self, x, num_frames, rotary=None):
        cls_token, patches = x[:, :1], x[:, 1:]
        tubes = rearrange(patches, 'b (p t) d -> (b p) t d', t=num_frames)
        update = self.temporal_fc(self.drop_path(self.attn(self.norm(tubes))))
        update = rearrange(update, '(b p) t d -> b (p t) d', b=x.shape[0])
        return torch.cat((cls_token, patches + update), dim=1)


class SpatialAttention(PreNormAttention):
    """Attention within each frame: (B, 1 + P*T, D) -> (B, 1 + P*T, D).

    The class token joins every frame and its T outputs are averaged back into one. The original repository's
    ViViT fact_encoder at commit 37e1801 ran it on each frame's own tokens (1 + P) with T = T':
    patch i joined group i mod T'.
    """

    def forward(self, x, num_frames, rotary=None):
        cls_token, patches = x[:, :1], x[:, 1:]
        frames = rearrange(patches, 'b (p t) d -> (b t) p d', t=num_frames)
        frames = torch.cat((repeat(cls_token, 'b 1 d -> (b t) 1 d', t=num_frames), frames), dim=1)
        update = self.drop_path(self.attn(self.norm(frames)))
        cls_update = reduce(update[:, :1], '(b t) 1 d -> b 1 d', 'mean', t=num_frames)
        patch_update = rearrange(update[:, 1:], '(b t) p d -> b (p t) d', t=num_frames)
        return x + torch.cat((cls_update, patch_update), dim=1)


class ClassTokenTemporalAttention(PreNormAttention):
    """Attention over a video's class token and frame tokens, the residual branch through
    `temporal_fc`: (B, 1 + T', D) -> (B, 1 + T', D). The temporal encoder of the original repository's ViViT
    fact_encoder at commit 37e1801 (its DividedTemporalAttentionWithPreNorm with the class token).
    """

    def __init__(self, dim, num_heads, norm_eps, qkv_bias, dropout_p, drop_path):
        super().__init__(dim, num_heads, norm_eps, qkv_bias, dropout_p, drop_path)
        self.temporal_fc = nn.Linear(dim, dim)

    def forward(self, x, num_frames=None, rotary=None):
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

    def forward(self, x, num_frames, rotary=None):
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
# temporal encoders from the original repository's operator names: 'self_attn' in both (its later commits, the
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

    def forward(self, x, num_frames=None, rotary=None):
        for name in self.attention_names:
            x = getattr(self, name)(x, num_frames, rotary)
        return self.ffn(x)


class AttentivePooler(nn.Module):
    """V-JEPA 2's attentive pooling: self-attention blocks over the tokens, then one learnt query
    attends to them (pre-norm, no output projection) and goes through an FFN: (B, N, D) -> (B, D)."""

    def __init__(self, dim, num_heads, depth, norm_eps, activation, mlp_ratio):
        super().__init__()
        self.blocks = nn.ModuleList(Block('self_attn', dim, num_heads, norm_eps, 'qkv', activation, mlp_ratio,
                                          0.0, 0.0) for _ in range(depth))
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.cross_attn = Attention(dim, num_heads, out_proj=False)
        self.ffn = FFN(dim, int(dim * mlp_ratio), norm_eps, activation, 0.0, 0.0)

    def init_weights(self):
        """Linear layers truncated normal (std 0.02) as V-JEPA 2, each residual branch's last layer
        scaled down by the square root of its depth; norms at one and zero (a model loaded on the meta
        device has nothing else to set them)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.query, std=0.02)
        for depth, block in enumerate(self.blocks, 1):
            nn.init.trunc_normal_(block.attn.attn.proj.weight, std=0.02 / math.sqrt(depth))
            nn.init.trunc_normal_(block.ffn.fc2.weight, std=0.02 / math.sqrt(depth))
        nn.init.trunc_normal_(self.ffn.fc2.weight, std=0.02 / math.sqrt(len(self.blocks) + 1))

    def forward(self, tokens):
        for block in self.blocks:
            tokens = block(tokens)
        query = self.query.expand(tokens.shape[0], -1, -1)
        return self.ffn(query + self.cross_attn.cross(query, self.norm(tokens)))[:, 0]


class ClassificationHead(nn.Module):
    """Dropout and a linear layer: features (B, D) -> (B, num_classes), or with a `pooler`
    (AttentivePooler) tokens (B, N, D) -> (B, num_classes)."""

    def __init__(self, dim, num_classes, dropout_p=0.0, pooler=None):
        super().__init__()
        self.pooler = pooler
        self.dropout = nn.Dropout(dropout_p)
        self.fc = nn.Linear(dim, num_classes)

    def init_weights(self):
        nn.init.trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)
        if self.pooler is not None:
            self.pooler.init_weights()

    def pool(self, x):
        """What the linear layer reads: (B, D), through the pooler when there is one."""
        return x if self.pooler is None else self.pooler(x)

    def classify(self, features):
        """The pooled features (B, D) -> (B, num_classes): dropout and the linear layer."""
        return self.fc(self.dropout(features))

    def forward(self, x):
        return self.classify(self.pool(x))
