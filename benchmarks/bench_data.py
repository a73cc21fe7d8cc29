"""Clips per second of the CPU data path on this machine, side by side in one run.

Two ways to read the sampled frames of a clip:
  first  indices first: sample frame indices, decode only up to them (the dataset's way)
  all    decode every frame of the video, then keep the sampled ones (the original repository's "get_batch first")
each with decord and with PyAV, through a DataLoader with 0, 1 and 2 worker processes (the slow
"all" only with the first --workers value: its ratio to "first" is a cost per clip), in training
mode (one random window) and test mode (NUM_TEST_CLIPS windows). Sources: the demo dataset,
generated into a temporary folder, and the real Kinetics clips in ../shared/demo when present.
Timings include opening, decoding, resizing the short side, collating and worker start-up. The
whole grid runs --repeats times after an untimed warm-up, and each cell keeps its best run, so a
burst of other work on the machine does not decide a ratio.

The "prepared" source measures what prepare_videos.py buys, per core: clips per CPU second (all
threads of the process, so decord's own threads count too) of the dataset read in one process with
one torch thread, 8x32 training and 3-window test sampling, both decoders, on the real clips as
served and after prepare_videos.py's defaults (short side 320, a keyframe every 16 frames, crf 23):
the Kinetics clips, and a 1280x720 version of the longer one with a keyframe every 250 frames, as
video sites serve them. It also gives the CPU cores one GPU needs at GPU_CLIPS_PER_SECOND.

    python benchmarks/bench_data.py                  # table on stdout, CSV in outputs/
    python benchmarks/bench_data.py --workers 0 --sources kinetics
    python benchmarks/bench_data.py --sources prepared --repeats 3
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dataset import VideoDataset, collate_clips  # noqa: E402
from video_decoding import DECODERS, READERS, installed_decords  # noqa: E402
from demo.make_demo_dataset import make_demo_dataset  # noqa: E402
from prepare_videos import prepare_video  # noqa: E402
from utils import write_csv  # noqa: E402

SHARED_DEMO = REPO.parent / 'shared' / 'demo'
# Sampling per source: the original repository's 8x32 on the real clips; 8x4 spans most of a demo clip (32-48 frames).
SOURCES = {
    'demo': dict(num_frames=8, frame_interval=4, short_side=64, clips=64),
    'kinetics': dict(num_frames=8, frame_interval=32, short_side=256, clips=12),
}
NUM_TEST_CLIPS = 3
# The per-core comparison: the original's 8x32 Kinetics sampling, resized to the dataset's default short side.
PER_CORE = dict(num_frames=8, frame_interval=32, short_side=256)
PER_CORE_ITEMS = 8
# prepare_videos.py's defaults.
PREPARE = dict(short_side=320, keyframe_interval=16, crf=23)
# What one H100 training TimeSformer-B/16 8x224 in bf16 consumes at 45% of its 989 TFLOP/s dense peak:
# 195.8 G multiply-adds a view (README, Presets), 2 FLOPs each, about 3x the forward for a training step.
GPU_CLIPS_PER_SECOND = 0.45 * 989e12 / (195.8e9 * 2 * 3)
BATCH_SIZE = 4
STRATEGIES = ('first', 'all')


class DecodeEverything(VideoDataset):
    """The original repository's "get_batch first": decode every frame, then keep the sampled ones."""

    def read_frames(self, reader, indices):
        return reader.read(np.arange(reader.num_frames))[indices.reshape(-1)]


def write_list(videos, count, path):
    """An annotation list of `count` lines cycling over videos, all with label 0."""
    path.write_text(''.join(f'{videos[i % len(videos)]}\t0\n' for i in range(count)))
    return path


def clips_per_second(list_path, source, mode, decoder, strategy, workers):
    settings = SOURCES[source]
    dataset_class = VideoDataset if strategy == 'first' else DecodeEverything
    dataset = dataset_class(list_path, mode=mode, num_frames=settings['num_frames'],
                            frame_interval=settings['frame_interval'], short_side=settings['short_side'],
                            num_clips=NUM_TEST_CLIPS, decoder=decoder)
    loader = DataLoader(dataset, batch_size=BATCH_SIZE, num_workers=workers, collate_fn=collate_clips)
    start = time.perf_counter()
    clips = sum(len(batch['label']) for batch in loader)
    return clips / (time.perf_counter() - start)


