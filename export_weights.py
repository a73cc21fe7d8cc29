"""Export command: weights in any format load_model reads -> our safetensors + config.json folder
(with -onnx a model.onnx beside them, checked with onnxruntime), or (-hf) a transformers
TimesformerForVideoClassification folder.

    python export_weights.py CHECKPOINT OUTPUT_DIR [-hf] [-num_heads N] [-set FIELD=VALUE ...]
    python export_weights.py CHECKPOINT OUTPUT_DIR -onnx [-opset N] [-fp16 | -quantize int8]
"""
import argparse
import json
import logging
import sys
from pathlib import Path

from model_loading import load_model
from onnx_export import MIN_OPSET, ONNX_FILE, discard_onnx, save_with_onnx
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
                        help='write a transformers TimesformerForVideoClassification folder')
    parser.add_argument('-num_heads', '--num_heads', type=int,
                        help='attention heads, for formats that do not record them (the seed repo, bare '
                             'state dicts); required for those, so a guess is never written as a fact')
    parser.add_argument('-set', '--set', action='append', default=[], metavar='FIELD=VALUE', type=parse_override,
                        help='another config field (img_size, num_frames, ...); VALUE is read as JSON '
                             'when it parses, else as a string')
    parser.add_argument('-onnx', '--onnx', action='store_true',
                        help='also write OUTPUT_DIR/model.onnx (float video (B, T, 3, H, W) -> logits, any batch), '
                             "checked against PyTorch with onnxruntime; needs pip install -e '.[onnx]'")
    parser.add_argument('-opset', '--opset', type=int, help='with -onnx: the ONNX opset (default: the exporter\'s)')
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument('-fp16', '--fp16', action='store_true',
                           help='with -onnx: compute in float16 behind float32 input and output (GPU serving)')
    precision.add_argument('-quantize', '--quantize', choices=['int8'],
                           help="with -onnx: onnxruntime's dynamic int8 quantisation of the linear layers "
                                '(CPU serving)')
    args = parser.parse_args(argv)
    needs_onnx = [f'-{name}' for name in ('opset', 'fp16', 'quantize') if getattr(args, name) not in (None, False)]
    if needs_onnx and not args.onnx:
        parser.error(f'{needs_onnx[0]} is an ONNX option: add -onnx')
    if args.opset is not None and args.opset < MIN_OPSET:
        parser.error(f'-opset {args.opset}: torch.onnx writes opset {MIN_OPSET} or later')
    if args.onnx and args.hf:
        parser.error('-onnx writes beside our config.json, -hf a transformers folder: one of them')
    return args


if __name__ == '__main__':
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    overrides = dict(args.set)
    if args.num_heads is not None:
        overrides['num_heads'] = args.num_heads
    try:
        model = load_model(args.checkpoint, guess_num_heads=False, **overrides)
        if args.onnx:
            report = save_with_onnx(model, args.output_dir, save_weights, opset=args.opset, fp16=args.fp16,
                                    quantize=args.quantize)
        else:
            (save_hf_timesformer if args.hf else save_weights)(model, args.output_dir)
            discard_onnx(args.output_dir)
    except (WeightLoadError, OSError) as error:
        sys.exit(f'export_weights.py: {error}')
    logging.info('Wrote %s', args.output_dir)
    if args.onnx:
        logging.info("Wrote %s (%s, opset %d): onnxruntime's logits differ from PyTorch's by at most %s at batch %s",
                     Path(args.output_dir) / ONNX_FILE, report['precision'], report['opset'],
                     f"{max(report['differences'].values()):.2g}",
                     ' and '.join(map(str, report['differences'])))
