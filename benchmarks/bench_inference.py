"""Inference speed on this machine: one real clip through TimeSformer-B 8x224, ours beside
transformers' video-classification pipeline, and videos per second in folder mode.

One clip (the first of ../shared/demo), the same weights and processor file for both: a random
transformers TimesformerForVideoClassification (400 classes) saved with a VideoMAEImageProcessor
(Kinetics mean and std, short side 224, crop 224); 8 frames 4 apart.
  ours  load: load_classifier on that folder; decode: a VideoDataset item (open, decode the
        sampled frames, resize) and its crops (collate_views); forward: view_logits (all
        views in one pass); at 1x1 and 1x3 views
  hf    load: TimesformerForVideoClassification.from_pretrained; decode: the pipeline's own
        preprocess (PyAV read_video_pyav, then the image processor: transformers falls back to its
        PIL VideoMAEImageProcessorPil without torchvision); forward: the model on its pixel_values;
        one view, as its pipeline takes. Its pipeline reads the first 32 frames, ours the centre window.
Each figure is the best of --repeats runs after an untimed warm-up, all in one process, so that a
burst of other work on a shared machine does not decide a ratio.

One video end to end: the wall time of each whole command in a fresh interpreter (imports, loading
the folder, decoding, one view, printing the top 5), the two taking turns, best of --repeats after
one untimed run each: ours `model_inference.py -pretrain FOLDER -video_path CLIP -frame_interval 4
-num_clips 1 -num_crops 1 -device cpu`; transformers `pipeline('video-classification', model=FOLDER)`
on the clip with frame_sampling_rate=4 (E2E_HF). Both run with OMP_NUM_THREADS=--threads.

Folder mode: videos per second of the whole loop (loader start-up, decoding in 0, 1 or 2 worker
processes, forward passes of 8 views, results) on the demo test clips with a tiny model (8 frames
of 32 px, 2 clips x 3 crops); the three worker counts take turns, --repeats rounds.

    python benchmarks/bench_inference.py                 # table on stdout, CSV in outputs/
    python benchmarks/bench_inference.py --repeats 5 --skip-folder
    python benchmarks/bench_inference.py --threads 1          # on a machine other work loads
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TimesformerConfig, TimesformerForVideoClassification, VideoMAEImageProcessor, pipeline

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from demo.make_demo_dataset import make_demo_dataset  # noqa: E402
from hf_export import hf_timesformer_config  # noqa: E402
from dataset import VideoDataset, collate_views  # noqa: E402
from inference import classify, inference_preprocessing, load_classifier, prediction_loader, view_logits  # noqa: E402
from preprocessing import DATA_STATICS, Preprocessing  # noqa: E402
from utils import write_csv  # noqa: E402
from video_transformer import VideoClassifier, timesformer_base_patch16_224, timesformer_tiny  # noqa: E402

SHARED_DEMO = REPO.parent / 'shared' / 'demo'
FRAME_INTERVAL = 4
FOLDER_SETTINGS = Preprocessing(num_frames=8, frame_interval=4, img_size=32, num_clips=2, num_crops=3)
COLUMNS = ('measure', 'implementation', 'views', 'workers', 'load_s', 'decode_s', 'forward_s', 'total_s',
           'videos_per_s')


def best_seconds(function, repeats, warm_up=True):
    """Shortest wall time of `repeats` calls, after one untimed call when warm_up."""
    if warm_up:
        function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def write_weights(folder):
    """TimeSformer-B 8x224 with random weights and its processor, as a transformers folder."""
    config = timesformer_base_patch16_224(num_classes=400, drop_path_rate=0.0)
    torch.manual_seed(0)
    TimesformerForVideoClassification(TimesformerConfig(**hf_timesformer_config(config))).save_pretrained(folder)
    mean, std = DATA_STATICS['kinetics']
    VideoMAEImageProcessor(image_mean=list(mean), image_std=list(std), size={'shortest_edge': 224},
                           crop_size={'height': 224, 'width': 224}).save_pretrained(folder)


def row(**values):
    return {column: values.get(column, '') for column in COLUMNS}


def ours_one_clip(folder, video, num_crops, repeats):
    load = best_seconds(lambda: load_classifier(folder), repeats)
    model = load_classifier(folder)
    settings = inference_preprocessing(model, frame_interval=FRAME_INTERVAL, num_clips=1, num_crops=num_crops)
    dataset = VideoDataset.from_preprocessing(video, settings)
    decode = best_seconds(lambda: collate_views([dataset[0]], settings), repeats)
    views = collate_views([dataset[0]], settings)['video']
    forward = best_seconds(lambda: view_logits(model, views, settings, num_crops, 'cpu'), repeats)
    return row(measure='one clip', implementation='ours', views=f'1x{num_crops}', load_s=load, decode_s=decode,
               forward_s=forward, total_s=load + decode + forward)


def hf_one_clip(folder, video, repeats):
    load = best_seconds(lambda: TimesformerForVideoClassification.from_pretrained(folder), repeats)
    model = TimesformerForVideoClassification.from_pretrained(folder).eval()
    classifier = pipeline('video-classification', model=model, image_processor=VideoMAEImageProcessor.from_pretrained(
        folder))
    decode = best_seconds(lambda: classifier.preprocess(str(video), frame_sampling_rate=FRAME_INTERVAL), repeats)
    inputs = classifier.preprocess(str(video), frame_sampling_rate=FRAME_INTERVAL)

    def forward_pass():
        with torch.inference_mode():
            return model(**inputs).logits

    forward = best_seconds(forward_pass, repeats)
    return row(measure='one clip', implementation='hf', views='1x1', load_s=load, decode_s=decode, forward_s=forward,
               total_s=load + decode + forward)


# transformers' whole command for one video: its pipeline on the folder, top 5 printed.
E2E_HF = ('import sys\n'
          'from transformers import pipeline\n'
          "classifier = pipeline('video-classification', model=sys.argv[1])\n"
          'print(classifier(sys.argv[2], frame_sampling_rate=int(sys.argv[3]), top_k=5))\n')


def end_to_end(folder, video, repeats, threads):
    """Wall time of one video through each whole command in a fresh interpreter, the two taking turns."""
    commands = {
        'ours': [sys.executable, str(REPO / 'model_inference.py'), '-pretrain', str(folder), '-video_path', str(video),
                 '-frame_interval', str(FRAME_INTERVAL), '-num_clips', '1', '-num_crops', '1', '-device', 'cpu'],
        'hf': [sys.executable, '-c', E2E_HF, str(folder), str(video), str(FRAME_INTERVAL)],
    }
    environment = {**os.environ, 'OMP_NUM_THREADS': str(threads)}

    def run(name):
        subprocess.run(commands[name], env=environment, check=True, capture_output=True)

    for name in commands:
        run(name)  # warm-up: the file cache
    best = {}
    for _ in range(repeats):
        for name in commands:
            seconds = best_seconds(lambda: run(name), 1, warm_up=False)
            best[name] = min(best.get(name, seconds), seconds)
    return [row(measure='one video end to end', implementation=name, views='1x1', total_s=seconds)
            for name, seconds in best.items()]


def folder_rates(videos, repeats, worker_counts=(0, 1, 2)):
    """Videos per second of the whole folder loop for each count of loader processes, in turns."""
    model = VideoClassifier(timesformer_tiny(num_frames=8, num_classes=4), preprocessing=FOLDER_SETTINGS).eval()
    count = len(list(Path(videos).glob('*/*.mp4')))

    def run(workers):
        loader = prediction_loader(videos, FOLDER_SETTINGS, num_workers=workers)
        assert sum(1 for _ in classify(model, loader, FOLDER_SETTINGS)) == count

    run(0)  # warm-up
    best = {}
    for _ in range(repeats):
        for workers in worker_counts:
            seconds = best_seconds(lambda: run(workers), 1, warm_up=False)
            best[workers] = min(best.get(workers, seconds), seconds)
    return [row(measure='folder', implementation='ours', views='2x3', workers=workers, total_s=seconds,
                videos_per_s=count / seconds) for workers, seconds in best.items()]


def print_table(rows):
    print('| measure | implementation | views | workers | load s | decode s | forward s | total s | videos/s |')
    print('|---|---|---|---|---|---|---|---|---|')
    for entry in rows:
        cells = [f'{value:.3f}' if isinstance(value, float) else str(value) for value in entry.values()]
        print('| ' + ' | '.join(cells) + ' |')


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--skip-folder', action='store_true', help='only the one-clip figures')
    parser.add_argument('--skip-end-to-end', action='store_true', help='without the whole commands')
    parser.add_argument('--threads', type=int, default=torch.get_num_threads(),
                        help="torch's threads in this process; 1 on a machine that others load, where threads "
                             'waiting on each other slow every step down')
    parser.add_argument('--csv', type=Path, default=Path('outputs/bench_inference.csv'))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    videos = sorted(SHARED_DEMO.glob('*.mp4'))
    if not videos:
        print(f'{SHARED_DEMO} is absent: the one-clip figures need a real clip; skipping them')
    with tempfile.TemporaryDirectory() as scratch:
        if videos:
            folder = Path(scratch) / 'timesformer-base'
            write_weights(folder)
            hf = hf_one_clip(folder, videos[0], args.repeats)
            ours = [ours_one_clip(folder, videos[0], crops, args.repeats) for crops in (1, 3)]
            rows += [*ours, hf]
            if not args.skip_end_to_end:
                commands = end_to_end(folder, videos[0], args.repeats, args.threads)
                rows += commands
        if not args.skip_folder:
            demo = make_demo_dataset(Path(scratch) / 'demo', seed=0, clips_per_class=(0, 0, 16), progress=False)
            rows += folder_rates(demo / 'test', args.repeats)
    print_table(rows)
    if videos:
        for name in ('load_s', 'decode_s', 'forward_s', 'total_s'):
            print(f'{name[:-2]}: transformers / ours at 1x1 = {hf[name] / ours[0][name]:.2f}x')
        if not args.skip_end_to_end:
            print(f'one video end to end: transformers / ours = {commands[1]["total_s"] / commands[0]["total_s"]:.2f}x')
    if rows:
        write_csv(rows, args.csv)


if __name__ == '__main__':
    main()
