"""Timeline speed on this machine: windows per second of `model_inference.py -timeline`'s loop
(timeline.run_timeline: the stream decoding front to back, the views, the model, the segments) on a
long real-sized video, and the share of the time spent decoding.

The video: --seconds of 640x360 H.264 at 25 fps written with PyAV into a temporary folder (a
textured background that pans and a moving square, at x264's veryfast preset, so the decoder has
real motion to follow). Two models with random weights, one view a window, the default stride
(half a window):
  demo          the demo recipe's TimeSformer (8 frames 4 apart, 32 px, width 128, 2 layers, 2-frame
                tubelets): windows of 1.28 s every 0.64 s, every window of the video
  TimeSformer-B TimeSformer-B/16 8x224 (400 classes, built on the meta device, then initialised):
                windows of 10.24 s every 5.12 s, the first --base-windows of them
each read with decord and with PyAV. Decoding is the time spent waiting on the stream (reading,
converting and resizing the frames, assembling windows); the rest is cropping, normalising, the
forward passes and the bookkeeping.

    python benchmarks/bench_timeline.py             # CSV in outputs/bench_timeline.csv
    python benchmarks/bench_timeline.py --seconds 180 --base-windows 6   # the README's figures
"""
import argparse
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import av
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from frame_stream import WindowStream  # noqa: E402
from preprocessing import Preprocessing  # noqa: E402
from timeline import classify_windows  # noqa: E402
from utils import write_csv  # noqa: E402
from video_transformer import VideoClassifier, VideoTransformerConfig, timesformer_base_patch16_224  # noqa: E402

FPS, HEIGHT, WIDTH = 25, 360, 640
DEMO_CONFIG = VideoTransformerConfig(arch='timesformer', num_frames=8, img_size=32, patch_size=8, embed_dims=128,
                                     num_heads=4, num_transformer_layers=2, conv_type='Conv3d', tube_size=2,
                                     num_classes=4)
DEMO_SETTINGS = Preprocessing(num_frames=8, frame_interval=4, img_size=32, num_crops=1)
BASE_SETTINGS = Preprocessing(num_frames=8, frame_interval=32, img_size=224, num_crops=1)
COLUMNS = ('model', 'decoder', 'video_s', 'windows', 'seconds', 'windows_per_s', 'decode_share')


def write_video(path, seconds):
    """seconds of 640x360 H.264: a noise texture panning one pixel a frame and a square crossing it."""
    rng = np.random.default_rng(0)
    texture = rng.integers(40, 120, (HEIGHT, WIDTH + FPS * 4, 3), dtype=np.uint8)
    with av.open(str(path), mode='w') as container:
        stream = container.add_stream('libx264', rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, 'yuv420p'
        stream.options = {'preset': 'veryfast', 'crf': '23'}
        for index in range(int(seconds * FPS)):
            shift = index % (FPS * 4)
            frame = np.ascontiguousarray(texture[:, shift:shift + WIDTH])
            left = (index * 7) % (WIDTH - 80)
            frame[140:220, left:left + 80] = (230, 230, 120)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')))
        container.mux(stream.encode())
    return path


class TimedStream:
    """A WindowStream whose iteration time (decoding and window assembly) is summed in `seconds`."""

    def __init__(self, stream):
        self.stream, self.path, self.seconds = stream, stream.path, 0.0

    def __iter__(self):
        windows = iter(self.stream)
        while True:
            started = time.perf_counter()
            try:
                window = next(windows)
            except StopIteration:
                return
            finally:
                self.seconds += time.perf_counter() - started
            yield window


def measure(model, settings, video, decoder, limit=None):
    """(windows, seconds, decoding seconds) of the timeline loop over the first `limit` windows."""
    started = time.perf_counter()
    with WindowStream(video, settings, decoder=decoder) as stream:
        timed = TimedStream(stream)
        windows = sum(1 for _ in islice(classify_windows(model, timed, settings, batch_size=8), limit))
    return windows, time.perf_counter() - started, timed.seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--seconds', type=float, default=120, help='length of the generated video')
    parser.add_argument('--base-windows', type=int, default=3, help='windows TimeSformer-B classifies')
    parser.add_argument('--threads', type=int, default=2, help='torch threads')
    parser.add_argument('--out', default=str(REPO / 'outputs' / 'bench_timeline.csv'))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    demo = VideoClassifier(DEMO_CONFIG).eval()
    with torch.device('meta'):
        base = VideoClassifier(timesformer_base_patch16_224(num_classes=400, drop_path_rate=0.0))
    base = base.to_empty(device='cpu').eval()
    base.init_weights()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        video = write_video(Path(folder) / 'long.mp4', args.seconds)
        print(f'{args.seconds:.0f} s of {WIDTH}x{HEIGHT} written in {time.perf_counter() - started:.1f} s',
              file=sys.stderr)
        for name, model, settings, limit in (('demo', demo, DEMO_SETTINGS, None),
                                             ('TimeSformer-B', base, BASE_SETTINGS, args.base_windows)):
            for decoder in ('decord', 'pyav'):
                windows, seconds, decoding = measure(model, settings, video, decoder, limit)
                rows.append({'model': name, 'decoder': decoder, 'video_s': args.seconds, 'windows': windows,
                             'seconds': round(seconds, 2), 'windows_per_s': round(windows / seconds, 2),
                             'decode_share': round(decoding / seconds, 3)})
                print(rows[-1], file=sys.stderr)
    print('| model | decoder | windows | s | windows/s | decoding share |')
    print('|---|---|---|---|---|---|')
    for row in rows:
        print(f'| {row["model"]} | {row["decoder"]} | {row["windows"]} | {row["seconds"]:.1f} | '
              f'{row["windows_per_s"]:.2f} | {row["decode_share"]:.0%} |')
    write_csv(rows, args.out)


if __name__ == '__main__':
    main()
