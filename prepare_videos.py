"""Prepare a dataset for fast loading: re-encode every video of a source once, small and easy to seek.

    python prepare_videos.py train.txt prepared/            # then: -train_data_path prepared/train.txt
    python prepare_videos.py kinetics400/train.csv k400_320/ -root_dir kinetics400/train -workers 16

SOURCE is what -train_data_path reads (a list, a Kinetics CSV or a folder per class). Each video
becomes H.264 in an mp4 with the short side at -short_side (never enlarged), a keyframe every
-keyframe_interval frames, quality -crf, its frames and frame rate kept, no audio; a phone video's
rotation is applied to the pixels. OUT_DIR mirrors the folders below the videos' common folder and
gets the source rewritten for the prepared files (same name and format, failed videos left out;
for a folder per class, OUT_DIR itself) and failed.csv (path, reason) when some videos could not be read.
A rerun into the same OUT_DIR skips the videos already prepared, so an interrupted run resumes;
each output is written beside its place and renamed into it when complete.
"""
from python_check import check_python

check_python()  # before anything else, so an old Python stops with one line (keep this file 3.6-parseable)

import argparse  # noqa: E402  (after the Python check, as every later import)
import csv
import io
import json
import logging
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import partial
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

from annotations import AnnotationError, load_annotations
from command_line import Parser, UsageError, add_flag, error_line, os_error_line
from utils import atomic_write, write_csv, write_json
from video_decoding import DecodeError, displayed

# What an output holds besides its frames; a rerun with other settings would mix two preparations.
SETTINGS_FILE = 'prepare_videos.json'
FAILED_FILE = 'failed.csv'
PARTIAL_SUFFIX = '.partial'


def parse_args(argv=None):
    parser = Parser(description=__doc__.split('\n\n')[0], allow_abbrev=False,
                    formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument('source', type=Path, help='annotation list, Kinetics CSV or folder per class')
    parser.add_argument('out_dir', type=Path, help='folder for the prepared videos and their list')
    add_flag(parser, 'root_dir', type=Path, default=None,
             help="folder the source's relative paths start from (default: the source's folder)")
    add_flag(parser, 'short_side', type=int, default=320, help='short side in pixels, never enlarged (default 320)')
    add_flag(parser, 'keyframe_interval', type=int, default=16,
             help='frames from one keyframe to the next (default 16)')
    add_flag(parser, 'crf', type=int, default=23, help='x264 constant rate factor, 0-51, lower is better (default 23)')
    add_flag(parser, 'workers', type=int, default=len(os.sched_getaffinity(0)),
             help='videos prepared at once, in processes (default: every core)')
    args = parser.parse_args(argv)
    for name, low, high in (('short_side', 2, None), ('keyframe_interval', 1, None), ('crf', 0, 51),
                            ('workers', 1, None)):
        value = getattr(args, name)
        if value < low or (high is not None and value > high):
            bounds = f'from {low} to {high}' if high is not None else f'at least {low}'
            raise UsageError(f'-{name} {value}: expected an integer {bounds}')
    return args


def output_size(height, width, short_side):
    """(height, width) with the short side scaled down to short_side (never up), both even, as
    H.264 in 4:2:0 needs."""
    scale = min(1.0, short_side / min(height, width))
    return tuple(max(2, 2 * round(side * scale / 2)) for side in (height, width))


def prepare_video(source, target, short_side, keyframe_interval, crf, threads):
    """Re-encode source to target (see the module doc) unless target exists: {'seconds', 'before',
    'after', 'skipped'}. Written to a partial file renamed into place when complete."""
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + PARTIAL_SUFFIX)
        try:
            _encode(source, partial, short_side, keyframe_interval, crf, threads)
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        skipped = False
    else:
        skipped = True
    with av.open(str(target)) as container:
        stream = container.streams.video[0]
        seconds = stream.frames / float(stream.average_rate)
    return {'seconds': seconds, 'before': os.path.getsize(source), 'after': os.path.getsize(target),
            'skipped': skipped}


