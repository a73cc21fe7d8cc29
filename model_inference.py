"""Classify videos with trained weights.

    python model_inference.py -pretrain runs/demo/results/RUN/ckpt/best.ckpt -video_path clip.mp4
    python model_inference.py -pretrain facebook/timesformer-base-finetuned-k400 -video_path videos/ -json
    python model_inference.py -pretrain best.ckpt -video_path list.txt -out results.csv -save_vis pictures/
    python model_inference.py -pretrain best.ckpt -eval test.txt -out report/
    python model_inference.py -pretrain best.ckpt -video_path match.mp4 -timeline -out match/
    python model_inference.py -pretrain best.ckpt -video_path videos/ -features features/

-pretrain takes what model_loading.load_model reads (this repository's checkpoints and export
folders, the original repository's checkpoints, official TimeSformer .pyth files, transformers
folders) or a Hugging Face Hub id. Frames, their sampling, frame interval, image size, short side,
normalisation, clips and crops default to what the weights were trained with; flags override them.
-video_path is a video, a folder of videos or a list; -eval a labelled list. -timeline slides the
model's clip over each whole video and says what happens when (segments; -out a folder of windows.csv,
segments.json and timeline.png, one subfolder per video for several). Flags keep the original's
single-dash spelling; `--flag` works too. Exit status: 0, 1 when a video could not be read, 2 for
a flag, path or file that cannot work.
"""
from python_check import check_python

check_python()  # before anything else, so an old Python stops with one line (keep this file 3.6-parseable)

import argparse  # noqa: E402  (every import after the Python check)
import json
import logging
import signal
import sys
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

import video_decoding
from annotations import VIDEO_EXTENSIONS, AnnotationError
from command_line import Parser, UsageError, add_flag, error_line, os_error_line
from dataset import UnreadableDatasetError
from evaluation import Evaluation, write_report
from features import FeatureWriter, feature_row
from frame_sampling import SAMPLINGS
from inference import (ResultWriter, VideoFailure, classify, inference_preprocessing, load_classifier,
                       model_class_names, picture_root, prediction_loader, resolve_weights)
from onnx_inference import find_onnx
from preprocessing import DATA_STATICS
from timeline import BACKGROUND, DEFAULT_SMOOTH, DEFAULT_THRESHOLD
from timeline_command import timeline_command
from video_decoding import DECODERS
from visualize import frame_attention, rollout_modules
from weight_formats import WeightLoadError

PROGRAM = 'model_inference.py'
TIMELINE_FLAGS = ('window_stride', 'smooth', 'threshold', 'min_segment')
# Loader processes that decode while the model runs, for a folder or a list.
DEFAULT_WORKERS = 2


