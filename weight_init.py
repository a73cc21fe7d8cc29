"""Starting a built model from other weights (init_from_pretrained_): a separate call after
building, so a saved config rebuilds a trained model without its starting point and a model can be
built on the meta device.
"""
import logging

import torch

from transformer import sine_cosine_table
from strict_loading import load_state_dict_strictly
from weight_fitting import inflate_image_model, is_image_model, resize_position_tables
from weight_formats import WeightLoadError, strip_prefix
from weight_sources import read_weights

logger = logging.getLogger(__name__)


# How an image model's attention becomes the temporal attention when copy_strategy is not given:
# the original repository's constructor defaults.
DEFAULT_COPY_STRATEGY = {'timesformer': 'repeat', 'vivit': 'set_zero'}


def init_from_pretrained_(model, path, copy_strategy=None, extend_strategy='temporal_avg', head_init_scale=1.0):
    """Initialise a built backbone in place from any supported weights at `path`, or the backbone of
    a VideoClassifier (its head keeps its init: a starting point's head is not used); returns `model`.
    head_init_scale multiplies the new head's linear layer (weights and bias) as it starts: MCG-NJU's
    VideoMAE fine-tuning takes 0.001 (its `init_scale`): the first logits are near zero, and little
    gradient reaches the pretrained blocks through a random head.

    Image models (timm, .npz, MAE, the original repository's ViT) are inflated: copy_strategy
    'repeat' copies the image attention into the temporal one, 'set_zero' leaves it at its init
    (default: the architecture's original default, DEFAULT_COPY_STRATEGY); extend_strategy
    'temporal_avg' or 'center_frame' turns Conv2d patches into Conv3d tubelets. Video models load as
    they are. Position tables are resized to the config, and with fixed sine-cosine positions the
    checkpoint's learnt tables are left out. MAE's patch positions are its fixed sine-cosine table.
    """
    built = model
    head = getattr(built, 'head', None)
    if head_init_scale != 1.0 and head is None:
        raise ValueError(f'head_init_scale {head_init_scale} scales a classifier\'s new head; this model has none')
    model = getattr(model, 'backbone', model)
    config = model.config
    if copy_strategy is None:
        copy_strategy = DEFAULT_COPY_STRATEGY.get(config.arch, 'repeat')
    if copy_strategy not in ('repeat', 'set_zero'):
        raise ValueError(f"copy_strategy must be 'repeat' or 'set_zero', got {copy_strategy!r}")
    if extend_strategy not in ('temporal_avg', 'center_frame'):
        raise ValueError(f"extend_strategy must be 'temporal_avg' or 'center_frame', got {extend_strategy!r}")
    source = read_weights(path)
    heads = source.fixed.get('num_heads', config.num_heads)
    if heads != config.num_heads:
        raise WeightLoadError(f'{source.path}: has {heads} heads, the model {config.num_heads}')
    # A starting point's head (its linear layer and any pooler) is not used.
    state_dict = {key: value for key, value in source.state_dict.items() if not key.startswith('head.')}
    notes = list(source.notes)
    if not config.use_learnable_pos_emb:
        for name in ('pos_embed', 'time_embed'):
            if state_dict.pop(f'backbone.{name}', None) is not None:
                notes.append(f'{name} left out: the model keeps its sine-cosine table')
    elif source.format == 'mae':
        # MAE-pytorch computes its table (P rows, no class row) instead of storing it; MAE has no
        # class token, so the class row keeps the model's own init.
        patches = sine_cosine_table(config.num_patches, config.embed_dims)
        state_dict['backbone.pos_embed'] = torch.cat((model.pos_embed[:, :1].detach(), patches), dim=1)
        notes.append("pos_embed patch rows from MAE's fixed sine-cosine table, class row from the model's init")
    time_steps = source.num_time_steps
    kind = source.fixed.get('pos_emb_type', config.pos_emb_type)
    left_at_init = ()
    if is_image_model(state_dict, source.fixed.get('pos_emb_type', 'separate')):
        state_dict, left_at_init = inflate_image_model(state_dict, config, copy_strategy, extend_strategy)
        time_steps = config.num_time_steps  # a joint table now spans the model's frames
    elif 'backbone.pos_embed' in state_dict and kind != config.pos_emb_type:
        # Rows alone cannot always tell: 1 + P*T' may be 1 + a square.
        raise WeightLoadError(f'{source.path}: has a {kind!r} position table; start from it with '
                              f'pos_emb_type={kind!r}, not {config.pos_emb_type!r}')
    state_dict, resized = resize_position_tables(state_dict, config, time_steps, source.path)
    state_dict = strip_prefix(state_dict, 'backbone.')
    expected = tuple(key.removeprefix('backbone.') for key in source.missing_ok + left_at_init
                     if key.startswith('backbone.'))
    missing = load_state_dict_strictly(model, state_dict, source.path, expected)
    logger.info('Initialised %s %s from %s: format %s; missing keys %s; unexpected keys []%s',
                config.arch, config.attention_type, source.path, source.format, missing,
                ''.join(f'; {note}' for note in notes + resized))
    if head_init_scale != 1.0:
        with torch.no_grad():
            head.fc.weight.mul_(head_init_scale)
            head.fc.bias.mul_(head_init_scale)
    return built