def _encode(source, partial, short_side, keyframe_interval, crf, threads):
    """H.264 of source's first video stream, frame for frame at its average rate, into partial (mp4)."""
    with av.open(str(source)) as reader:
        if not reader.streams.video:
            raise DecodeError('no video stream')
        stream = reader.streams.video[0]
        stream.thread_type, stream.thread_count = 'AUTO', threads
        rate = stream.average_rate or stream.guessed_rate
        if not rate:
            raise DecodeError('unknown frame rate')
        with av.open(str(partial), mode='w', format='mp4') as writer:
            encoder = None
            for index, frame in enumerate(reader.decode(stream)):
                if frame.rotation:
                    # Upright pixels and no display matrix: every decoder then shows the same frames.
                    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(displayed(frame)), format='rgb24')
                if encoder is None:
                    height, width = output_size(frame.height, frame.width, short_side)
                    encoder = writer.add_stream('libx264', rate=rate)
                    encoder.codec_context.time_base = 1 / rate
                    encoder.width, encoder.height, encoder.pix_fmt = width, height, 'yuv420p'
                    encoder.thread_count = threads
                    # A keyframe exactly every keyframe_interval frames: none added at scene cuts.
                    encoder.options = {'crf': str(crf), 'g': str(keyframe_interval),
                                       'keyint_min': str(keyframe_interval), 'sc_threshold': '0'}
                resized = frame.reformat(width, height, format='yuv420p', interpolation='BICUBIC')
                resized.pts, resized.time_base = index, 1 / rate
                writer.mux(encoder.encode(resized))
            if encoder is None:
                raise DecodeError('no frames')
            writer.mux(encoder.encode())


def _prepare_or_reason(job):
    """prepare_video(*job), or the reason it failed as one line."""
    try:
        return prepare_video(*job)
    except Exception as error:  # whatever the source does to a decoder, the other videos go on
        return error_line(error, named=True)


def plan(source, out_dir, root_dir):
    """([(source video, target video, label name)], the videos' common folder, the source's class
    names by index) from the annotation source; targets mirror the folders below the common folder
    under out_dir."""
    # Its warnings (classes inferred, repeated lines) concern training, not copying the videos.
    logging.getLogger('annotations').setLevel(logging.ERROR)
    samples, names = load_annotations(source, root_dir)
    # Absolute and without '..', so that no target leaves out_dir.
    videos = [Path(os.path.abspath(path)) for path, _ in samples]
    if source.is_dir():
        base = source
    else:
        base = Path(os.path.abspath(root_dir if root_dir is not None else source.parent))
        if not all(video.is_relative_to(base) for video in videos):
            base = Path(os.path.commonpath([video.parent for video in videos]))
    jobs = [(video, out_dir / video.relative_to(base).with_suffix('.mp4'), names[label])
            for video, (_, label) in zip(videos, samples)]
    by_target = {}
    for video, target, _ in jobs:
        if by_target.setdefault(target, video) != video:
            raise UsageError(f'{source}: {by_target[target]} and {video} would both be prepared as {target}')
    return jobs, base, names


def write_source(source, out_dir, jobs, done):
    """The source rewritten for the prepared videos of jobs that are done; returns its path."""
    if source.is_dir():
        # Every class folder, even one whose videos all failed: the dataset then names it instead
        # of shifting the later classes' indices.
        for folder in sorted(child.name for child in source.iterdir() if child.is_dir()):
            (out_dir / folder).mkdir(parents=True, exist_ok=True)
        return out_dir
    target = out_dir / source.name
    if source.suffix.lower() == '.csv':
        # Rows in file order, as load_annotations reads them, each kept whole (its split and columns).
        # load_annotations has read it as UTF-8 already; utf-8-sig drops a byte-order mark as it does.
        reader = csv.DictReader(io.StringIO(source.read_text(encoding='utf-8-sig'), newline=''))
        rows = [row for row, (video, _, _) in zip(reader, jobs) if video in done]
        with atomic_write(target, newline='') as handle:
            writer = csv.DictWriter(handle, fieldnames=reader.fieldnames)
            writer.writeheader()
            writer.writerows(rows)
    else:
        with atomic_write(target) as handle:
            handle.write(''.join(f'{target_video.relative_to(out_dir)}\t{name}\n'
                                 for video, target_video, name in jobs if video in done))
    return target


def keep_class_indices(source, out_dir, jobs, done, names):
    """The source's class map written beside the prepared list when a class named in it lost every
    video: read alone, the list would number the later classes one lower (class names are sorted).
    Returns its path, or None when every class kept a video, the labels are indices or the source
    is a folder per class (write_source keeps every class folder)."""
    if source.is_dir() or names == [str(index) for index in range(len(names))]:
        return None
    lost = sorted({name for _, _, name in jobs} - {name for video, _, name in jobs if video in done})
    if not lost:
        return None
    path = out_dir / f'{source.stem}_classmap.json'
    write_json({name: index for index, name in enumerate(names)}, path)
    print(f'prepare_videos.py: no video of {", ".join(lost[:3])}{" ..." if len(lost) > 3 else ""} could be prepared; '
          f'the prepared list alone would number the classes after it otherwise: train with your class map, or '
          f"-class_map {path} (the source's classes, sorted)",
          file=sys.stderr)
    return path


