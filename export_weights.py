"""Export command: weights in any format load_model reads -> our safetensors + config.json folder
(with -onnx a model.onnx beside them, checked with onnxruntime), or (-hf) a transformers folder of the
model's class (TimeSformer, VideoMAE, V-JEPA 2).

    python export_weights.py CHECKPOINT OUTPUT_DIR [-hf] [-num_heads N] [-set FIELD=VALUE ...]
    python export_weights.py CHECKPOINT OUTPUT_DIR -onnx [-opset N] [-fp16 | -quantize int8]

OUTPUT_DIR is new, empty, or an earlier export, which is replaced whole. Exit status: 0, 2 for a
flag, path or file that cannot work, with one line `export_weights.py: error: ...`.
"""
import argparse
import json
import logging
import sys
from pathlib import Path

from command_line import Parser, UsageError, add_flag, os_error_line
from hf_export import hf_fields, save_hf
from model_loading import load_model
from onnx_export import MIN_OPSET, ONNX_FILE, save_with_onnx
from our_format import check_export_folder, save_weights
from pretraining_export import is_pretraining_checkpoint, save_hf_videomae_pretraining
from utils import reject_unknown
from video_transformer import CONFIG_FIELDS
from weight_formats import WeightLoadError

PROGRAM = 'export_weights.py'


def parse_override(text):
    """'FIELD=VALUE' -> (FIELD, VALUE read as JSON when it parses, else the string)."""
    name, equals, value = text.partition('=')
    if not equals or not name:
        raise argparse.ArgumentTypeError(f'takes FIELD=VALUE, got {text!r}')
    reject_unknown([name], CONFIG_FIELDS, f'not a config field (one of {", ".join(CONFIG_FIELDS)}):',
                   argparse.ArgumentTypeError)
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value


def parse_args(argv=None):
    parser = Parser(description=__doc__.split('\n\n')[0])
    parser.add_argument('checkpoint', help="weights file or folder (the original repository's .ckpt, .pyth, .pth, "
                                           '.safetensors, transformers folder, our export)')
    parser.add_argument('output_dir', help='folder to write: new, empty, or an earlier export (replaced whole)')
    add_flag(parser, 'hf', action='store_true', help="write a transformers folder of the model's class (TimeSformer, VideoMAE, V-JEPA 2; "
                                                 'VideoMAEForPreTraining for a checkpoint of model_pretrain.py '
                                                 '-objective videomae)')
    add_flag(parser, 'num_heads', type=int,
             help='attention heads, for formats that do not record them (the original repository, bare '
                  'state dicts); required for those, so a guess is never written as a fact')
    add_flag(parser, 'set', action='append', default=[], metavar='FIELD=VALUE', type=parse_override,
             help='another config field (img_size, num_frames, ...); VALUE is read as JSON '
                  'when it parses, else as a string')
    add_flag(parser, 'onnx', action='store_true',
             help='also write OUTPUT_DIR/model.onnx (float video (B, T, 3, H, W) -> logits, any batch), '
                  "checked against PyTorch with onnxruntime; needs pip install -e '.[onnx]'")
    add_flag(parser, 'opset', type=int, help='with -onnx: the ONNX opset (default: the exporter\'s)')
    precision = parser.add_mutually_exclusive_group()
    add_flag(precision, 'fp16', action='store_true',
             help='with -onnx: compute in float16 behind float32 input and output (GPU serving)')
    add_flag(precision, 'quantize', choices=['int8'],
             help="with -onnx: onnxruntime's dynamic int8 quantisation of the linear layers (CPU serving)")
    args = parser.parse_args(argv)
    needs_onnx = [f'-{name}' for name in ('opset', 'fp16', 'quantize') if getattr(args, name) not in (None, False)]
    if needs_onnx and not args.onnx:
        parser.error(f'{needs_onnx[0]} is an ONNX option: add -onnx')
    if args.opset is not None and args.opset < MIN_OPSET:
        parser.error(f'-opset {args.opset}: torch.onnx writes opset {MIN_OPSET} or later')
    if args.onnx and args.hf:
        parser.error('-onnx writes beside our config.json, -hf a transformers folder: one of them')
    return args


def main(argv=None):
    args = parse_args(argv)
    check_export_folder(args.output_dir)  # before minutes of loading and exporting, not after
    overrides = dict(args.set)
    if args.num_heads is not None:
        overrides['num_heads'] = args.num_heads
    if args.hf and is_pretraining_checkpoint(args.checkpoint):
        if overrides:
            raise UsageError(f'-{"set" if args.set else "num_heads"}: a masked-autoencoding checkpoint is written '
                             f'to transformers as it was trained, its config unchanged')
        save_hf_videomae_pretraining(args.checkpoint, args.output_dir)
        logging.info('Wrote %s', args.output_dir)
        return
    try:
        model = load_model(args.checkpoint, guess_num_heads=False, **overrides)
    except WeightLoadError:
        if not args.hf and is_pretraining_checkpoint(args.checkpoint):  # read again only when loading failed
            raise UsageError(f'{args.checkpoint}: a masked-autoencoding checkpoint (model_pretrain.py -objective '
                             f'videomae) holds no classifier: -hf writes it as a transformers '
                             f'VideoMAEForPreTraining folder, model_pretrain.py -pretrain fine-tunes it') from None
        raise
    if args.hf:
        try:
            hf_fields(model)
        except WeightLoadError as error:  # a model transformers cannot express
            raise UsageError(f'-hf: {error}') from None
    if args.onnx:
        report = save_with_onnx(model, args.output_dir, save_weights, opset=args.opset, fp16=args.fp16,
                                quantize=args.quantize)
        logging.info("Wrote %s (%s, opset %d): onnxruntime's logits differ from PyTorch's by at most %s at batch %s",
                     Path(args.output_dir) / ONNX_FILE, report['precision'], report['opset'],
                     f"{max(report['differences'].values()):.2g}", ' and '.join(map(str, report['differences'])))
        return
    (save_hf if args.hf else save_weights)(model, args.output_dir)
    logging.info('Wrote %s', args.output_dir)


if __name__ == '__main__':
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        main()
        code = 0
    except (UsageError, WeightLoadError) as error:  # a flag, a path or a file the user gave
        print(f'{PROGRAM}: error: {error}', file=sys.stderr)
        code = 2
    except OSError as error:  # an output that cannot be written (permissions, a full disk, a file in the way)
        print(f'{PROGRAM}: error: {os_error_line(error)}', file=sys.stderr)
        code = 2
    sys.exit(code)
