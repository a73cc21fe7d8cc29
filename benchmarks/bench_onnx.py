"""CPU inference speed of the deployment paths side by side: PyTorch eager, PyTorch with torch.compile,
onnxruntime float32 and onnxruntime int8 (dynamic quantisation of the linear layers), one view per
video, at each batch size; and the int8 model's accuracy change against float32 on a test list.

Speed: random weights (400 classes), random normalised videos. The four paths take turns within each
repeat, so that other work on a shared machine slows all of them alike; each figure is the median of
--repeats timed calls after one untimed call per path and batch (torch.compile compiles then).
  default  tiny TimeSformer and VideoMAE (2 layers, width 32, 32 px), a check of the script in seconds
  --full   TimeSformer-B 8x224 (divided) and VideoMAE-B 16x224: minutes per batch of 8 on two cores
Accuracy (--checkpoint CKPT --test_list LIST): the checkpoint exported as float32 and int8 ONNX, both
run by inference.classify on the list's views and on the real clips of ../shared/demo; top-1 of each
and the share of videos whose top-1 class the two agree on.

    python benchmarks/bench_onnx.py                                   # tiny models, CSV in outputs/
    python benchmarks/bench_onnx.py --full --threads 2 --repeats 2
    python benchmarks/bench_onnx.py --full --models VideoMAE --batches 1 --repeats 1 --threads 1
    python benchmarks/bench_onnx.py --skip-speed --checkpoint runs/demo/results/RUN/ckpt/best.ckpt \\
        --test_list demo/data/test.txt
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inference import classify, inference_preprocessing, load_classifier, prediction_loader  # noqa: E402
from onnx_export import random_videos, save_with_onnx  # noqa: E402
from onnx_inference import OnnxClassifier  # noqa: E402
from utils import write_csv  # noqa: E402
from video_transformer import (VideoClassifier, timesformer_base_patch16_224, timesformer_tiny,  # noqa: E402
                               videomae_base_patch16_224, videomae_tiny)
from our_format import save_weights  # noqa: E402

SHARED_DEMO = REPO.parent / 'shared' / 'demo'
MODELS = {'tiny': {'TimeSformer tiny 4x32': timesformer_tiny(num_classes=400),
                   'VideoMAE tiny 4x32': videomae_tiny(num_classes=400)},
          'full': {'TimeSformer-B 8x224': timesformer_base_patch16_224(),
                   'VideoMAE-B 16x224': videomae_base_patch16_224(num_classes=400)}}


def onnx_session(model, folder, threads, **options):
    """The model exported (and checked) into `folder`, opened in an onnxruntime session of `threads`."""
    save_with_onnx(model, folder, save_weights, **options)
    settings = onnxruntime.SessionOptions()
    settings.intra_op_num_threads = threads
    settings.log_severity_level = 3
    return onnxruntime.InferenceSession(str(folder / 'model.onnx'), settings, providers=['CPUExecutionProvider'])


def speed(name, config, batches, repeats, threads, workdir):
    """Rows {model, path, batch, seconds, speedup} of the four paths, the paths taking turns."""
    model = VideoClassifier(config).eval()
    started = time.perf_counter()
    sessions = {'onnxruntime float32': onnx_session(model, workdir / f'{name} float32', threads),
                'onnxruntime int8': onnx_session(model, workdir / f'{name} int8', threads, quantize='int8')}
    print(f'{name}: exported float32 and int8 in {time.perf_counter() - started:.0f} s', flush=True)
    compiled = torch.compile(model)

    def runner(path):
        if path in sessions:
            return lambda video: sessions[path].run(['logits'], {'video': video.numpy()})
        module = compiled if path == 'PyTorch torch.compile' else model
        return lambda video: module(video)

    paths = ['PyTorch eager', 'PyTorch torch.compile', *sessions]
    rows = []
    for batch in batches:
        video = random_videos(model, batch)
        times = {path: [] for path in paths}
        with torch.inference_mode():
            for path in paths:  # untimed: torch.compile compiles for this batch, onnxruntime plans its memory
                runner(path)(video)
            for _ in range(repeats):
                for path in paths:
                    call = runner(path)
                    begun = time.perf_counter()
                    call(video)
                    times[path].append(time.perf_counter() - begun)
        eager = statistics.median(times['PyTorch eager'])
        for path in paths:
            seconds = statistics.median(times[path])
            rows.append({'model': name, 'path': path, 'batch': batch, 'seconds': round(seconds, 4),
                         'speedup': round(eager / seconds, 2)})
            print(f'{name:22} batch {batch}  {path:24} {seconds:8.3f} s  {eager / seconds:5.2f}x eager', flush=True)
    return rows


def accuracy(checkpoint, test_list, workdir):
    """Top-1 of float32 and int8 ONNX on the test list and their top-1 agreement there and on the
    real clips: rows {data, videos, top1_float32, top1_int8, agreement}."""
    model = load_classifier(checkpoint)
    folders = {'float32': workdir / 'accuracy float32', 'int8': workdir / 'accuracy int8'}
    save_with_onnx(model, folders['float32'], save_weights)
    save_with_onnx(model, folders['int8'], save_weights, quantize='int8')
    runners = {precision: OnnxClassifier.load(folder) for precision, folder in folders.items()}
    settings = inference_preprocessing(model)
    data = {'test list': (test_list, True), 'real clips': (sorted(SHARED_DEMO.glob('*.mp4')), False)}
    rows = []
    for label, (source, labelled) in data.items():
        if not source:
            continue
        outcomes = {}
        for precision, runner in runners.items():
            loader = prediction_loader(source, settings, labelled=labelled, class_names=model.class_names,
                                       num_classes=model.config.num_classes)
            outcomes[precision] = list(classify(runner, loader, settings))
        tops = {precision: [int(result.probabilities.argmax()) for result in results]
                for precision, results in outcomes.items()}
        labels = [result.label for result in outcomes['float32']]
        row = {'data': label, 'videos': len(labels),
               'agreement': sum(a == b for a, b in zip(tops['float32'], tops['int8'])) / len(labels)}
        for precision in runners:
            row[f'top1_{precision}'] = (sum(top == label for top, label in zip(tops[precision], labels)) / len(labels)
                                        if labelled else '')
        rows.append(row)
        print(f'{label}: {row}', flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--full', action='store_true', help='TimeSformer-B 8x224 and VideoMAE-B 16x224')
    parser.add_argument('--models', nargs='+', help='of the set, only those whose name starts so (e.g. VideoMAE)')
    parser.add_argument('--batches', type=int, nargs='+', default=[1, 8])
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--threads', type=int, default=torch.get_num_threads(),
                        help='threads of PyTorch and of onnxruntime')
    parser.add_argument('--skip-speed', action='store_true')
    parser.add_argument('--checkpoint', help='trained weights for the int8 accuracy change')
    parser.add_argument('--test_list', help='their labelled test list')
    parser.add_argument('--out', default=str(REPO / 'outputs'))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        if not args.skip_speed:
            models = {name: config for name, config in MODELS['full' if args.full else 'tiny'].items()
                      if not args.models or name.startswith(tuple(args.models))}
            rows = [row for name, config in models.items()
                    for row in speed(name, config, args.batches, args.repeats, args.threads, workdir)]
            write_csv(rows, out / ('bench_onnx_full.csv' if args.full else 'bench_onnx.csv'))
        if args.checkpoint:
            write_csv(accuracy(args.checkpoint, args.test_list, workdir), out / 'bench_onnx_accuracy.csv')


if __name__ == '__main__':
    main()
