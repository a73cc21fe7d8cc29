"""model_inference.py as users run it: one process per command line, real checkpoints and videos."""
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from features import extract_features
from inference import classify, inference_preprocessing, load_classifier, prediction_loader
from command_lines import run_in_one_process
from classifiers import CLASSES, export, hf_folder, png_size
from videos import moving_square, write_long_video, write_video

REPOSITORY = Path(__file__).resolve().parents[1]
DECORD_LOG_LINE = re.compile(r'^\[\d\d:\d\d:\d\d\] \S+\.cc:\d+: ')
def infer(*flags, env=None, timeout=300):
    command = [sys.executable, str(REPOSITORY / 'model_inference.py'), *map(str, flags)]
    return subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def own_lines(stderr):
    """Lines of stderr but decord's: its C++ logger writes "[hh:mm:ss] file.cc:line: ERROR ..." for a
    file it cannot open straight to the process's stderr, past Python's logging."""
    return [line for line in stderr.splitlines() if line.strip() and not DECORD_LOG_LINE.match(line)]


def json_lines(stdout):
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def read_csv(path):
    with open(path, newline='') as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope='module')
def labelled(demo_run):
    """The session's demo dataset (4 test clips per class)."""
    return demo_run.data


@pytest.fixture(scope='module')
def trained(demo_run):
    """The training command's summary.json of the session's demo run on `labelled`."""
    return demo_run.summary


@pytest.fixture(scope='module')
def model_folder(tmp_path_factory):
    return export(tmp_path_factory.mktemp('export') / 'model')


# ---------------------------------------------------------------- output modes

def test_evaluation_mode_gives_the_training_commands_test_accuracy(trained, labelled, tmp_path):
    """The same checkpoint and test list through model_pretrain.py's test (the session's run) and -eval
    give identical top-1 / top-5 at all views and at one view: one MetricCollection counts both. Fails if
    either path averages the views, picks the one view or counts a video differently."""
    result = infer('-pretrain', trained['checkpoint'], '-eval', labelled / 'test.txt', '-out', tmp_path / 'report',
                   '-json')
    assert result.returncode == 0, result.stderr[-3000:]
    *videos, summary = json_lines(result.stdout)
    metrics = summary['metrics']
    assert metrics['videos'] == len(videos) == 16 and metrics['views'] == '2x3'
    for name in ('top1', 'top5', 'top1_1view', 'top5_1view'):  # one MetricCollection counts both: equal
        assert metrics[name] == trained[f'test_{name}'], name
    assert {video['label'] for video in videos} == set(CLASSES)
    report = tmp_path / 'report'
    assert json.loads((report / 'metrics.json').read_text()) == metrics
    per_class = read_csv(report / 'per_class_accuracy.csv')
    assert [row['class'] for row in per_class] == CLASSES and all(row['videos'] == '4' for row in per_class)
    correct = sum(float(row['top1']) * 4 for row in per_class)
    assert correct == pytest.approx(metrics['top1'] * 16)
    assert min(png_size(report / 'confusion_matrix.png')) >= 600  # a PNG, sized to its 4 classes
    rows = read_csv(report / 'predictions.csv')
    assert [row['path'] for row in rows] == [video['path'] for video in videos]
    assert [row['top1_label'] for row in rows] == [video['labels'][0] for video in videos]


def nearest_class_mean(features, labels, train):
    """Accuracy on the rows not in `train` of the nearest class mean (Euclidean) fit on the rows in it."""
    means = np.stack([features[train & (labels == label)].mean(axis=0) for label in np.unique(labels)])
    distances = ((features[~train, None] - means[None]) ** 2).sum(axis=-1)
    return (distances.argmin(axis=1) == labels[~train]).mean()