def write_720p(source, path):
    """source scaled to 1280x720, H.264 at crf 23 with a keyframe every 250 frames (x264's default
    maximum, as video sites serve clips); returns path."""
    with av.open(str(source)) as reader, av.open(str(path), mode='w') as writer:
        stream = reader.streams.video[0]
        encoder = writer.add_stream('libx264', rate=stream.average_rate)
        encoder.width, encoder.height, encoder.pix_fmt = 1280, 720, 'yuv420p'
        encoder.options = {'crf': '23', 'preset': 'veryfast', 'g': '250'}
        for index, frame in enumerate(reader.decode(stream)):
            frame = frame.reformat(1280, 720, format='yuv420p', interpolation='BICUBIC')
            frame.pts, frame.time_base = index, 1 / stream.average_rate
            writer.mux(encoder.encode(frame))
        writer.mux(encoder.encode())
    return path


def prepared_lists(scratch):
    """{name: list} of the real clips as served and prepared, and the CPU seconds prepare_video took
    per second of video, for each source."""
    served = {'kinetics': sorted(SHARED_DEMO.glob('*.mp4'))}
    served['720p'] = [write_720p(max(served['kinetics'], key=lambda path: path.stat().st_size),
                                 scratch / '720p.mp4')]
    lists, prepare_cost = {}, {}
    for name, videos in served.items():
        targets = [scratch / 'prepared' / name / video.name for video in videos]
        start = time.process_time()
        seconds = sum(prepare_video(video, target, **PREPARE, threads=1)['seconds']
                      for video, target in zip(videos, targets))
        prepare_cost[name] = (time.process_time() - start) / seconds
        lists[name, 'served'] = write_list([str(video) for video in videos], PER_CORE_ITEMS, scratch / f'{name}.txt')
        lists[name, 'prepared'] = write_list([str(target) for target in targets], PER_CORE_ITEMS,
                                             scratch / f'{name}_prepared.txt')
    return lists, prepare_cost


def clips_per_cpu_second(list_path, mode, decoder):
    """Items read per CPU second of this process (all its threads), reading in this process."""
    dataset = VideoDataset(list_path, mode=mode, num_clips=NUM_TEST_CLIPS, decoder=decoder, **PER_CORE)
    start = time.process_time()
    for index in range(len(dataset)):
        assert dataset[index]['video'] is not None
    return len(dataset) / (time.process_time() - start)


