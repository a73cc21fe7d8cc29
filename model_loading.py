"""`load_model`: weights in any supported format -> an eval-mode VideoClassifier, top-down: read
the weights, work out the config, build, fit the position tables, load strictly."""
import dataclasses
import logging

from video_transformer import VideoClassifier, VideoTransformerConfig
from weight_files import SAME_KEYS, load_state_dict_strictly, read_weights
from weight_fitting import resize_position_tables
from weight_formats import HEAD_KEYS, WeightLoadError

logger = logging.getLogger(__name__)

# Fields a checkpoint fixes that a caller may still change: position tables are resized to them.
RESIZABLE_FIELDS = ('img_size', 'num_frames')


def load_model(path, *, drop_head=False, class_names=None, **overrides):
    """Weights in any supported format -> eval-mode VideoClassifier, float (B, T, 3, H, W) -> (B, K).

    The format is read from the keys (weight_files.FORMATS). What the weights or their own config
    fix is taken from them; `overrides` (config fields) give the rest, e.g. num_heads for the seed
    format, whose width-64 default may not hold. An override that contradicts the weights is an
    error, except img_size and num_frames, to which the position tables are resized. Another
    num_classes, or class_names of another length, needs drop_head=True: a new head.
    """
    source = read_weights(path)
    config = _config_for(source, overrides, class_names, drop_head)
    state_dict, expected_missing = source.state_dict, source.missing_ok
    if drop_head:
        state_dict = {key: value for key, value in state_dict.items() if key not in HEAD_KEYS}
        expected_missing += HEAD_KEYS
    elif HEAD_KEYS[0] not in state_dict:
        raise WeightLoadError(f'{source.path}: holds no classification head; pass drop_head=True '
                              f'and num_classes for a new one')
    if class_names is None and not drop_head:
        class_names = source.class_names
    if class_names is not None and len(class_names) != config.num_classes:
        logger.warning('%s: its %d class names do not match its %d classes; they are left out',
                       source.path, len(class_names), config.num_classes)
        class_names = None
    model = VideoClassifier(config, class_names)
    state_dict, notes = resize_position_tables(state_dict, config, source.num_time_steps, source.path)
    missing = load_state_dict_strictly(model, state_dict, source.path, expected_missing)
    logger.info('Loaded %s: format %s; %s %s, %d layers of width %d, %d heads, %d frames at %d px, '
                '%d classes; missing keys %s; unexpected keys []%s', source.path, source.format,
                config.arch, config.attention_type, config.num_transformer_layers, config.embed_dims,
                config.num_heads, config.num_frames, config.img_size, config.num_classes, missing,
                ''.join(f'; {note}' for note in notes))
    return model.eval()


def _config_for(source, overrides, class_names, drop_head):
    """The config for `source`: its fixed fields, overrides where they agree, then its defaults."""
    unknown = sorted(set(overrides) - {field.name for field in dataclasses.fields(VideoTransformerConfig)})
    if unknown or 'pretrained' in overrides:
        raise TypeError(f'load_model() takes config fields other than pretrained, got {unknown or ["pretrained"]}')
    if class_names is not None:
        overrides = {**overrides, 'num_classes': len(class_names)}
    for name, value in overrides.items():
        fixed = source.fixed.get(name, value)
        agrees = value == fixed or (name == 'attention_type' and SAME_KEYS.get(fixed) == value)
        if not agrees and name not in RESIZABLE_FIELDS and not (drop_head and name == 'num_classes'):
            hint = ' (drop_head=True starts a new head)' if name == 'num_classes' else ''
            raise WeightLoadError(f'{source.path}: {name}={value!r} contradicts the weights, '
                                  f'which fix {name}={fixed!r}{hint}')
    try:
        return VideoTransformerConfig(**{**source.defaults, **source.fixed, **overrides})
    except ValueError as error:
        raise WeightLoadError(f'{source.path}: {error}') from None
