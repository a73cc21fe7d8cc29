"""Initialisation of the video transformers (weight-format converters join here)."""
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
