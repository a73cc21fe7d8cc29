"""Clips per second of the CPU data path on this machine, side by side in one run.

Two ways to read the sampled frames of a clip:
  first  indices first: sample frame indices, decode only up to them (the dataset's way)
  all    decode every frame of the video, then keep the sampled ones (the seed's "get_batch first")
each with decord and with PyAV, through a DataLoader with 0, 1 and 2 worker processes (the slow
"all" only with the first --workers value: its ratio to "first" is a cost per clip), in training
mode (one random window) and test mode (NUM_TEST_CLIPS windows). Sources: the demo dataset,
generated into a temporary folder, and the real Kinetics clips in ../shared/demo when present.
Timings include opening, decoding, resizing the short side, collating and worker start-up. The
whole grid runs --repeats times after an untimed warm-up, and each cell keeps its best run, so a
burst of other work on the machine does not decide a ratio.

    python benchmarks/bench_data.py                  # table on stdout, CSV in outputs/
    python benchmarks/bench_data.py --workers 0 --sources kinetics
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dataset import DECODERS, VideoDataset, collate_clips, installed_decords  # noqa: E402
from demo.make_demo_dataset import make_demo_dataset  # noqa: E402
from utils import write_csv  # noqa: E402

SHARED_DEMO = REPO.parent / 'shared' / 'demo'
# Sampling per source: the seed's 8x32 on the real clips; 8x4 spans most of a demo clip (32-48 frames).
SOURCES = {
    'demo': dict(num_frames=8, frame_interval=4, short_side=64, clips=64),
    'kinetics': dict(num_frames=8, frame_interval=32, short_side=256, clips=12),
}
NUM_TEST_CLIPS = 3
BATCH_SIZE = 4
STRATEGIES = ('first', 'all')


class DecodeEverything(VideoDataset):
    """The seed's "get_batch first": decode every frame, then keep the sampled ones."""

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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sources', nargs='+', default=list(SOURCES), choices=list(SOURCES))
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
        if 'kinetics' in args.sources and SHARED_DEMO.is_dir():
            videos = sorted(str(path) for path in SHARED_DEMO.glob('*.mp4'))
            lists['kinetics'] = write_list(videos, SOURCES['kinetics']['clips'], scratch / 'kinetics.txt')
        if not lists:
            parser.error(f'nothing to measure: {SHARED_DEMO} is missing')

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
