"""The preprocessing each source was trained with, as Preprocessing fields: the original
repository's, official TimeSformer's (its .pyth's `cfg`), transformers' (its processor file) and a
LightningDataModule's saved hyper-parameters. img_size and short_side are the source's own
(load_model keeps their ratio at another image size); num_frames follows the model.
"""
import logging
import re

import yaml

from preprocessing import DATA_STATICS, data_statics
from weight_files import read_json
from weight_formats import WeightLoadError

logger = logging.getLogger(__name__)


KINETICS_MEAN, KINETICS_STD = DATA_STATICS['kinetics']
IMAGENET_MEAN, IMAGENET_STD = DATA_STATICS['imagenet']
# The original repository's model_pretrain.py and model_inference.py (37e1801): mean = std = 0.5, 8 frames 32
# apart, the short side resized to the crop size, 1 clip x 3 crops at test time.
ORIGINAL_PREPROCESSING = {'mean': (0.5, 0.5, 0.5), 'std': (0.5, 0.5, 0.5), 'frame_interval': 32,
                      'num_clips': 1, 'num_crops': 3}
# Official TimeSformer's Kinetics configs (TimeSformer_divST_8x32_224): Kinetics statistics, 8
# frames 32 apart, test crops as large as the short side, 1 clip x 3 crops; a .pyth's own `cfg`
# (DATA, TEST) says better when it is there.
OFFICIAL_PREPROCESSING = {'mean': KINETICS_MEAN, 'std': KINETICS_STD, 'frame_interval': 32,
                          'num_clips': 1, 'num_crops': 3}
# transformers: its pipeline's one centre crop of one clip; its configs record no frame
# interval (the pipeline's default reads consecutive frames, the model card demos every 4th).
HF_PREPROCESSING = {'mean': KINETICS_MEAN, 'std': KINETICS_STD, 'frame_interval': 4,
                    'num_clips': 1, 'num_crops': 1}
# transformers' processor files, in the order it reads them.
HF_PROCESSOR_FILES = ('video_preprocessor_config.json', 'preprocessor_config.json')
# What a transformers processor cannot say (frame spacing, test views): `export_weights.py -hf`
# writes it beside the processor file for this repository's loader.
HF_SAMPLING_FILE = 'sampling_config.json'
HF_SAMPLING_FIELDS = ('sampling', 'frame_interval', 'window_seconds', 'num_clips', 'num_crops')
# A LightningDataModule's saved hyper-parameters that Preprocessing keeps (data_statics aside).
DATAMODULE_FIELDS = ('num_frames', 'frame_interval', 'window_seconds', 'sampling', 'img_size', 'short_side',
                     'num_clips', 'num_crops')


def original_preprocessing(img_size):
    """The original repository's settings at its image size; None when the weights do not say it."""
    return {**ORIGINAL_PREPROCESSING, 'img_size': img_size, 'short_side': img_size} if img_size else None


def datamodule_preprocessing(hparams, path):
    """VideoDataModule hyper-parameters -> Preprocessing fields."""
    settings = {name: hparams[name] for name in DATAMODULE_FIELDS if hparams.get(name) is not None}
    if 'data_statics' in hparams:
        try:
            settings['mean'], settings['std'] = data_statics(hparams['data_statics'])
        except ValueError as error:
            raise WeightLoadError(f'{path}: datamodule_hyper_parameters: {error}') from error
    return settings


def official_preprocessing(extras, img_size, path):
    """Official TimeSformer's settings, from the DATA and TEST sections of the .pyth's `cfg`
    (its YAML dump) where present."""
    settings = {**OFFICIAL_PREPROCESSING, 'img_size': img_size, 'short_side': img_size}
    if not isinstance(extras.get('cfg'), str):
        return settings
    try:
        cfg = yaml.safe_load(extras['cfg'])
    except yaml.YAMLError as error:
        logger.warning('%s: its cfg is not readable YAML (%s); taking the Kinetics 8x32 settings',
                       path, str(error).splitlines()[0])
        return settings
    cfg = cfg if isinstance(cfg, dict) else {}
    data, test = cfg.get('DATA') or {}, cfg.get('TEST') or {}
    read = {'mean': data.get('MEAN'), 'std': data.get('STD'), 'frame_interval': data.get('SAMPLING_RATE'),
            'num_clips': test.get('NUM_ENSEMBLE_VIEWS'), 'num_crops': test.get('NUM_SPATIAL_CROPS')}
    return {**settings, **{name: value for name, value in read.items() if value is not None}}


def _hf_size(value, key, path):
    """A transformers size entry: an int or a dict with `key`, or with height and width."""
    if not isinstance(value, dict):
        return value
    if key in value:
        return value[key]
    logger.warning('%s: resizes to %d x %d without keeping the aspect ratio; taking a short side of %d',
                   path, value['height'], value['width'], min(value['height'], value['width']))
    return min(value['height'], value['width'])


