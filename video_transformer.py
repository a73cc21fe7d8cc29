"""TimeSformer and ViViT on the shared blocks of transformer.py, the classifier and standard sizes."""
import dataclasses
from dataclasses import dataclass

import torch
from einops import rearrange, reduce, repeat
from torch import nn

from transformer import ACTIVATIONS, Block, ClassificationHead, PatchEmbed, num_token_frames, sine_cosine_table
from weight_init import init_from_pretrained_, init_video_transformer_


@dataclass(frozen=True)
class VideoTransformerConfig:
    """Everything that describes a model; argument names follow the seed repository.

    arch: 'timesformer' or 'vivit'.
    attention_type: TimeSformer: 'divided_space_time', 'space_only', 'joint_space_time';
        ViViT: 'fact_encoder' (model 2), 'joint_space_time' (model 1),
        'divided_space_time' (model 3), 'fact_dot_product' (model 4).
    pos_emb_type: 'separate' (a spatial table over the class token and patches plus a temporal
        table over frames) or 'joint' (one table over every token, as Hugging Face's ViViT).
    norm_eps / final_norm_eps: LayerNorm eps inside the blocks / before pooling.
    dropout_p: dropout after the position embeddings, on attention weights and projections and
        in the FFN. drop_path_rate: stochastic depth of the last block, rising linearly from 0.
    pretrained: weights (any format load_model reads) to start from; an image model is inflated by
        extend_strategy (Conv2d -> Conv3d) and copy_strategy (spatial -> temporal attention).
    """

    arch: str = 'timesformer'
    num_frames: int = 8
    img_size: int = 224
    patch_size: int = 16
    embed_dims: int = 768
    num_heads: int = 12
    num_transformer_layers: int = 12
    num_time_transformer_layers: int = 4
    in_channels: int = 3
    conv_type: str = 'Conv2d'
    tube_size: int = 2
    dropout_p: float = 0.0
    drop_path_rate: float = 0.1
    attention_type: str = 'divided_space_time'
    copy_strategy: str = 'repeat'
    extend_strategy: str = 'temporal_avg'
    use_learnable_pos_emb: bool = True
    pos_emb_type: str = 'separate'
    return_cls_token: bool = True
    pretrained: str | None = None
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    activation: str = 'gelu'
    norm_eps: float = 1e-5
    final_norm_eps: float = 1e-6
    num_classes: int = 400
    head_dropout_p: float = 0.0

    def __post_init__(self):
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
        if self.copy_strategy not in ('repeat', 'set_zero'):
            raise ValueError(f"copy_strategy must be 'repeat' or 'set_zero', got {self.copy_strategy!r}")
        if self.extend_strategy not in ('temporal_avg', 'center_frame'):
            raise ValueError(f"extend_strategy must be 'temporal_avg' or 'center_frame', got {self.extend_strategy!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f'activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}')
        if self.pos_emb_type not in ('separate', 'joint'):
            raise ValueError(f"pos_emb_type must be 'separate' or 'joint', got {self.pos_emb_type!r}")
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
    def position_table_rows(self):
        """Rows of each position table: pos_embed (1 + P, or 1 + P*T' when joint) and, when there is
        one, time_embed (T', or 1 + T' for fact_encoder, whose temporal encoder has a class token)."""
        if self.pos_emb_type == 'joint':
            return {'pos_embed': 1 + self.num_patches * self.num_time_steps}
        rows = {'pos_embed': 1 + self.num_patches}
        if self.attention_type == 'fact_encoder':
            rows['time_embed'] = 1 + self.num_time_steps
        elif self.attention_type != 'space_only':
            rows['time_embed'] = self.num_time_steps
        return rows

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        return dataclasses.asdict(self)


class VideoTransformer(nn.Module):
    """Patch embedding, position embeddings, blocks, final norm and pooling.

    float (B, T, C, H, W) -> features (B, embed_dims). Tokens inside are (B, 1 + P*T', D),
    class token first, patch-major and time-minor; space_only and the spatial encoder of
    fact_encoder run each frame as its own sequence (B*T', 1 + P, D).
    """

    attention_types = ()

    def __init__(self, config):
        super().__init__()
        if ARCHITECTURES[config.arch] is not type(self):
            raise ValueError(f'a config of arch {config.arch!r} builds {ARCHITECTURES[config.arch].__name__}, '
                             f'not {type(self).__name__}')
        self.config = config
        dim = config.embed_dims
        self.patch_embed = PatchEmbed(config.patch_size, config.in_channels, dim,
                                      config.conv_type, config.tube_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self._add_position_tables()
        self.pos_drop = nn.Dropout(config.dropout_p)

        depth = config.num_transformer_layers
        if config.attention_type == 'fact_encoder':
            depth += config.num_time_transformer_layers
        rates = torch.linspace(0, config.drop_path_rate, depth).tolist()
        spatial_type = 'space_only' if config.attention_type == 'fact_encoder' else config.attention_type
        self.blocks = nn.ModuleList(
            self._block(spatial_type, rate) for rate in rates[:config.num_transformer_layers])
        if config.attention_type == 'fact_encoder':
            self.temporal_blocks = nn.ModuleList(
                self._block('fact_encoder', rate) for rate in rates[config.num_transformer_layers:])
        self.norm = nn.LayerNorm(dim, eps=config.final_norm_eps)
        init_video_transformer_(self)
        if config.pretrained:
            init_from_pretrained_(self, config.pretrained)

    def _block(self, attention_type, drop_path):
        c = self.config
        return Block(attention_type, c.embed_dims, c.num_heads, c.norm_eps, c.qkv_bias,
                     c.activation, c.mlp_ratio, c.dropout_p, drop_path)

    def _add_position_tables(self):
        """pos_embed and, where the config has one, time_embed (1, rows, D); see position_table_rows."""
        c = self.config
        shapes = c.position_table_rows
        for name, length in shapes.items():
            table = sine_cosine_table(length, c.embed_dims)
            if c.use_learnable_pos_emb:
                self.register_parameter(name, nn.Parameter(table))
            else:
                self.register_buffer(name, table, persistent=False)
        if 'time_embed' not in shapes:
            self.time_embed = None

    def check_input(self, x):
        c = self.config
        expected = (c.num_frames, c.in_channels, c.img_size, c.img_size)
        if x.ndim != 5 or tuple(x.shape[1:]) != expected:
            raise ValueError(f'{type(self).__name__} expects a video (B, T, C, H, W) = '
                             f'(B, {", ".join(map(str, expected))}), got {tuple(x.shape)}')
        if not x.is_floating_point():
            raise ValueError(f'{type(self).__name__} expects a float video, got {x.dtype}')

    def tokens(self, patches):
        """Patch tokens (B, T', P, D) with positions -> (B, 1 + P*T', D), or per frame
        (B*T', 1 + P, D) for space_only and fact_encoder.

        As in the seed, dropout follows the spatial positions and again the temporal ones.
        """
        batch, time_steps, num_patches = patches.shape[:3]
        cls_token = self.cls_token.expand(batch, -1, -1)
        if self.config.pos_emb_type == 'joint':
            tokens = torch.cat((cls_token, rearrange(patches, 'b t p d -> b (p t) d')), dim=1)
            return self.pos_drop(tokens + self.pos_embed)
        cls_token = cls_token + self.pos_embed[:, :1]
        patches = patches + self.pos_embed[:, None, 1:]
        if self.config.attention_type in ('space_only', 'fact_encoder'):
            frames = rearrange(patches, 'b t p d -> (b t) p d')
            cls_token = cls_token.repeat_interleave(time_steps, dim=0)
            return self.pos_drop(torch.cat((cls_token, frames), dim=1))
        tokens = self.pos_drop(torch.cat((cls_token, rearrange(patches, 'b t p d -> b (p t) d')), dim=1))
        time_embed = repeat(self.time_embed, '1 t d -> 1 (p t) d', p=num_patches)
        return self.pos_drop(torch.cat((tokens[:, :1], tokens[:, 1:] + time_embed), dim=1))

    def encode(self, tokens, batch):
        """Blocks: tokens from `tokens` -> (B, N, D) per video."""
        time_steps = self.config.num_time_steps
        for block in self.blocks:
            tokens = block(tokens, time_steps)
        if self.config.attention_type == 'space_only':
            return reduce(tokens, '(b t) n d -> b n d', 'mean', b=batch)
        if self.config.attention_type == 'fact_encoder':
            frames = rearrange(tokens, '(b t) n d -> b t n d', b=batch)
            # The seed took x[:b, 0] of the (b t)-flattened output: video 0's first b frames, which
            # mixes videos. Each video's own first frame gives the seed's numbers at batch size 1.
            cls_token = frames[:, :1, 0]
            tokens = torch.cat((cls_token, frames[:, :, 1:].mean(dim=2)), dim=1)
            tokens = self.pos_drop(tokens + self.time_embed)
            for block in self.temporal_blocks:
                tokens = block(tokens)
        return tokens

    def pool(self, tokens):
        """(B, N, D) -> (B, D): the class token or the mean of the other tokens."""
        return tokens[:, 0] if self.config.return_cls_token else tokens[:, 1:].mean(dim=1)

    def forward(self, x):
        self.check_input(x)
        tokens = self.tokens(self.patch_embed(x))
        tokens = self.encode(tokens, batch=x.shape[0])
        return self.pool(self.norm(tokens))


class TimeSformer(VideoTransformer):
    """TimeSformer (Bertasius et al., 2021): per-frame patches and space-time attention."""

    attention_types = ('divided_space_time', 'space_only', 'joint_space_time')


class ViViT(VideoTransformer):
    """ViViT (Arnab et al., 2021): tubelet patches and models 1-4 of the paper."""

    attention_types = ('fact_encoder', 'joint_space_time', 'divided_space_time', 'fact_dot_product')


ARCHITECTURES = {'timesformer': TimeSformer, 'vivit': ViViT}


class VideoClassifier(nn.Module):
    """Backbone and linear head: float video (B, T, C, H, W) -> logits (B, num_classes).

    class_names, when known, name the logits in order; checkpoints carry them.
    """

    def __init__(self, config, class_names=None):
        super().__init__()
        if class_names is not None and len(class_names) != config.num_classes:
            raise ValueError(f'{len(class_names)} class names for num_classes={config.num_classes}')
        self.config = config
        self.class_names = list(class_names) if class_names is not None else None
        self.backbone = ARCHITECTURES[config.arch](config)
        self.head = ClassificationHead(config.embed_dims, config.num_classes, config.head_dropout_p)
        nn.init.trunc_normal_(self.head.fc.weight, std=0.02)
        nn.init.zeros_(self.head.fc.bias)

    def forward(self, x):
        return self.head(self.backbone(x))


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
