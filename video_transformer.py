"""TimeSformer, ViViT, VideoMAE and V-JEPA 2 on the shared blocks of transformer.py, the classifier
and standard sizes.

Building a model allocates and initialises it and reads no file; weight_init.init_from_pretrained_
starts a built model from other weights and model_loading.load_model loads a trained one.
"""
import dataclasses
from dataclasses import dataclass

import torch
from einops import rearrange, reduce, repeat
from torch import nn

from preprocessing import Preprocessing
from transformer import (ACTIVATIONS, AttentivePooler, Block, ClassificationHead, PatchEmbed, num_token_frames,
                         rotary_tables, sine_cosine_table)
from utils import reject_unknown


# How a config field's type is named in errors.
FIELD_TYPE_NAMES = {int: 'an integer', float: 'a number', str: 'a string', bool: 'true or false'}


@dataclass(frozen=True)
class VideoTransformerConfig:
    """Everything that describes a model; argument names follow the original repository.

    arch: 'timesformer', 'vivit', 'videomae' or 'vjepa2'.
    attention_type: TimeSformer: 'divided_space_time', 'space_only', 'joint_space_time';
        ViViT: 'fact_encoder' (model 2), 'joint_space_time' (model 1),
        'divided_space_time' (model 3), 'fact_dot_product' (model 4); VideoMAE and V-JEPA 2:
        'joint_space_time'.
    fact_encoder_attention: the operators of fact_encoder's two encoders: 'self_attn' (the original repository
        after commit 37e1801, the released ViViT weights) or 'divided' (the original repository at 37e1801: the
        spatial encoder attends within T' interleaved groups of each frame's patches, the temporal
        encoder adds a temporal_fc).
    pos_emb_type: 'separate' (a spatial table over the class token and patches plus a temporal
        table over frames), 'joint' (one table over every token, as Hugging Face's ViViT),
        'tubelet_sincos' (VideoMAE: a fixed sine-cosine table over the tubelet index, time-major,
        computed for the token count, no class token) or 'rope' (V-JEPA 2: no table, 3-D rotary
        embeddings of queries and keys).
    pooling: what the head reads: 'cls_token' (the final-normed class token), 'mean' (the mean of
        the final-normed patch tokens: the original repository's return_cls_token=False), 'fc_norm'
        (the mean of every token, then the final norm: VideoMAE) or 'attentive' (the final-normed
        tokens through the head's attentive pooler: V-JEPA 2, num_pooler_layers self-attention
        blocks before it).
    qkv_bias: 'qkv' (biases on queries, keys and values), 'qv' (keys without: VideoMAE) or 'none'.
    norm_eps / final_norm_eps: LayerNorm eps inside the blocks / the final norm: 1e-6 as official
        TimeSformer, timm and transformers (the original repository's checkpoints load with its 1e-5
        in the blocks; transformers' VideoMAE has 1e-12 in the blocks and 1e-5 in fc_norm).
    dropout_p: dropout after the position embeddings, on attention weights and projections and
        in the FFN. drop_path_rate: stochastic depth of the last block, rising linearly from 0.
    """

    arch: str = 'timesformer'
    num_frames: int = 8
    img_size: int = 224
    patch_size: int = 16
    embed_dims: int = 768
    num_heads: int = 12
    num_transformer_layers: int = 12
    num_time_transformer_layers: int = 4
    fact_encoder_attention: str = 'self_attn'
    in_channels: int = 3
    conv_type: str = 'Conv2d'
    tube_size: int = 2
    dropout_p: float = 0.0
    drop_path_rate: float = 0.1
    attention_type: str = 'divided_space_time'
    use_learnable_pos_emb: bool = True
    pos_emb_type: str = 'separate'
    pooling: str = 'cls_token'
    num_pooler_layers: int = 3
    mlp_ratio: float = 4.0
    qkv_bias: str = 'qkv'
    activation: str = 'gelu'
    norm_eps: float = 1e-6
    final_norm_eps: float = 1e-6
    num_classes: int = 400
    head_dropout_p: float = 0.0

    def __post_init__(self):
        if isinstance(self.qkv_bias, bool):  # configs saved before the VideoMAE form
            object.__setattr__(self, 'qkv_bias', 'qkv' if self.qkv_bias else 'none')
        # Values from files and flags (config.json, export_weights.py -set) arrive untyped.
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type is float and type(value) is int:
                object.__setattr__(self, field.name, float(value))
            elif type(value) is not field.type:
                raise ValueError(f'{field.name} must be {FIELD_TYPE_NAMES[field.type]}, got {value!r}')
        allowed = ARCHITECTURES.get(self.arch)
        if allowed is None:
            raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}, got {self.arch!r}")
        if self.attention_type not in allowed.attention_types:
            raise ValueError(f'{allowed.__name__} attention_type must be one of '
                             f'{allowed.attention_types}, got {self.attention_type!r}')
        if self.img_size % self.patch_size:
            raise ValueError(f'img_size {self.img_size} is not a multiple of patch_size {self.patch_size}')
        if self.conv_type == 'Conv3d' and self.num_frames % self.tube_size:
            raise ValueError(f'num_frames {self.num_frames} is not a multiple of tube_size {self.tube_size}')
        if self.fact_encoder_attention not in FACT_ENCODER_OPERATORS:
            raise ValueError(f'fact_encoder_attention must be one of {sorted(FACT_ENCODER_OPERATORS)}, '
                             f'got {self.fact_encoder_attention!r}')
        if self.fact_encoder_attention == 'divided':
            if self.attention_type != 'fact_encoder':
                raise ValueError(f"fact_encoder_attention 'divided' is for attention_type 'fact_encoder', "
                                 f"not {self.attention_type!r}")
            if self.num_patches % self.num_time_steps:
                raise ValueError(f"fact_encoder_attention 'divided' splits each frame's {self.num_patches} "
                                 f"patches into {self.num_time_steps} groups (one per token frame): not a multiple")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f'activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}')
        for name, value, choices in (('pos_emb_type', self.pos_emb_type, allowed.pos_emb_types),
                                     ('pooling', self.pooling, allowed.poolings),
                                     ('qkv_bias', self.qkv_bias, ('qkv', 'qv', 'none'))):
            if value not in choices:
                raise ValueError(f'{allowed.__name__} {name} must be one of {choices}, got {value!r}')
        if self.pos_emb_type in COMPUTED_POSITIONS and (self.use_learnable_pos_emb or self.conv_type != 'Conv3d'):
            raise ValueError(f"pos_emb_type {self.pos_emb_type!r} is computed over Conv3d tubelets: it needs "
                             f"use_learnable_pos_emb=False and conv_type 'Conv3d'")
        if self.pos_emb_type == 'joint' and self.attention_type in ('space_only', 'fact_encoder'):
            raise ValueError(f"pos_emb_type 'joint' needs one token sequence per video, "
                             f"not attention_type {self.attention_type!r}")

    @property
    def num_patches(self):
        """Patches per frame."""
        return (self.img_size // self.patch_size) ** 2

    @property
    def num_time_steps(self):
        """Token frames after the patch embedding (frames / tube_size for Conv3d)."""
        return num_token_frames(self.num_frames, self.conv_type, self.tube_size)

    @property
    def has_cls_token(self):
        """Whether the tokens start with a class token (TimeSformer and ViViT)."""
        return self.pooling in ('cls_token', 'mean')

    @property
    def position_table_rows(self):
        """Rows of each position table in the weights: pos_embed (1 + P, or 1 + P*T' when joint) and,
        when there is one, time_embed (T', or 1 + T' for fact_encoder, whose temporal encoder has a
        class token); none for computed positions (COMPUTED_POSITIONS)."""
        if self.pos_emb_type in COMPUTED_POSITIONS:
            return {}
        if self.pos_emb_type == 'joint':
            return {'pos_embed': 1 + self.num_patches * self.num_time_steps}
        rows = {'pos_embed': 1 + self.num_patches}
        if self.attention_type == 'fact_encoder':
            rows['time_embed'] = 1 + self.num_time_steps
        elif self.attention_type != 'space_only':
            rows['time_embed'] = self.num_time_steps
        return rows

    @classmethod
    def for_arch(cls, arch, **fields):
        """A config of `arch` with what the architecture fixes (its arch_defaults) and `fields`."""
        if arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}, got {arch!r}")
        return cls(**{'arch': arch, **ARCHITECTURES[arch].arch_defaults, **fields})

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        return dataclasses.asdict(self)