def hf_preprocessing(folder, img_size, conventions=HF_PREPROCESSING):
    """transformers' settings, with a processor file's normalisation and sizes and our export's
    sampling file (HF_SAMPLING_FILE) when present.

    Processors rescale pixels (p * rescale_factor, minus 1 with ViViT's offset) and normalise with
    image_mean and image_std; in our convention (RGB in [0, 1]) that is mean (m + o) / (255 r) and
    std s / (255 r). Its resize sets the short side and its centre crop the crop size.
    """
    settings = {**conventions, 'img_size': img_size, 'short_side': img_size}
    if (folder / HF_SAMPLING_FILE).is_file():
        sampling = read_json(folder / HF_SAMPLING_FILE)
        settings.update({name: sampling[name] for name in HF_SAMPLING_FIELDS if name in sampling})
    found = [folder / name for name in HF_PROCESSOR_FILES if (folder / name).is_file()]
    if not found:
        return settings
    processor = read_json(found[0])
    scale = 255 * processor.get('rescale_factor', 1 / 255) if processor.get('do_rescale', True) else 1
    # ViViT's image processor saves `offset`; its video processor always subtracts 1.
    offset = float(processor.get('offset', processor.get('video_processor_type') == 'VivitVideoProcessor'))
    mean, std = (0.0,) * 3, (1.0,) * 3
    if processor.get('do_normalize', True):
        mean, std = (processor.get(name, conventions[ours]) for name, ours in
                     (('image_mean', 'mean'), ('image_std', 'std')))
    mean, std = ([value] * 3 if isinstance(value, (int, float)) else value for value in (mean, std))
    try:
        settings.update(mean=[(value + offset) / scale for value in mean], std=[value / scale for value in std])
        if 'crop_size' in processor:
            settings['img_size'] = _hf_size(processor['crop_size'], 'height', found[0])
        if 'size' in processor:
            settings['short_side'] = _hf_size(processor['size'], 'shortest_edge', found[0])
    except (KeyError, TypeError) as error:
        raise WeightLoadError(f'{found[0]}: not a transformers processor config ({error!r})') from error
    return settings


# VideoMAE's evaluation protocols (MCG-NJU's run_class_finetuning.py): ImageNet statistics, the short
# side resized to the crop size, 16 frames 4 apart in 5 clips x 3 crops on Kinetics; on
# Something-Something v2 (ssv2.py) one frame per equal segment of the whole video, 2 clips x 3 crops.
VIDEOMAE_KINETICS_VIEWS = {'num_clips': 5, 'num_crops': 3}
VIDEOMAE_PREPROCESSING = {'mean': IMAGENET_MEAN, 'std': IMAGENET_STD,
                          'frame_interval': 4, **VIDEOMAE_KINETICS_VIEWS}
SSV2_CLASSES = 174
SSV2_VIEWS = {'sampling': 'segments', 'num_clips': 2, 'num_crops': 3}
# transformers' names for unnamed classes (LABEL_0, ...): they say nothing of the data set.
PLACEHOLDER_NAME = re.compile(r'LABEL_\d+')
# V-JEPA 2's evaluation: ImageNet statistics, 2 clips x 3 crops.
VJEPA2_PREPROCESSING = {'mean': IMAGENET_MEAN, 'std': IMAGENET_STD,
                        'frame_interval': 4, 'num_clips': 2, 'num_crops': 3}


def videomae_views(settings, num_classes, class_names, path):
    """VideoMAE's evaluation protocol for weights that record none: Kinetics' 16 frames 4 apart in 5 x 3
    views, or Something-Something v2's segments in 2 x 3 (SSV2_VIEWS). SSv2 weights have 174 classes
    whose names speak of "something"; 174 classes without names are taken for SSv2, said in one line."""
    if num_classes != SSV2_CLASSES:
        return {**settings, **VIDEOMAE_KINETICS_VIEWS}
    named = [name for name in class_names or () if not PLACEHOLDER_NAME.fullmatch(name)]
    if named and not any('something' in name.lower() for name in named):
        return {**settings, **VIDEOMAE_KINETICS_VIEWS}  # another data set of 174 classes
    if not named:
        logger.warning('%s: %d classes without names, taken for Something-Something v2: one frame per equal '
                       'segment of each video, %d clips x %d crops (-sampling interval, -num_clips and '
                       '-num_crops change them)', path, num_classes, SSV2_VIEWS['num_clips'], SSV2_VIEWS['num_crops'])
    return {**settings, **SSV2_VIEWS}


def mcg_videomae_preprocessing(num_classes, path):
    """MCG-NJU's VideoMAE files record no preprocessing: its evaluation's, at 224 px."""
    return videomae_views({**VIDEOMAE_PREPROCESSING, 'img_size': 224, 'short_side': 224}, num_classes, None, path)
