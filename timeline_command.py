"""`model_inference.py -timeline`: the timeline of each video of -video_path, written as it comes.

Standard output has a table of segments per video (start, end, class, mean probability), or with
-json one line per window (and {"path", "error"} for a video that could not be read to its end);
-out is a folder of windows.csv, segments.json and timeline.png for one
video, and for several one subfolder per video mirroring its path (`a/clip.mp4/windows.csv`), as
-save_vis mirrors its pictures. -features OUT writes one row per window (features.FeatureWriter: the
pooled features the head read, views averaged, and the window's seconds in index.csv). A video that cannot be opened, or breaks off part of the way, is one
line at the end (after its windows before the damage, which are written); the exit status is then 1.
"""
import json
import logging
import signal
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from annotations import load_annotations
from frame_stream import WindowStream, format_time
from inference import mirrored_path, model_class_names, picture_root
from timeline import DEFAULT_SMOOTH, DEFAULT_THRESHOLD, format_segments, run_timeline
from utils import counted
from video_decoding import DecodeError

log = logging.getLogger(__name__)


def describe(stream, settings, windows, segments):
    """One line on how a video was read: windows, their length and stride, views, segments."""
    length = float(stream.ends[0] - stream.starts[0])
    stride = f' every {np.diff(stream.starts).mean():.2f} s' if stream.num_windows > 1 else ''
    return (f'{counted(windows, "window")} of {length:.2f} s{stride} ({counted(settings.num_frames, "frame")}, '
            f'{counted(settings.num_crops, "view")} each) over {format_time(stream.duration_s)} with '
            f'{stream.decoder}; {counted(len(segments), "segment")}')


def timeline_command(args, model, settings, device, single, program='model_inference.py', features=None):
    """Run -timeline over args.video_path (see the module doc); features, a FeatureWriter or None,
    takes a row per window. Returns the exit status."""
    samples, _ = load_annotations(args.video_path, require_labels=False, read_labels=False)
    videos = [path for path, _ in samples]
    root = None if single else picture_root(args.video_path, videos)
    class_names = model_class_names(model)
    if args.decoder == 'decord':
        log.warning('-decoder decord: its decoder thread keeps the frames it decodes ahead of the model, so '
                    'memory grows with the video when the model is the slower; PyAV (the default) does not')
    failures = []
    for video in videos:
        folder = None if args.out is None else Path(args.out) if single else mirrored_path(args.out, video, root)
        try:
            stream = WindowStream(video, settings, args.window_stride, args.decoder or 'pyav')
        except DecodeError as error:
            failures.append(f'{video}: {error}')
            if args.json:
                print(json.dumps({'path': video, 'error': str(error)}), flush=True)
            continue
        windows = 0
        with stream, tqdm(total=stream.num_windows, unit='window', file=sys.stderr, leave=False,
                          disable=None) as bar:
            def on_window(result, record):
                nonlocal windows
                windows += 1
                bar.update()
                if features is not None:
                    features.add(result.features[None], [{'path': video, 'start_s': round(result.start_s, 6),
                                                          'end_s': round(result.end_s, 6)}])
                if args.json:
                    tqdm.write(json.dumps(record), file=sys.stdout)
                    sys.stdout.flush()
            try:
                segments, windows, error = run_timeline(
                    model, stream, settings, class_names, folder, batch_size=args.batch_size, device=device,
                    topk=args.topk, smooth=args.smooth or DEFAULT_SMOOTH,
                    threshold=DEFAULT_THRESHOLD if args.threshold is None else args.threshold,
                    min_segment=args.min_segment, features=features is not None, on_window=on_window)
            except KeyboardInterrupt:
                places = [str(path) for path in (folder / 'windows.csv' if folder else None, args.features) if path]
                place = ' and '.join(places) or 'standard output'
                print(f'{program}: interrupted; {windows} of {stream.num_windows} windows of {video} written to '
                      f'{place}', file=sys.stderr)
                return 128 + signal.SIGINT
        if not args.json:
            print(format_segments(video, segments, describe(stream, settings, windows, segments)), flush=True)
        if error is not None:
            if args.json:
                print(json.dumps({'path': video, 'error': error}), flush=True)
            place = str(folder) if folder is not None else 'standard output'
            failures.append(f'{video}: {error}; {counted(windows, "window")} before it written to {place}')
    for failure in failures:
        print(f'{program}: error: {failure}', file=sys.stderr)
    return 1 if failures else 0