def test_features_of_the_trained_demo_model_separate_its_classes(trained, labelled, tmp_path):
    """-features OUT with the session's demo checkpoint on 16 training clips per class and the 16 test
    clips: a nearest class mean fit on the training clips' rows classifies the test clips' rows at 90% or
    more, 25 points above the same architecture untrained (chance is 25%). index.csv names the videos in the list's order
    with their labels and the seconds read; the rows are extract_features' in process. Fails if rows and
    videos are paired wrongly or the rows are not the trained model's features."""
    per_class = {name: 0 for name in CLASSES}
    lines = []
    for split, wanted in (('train', 16), ('test', 4)):
        for line in (labelled / f'{split}.txt').read_text().splitlines():
            path, label = line.split('\t')
            if per_class.get(label, 0) < wanted:
                per_class[label] += 1
                lines.append((str(labelled / path), label))
        per_class = {name: 0 for name in CLASSES}
    listing = tmp_path / 'train_and_test.txt'
    listing.write_text(''.join(f'{path}\t{label}\n' for path, label in lines))
    out = tmp_path / 'features'
    result = infer('-pretrain', trained['checkpoint'], '-video_path', listing, '-features', out, '-json')
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(json_lines(result.stdout)) == len(lines) == 80  # the classification output, as without -features
    features = np.load(out / 'features.npy')
    index = read_csv(out / 'index.csv')
    assert features.shape == (80, 128) and features.dtype == np.float32  # the demo model's width
    assert [(row['row'], row['path'], row['label']) for row in index] == [
        (str(number), path, label) for number, (path, label) in enumerate(lines)]
    assert all(0 <= float(row['start_s']) < float(row['end_s']) <= 2.0 for row in index)  # the demo's 2 s clips
    train = np.array(['/train/' in path for path, _ in lines])
    labels = np.array([CLASSES.index(label) for _, label in lines])
    accuracy = nearest_class_mean(features, labels, train)
    model = load_classifier(trained['checkpoint'])
    settings = inference_preprocessing(model)
    head = tmp_path / 'head.txt'  # the first four videos, in process
    head.write_text(''.join(f'{path}\t{label}\n' for path, label in lines[:4]))
    in_process, _ = extract_features(model, prediction_loader(head, settings, labelled=True,
                                                              class_names=model.class_names), settings)
    np.testing.assert_allclose(features[:4], in_process, atol=1e-5, rtol=1e-5)
    torch.manual_seed(0)
    model.init_weights()
    untrained, _ = extract_features(model, prediction_loader(listing, settings, labelled=True,
                                                             class_names=model.class_names), settings)
    baseline = nearest_class_mean(untrained, labels, train)
    assert accuracy >= 0.9 and accuracy >= baseline + 0.25, (accuracy, baseline)


def test_one_video_as_a_table_with_csv_and_an_attention_picture(trained, labelled, tmp_path):
    video = labelled / 'test' / 'growing' / 'test_0002.mp4'
    result = infer('-pretrain', trained['checkpoint'], '-video_path', video, '-topk', '3', '-out', tmp_path / 'r.csv',
                   '-save_vis', tmp_path / 'vis.png', '-attention')
    assert result.returncode == 0 and result.stderr == '', result.stderr[-3000:]
    head, *table = result.stdout.splitlines()
    assert head.startswith(f'{video}: 6 views of 8 frames (decode ') and len(table) == 3  # the demo's 2x3 views
    (row,) = read_csv(tmp_path / 'r.csv')
    for rank, line in enumerate(table, 1):
        name, percent = line.split()[1:]
        assert name == row[f'top{rank}_label'] and name in CLASSES
        assert float(percent.rstrip('%')) == pytest.approx(100 * float(row[f'top{rank}_probability']), abs=0.006)
    assert row['label'] == '' and row['views'] == '6' and len(row['frames'].split(' | ')) == 2
    assert png_size(tmp_path / 'vis.png') == (8 * 160, 360)  # the demo's 8 frames, 160 pixels each