def parse_args(argv=None):
    parser = Parser(description=__doc__.split('\n\n')[0], allow_abbrev=False,
                    formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split('\n\n', 1)[1])
    add_flag(parser, 'pretrain', required=True,
             help='weights: a checkpoint, an export or transformers folder, a Hub id; an export with '
                  'model.onnx (or the .onnx file) runs in onnxruntime')
    add_flag(parser, 'video_path', help='a video, a folder of videos (searched recursively) or a list of videos')
    add_flag(parser, 'eval', help='a labelled list (a video and its label per line): accuracy, per class, confusion')
    add_flag(parser, 'class_map', help='class names: JSON name -> index, or one name per line (default: the weights\')')
    settings = parser.add_argument_group('preprocessing (default: what the weights were trained with)')
    add_flag(settings, 'num_frames', type=int, help='frames per clip (position tables resized)')
    add_flag(settings, 'sampling', choices=SAMPLINGS,
             help='interval: a window of frames -frame_interval apart; segments: one frame per equal part of '
                  'the whole video (-frame_interval or -window_seconds alone: interval)')
    add_flag(settings, 'frame_interval', type=int, help='frames between sampled frames')
    add_flag(settings, 'window_seconds', type=float,
             help='sample each clip from a window of this many seconds instead')
    add_flag(settings, 'img_size', type=int, help='crop size (position tables resized)')
    add_flag(settings, 'short_side', type=int, help='frames are resized to this short side')
    add_flag(settings, 'data_statics', choices=sorted(DATA_STATICS),
             help='normalisation statistics')
    add_flag(settings, 'num_clips', type=int, help='clips spread over each video')
    add_flag(settings, 'num_crops', type=int, help='crops per clip: 1 the centre, 3 along the long side')
    running = parser.add_argument_group('running')
    add_flag(running, 'batch_size', type=int, default=8, help='views per forward pass')
    add_flag(running, 'num_workers', type=int,
             help=f'decoding processes (default: 0 for a video, {DEFAULT_WORKERS} otherwise)')
    add_flag(running, 'decoder', choices=DECODERS, help='video decoder (default: the dataset\'s)')
    add_flag(running, 'device', default='auto', help='auto, cpu, cuda or cuda:N (ONNX: the CPU for auto, cuda '
                                                     'with onnxruntime-gpu)')
    output = parser.add_argument_group('output')
    add_flag(output, 'topk', type=int, default=5, help='classes listed per video')
    add_flag(output, 'json', action='store_true', help='one JSON object per line per video')
    add_flag(output, 'out', help='results as CSV; with -eval, the report folder '
                                 '(default eval_LIST)')
    add_flag(output, 'save_vis', help='a PNG of the frames and top classes (a folder for '
                                      'several videos)')
    add_flag(output, 'attention', action='store_true',
             help='with -save_vis: the attention rollout over each frame to what the head reads')
    add_flag(output, 'features', metavar='OUT',
             help='also write the pooled features the head reads, views averaged, to OUT/features.npy '
                  '(videos x width, float32) and OUT/index.csv (row, path, start_s, end_s, label)')
    timeline = parser.add_argument_group('timeline (-timeline: the clip slid over each whole video)')
    add_flag(timeline, 'timeline', action='store_true',
             help='classify windows over the whole video and merge them into segments; -out is a folder')
    add_flag(timeline, 'window_stride', type=float, help='seconds between window starts (default half a window)')
    add_flag(timeline, 'smooth', type=int,
             help=f'windows in the moving average of probabilities (default {DEFAULT_SMOOTH})')
    add_flag(timeline, 'threshold', type=float,
             help=f'a window whose smoothed top probability is below this is {BACKGROUND} (default '
                  f'{DEFAULT_THRESHOLD:g}: every window takes its class)')
    add_flag(timeline, 'min_segment', type=float,
             help='segments shorter than this many seconds join a neighbour (default one window)')
    args = parser.parse_args(argv)
    check_timeline_flags(args)
    for name in ('num_frames', 'frame_interval', 'img_size', 'short_side', 'num_clips', 'num_crops', 'batch_size',
                 'topk', 'window_seconds'):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UsageError(f'argument -{name}/--{name}: must be positive, got {value}')
    if args.num_workers is not None and args.num_workers < 0:
        raise UsageError(f'argument -num_workers/--num_workers: must be 0 or more, got {args.num_workers}')
    if (args.video_path is None) == (args.eval is None):
        raise UsageError('give -video_path (videos to classify) or -eval (a labelled list), one of them')
    if args.sampling == 'segments':
        spacing = [name for name in ('frame_interval', 'window_seconds') if getattr(args, name) is not None]
        if spacing:
            raise UsageError(f'-{spacing[0]} spaces the frames of a window; -sampling segments spreads them over '
                             f'the whole video: give one of them')
    if args.attention and args.save_vis is None:
        raise UsageError('-attention draws on the pictures of -save_vis; give -save_vis too')
    for name in ('video_path', 'eval', 'class_map'):
        path = getattr(args, name)
        if path is not None and not Path(path).exists():
            raise UsageError(f'-{name} {path}: no such file or folder')
    return args