def check_settings(out_dir, settings):
    """Refuse an out_dir prepared with other settings, whose finished videos would be kept as they are."""
    path = out_dir / SETTINGS_FILE
    if path.exists():
        try:
            before = json.loads(path.read_text())
        except ValueError as error:
            raise UsageError(f'{path}: not the settings file of a preparation ({error_line(error)}); give another '
                             f'OUT_DIR') from None
        if not isinstance(before, dict):
            raise UsageError(f'{path}: not the settings file of a preparation; give another OUT_DIR')
        if before != settings:
            changed = ', '.join(f'-{name} {before.get(name)}' for name in settings
                                if before.get(name) != settings[name])
            raise UsageError(f'{out_dir} was prepared with {changed}; give the same settings to resume, '
                             f'or another OUT_DIR')
    write_json(settings, path)


def mebibytes(count):
    return f'{count / 2 ** 20:.1f} MiB'


def main(argv=None):
    args = parse_args(argv)
    if not args.source.exists():
        raise UsageError(f'{args.source}: no such file or folder')
    if args.root_dir is not None and not args.root_dir.is_dir():
        raise UsageError(f'-root_dir {args.root_dir}: no such folder')
    out_dir, source = args.out_dir.resolve(), args.source.resolve()
    if out_dir == source or (source.is_dir() and out_dir.is_relative_to(source)):
        raise UsageError(f'{args.out_dir}: OUT_DIR must lie outside the source folder {args.source}')
    try:
        jobs, base, names = plan(source, out_dir, args.root_dir)
    except AnnotationError as error:
        raise UsageError(error) from None
    if base.is_relative_to(out_dir) or out_dir / source.name == source:
        # Targets would land on their sources (and be skipped as prepared), or the list on itself.
        raise UsageError(f'{args.out_dir}: OUT_DIR would overwrite the source; give a folder outside {base}')
    settings = {'short_side': args.short_side, 'keyframe_interval': args.keyframe_interval, 'crf': args.crf}
    out_dir.mkdir(parents=True, exist_ok=True)
    check_settings(out_dir, settings)
    threads = max(1, len(os.sched_getaffinity(0)) // args.workers)
    unique = {video: target for video, target, _ in jobs}
    results, failed = {}, []
    # The workers leave Ctrl-C, which reaches the whole process group, to this process.
    leave_interrupts = partial(signal.signal, signal.SIGINT, signal.SIG_IGN)
    with ProcessPoolExecutor(max_workers=args.workers, initializer=leave_interrupts) as pool:
        futures = {pool.submit(_prepare_or_reason, (video, target, *settings.values(), threads)): video
                   for video, target in unique.items()}
        try:
            with tqdm(total=len(futures), unit='video', desc='prepare_videos', dynamic_ncols=True) as bar:
                for future in as_completed(futures):
                    video, result = futures[future], future.result()
                    if isinstance(result, str):
                        failed.append({'path': str(video), 'reason': result})
                        bar.write(f'unreadable video {video}: {result}', file=sys.stderr)
                    else:
                        results[video] = result
                    bar.update()
        except KeyboardInterrupt:  # the videos being encoded finish; the others wait for a rerun
            pool.shutdown(cancel_futures=True)
            print(f'prepare_videos.py: interrupted; {len(results)} of {len(futures)} videos prepared in {out_dir} '
                  f'(and those being encoded then); the same command goes on where this one stopped',
                  file=sys.stderr)
            return 128 + signal.SIGINT
    listed = write_source(source, out_dir, jobs, results)
    class_map = keep_class_indices(source, out_dir, jobs, results, names) if results else None
    failed_csv = out_dir / FAILED_FILE
    if failed:
        write_csv(sorted(failed, key=lambda row: row['path']), failed_csv)
    else:
        failed_csv.unlink(missing_ok=True)  # from an earlier run whose failures are now prepared
    skipped = sum(result['skipped'] for result in results.values())
    hours = sum(result['seconds'] for result in results.values()) / 3600
    before = sum(result['before'] for result in results.values())
    after = sum(result['after'] for result in results.values())
    print(f'{len(results)} videos prepared ({skipped} of them already), {hours:.2f} h of video, '
          f'{mebibytes(before)} -> {mebibytes(after)}, {len(failed)} failed'
          + (f' (listed in {failed_csv})' if failed else '') + f'; videos below {base} now in {out_dir}; '
          f'the prepared source: {listed} (give it without -root_dir'
          + (f', with -class_map {class_map}' if class_map else '') + ')', flush=True)
    return 1 if failed and not results else 0


if __name__ == '__main__':
    try:
        code = main()
    except UsageError as error:  # a flag, a path or a file the user gave
        print(f'prepare_videos.py: error: {error}', file=sys.stderr)
        code = 2
    except OSError as error:  # OUT_DIR or its list cannot be written (a file in the way, permissions, a full disk)
        print(f'prepare_videos.py: error: {os_error_line(error)}', file=sys.stderr)
        code = 2
    sys.exit(code)
