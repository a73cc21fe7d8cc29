"""Export command: weights in any format load_model reads -> our safetensors + config.json folder,
or (-hf) a transformers TimesformerForVideoClassification folder.

    python export_weights.py CHECKPOINT OUTPUT_DIR [-hf] [-num_heads N] [-set FIELD=VALUE ...]
"""
import argparse
import json
import logging
import sys

from model_loading import load_model
from pretraining_export import is_pretraining_checkpoint, save_hf_videomae_pretraining
from video_transformer import CONFIG_FIELDS
from weight_export import save_hf_timesformer, save_weights
from weight_formats import WeightLoadError


def parse_override(text):
    """'FIELD=VALUE' -> (FIELD, VALUE read as JSON when it parses, else the string)."""
    name, equals, value = text.partition('=')
    if not equals or not name:
        raise argparse.ArgumentTypeError(f'takes FIELD=VALUE, got {text!r}')
    if name not in CONFIG_FIELDS:
        raise argparse.ArgumentTypeError(f'{name!r} is not a config field; one of {", ".join(CONFIG_FIELDS)}')
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('checkpoint', help='weights file or folder (seed .ckpt, .pyth, .pth, .safetensors, '
                                           'transformers folder, our export)')
    parser.add_argument('output_dir', help='folder to write')
    parser.add_argument('-hf', '--hf', action='store_true',
                        help='write a transformers TimesformerForVideoClassification folder (a VideoMAEForPreTraining '
                             'folder for a checkpoint of model_pretrain.py -objective videomae)')
    parser.add_argument('-num_heads', '--num_heads', type=int,
                        help='attention heads, for formats that do not record them (the seed repo, bare '
                             'state dicts); required for those, so a guess is never written as a fact')
    parser.add_argument('-set', '--set', action='append', default=[], metavar='FIELD=VALUE', type=parse_override,
                        help='another config field (img_size, num_frames, ...); VALUE is read as JSON '
                             'when it parses, else as a string')
    return parser.parse_args(argv)


if __name__ == '__main__':
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    overrides = dict(args.set)
    if args.num_heads is not None:
        overrides['num_heads'] = args.num_heads
    try:
        if args.hf and is_pretraining_checkpoint(args.checkpoint):
            save_hf_videomae_pretraining(args.checkpoint, args.output_dir)
            logging.info('Wrote %s', args.output_dir)
            sys.exit(0)
        model = load_model(args.checkpoint, guess_num_heads=False, **overrides)
        (save_hf_timesformer if args.hf else save_weights)(model, args.output_dir)
    except (WeightLoadError, OSError) as error:
        sys.exit(f'export_weights.py: {error}')
    logging.info('Wrote %s', args.output_dir)