def check_timeline_flags(args):
    """-timeline's flags: in range, and only with -timeline, where nothing it cannot give is asked for."""
    given = [name for name in TIMELINE_FLAGS if getattr(args, name) is not None]
    if not args.timeline:
        if given:
            raise UsageError(f'-{given[0]} sets up -timeline; give -timeline too')
        return
    for name in ('eval', 'save_vis', 'num_clips', 'num_workers'):
        if getattr(args, name) is not None:
            raise UsageError(f'-timeline writes its own outputs of windows over the whole video; -{name} does not '
                             f'apply to it')
    if args.window_stride is not None and not args.window_stride > 0:
        raise UsageError(f'argument -window_stride/--window_stride: must be positive, got {args.window_stride}')
    if args.smooth is not None and args.smooth < 1:
        raise UsageError(f'argument -smooth/--smooth: must be 1 window or more, got {args.smooth}')
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise UsageError(f'argument -threshold/--threshold: must be a probability from 0 to 1, got {args.threshold}')
    if args.min_segment is not None and args.min_segment < 0:
        raise UsageError(f'argument -min_segment/--min_segment: must be 0 or more, got {args.min_segment}')


def check_outputs(args, single):
    """Outputs that cannot be written where they are asked for stop the run before it starts:
    folders (-save_vis for several videos, -out with -eval or -timeline, -features) where a file is, files
    where a folder is."""
    out_folder = args.eval or args.timeline
    folders = {'save_vis': args.save_vis if not single else None, 'out': args.out if out_folder else None,
               'features': args.features}
    files = {'out': args.out if not out_folder else None}
    for name, path in folders.items():
        if path is not None and Path(path).exists() and not Path(path).is_dir():
            raise UsageError(f'-{name} {path}: a file, where a folder is expected')
    for name, path in files.items():
        if path is not None and Path(path).is_dir():
            raise UsageError(f'-{name} {path}: a folder, where a file is expected')