CONFIG_FIELDS = tuple(field.name for field in dataclasses.fields(VideoTransformerConfig))
# Positions computed from the token grid, never stored in weights.
COMPUTED_POSITIONS = ('tubelet_sincos', 'rope')
# The original repository's constructor keywords for starting from weights: arguments of
# weight_init.init_from_pretrained_ here, since building reads no file.
STARTING_POINT_KEYWORDS = ('pretrained', 'copy_strategy', 'extend_strategy')
# fact_encoder_attention -> the OPERATORS of the spatial and the temporal encoder's blocks.
FACT_ENCODER_OPERATORS = {'self_attn': ('self_attn', 'self_attn'), 'divided': ('space_attn', 'time_attn')}


class VideoTransformer(nn.Module):
    """Patch embedding, positions, blocks, final norm and pooling.

    float (B, T, C, H, W) -> features (B, embed_dims): the final-normed class token by default (see
    VideoTransformerConfig.pooling), or the final-normed tokens (B, N, D) for attentive pooling.
    Tokens inside are (B, 1 + P*T', D), class token first when there is one, patch-major and
    time-minor; space_only and the spatial encoder of fact_encoder run each frame as its own
    sequence (B*T', 1 + P, D).

    Built from a config, `TimeSformer(config)`, or from the original repository's keyword
    arguments, `TimeSformer(num_frames=8, img_size=224, patch_size=16, ...)`, with its defaults for
    the rest. Building reads no file: weight_init.init_from_pretrained_ starts a built model from
    weights, so a saved config rebuilds a trained model anywhere.
    """

    arch = None
    attention_types = ()
    pos_emb_types = ('separate', 'joint')
    poolings = ('cls_token', 'mean')
    # What the architecture fixes where VideoTransformerConfig's defaults (TimeSformer's) differ:
    # the defaults of the keyword constructor and of VideoTransformerConfig.for_arch.
    arch_defaults = {}

    def __init__(self, config=None, **fields):
        super().__init__()
        self.config = config = self._config(config, fields)
        dim = config.embed_dims
        self.patch_embed = PatchEmbed(config.patch_size, config.in_channels, dim,
                                      config.conv_type, config.tube_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if config.has_cls_token else None
        self._add_position_tables()
        self.pos_drop = nn.Dropout(config.dropout_p)

        depth = config.num_transformer_layers
        spatial, temporal = config.attention_type, None
        if config.attention_type == 'fact_encoder':
            depth += config.num_time_transformer_layers
            spatial, temporal = FACT_ENCODER_OPERATORS[config.fact_encoder_attention]
        # Stochastic depth rises linearly from 0 to drop_path_rate over all blocks (in Python: a
        # model built on the meta device has no values to read back).
        rates = [config.drop_path_rate * index / max(depth - 1, 1) for index in range(depth)]
        self.blocks = nn.ModuleList(self._block(spatial, rate) for rate in rates[:config.num_transformer_layers])
        if temporal is not None:
            self.temporal_blocks = nn.ModuleList(
                self._block(temporal, rate) for rate in rates[config.num_transformer_layers:])
        self.norm = nn.LayerNorm(dim, eps=config.final_norm_eps)
        self.init_weights()

    def init_weights(self):
        """Initialise in place: Linear layers truncated normal (std 0.02) with zero bias, as timm and
        official TimeSformer do (the original repository kept PyTorch's default Linear init); as in the
        original repository, the patch embedding Kaiming fan-in, learnable position tables and the class
        token truncated normal (std 0.02), temporal_fc zero, so divided attention starts as an image
        model applied to every frame. VideoMAE's q and v biases start at zero."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for name, parameter in self.named_parameters():
            if name.endswith(('.q_bias', '.v_bias')):
                nn.init.zeros_(parameter)
        nn.init.kaiming_normal_(self.patch_embed.proj.weight, mode='fan_in', nonlinearity='relu')
        nn.init.zeros_(self.patch_embed.proj.bias)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        for name in ('pos_embed', 'time_embed'):
            table = getattr(self, name)
            if isinstance(table, nn.Parameter):
                nn.init.trunc_normal_(table, std=0.02)
        for name, module in self.named_modules():
            if name.endswith('temporal_fc'):
                nn.init.zeros_(module.weight)
                nn.init.zeros_(module.bias)

    def _config(self, config, fields):
        """The config to build: `config` itself, or one from keyword arguments."""
        name = type(self).__name__
        starting_point = sorted(set(fields) & set(STARTING_POINT_KEYWORDS))
        if starting_point:
            raise TypeError(f'{name}() builds without reading weights and takes no {starting_point}: start a built '
                            f"model with weight_init.init_from_pretrained_(model, path, copy_strategy='repeat', "
                            f"extend_strategy='temporal_avg')")
        if config is None:
            if 'return_cls_token' in fields:  # the original repository's keyword for the pooling
                fields['pooling'] = 'cls_token' if fields.pop('return_cls_token') else 'mean'
            reject_unknown(fields, CONFIG_FIELDS, f'{name}() got unexpected keyword arguments', TypeError)
            config = VideoTransformerConfig.for_arch(self.arch, **fields)
        elif fields:
            raise TypeError(f'{name}() takes a config or keyword arguments, not both (got {sorted(fields)})')
        if ARCHITECTURES[config.arch] is not type(self):
            raise ValueError(f'a config of arch {config.arch!r} builds {ARCHITECTURES[config.arch].__name__}, '
                             f'not {name}')
        return config

    def _block(self, operators, drop_path):
        c = self.config
        return Block(operators, c.embed_dims, c.num_heads, c.norm_eps, c.qkv_bias,
                     c.activation, c.mlp_ratio, c.dropout_p, drop_path)

    def _add_position_tables(self):
        """pos_embed and, where the config has one, time_embed (1, rows, D) (see position_table_rows);
        a computed tubelet table (1, P*T', D) as a buffer outside the weights; none for rotary."""
        c = self.config
        shapes = c.position_table_rows
        for name, length in shapes.items():
            table = torch.empty(1, length, c.embed_dims)  # init_weights or compute_fixed_tables fills it
            if c.use_learnable_pos_emb:
                self.register_parameter(name, nn.Parameter(table))
            else:
                self.register_buffer(name, table, persistent=False)
        if c.pos_emb_type == 'tubelet_sincos':
            self.register_buffer('pos_embed', torch.empty(1, c.num_patches * c.num_time_steps, c.embed_dims),
                                 persistent=False)
        elif 'pos_embed' not in shapes:
            self.pos_embed = None
        if 'time_embed' not in shapes:
            self.time_embed = None
        self.compute_fixed_tables()

    def compute_fixed_tables(self):
        """(Re)compute every buffer the config determines, on the parameters' device: the fixed
        sine-cosine position tables and VideoMAE's tubelet table (non-persistent: no file holds
        them). Called by the constructor, and by the loader after filling a model built on the meta
        device."""
        c = self.config
        device = self.patch_embed.proj.weight.device
        if c.pos_emb_type == 'tubelet_sincos':
            self.pos_embed = self.tubelet_table(c.num_time_steps, c.num_patches).to(device)
        elif not c.use_learnable_pos_emb:
            for name, length in c.position_table_rows.items():
                setattr(self, name, sine_cosine_table(length, c.embed_dims).to(device))

    def tubelet_table(self, time_steps, num_patches, dim=None):
        """VideoMAE's fixed table over the tubelet index t*P + p, in our token order: (1, P*T', dim), dim
        embed_dims unless given (VideoMAE's pretraining decoder takes the same table at its width)."""
        table = sine_cosine_table(time_steps * num_patches, dim or self.config.embed_dims)
        return rearrange(table, '1 (t p) d -> 1 (p t) d', t=time_steps)

    def check_input(self, x):
        """A ValueError naming what was expected unless x is a float video this model takes: its
        frame count (any count without a time table: space_only, VideoMAE, V-JEPA 2), channels, size
        (any multiple of the patch size with rotary positions) and dtype."""
        c, name = self.config, type(self).__name__
        any_frames = self.time_embed is None and c.pos_emb_type != 'joint'
        any_size = c.pos_emb_type == 'rope'
        frames = 'T' if any_frames else c.num_frames
        size = ('H', 'W') if any_size else (c.img_size, c.img_size)
        multiple = c.tube_size if c.conv_type == 'Conv3d' else 1
        shape_ok = x.ndim == 5 and x.shape[2] == c.in_channels and (
            x.shape[1] > 0 and x.shape[1] % multiple == 0 if any_frames else x.shape[1] == c.num_frames) and (
            x.shape[3] % c.patch_size == 0 and x.shape[4] % c.patch_size == 0 and x.shape[3] > 0 and x.shape[4] > 0
            if any_size else tuple(x.shape[3:]) == size)
        if not shape_ok:
            sizes = f' (H and W multiples of {c.patch_size})' if any_size else ''
            raise ValueError(f'{name} expects a video (B, T, C, H, W) = (B, {frames}, {c.in_channels}, '
                             f'{size[0]}, {size[1]}){sizes}, got {tuple(x.shape)}')
        weight = self.patch_embed.proj.weight
        if not x.is_floating_point():
            raise ValueError(f'{name} expects a float video, got {x.dtype}')
        if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise ValueError(f'{name} has {weight.dtype} weights and expects a {weight.dtype} video, got '
                             f'{x.dtype}: convert it with video.to({weight.dtype}), or run under autocast')

    def tokens(self, patches):
        """Patch tokens (B, T', P, D) with positions -> (B, 1 + P*T', D), (B, P*T', D) without a class
        token, or per frame (B*T', 1 + P, D) for space_only and fact_encoder.

        As in the original repository, dropout follows the spatial positions and again the temporal ones.
        """
        batch, time_steps, num_patches = patches.shape[:3]
        c = self.config
        if not c.has_cls_token:
            tokens = rearrange(patches, 'b t p d -> b (p t) d')
            if c.pos_emb_type == 'tubelet_sincos':
                table = self.pos_embed
                if table.shape[1] != tokens.shape[1]:  # another frame count: the table for its tokens
                    table = self.tubelet_table(time_steps, num_patches).to(tokens.device)
                tokens = tokens + table.to(tokens.dtype)
            return self.pos_drop(tokens)
        cls_token = self.cls_token.expand(batch, -1, -1)
        if c.pos_emb_type == 'joint':
            tokens = torch.cat((cls_token, rearrange(patches, 'b t p d -> b (p t) d')), dim=1)
            return self.pos_drop(tokens + self.pos_embed)
        cls_token = cls_token + self.pos_embed[:, :1]
        patches = patches + self.pos_embed[:, None, 1:]
        if c.attention_type in ('space_only', 'fact_encoder'):
            frames = rearrange(patches, 'b t p d -> (b t) p d')
            cls_token = cls_token.repeat_interleave(time_steps, dim=0)
            return self.pos_drop(torch.cat((cls_token, frames), dim=1))
        tokens = self.pos_drop(torch.cat((cls_token, rearrange(patches, 'b t p d -> b (p t) d')), dim=1))
        time_embed = repeat(self.time_embed, '1 t d -> 1 (p t) d', p=num_patches)
        return self.pos_drop(torch.cat((tokens[:, :1], tokens[:, 1:] + time_embed), dim=1))

    def encode(self, tokens, batch, time_steps, rotary=None):
        """Blocks: tokens from `tokens` -> (B, N, D) per video, for `time_steps` token frames;
        `rotary` (rotary_tables) turns every attention's queries and keys."""
        for block in self.blocks:
            tokens = block(tokens, time_steps, rotary)
        if self.config.attention_type == 'space_only':
            return reduce(tokens, '(b t) n d -> b n d', 'mean', b=batch)
        if self.config.attention_type == 'fact_encoder':
            frames = rearrange(tokens, '(b t) n d -> b t n d', b=batch)
            # The original repository took x[:b, 0] of the (b t)-flattened output: video 0's first b
            # frames, which mixes videos. Each video's own first frame gives its numbers at batch size 1.
            cls_token = frames[:, :1, 0]
            tokens = torch.cat((cls_token, frames[:, :, 1:].mean(dim=2)), dim=1)
            tokens = self.pos_drop(tokens + self.time_embed)
            for block in self.temporal_blocks:
                tokens = block(tokens)
        return tokens

    def pool(self, tokens):
        """Tokens (B, N, D) after the blocks -> what the head reads (see VideoTransformerConfig.pooling):
        (B, D), or the final-normed tokens (B, N, D) for attentive pooling."""
        pooling = self.config.pooling
        if pooling == 'fc_norm':
            return self.norm(tokens.mean(dim=1))
        tokens = self.norm(tokens)
        if pooling == 'cls_token':
            return tokens[:, 0]
        return tokens[:, 1:].mean(dim=1) if pooling == 'mean' else tokens

    def forward(self, x):
        self.check_input(x)
        patches = self.patch_embed(x)
        batch, time_steps = patches.shape[:2]
        rotary = None
        if self.config.pos_emb_type == 'rope':
            rows, columns = x.shape[3] // self.config.patch_size, x.shape[4] // self.config.patch_size
            rotary = rotary_tables(time_steps, rows, columns, self.config.embed_dims // self.config.num_heads,
                                   x.device)
        return self.pool(self.encode(self.tokens(patches), batch, time_steps, rotary))


class TimeSformer(VideoTransformer):
    """TimeSformer (Bertasius et al., 2021): per-frame patches and space-time attention."""

    arch = 'timesformer'
    attention_types = ('divided_space_time', 'space_only', 'joint_space_time')


class ViViT(VideoTransformer):
    """ViViT (Arnab et al., 2021): tubelet patches and models 1-4 of the paper."""

    arch = 'vivit'
    attention_types = ('fact_encoder', 'joint_space_time', 'divided_space_time', 'fact_dot_product')
    arch_defaults = {'conv_type': 'Conv3d', 'tube_size': 2, 'attention_type': 'fact_encoder'}


class VideoMAE(VideoTransformer):
    """VideoMAE (Tong et al., 2022): joint space-time attention over 2x16x16 tubelets, q and v biases,
    a fixed sine-cosine table over the tubelet index, no class token: the mean of the tokens, then
    the final norm (its fc_norm)."""

    arch = 'videomae'
    attention_types = ('joint_space_time',)
    pos_emb_types = ('tubelet_sincos',)
    poolings = ('fc_norm',)
    arch_defaults = {'conv_type': 'Conv3d', 'tube_size': 2, 'attention_type': 'joint_space_time',
                     'pos_emb_type': 'tubelet_sincos', 'use_learnable_pos_emb': False, 'pooling': 'fc_norm',
                     'qkv_bias': 'qv'}


class VJEPA2(VideoTransformer):
    """V-JEPA 2 (Assran et al., 2025): joint space-time attention over 2x16x16 tubelets with 3-D
    rotary positions on queries and keys, the final norm, and an attentive pooler in the head."""

    arch = 'vjepa2'
    attention_types = ('joint_space_time',)
    pos_emb_types = ('rope',)
    poolings = ('attentive',)
    arch_defaults = {'conv_type': 'Conv3d', 'tube_size': 2, 'attention_type': 'joint_space_time',
                     'pos_emb_type': 'rope', 'use_learnable_pos_emb': False, 'pooling': 'attentive'}


ARCHITECTURES = {'timesformer': TimeSformer, 'vivit': ViViT, 'videomae': VideoMAE, 'vjepa2': VJEPA2}


class VideoClassifier(nn.Module):
    """Backbone and head: float video (B, T, C, H, W) -> logits (B, num_classes).

    class_names, when known, name the logits in order; preprocessing (a Preprocessing), when
    known, says how a video becomes the model's input. Checkpoints carry both.
    """

    def __init__(self, config, class_names=None, preprocessing=None):
        super().__init__()
        if class_names is not None and len(class_names) != config.num_classes:
            raise ValueError(f'{len(class_names)} class names for num_classes={config.num_classes}')
        if preprocessing is not None and not isinstance(preprocessing, Preprocessing):
            raise TypeError(f'preprocessing must be a Preprocessing or None, got {type(preprocessing).__name__}')
        self.config = config
        self.class_names = list(class_names) if class_names is not None else None
        self.preprocessing = preprocessing
        self.backbone = ARCHITECTURES[config.arch](config)
        pooler = None
        if config.pooling == 'attentive':
            pooler = AttentivePooler(config.embed_dims, config.num_heads, config.num_pooler_layers, config.norm_eps,
                                     config.activation, config.mlp_ratio)
        self.head = ClassificationHead(config.embed_dims, config.num_classes, config.head_dropout_p, pooler)
        self.head.init_weights()

    def init_weights(self):
        """Initialise every parameter in place as building does: the backbone's and the head's
        init_weights. The loader runs it on a model built on the meta device whose only real tensors
        are the ones a file lacks."""
        self.backbone.init_weights()
        self.head.init_weights()

    def features(self, x):
        """The pooled representation the head's linear layer reads: (B, T, C, H, W) -> (B, embed_dims)."""
        return self.head.pool(self.backbone(x))

    def forward(self, x):
        return self.head(self.backbone(x))


# Standard sizes.

def timesformer_base_patch16_224(**overrides):
    """TimeSformer-B/16, 8 frames at 224x224, divided space-time attention (the paper's default)."""
    return VideoTransformerConfig(arch='timesformer', num_frames=8, img_size=224, patch_size=16,
                                  embed_dims=768, num_heads=12, num_transformer_layers=12,
                                  attention_type='divided_space_time').replace(**overrides)


def timesformer_hr_patch16_448(**overrides):
    """TimeSformer-HR: 16 frames at 448x448, divided space-time attention."""
    return timesformer_base_patch16_224(num_frames=16, img_size=448).replace(**overrides)


def timesformer_large_patch16_224(**overrides):
    """TimeSformer-L: 96 frames at 224x224, divided space-time attention."""
    return timesformer_base_patch16_224(num_frames=96).replace(**overrides)


def vivit_base_patch16_224(**overrides):
    """ViViT-B/16x2 factorised encoder, 32 frames at 224x224, tubelets of 2 frames."""
    return VideoTransformerConfig(arch='vivit', num_frames=32, img_size=224, patch_size=16,
                                  embed_dims=768, num_heads=12, num_transformer_layers=12,
                                  num_time_transformer_layers=4, conv_type='Conv3d', tube_size=2,
                                  attention_type='fact_encoder').replace(**overrides)


def timesformer_tiny(**overrides):
    """A 2-layer, 32-wide TimeSformer on 4 frames of 32x32 for tests and the demo."""
    return VideoTransformerConfig(arch='timesformer', num_frames=4, img_size=32, patch_size=8,
                                  embed_dims=32, num_heads=2, num_transformer_layers=2,
                                  attention_type='divided_space_time', num_classes=4,
                                  drop_path_rate=0.0).replace(**overrides)


def vivit_tiny(**overrides):
    """A small ViViT factorised encoder on 4 frames of 32x32 for tests and the demo."""
    return VideoTransformerConfig(arch='vivit', num_frames=4, img_size=32, patch_size=8,
                                  embed_dims=32, num_heads=2, num_transformer_layers=2,
                                  num_time_transformer_layers=1, conv_type='Conv3d', tube_size=2,
                                  attention_type='fact_encoder', num_classes=4,
                                  drop_path_rate=0.0).replace(**overrides)


def videomae_base_patch16_224(**overrides):
    """VideoMAE-B/16: 16 frames at 224x224 over 2x16x16 tubelets (MCG-NJU/videomae-base*)."""
    return VideoTransformerConfig.for_arch('videomae', num_frames=16, img_size=224, patch_size=16, embed_dims=768,
                                           num_heads=12, num_transformer_layers=12, norm_eps=1e-6,
                                           final_norm_eps=1e-6).replace(**overrides)


def videomae_large_patch16_224(**overrides):
    """VideoMAE-L/16: 24 blocks of width 1024, 16 heads (MCG-NJU/videomae-large*)."""
    return videomae_base_patch16_224(embed_dims=1024, num_heads=16, num_transformer_layers=24).replace(**overrides)


def vjepa2_vitl_fpc16_256(**overrides):
    """V-JEPA 2 ViT-L/16: 16 frames at 256x256, 24 blocks of width 1024, an attentive pooler of 3
    self-attention blocks and the query's cross-attention (facebook/vjepa2-vitl-fpc16-256-ssv2, 174 classes)."""
    return VideoTransformerConfig.for_arch('vjepa2', num_frames=16, img_size=256, patch_size=16, embed_dims=1024,
                                           num_heads=16, num_transformer_layers=24, num_classes=174,
                                           drop_path_rate=0.0).replace(**overrides)


def vjepa2_vitg_fpc64_384(**overrides):
    """V-JEPA 2 ViT-g/16: 64 frames at 384x384, 40 blocks of width 1408 (facebook/vjepa2-vitg-fpc64-384-ssv2)."""
    return vjepa2_vitl_fpc16_256(num_frames=64, img_size=384, embed_dims=1408, num_heads=22,
                                 num_transformer_layers=40, mlp_ratio=48 / 11).replace(**overrides)


def videomae_tiny(**overrides):
    """A 2-layer, 32-wide VideoMAE on 4 frames of 32x32 for tests."""
    return VideoTransformerConfig.for_arch('videomae', num_frames=4, img_size=32, patch_size=8, embed_dims=32,
                                           num_heads=2, num_transformer_layers=2, num_classes=4,
                                           drop_path_rate=0.0).replace(**overrides)


def vjepa2_tiny(**overrides):
    """A 2-layer, 48-wide V-JEPA 2 (heads of 24 channels: three rotary sections of 8) on 4 frames of
    32x32 with a 1-block attentive pooler, for tests."""
    return VideoTransformerConfig.for_arch('vjepa2', num_frames=4, img_size=32, patch_size=8, embed_dims=48,
                                           num_heads=2, num_transformer_layers=2, num_pooler_layers=1,
                                           num_classes=4, drop_path_rate=0.0).replace(**overrides)