def test_a_list_of_awkward_and_real_videos_as_json_lines(model_folder, odd_videos, tmp_path):
    """Other containers and codecs, odd sizes, gray, 60 fps, 4K and too few frames are classified;
    the real Kinetics clips of ../shared/demo too when present. Pictures mirror the paths below the
    deepest folder holding the list and every video."""
    (tmp_path / 'odd').mkdir()  # the session's encoded videos, below the list's folder
    videos = [Path(shutil.copy(path, tmp_path / 'odd' / name)) for name, path in odd_videos.items()]
    shared = REPOSITORY.parent / 'shared' / 'demo'
    videos += sorted(shared.glob('*.mp4'))
    listing = tmp_path / 'videos.txt'
    listing.write_text(''.join(f'{path}\n' for path in videos))
    result = infer('-pretrain', model_folder, '-video_path', listing, '-json', '-save_vis', tmp_path / 'pictures',
                   '-out', tmp_path / 'results.csv', '-num_workers', '2', '-num_clips', '1')
    assert result.returncode == 0, result.stderr[-3000:]
    records = json_lines(result.stdout)
    assert sorted(record['path'] for record in records) == sorted(map(str, videos))
    for record in records:
        assert record['labels'][0] in CLASSES and len(record['probabilities']) == 4 and record['views'] == 3
        assert record['decode_ms'] > 0 and record['forward_ms'] > 0
        assert all(len(clip) == 4 and max(clip) < record['video_frames'] for clip in record['frames'])
        relative = Path(record['path']).relative_to(os.path.commonpath([tmp_path, *videos]))
        assert png_size(tmp_path / 'pictures' / f'{relative}.png') == (640, 360)
    assert len(read_csv(tmp_path / 'results.csv')) == len(videos)
    assert 'two_frames.mp4: 2 frames, fewer than the 4 of a clip; frames are repeated' in result.stderr
    assert f'{len(videos)} of {len(videos)} videos classified' in result.stderr
    assert 'Traceback' not in result.stderr