def resolve_device(name):
    """torch.device of -device: auto takes the GPU when there is one."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f'-device {name}: expected auto, cpu, cuda or cuda:N') from None
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise UsageError(f'-device {name}: no CUDA device is available')
    return device


def is_single_video(path):
    path = Path(path)
    return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS


class ReportedFailures(logging.Filter):
    """Drops the dataset's warning for an unreadable video: this command reports each one itself,
    in its output and at the end, so the warning would say it twice."""

    def filter(self, record):
        return not str(record.msg).startswith('unreadable video')


def main(argv=None):
    args = parse_args(argv)
    source = args.eval or args.video_path
    single = is_single_video(source)
    check_outputs(args, single)
    weights = resolve_weights(args.pretrain)
    onnx = find_onnx(weights) is not None  # onnxruntime runs it on -device; the videos stay on the CPU
    if onnx and args.attention:
        raise UsageError('-attention: an ONNX model gives no attention weights; give the weights it was '
                         'exported from')
    if onnx and args.features:
        raise UsageError('-features: an ONNX model gives logits only, not the features; give the weights it was '
                         'exported from')
    device = torch.device('cpu') if onnx else resolve_device(args.device)
    model = load_classifier(weights, args.class_map, onnx_device=args.device, num_frames=args.num_frames,
                            img_size=args.img_size)
    if args.attention:
        try:
            rollout_modules(model.config)
        except ValueError as error:
            raise UsageError(f'-attention: {error}') from None
    try:
        settings = inference_preprocessing(
            model, args.data_statics, sampling=args.sampling, frame_interval=args.frame_interval,
            window_seconds=args.window_seconds, short_side=args.short_side, num_clips=args.num_clips,
            num_crops=args.num_crops or 1 if args.timeline else args.num_crops)  # a timeline: one view a window
    except ValueError as error:
        raise UsageError(error) from None
    if args.timeline and settings.sampling == 'segments':
        raise UsageError('-timeline: -sampling segments spreads a clip over the whole video, which has no window to '
                         'slide; give -window_seconds or -frame_interval for a window')
    model.to(device)
    if args.timeline:
        with FeatureWriter(args.features, model.config.embed_dims) if args.features else nullcontext() as features:
            return timeline_command(args, model, settings, device, single, features=features)
    workers = args.num_workers if args.num_workers is not None else 0 if single else DEFAULT_WORKERS
    loader = prediction_loader(source, settings, labelled=args.eval is not None, class_names=model.class_names,
                               num_classes=model.config.num_classes, batch_size=args.batch_size, num_workers=workers,
                               **({'decoder': args.decoder} if args.decoder else {}))
    evaluation = Evaluation(model.config.num_classes, settings) if args.eval else None
    report = Path(args.out or f'eval_{Path(args.eval).stem}') if args.eval else None
    failures = []
    started = time.perf_counter()
    attention = partial(frame_attention, model, preprocessing=settings, device=device) if args.attention else None
    writer = ResultWriter(model_class_names(model), topk=args.topk, json_lines=args.json,
                          csv_path=report / 'predictions.csv' if args.eval else args.out,
                          pictures=args.save_vis, attention=attention, picture_root=None if single else picture_root(
                              source, [loader.dataset.path(index) for index in range(len(loader.dataset))]))
    features = FeatureWriter(args.features, model.config.embed_dims) if args.features else nullcontext()
    written = 0
    try:
        with writer, features, tqdm(total=len(loader.dataset), unit='video', disable=True if single else None,
                                    file=sys.stderr) as bar:
            for outcome in classify(model, loader, settings, args.batch_size, device, features=bool(args.features)):
                bar.update()
                writer.write(outcome)
                written += 1
                if isinstance(outcome, VideoFailure):
                    failures.append(outcome)
                    continue
                if args.features:
                    features.add(outcome.features[None], [feature_row(outcome, model_class_names(model))])
                if evaluation is not None:
                    evaluation.add(outcome)
    except KeyboardInterrupt:
        places = [str(path) for path in (writer.csv_path, args.save_vis, args.features) if path is not None] or [
            'standard output']
        print(f'{PROGRAM}: interrupted; {written} of {len(loader.dataset)} videos written to {" and ".join(places)}'
              f'{"; no report written" if evaluation is not None else ""}', file=sys.stderr)
        return 128 + signal.SIGINT
    seconds = time.perf_counter() - started
    views = f'{settings.num_clips}x{settings.num_crops}'
    if evaluation is not None:
        metrics = write_report(evaluation.results(), model_class_names(model), report, views)
        summary = {'metrics': metrics, 'report': str(report)} if args.json else (
            f'{metrics["videos"]} videos: top-1 {metrics["top1"]:.2%}, top-5 {metrics["top5"]:.2%} at {views} views; '
            f'top-1 {metrics["top1_1view"]:.2%}, top-5 {metrics["top5_1view"]:.2%} at 1 view; report in {report}')
        print(json.dumps(summary) if args.json else summary, flush=True)
    if not single:
        read = len(loader.dataset) - len(failures)
        print(f'{read} of {len(loader.dataset)} videos classified in {seconds:.1f} s', file=sys.stderr)
    for failure in failures:
        print(f'{PROGRAM}: error: {failure.path}: {failure.error}', file=sys.stderr)
    return 1 if failures else 0


if __name__ == '__main__':
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    logging.getLogger('dataset').addFilter(ReportedFailures())
    if video_decoding.decord is not None:  # its FFmpeg's messages say again what each failure's reason says
        video_decoding.decord.logging.set_level(video_decoding.decord.logging.QUIET)
    try:
        code = main()
    except (UsageError, WeightLoadError, AnnotationError) as error:  # a flag, a path or a file the user gave
        print(f'{PROGRAM}: error: {error}', file=sys.stderr)
        code = 2
    except OSError as error:  # an output that cannot be written (permissions, a full disk)
        print(f'{PROGRAM}: error: {os_error_line(error)}', file=sys.stderr)
        code = 2
    except UnreadableDatasetError as error:
        print(f'{PROGRAM}: error: {error_line(error)}', file=sys.stderr)
        code = 1
    except KeyboardInterrupt:  # before the first video: nothing written yet
        print(f'{PROGRAM}: interrupted before any video was written', file=sys.stderr)
        code = 128 + signal.SIGINT
    sys.exit(code)