def per_core(scratch, repeats, csv_path):
    """The prepared table (see the module doc) on stdout and in csv_path."""
    lists, prepare_cost = prepared_lists(scratch)
    for path in lists.values():
        for video in dict.fromkeys(line.split('\t')[0] for line in path.read_text().splitlines()):
            for decoder in DECODERS:
                # Untimed warm-up, which also checks that each decoder reads each file itself (the
                # dataset would fall back to the other decoder silently).
                reader = READERS[decoder](video)
                reader.read(np.array([0, reader.num_frames - 1]))
                reader.close()
    jobs = [(source, mode, decoder, state) for source in ('kinetics', '720p') for mode in ('train', 'test')
            for decoder in DECODERS for state in ('served', 'prepared')]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    speed = {}
    for job in tqdm(jobs * repeats, desc='bench_data prepared'):
        source, mode, decoder, state = job
        speed[job] = max(speed.get(job, 0.0), clips_per_cpu_second(lists[source, state], mode, decoder))
    torch.set_num_threads(threads)
    rows = []
    for source, mode, decoder in dict.fromkeys(job[:3] for job in jobs):
        served, prepared = speed[source, mode, decoder, 'served'], speed[source, mode, decoder, 'prepared']
        rows.append({'source': source, 'mode': mode, 'decoder': decoder, 'served': served, 'prepared': prepared,
                     'x': prepared / served, 'cores_served': GPU_CLIPS_PER_SECOND / served,
                     'cores_prepared': GPU_CLIPS_PER_SECOND / prepared})
    print(f'clips per CPU second (one core), best of {repeats}; 8x32 sampling, short side 256; test mode reads '
          f'{NUM_TEST_CLIPS} windows per clip; cores = CPU cores one GPU at {GPU_CLIPS_PER_SECOND:.0f} clips/s needs')
    print(f"{'source':9} {'mode':5} {'decoder':7} {'served':>7} {'prepared':>8} {'x':>5} {'cores':>6} "
          f"{'cores prepared':>14}")
    for row in rows:
        print(f"{row['source']:9} {row['mode']:5} {row['decoder']:7} {row['served']:7.2f} {row['prepared']:8.2f} "
              f"{row['x']:5.1f} {row['cores_served']:6.0f} {row['cores_prepared']:14.0f}")
    print('prepare_videos.py, CPU seconds per second of video (one core): '
          + ', '.join(f'{name} {cost:.2f}' for name, cost in prepare_cost.items()))
    write_csv(rows, csv_path)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sources', nargs='+', default=[*SOURCES, 'prepared'], choices=[*SOURCES, 'prepared'])
    parser.add_argument('--workers', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--repeats', type=int, default=2, help='runs of the whole grid; each cell keeps its best')
    parser.add_argument('--csv', type=Path, default=Path('outputs/bench_data.csv'))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        lists = {}
        if 'demo' in args.sources:
            demo = make_demo_dataset(scratch / 'demo', clips_per_class=(16, 0, 0), progress=False)
            videos = [str(demo / line.split('\t')[0]) for line in (demo / 'train.txt').read_text().splitlines()]
            lists['demo'] = write_list(videos, SOURCES['demo']['clips'], scratch / 'demo.txt')
        if 'prepared' in args.sources and SHARED_DEMO.is_dir():
            per_core(scratch, args.repeats, args.csv.with_name(args.csv.stem + '_prepared.csv'))
        if 'kinetics' in args.sources and SHARED_DEMO.is_dir():
            videos = sorted(str(path) for path in SHARED_DEMO.glob('*.mp4'))
            lists['kinetics'] = write_list(videos, SOURCES['kinetics']['clips'], scratch / 'kinetics.txt')
        if not lists:
            if 'prepared' not in args.sources or not SHARED_DEMO.is_dir():
                parser.error(f'nothing to measure: {SHARED_DEMO} is missing')
            return

        for source, decoder in ((source, decoder) for source in lists for decoder in DECODERS):
            VideoDataset(lists[source], mode='val', decoder=decoder, short_side=SOURCES[source]['short_side'])[0]
        jobs = [(source, mode, workers, decoder, strategy) for source in lists for mode in ('train', 'test')
                for workers in args.workers for decoder in DECODERS for strategy in STRATEGIES
                if strategy == 'first' or workers == args.workers[0]]
        speed = {}
        for job in tqdm(jobs * args.repeats, desc='bench_data'):
            source, mode, workers, decoder, strategy = job
            speed[job] = max(speed.get(job, 0.0), clips_per_second(lists[source], source, mode, decoder, strategy,
                                                                   workers))

    rows = []
    for source in lists:
        for mode in ('train', 'test'):
            for workers in args.workers:
                row = {'source': source, 'mode': mode, 'workers': workers,
                       'sampling': f"{SOURCES[source]['num_frames']}x{SOURCES[source]['frame_interval']}"}
                for decoder in DECODERS:
                    first = speed[source, mode, workers, decoder, 'first']
                    every = speed.get((source, mode, workers, decoder, 'all'))
                    row.update({f'{decoder}_first': first, f'{decoder}_all': every,
                                f'{decoder}_x': first / every if every else None})
                row['decord_vs_pyav'] = row['decord_first'] / row['pyav_first']
                rows.append(row)

    def cell(value, width):
        return f'{value:{width}.1f}' if value is not None else f'{"-":>{width}}'

    decords = ', '.join(f'{name} {version}' for name, version in installed_decords().items()) or 'no decord'
    print(f'clips/s, best of {args.repeats}; first = indices first, all = decode everything then slice; '
          f'test mode reads {NUM_TEST_CLIPS} windows per clip; batch {BATCH_SIZE}; {decords}')
    print(f"{'source':9} {'mode':5} {'frames':6} {'workers':>7} {'decord first':>12} {'decord all':>10} {'x':>5} "
          f"{'pyav first':>10} {'pyav all':>8} {'x':>5} {'decord/pyav':>11}")
    for row in rows:
        print(f"{row['source']:9} {row['mode']:5} {row['sampling']:6} {row['workers']:7d} "
              f"{cell(row['decord_first'], 12)} {cell(row['decord_all'], 10)} {cell(row['decord_x'], 5)} "
              f"{cell(row['pyav_first'], 10)} {cell(row['pyav_all'], 8)} {cell(row['pyav_x'], 5)} "
              f"{row['decord_vs_pyav']:11.2f}")
    write_csv(rows, args.csv)


if __name__ == '__main__':
    main()
