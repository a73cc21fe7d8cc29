"""Export command: weights in any format load_model reads -> our safetensors + config.json folder,
or (-hf) a transformers TimesformerForVideoClassification folder.

    python export_weights.py CHECKPOINT OUTPUT_DIR [-hf] [-num_heads N] [-set FIELD=VALUE ...]
"""
import argparse
import json
import logging
import sys

from model_loading import load_model
from weight_export import save_hf_timesformer, save_weights


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('checkpoint', help='weights file or folder (seed .ckpt, .pyth, .pth, .safetensors, '
                                           'transformers folder, our export)')
    parser.add_argument('output_dir', help='folder to write')
    parser.add_argument('-hf', '--hf', action='store_true',
                        help='write a transformers TimesformerForVideoClassification folder')
    parser.add_argument('-num_heads', '--num_heads', type=int,
                        help='attention heads, for formats that do not record them (the seed repo)')
    parser.add_argument('-set', '--set', action='append', default=[], metavar='FIELD=VALUE',
                        help='another config field (img_size, num_frames, ...); VALUE is read as JSON '
                             'when it parses, else as a string')
    return parser.parse_args(argv)


def parse_override(text):
    """'FIELD=VALUE' -> (FIELD, VALUE read as JSON when it parses, else the string)."""
    name, equals, value = text.partition('=')
    if not equals or not name:
        raise ValueError(f'-set takes FIELD=VALUE, got {text!r}')
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value


if __name__ == '__main__':
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        overrides = dict(map(parse_override, args.set))
        if args.num_heads is not None:
            overrides['num_heads'] = args.num_heads
        model = load_model(args.checkpoint, **overrides)
        (save_hf_timesformer if args.hf else save_weights)(model, args.output_dir)
    except (ValueError, TypeError, OSError) as error:  # WeightLoadError is a ValueError
        sys.exit(f'export_weights.py: {error}')
    logging.info('Wrote %s', args.output_dir)