def write_unreadable_videos(folder):
    """{name: file} of videos that cannot be classified, each broken another way."""
    folder.mkdir(parents=True, exist_ok=True)
    good = write_video(folder / 'good.mp4', moving_square(12, 48, 64))
    data = good.read_bytes()
    (folder / 'random.mp4').write_bytes(os.urandom(4096))
    (folder / 'empty.mp4').write_bytes(b'')
    (folder / 'truncated.mp4').write_bytes(data[:len(data) // 2])
    zeroed = bytearray(data)  # container intact, every frame's bytes zero: nothing decodes
    start, end = zeroed.find(b'mdat') + 4, zeroed.find(b'moov') - 4
    zeroed[start:end] = bytes(end - start)
    (folder / 'no_decodable_frames.mp4').write_bytes(zeroed)
    with av.open(str(folder / 'no_frames.mkv'), 'w') as container:  # a stream, never a frame
        stream = container.add_stream('libx264', rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, 'yuv420p'
        container.start_encoding()
    (folder / 'notes.avi').write_text('not a video\n')
    good.unlink()
    return {path.name: path for path in folder.iterdir()}


def test_list_pictures_stay_in_their_folder_one_per_video(model_folder, tmp_path):
    """Fails on the code that wrote `../clip.mp4`'s picture outside -save_vis and let two videos of one
    file name in different folders overwrite each other's picture."""
    for folder in ('a', 'b', 'lists/c'):
        (tmp_path / folder).mkdir(parents=True)
        write_video(tmp_path / folder / 'clip.mp4', moving_square(8, 40, 48))
    listing = tmp_path / 'lists' / 'videos.txt'
    listing.write_text('../a/clip.mp4\n../b/clip.mp4\nc/clip.mp4\n')
    result = infer('-pretrain', model_folder, '-video_path', listing, '-save_vis', tmp_path / 'pictures',
                   '-num_workers', '0')
    assert result.returncode == 0, result.stderr[-3000:]
    pictures = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob('*.png'))
    assert pictures == [Path('pictures/a/clip.mp4.png'), Path('pictures/b/clip.mp4.png'),
                        Path('pictures/lists/c/clip.mp4.png')]


def test_ctrl_c_in_a_folder_says_what_was_written_and_exits_130(model_folder, tmp_path):
    """Fails on the code that stopped with a 52-line KeyboardInterrupt traceback and exit 1."""
    folder = tmp_path / 'videos'
    folder.mkdir()
    write_video(folder / 'clip_000.mp4', moving_square(16, 48, 64))
    for index in range(1, 300):  # enough work to be inside the loop when the signal comes
        os.link(folder / 'clip_000.mp4', folder / f'clip_{index:03d}.mp4')
    out = tmp_path / 'results.csv'
    command = [sys.executable, str(REPOSITORY / 'model_inference.py'), '-pretrain', str(model_folder),
               '-video_path', str(folder), '-out', str(out), '-num_clips', '4']
    running = subprocess.Popen(command, cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out.is_file() and len(out.read_text().splitlines()) > 2) and time.monotonic() < deadline:
        assert running.poll() is None, running.communicate()[1][-3000:]
        time.sleep(0.05)
    running.send_signal(signal.SIGINT)
    _, err = running.communicate(timeout=120)
    assert running.returncode == 130 and 'Traceback' not in err, err[-3000:]
    rows = read_csv(out)  # whole rows only, one per video written
    assert 2 <= len(rows) < 300 and all(row['top1_label'] in CLASSES for row in rows)
    assert own_lines(err)[-1] == f'model_inference.py: interrupted; {len(rows)} of 300 videos written to {out}'


def test_a_folder_with_unreadable_videos_classifies_the_rest_and_exits_1(model_folder, tmp_path):
    broken = write_unreadable_videos(tmp_path / 'videos' / 'broken')
    for name in ('a.mp4', 'b.webm'):
        write_video(tmp_path / 'videos' / name, moving_square(12, 48, 64),
                    codec='libvpx-vp9' if name.endswith('webm') else 'libx264')
    # One loader worker: the failures cross a process boundary with their batch, and decord's own lines
    # come from one process, so they cannot interleave with each other mid-line.
    result = infer('-pretrain', model_folder, '-video_path', tmp_path / 'videos', '-json', '-out', tmp_path / 'r.csv',
                   '-num_workers', '1')
    assert result.returncode == 1, result.stderr[-3000:]
    records = json_lines(result.stdout)
    classified = [record['path'] for record in records if 'labels' in record]
    assert sorted(classified) == [str(tmp_path / 'videos' / name) for name in ('a.mp4', 'b.webm')]
    errors = {record['path']: record['error'] for record in records if 'error' in record}
    assert sorted(errors) == sorted(map(str, broken.values()))
    assert errors[str(broken['empty.mp4'])] == 'empty file'
    assert all(set(record) == {'path', 'error'} for record in records if 'error' in record)
    assert 'Traceback' not in result.stderr
    lines = own_lines(result.stderr)
    assert lines[0].startswith('2 of 8 videos classified in ')
    assert lines[1:] == [f'model_inference.py: error: {path}: {error}' for path, error in errors.items()]
    # The CSV has a row per video too: the failures with their error, in the same order as the JSON lines.
    rows = read_csv(tmp_path / 'r.csv')
    assert [row['path'] for row in rows] == [record['path'] for record in records]
    assert [row['error'] for row in rows] == [record.get('error', '') for record in records]
    assert all(row['top1_label'] in CLASSES for row in rows if not row['error'])


# ---------------------------------------------------------------- Hub ids

def fill_hub_cache(cache, repo_id, folder):
    """huggingface_hub's cache layout for repo_id: refs/main naming a commit, whose snapshot holds
    folder's files."""
    commit = '0123456789abcdef0123456789abcdef01234567'
    repository = cache / f'models--{repo_id.replace("/", "--")}'
    (repository / 'refs').mkdir(parents=True)
    (repository / 'refs' / 'main').write_text(commit)
    snapshot = repository / 'snapshots' / commit
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    return snapshot


def test_a_hub_id_is_read_from_huggingface_hubs_cache_offline(tmp_path, labelled):
    hf = hf_folder(tmp_path / 'hf', mean=(0.6, 0.5, 0.4), std=(0.25, 0.2, 0.15))
    snapshot = fill_hub_cache(tmp_path / 'cache', 'tiny-org/tiny-timesformer', hf)
    offline = {'HF_HUB_OFFLINE': '1', 'HF_HUB_CACHE': str(tmp_path / 'cache')}
    video = labelled / 'test' / 'moving_up' / 'test_0000.mp4'
    result = infer('-pretrain', 'tiny-org/tiny-timesformer', '-video_path', video, '-json', env=offline)
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = json_lines(result.stdout)
    model = load_classifier(snapshot)
    settings = inference_preprocessing(model)
    (expected,) = classify(model, prediction_loader(video, settings), settings)
    probabilities, indices = expected.probabilities.topk(4)
    assert record['indices'] == indices.tolist() and record['labels'] == [CLASSES[i] for i in indices.tolist()]
    assert record['probabilities'] == pytest.approx(probabilities.tolist(), abs=1e-5)
    assert record['views'] == 1 and len(record['frames'][0]) == 4


# ---------------------------------------------------------------- errors

def test_mistakes_stop_with_one_line_and_their_exit_code(model_folder, labelled, tmp_path):
    video = labelled / 'test' / 'moving_up' / 'test_0000.mp4'
    (tmp_path / 'empty_folder').mkdir()
    (tmp_path / 'three.txt').write_text('a\nb\nc\n')
    (tmp_path / 'corrupt.mp4').write_bytes(os.urandom(2048))
    model = ['-pretrain', model_folder]
    offline = {'HF_HUB_OFFLINE': '1', 'HF_HUB_CACHE': str(tmp_path / 'cache')}
    cases = {
        'missing weights': (['-pretrain', tmp_path / 'best.ckpt', '-video_path', video], 2,
                            f'{tmp_path / "best.ckpt"}: no such file or folder'),
        'missing video': ([*model, '-video_path', tmp_path / 'clip.mp4'], 2,
                          f'-video_path {tmp_path / "clip.mp4"}: no such file or folder'),
        'folder without videos': ([*model, '-video_path', tmp_path / 'empty_folder'], 2, 'no videos'),
        'class map of another size': ([*model, '-video_path', video, '-class_map', tmp_path / 'three.txt'], 2,
                                      'three.txt: 3 classes, but the model has 4 outputs'),
        'features to a file': ([*model, '-video_path', video, '-features', tmp_path / 'three.txt'], 2,
                               f'-features {tmp_path / "three.txt"}: a file, where a folder is expected'),
        'not a number': ([*model, '-video_path', video, '-num_clips', 'two'], 2,
                         "argument -num_clips/--num_clips: invalid int value: 'two'"),
        'Hub id not in the cache': (['-pretrain', 'tiny-org/absent', '-video_path', video], 2,
                                    'tiny-org/absent: no such file or folder, and not found on the Hugging Face Hub'),
        'corrupt video': ([*model, '-video_path', tmp_path / 'corrupt.mp4'], 1,
                          f'{tmp_path / "corrupt.mp4"}: decord: '),
        # Among the mistakes, a video that classifies: its table reaches this case's output, not another's.
        'readable video': ([*model, '-video_path', video], 0, None),
    }
    # One process for every case; the Hub case needs the offline cache, which the others never reach.
    results = run_in_one_process('model_inference.py', {name: flags for name, (flags, _, _) in cases.items()},
                                 env=offline)
    for name, (_, code, expected) in cases.items():
        result = results[name]
        assert result['code'] == code, (name, result['stderr'][-2000:])
        assert 'Traceback' not in result['stderr'], name
        if expected is None:
            assert result['stdout'].startswith(f'{video}: 6 views of 4 frames') and '  1. ' in result['stdout']
            continue
        lines = own_lines(result['stderr'])
        assert len(lines) == 1 and lines[0].startswith('model_inference.py: error: ') and expected in lines[0], \
            (name, lines)
        assert result['stdout'] == '', name


def test_preprocessing_decoder_device_and_report_flags(trained, labelled, tmp_path):
    """-short_side and -data_statics change the views exactly as inference_preprocessing does (the
    probabilities are the library's with the change, and differ from the defaults'); -decoder pyav
    decodes with PyAV (a corrupt file's error names it first); -device cpu runs and a device that is
    not there is one line; -eval without -out writes its report to eval_LIST in the working folder.
    Fails if any of these flags is parsed but not passed on."""
    video = labelled / 'test' / 'growing' / 'test_0006.mp4'
    (tmp_path / 'corrupt.mp4').write_bytes(os.urandom(2048))
    model = ['-pretrain', trained['checkpoint']]
    one = [*model, '-video_path', video, '-json']
    cases = {
        'defaults': one,
        'short_side': [*one, '-short_side', '48'],
        'data_statics': [*one, '-data_statics', 'imagenet'],
        'pyav': [*one, '-decoder', 'pyav'],
        'pyav on a corrupt file': [*model, '-video_path', tmp_path / 'corrupt.mp4', '-decoder', 'pyav'],
        'cpu': [*one, '-device', 'cpu'],
        'device in words': [*one, '-device', 'gpu0'],
        'eval without -out': [*model, '-eval', labelled / 'test.txt'],
    }
    if not torch.cuda.is_available():
        cases['cuda without a GPU'] = [*one, '-device', 'cuda']
    results = run_in_one_process('model_inference.py', cases, cwd=tmp_path)
    classifier = load_classifier(trained['checkpoint'])
    defaults = inference_preprocessing(classifier)

    def probabilities(name):
        assert results[name]['code'] == 0, (name, results[name]['stderr'][-2000:])
        (record,) = json_lines(results[name]['stdout'])
        return dict(zip(record['labels'], record['probabilities']))

    def library(settings, **options):
        (result,) = classify(classifier, prediction_loader(video, settings, **options), settings)
        return dict(zip(classifier.class_names, result.probabilities.tolist()))

    expected = library(defaults)
    for name in ('defaults', 'pyav', 'cpu'):
        assert probabilities(name) == pytest.approx(expected, abs=1e-6), name
    for name, settings in (('short_side', inference_preprocessing(classifier, short_side=48)),
                           ('data_statics', inference_preprocessing(classifier, 'imagenet'))):
        assert settings != defaults
        changed = library(settings)
        assert probabilities(name) == pytest.approx(changed, abs=1e-6), name
        assert changed != pytest.approx(expected, abs=1e-5), f'{name} changes nothing here'
    corrupt = own_lines(results['pyav on a corrupt file']['stderr'])
    assert results['pyav on a corrupt file']['code'] == 1 and len(corrupt) == 1
    assert corrupt[0].startswith(f'model_inference.py: error: {tmp_path / "corrupt.mp4"}: pyav: '), corrupt
    errors = {'device in words': '-device gpu0: expected auto, cpu, cuda or cuda:N',
              'cuda without a GPU': '-device cuda: no CUDA device is available'}
    for name, message in errors.items():
        if name in results:
            assert results[name]['code'] == 2 and own_lines(results[name]['stderr']) == \
                [f'model_inference.py: error: {message}'], (name, results[name]['stderr'][-2000:])
    assert results['eval without -out']['code'] == 0, results['eval without -out']['stderr'][-2000:]
    metrics = json.loads((tmp_path / 'eval_test' / 'metrics.json').read_text())
    assert metrics['top1'] == pytest.approx(trained['test_top1'], abs=1e-6) and metrics['videos'] == 16
    assert {path.name for path in (tmp_path / 'eval_test').iterdir()} == {
        'metrics.json', 'predictions.csv', 'per_class_accuracy.csv', 'confusion_matrix.png'}


# ---------------------------------------------------------------- memory

# Runs the command line as `python model_inference.py ARGS` does and, as the process ends, prints the
# peak resident memory of the program itself: VmHWM starts afresh at exec, where getrusage's
# ru_maxrss would also count the memory of the forking test process.
PEAK_MEMORY = """
import atexit, re, runpy, sys
atexit.register(lambda: print(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read())[1], file=sys.stderr))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


@pytest.mark.skipif(not Path('/proc/self/status').is_file(), reason='needs /proc/self/status (Linux)')
def test_a_long_high_resolution_clip_needs_the_memory_of_a_short_one(model_folder, tmp_path):
    """Half a minute of 640x360 at 25 fps decodes to about 500 MiB of frames; classifying it must hold
    what a two-second clip holds, give or take the sampled frames: never the whole video."""
    short = write_long_video(tmp_path / 'short.mp4', 2, 360, 640)
    long = write_long_video(tmp_path / 'long.mp4', 30, 360, 640)
    decoded_mib = 30 * 25 * 360 * 640 * 3 / 2**20

    def peak_mib(video):
        result = subprocess.run([sys.executable, '-c', PEAK_MEMORY, str(REPOSITORY / 'model_inference.py'),
                                 '-pretrain', str(model_folder), '-video_path', str(video), '-json'],
                                cwd=REPOSITORY, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert json.loads(result.stdout)['path'] == str(video)
        return int(own_lines(result.stderr)[-1]) / 1024

    with ThreadPoolExecutor(2) as pool:
        short_mib, long_mib = pool.map(peak_mib, (short, long))
    assert abs(long_mib - short_mib) < decoded_mib / 16, (short_mib, long_mib)
