"""model_inference.py -timeline: a long video of demo-class segments back to back, classified window
by window by the session's trained demo model; the stream, the segments and their files."""
import csv
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from command_lines import run_in_one_process
from classifiers import CLASSES as MODEL_CLASSES, SETTINGS, png_size
from dataset import crop_views
from demo.make_demo_dataset import CLASSES, render_clip
from frame_sampling import sliding_frame_indices, sliding_frame_times
from frame_stream import WindowStream
from model_loading import load_model
from preprocessing import Preprocessing, normalize
from reference import randomise_
from test_inference_cli import PEAK_MEMORY, own_lines
from timeline import classify_windows, find_segments, winning_classes
from timeline_figure import timeline_figure
from video_decoding import READERS, decord
from video_transformer import VideoClassifier, timesformer_tiny
from videos import write_long_video

REPOSITORY = Path(__file__).resolve().parents[1]
# The long video: five seconds of demo clips of these classes, at the demo's 25 fps and 64 px. The
# session's demo fit (the demo recipe, see conftest.demo_run) is judged on every segment's class.
ORDER = ('growing', 'moving_up', 'shrinking', 'moving_up')
SEGMENT_FRAMES, FPS = 125, 25
# The demo model's window: 8 frames 4 apart, 1.28 s; the default stride is half of it. A boundary
# lands within one window of the cut: the window across it may go either way, and the smoothing over
# three windows may move it by one more stride.
WINDOW_S, STRIDE_S = 1.28, 0.64


def write_segments_video(path, order=ORDER, frames=SEGMENT_FRAMES, movflags=None):
    """An H.264 mp4 of demo clips of the classes in `order`, `frames` each, back to back; returns the
    (start, end) seconds of each segment."""
    options = {'movflags': movflags} if movflags else {}
    with av.open(str(path), mode='w', options=options) as container:
        stream = container.add_stream('libx264', rate=FPS)
        stream.width = stream.height = 64
        stream.pix_fmt = 'yuv420p'
        stream.options = {'crf': '20', 'preset': 'veryfast'}
        for position, name in enumerate(order):
            rng = np.random.default_rng([7, position])
            for array in render_clip(CLASSES.index(name), rng, frames, 64, 64):
                container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format='rgb24')))
        container.mux(stream.encode())
    return [(position * frames / FPS, (position + 1) * frames / FPS) for position in range(len(order))]


def infer(*flags, timeout=300):
    command = [sys.executable, str(REPOSITORY / 'model_inference.py'), *map(str, flags)]
    return subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True, timeout=timeout)


def read_csv(path):
    with open(path, newline='') as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope='module')
def checkpoint(demo_run):
    return demo_run.summary['checkpoint']


@pytest.fixture(scope='module')
def segments_video(tmp_path_factory):
    folder = tmp_path_factory.mktemp('timeline')
    truth = write_segments_video(folder / 'segments.mp4')
    return folder / 'segments.mp4', truth


# ---------------------------------------------------------------- the command

def check_windows(windows, truth):
    """Windows wholly inside a segment take its class."""
    inside = [(window, ORDER[position]) for window in windows for position, (start, end) in enumerate(truth)
              if start - 1e-6 <= window['start_s'] and window['end_s'] <= end + 1e-6]
    assert len(inside) >= 0.6 * len(windows)
    wrong = [(window['start_s'], window['labels'][0], name) for window, name in inside
             if window['labels'][0] != name]
    assert not wrong, wrong


def check_segments(segments, truth, end):
    """The segments tile the windows' time from 0 to `end` and are the video's, in order, each
    boundary within a window of its cut."""
    assert segments[0]['start_s'] == 0 and segments[-1]['end_s'] == pytest.approx(end, abs=1e-3)
    assert all(left['end_s'] == right['start_s'] for left, right in zip(segments, segments[1:]))
    assert [segment['label'] for segment in segments] == list(ORDER), segments
    found = [(segment['start_s'], segment['end_s']) for segment in segments]
    expected = [(start, min(stop, end)) for start, stop in truth]
    assert np.allclose(found, expected, atol=WINDOW_S), (segments, truth)
    # Well above the 0.25 of a guess among four classes.
    assert all(0.4 < segment['probability'] <= 1 for segment in segments), segments


def test_a_timeline_finds_the_segments_of_a_long_video(checkpoint, segments_video, tmp_path):
    """With the defaults (PyAV) and with decord: the windows inside a segment take its class,
    segments.json finds the four segments to a stride, every file parses, and -features writes a row
    per window, its seconds those of windows.csv. Fails if windows are laid out or timed wrongly
    (frames against seconds), if the stream hands a window another window's frames, if smoothing or
    the short-segment merge eats a segment, if a folder's videos share an output folder, or if
    -features is ignored by a timeline or writes other rows than its windows."""
    video, truth = segments_video
    folder = tmp_path / 'videos'
    (folder / 'sub').mkdir(parents=True)
    shutil.copy(video, folder / 'sub' / 'again.mp4')
    shutil.copy(video, folder / 'segments.mp4')
    with ThreadPoolExecutor(2) as pool:
        one, many = pool.map(lambda flags: infer('-pretrain', checkpoint, *flags), [
            ('-video_path', video, '-timeline', '-json', '-out', tmp_path / 'one', '-decoder', 'decord'),
            ('-video_path', folder, '-timeline', '-out', tmp_path / 'many', '-features', tmp_path / 'features')])
    assert one.returncode == 0, one.stderr[-3000:]
    assert many.returncode == 0, many.stderr[-3000:]
    windows = [json.loads(line) for line in one.stdout.splitlines()]
    assert {'path', 'start_s', 'end_s', 'labels', 'probabilities'} <= set(windows[0])
    assert windows[0]['path'] == str(video) and len(windows[0]['labels']) == len(CLASSES)
    starts = [window['start_s'] for window in windows]
    assert starts[0] == 0 and np.allclose(np.diff(starts), STRIDE_S, atol=1e-3)
    assert np.allclose([window['end_s'] - window['start_s'] for window in windows], WINDOW_S, atol=1e-3)
    assert windows[-1]['end_s'] <= truth[-1][1] + 1e-6 and windows[-1]['end_s'] > truth[-1][1] - STRIDE_S
    check_windows(windows, truth)
    out = tmp_path / 'one'
    rows = read_csv(out / 'windows.csv')
    assert [float(row['start_s']) for row in rows] == starts
    assert [row['top1_label'] for row in rows] == [window['labels'][0] for window in windows]
    segments = json.loads((out / 'segments.json').read_text())
    assert all(set(segment) == {'start_s', 'end_s', 'label', 'probability'} for segment in segments)
    check_segments(segments, truth, windows[-1]['end_s'])
    assert png_size(out / 'timeline.png') == (1600, 640)
    # The folder: one subfolder per video, mirroring its path; the table of segments on stdout.
    for name in ('segments.mp4', 'sub/again.mp4'):
        assert {path.name for path in (tmp_path / 'many' / name).iterdir()} == {
            'windows.csv', 'segments.json', 'timeline.png'}
        check_segments(json.loads((tmp_path / 'many' / name / 'segments.json').read_text()), truth,
                       windows[-1]['end_s'])
    table = many.stdout.split(str(folder / 'segments.mp4') + ':')[1].splitlines()[2:]
    assert [line.split()[2] for line in table[:len(segments)]] == [segment['label'] for segment in segments]
    # -features: a row per window of both videos, in the order of the videos and their windows.
    features = np.load(tmp_path / 'features' / 'features.npy')
    index = read_csv(tmp_path / 'features' / 'index.csv')
    assert features.shape == (2 * len(windows), load_model(checkpoint).config.embed_dims)
    assert np.isfinite(features).all() and not np.allclose(features[0], features[len(windows) // 2])
    for name, part in (('segments.mp4', index[:len(windows)]), ('sub/again.mp4', index[len(windows):])):
        assert {row['path'] for row in part} == {str(folder / name)}
        assert [float(row['start_s']) for row in part] == pytest.approx(starts, abs=1e-5)


def test_a_truncated_video_gives_the_windows_before_the_damage_and_one_line(checkpoint, segments_video, tmp_path):
    """An mp4 whose index lists all its frames, cut in half as an interrupted copy leaves it: PyAV
    fails at the cut; the windows before it are classified and written and one line says where the
    rest was lost. Fails if an error mid-video drops the windows already read (or
    the batch pending), if it ends in a traceback, or if the command exits 0."""
    full = tmp_path / 'full.mp4'
    truth = write_segments_video(full, movflags='faststart')
    data = full.read_bytes()
    broken = tmp_path / 'broken.mp4'
    broken.write_bytes(data[:len(data) // 2])
    result = infer('-pretrain', checkpoint, '-video_path', broken, '-timeline', '-json', '-out', tmp_path / 'out')
    assert result.returncode == 1, result.stderr[-3000:]
    lines = own_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(f'model_inference.py: error: {broken}: unreadable from 0:00:'), lines
    *windows, failure = [json.loads(line) for line in result.stdout.splitlines()]
    assert failure['path'] == str(broken) and lines[0].startswith(f'model_inference.py: error: {broken}: '
                                                                  f'{failure["error"]}; ')
    assert 3 <= len(windows) < 0.9 * (truth[-1][1] / STRIDE_S), len(windows)
    assert lines[0].endswith(f'; {len(windows)} windows before it written to {tmp_path / "out"}')
    check_windows(windows, truth)
    assert len(read_csv(tmp_path / 'out' / 'windows.csv')) == len(windows)
    assert json.loads((tmp_path / 'out' / 'segments.json').read_text())[-1]['end_s'] == windows[-1]['end_s']


@pytest.mark.skipif(not Path('/proc/self/status').is_file(), reason='needs /proc/self/status (Linux)')
def test_a_long_video_needs_the_memory_of_a_short_one(checkpoint, tmp_path):
    """Thirty seconds of 640x360 at 25 fps decode to about 490 MiB of frames: a timeline over them (with
    PyAV, the default) must hold what one over two seconds holds. Fails if the stream keeps the frames
    it has passed (or all of them before the first window), or converts and keeps frames no window
    reads; with decord, whose decoder thread runs ahead, it fails (the reason PyAV is the default)."""
    short = write_long_video(tmp_path / 'short.mp4', 2, 360, 640)
    long = write_long_video(tmp_path / 'long.mp4', 30, 360, 640)
    decoded_mib = 30 * 25 * 360 * 640 * 3 / 2**20

    def peak_mib(video):
        result = subprocess.run([sys.executable, '-c', PEAK_MEMORY, str(REPOSITORY / 'model_inference.py'),
                                 '-pretrain', str(checkpoint), '-video_path', str(video), '-timeline', '-json'],
                                cwd=REPOSITORY, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert len(result.stdout.splitlines()) == (2 if video == short else 45)
        return int(own_lines(result.stderr)[-1]) / 1024

    with ThreadPoolExecutor(2) as pool:
        short_mib, long_mib = pool.map(peak_mib, (short, long))
    assert abs(long_mib - short_mib) < decoded_mib / 20, (short_mib, long_mib)


def test_timeline_flag_mistakes_exit_2_with_one_line(checkpoint, segments_video, tmp_path):
    """Fails if a stride, smoothing or threshold that cannot work runs anyway, or a timeline flag
    given without -timeline is silently ignored."""
    video = segments_video[0]
    base = ['-pretrain', checkpoint, '-video_path', video]
    cases = {
        'stride 0': (['-timeline', '-window_stride', '0'], 'argument -window_stride/--window_stride: must be positive'),
        'smooth 0': (['-timeline', '-smooth', '0'], 'argument -smooth/--smooth: must be 1 window or more'),
        'threshold 2': (['-timeline', '-threshold', '2'], 'argument -threshold/--threshold: must be a probability'),
        'min_segment -1': (['-timeline', '-min_segment', '-1'], 'argument -min_segment/--min_segment: must be 0'),
        'smooth alone': (['-smooth', '3'], '-smooth sets up -timeline; give -timeline too'),
        'timeline and save_vis': (['-timeline', '-save_vis', tmp_path / 'p'], '-timeline writes its own outputs'),
        'out a file': (['-timeline', '-out', video], f'-out {video}: a file, where a folder is expected'),
    }
    results = run_in_one_process('model_inference.py', {name: base + flags for name, (flags, _) in cases.items()})
    for name, (_, message) in cases.items():
        lines = own_lines(results[name]['stderr'])
        assert results[name]['code'] == 2 and len(lines) == 1, (name, results[name]['stderr'][-2000:])
        assert lines[0].startswith(f'model_inference.py: error: {message}'), (name, lines)


# ---------------------------------------------------------------- the parts

@pytest.mark.parametrize('decoder', ['decord', 'pyav'])
def test_the_stream_gives_each_window_its_own_frames(decoder, tmp_path):
    """Overlapping windows (stride a quarter of a window) and windows with gaps between them (stride
    past a window) get exactly the frames a random-access read of their indices gives. Fails if a
    frame is dropped before the last window that reads it, or a window is handed a neighbour's."""
    if decoder == 'decord' and decord is None:
        pytest.skip('decord is not installed')
    video = tmp_path / 'noise.mp4'
    frames = np.random.default_rng(0).integers(0, 256, (90, 48, 64, 3), dtype=np.uint8)
    with av.open(str(video), mode='w') as container:
        stream = container.add_stream('libx264', rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 64, 48, 'yuv420p'
        stream.options = {'preset': 'ultrafast', 'g': '10'}
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format='rgb24')))
        container.mux(stream.encode())
    settings = Preprocessing(num_frames=4, frame_interval=4, img_size=32, short_side=48)  # 16-frame windows
    reader = READERS[decoder](video)
    for stride_s in (4 / FPS, 24 / FPS):
        with WindowStream(video, settings, stride_s, decoder) as stream:
            windows = list(stream)
        assert stream.decoder == decoder and [window.index for window in windows] == list(range(len(windows)))
        step = round(stride_s * FPS)
        assert [window.frame_indices[0] for window in windows] == list(range(0, 90 - 16 + 1, step))
        for window in windows:
            expected = reader.read(np.array(window.frame_indices))
            assert np.array_equal(window.frames.permute(0, 2, 3, 1).numpy(), expected), window.index
    reader.close()
    # Segments sampling spreads a clip over the whole video: no window to slide, refused rather than
    # read as windows of a frame interval it never uses.
    with pytest.raises(ValueError, match="sampling 'segments' spreads a clip"):
        WindowStream(video, Preprocessing(num_frames=4, img_size=32, short_side=48, sampling='segments'), None, decoder)


def test_sliding_windows_by_frames_and_by_seconds():
    """Fails if windows stop short of the last whole one, overrun the video, or (by seconds) follow
    the frame count instead of the timestamps of a variable frame rate."""
    indices = sliding_frame_indices(100, 4, 32, 16)
    assert indices[:, 0].tolist() == [0, 16, 32, 48, 64] and indices[-1, -1] == 95
    assert sliding_frame_indices(10, 4, 32, 16).tolist() == [[0, 3, 6, 9]]
    # 10 fps for two seconds, then 40 fps for two: windows of one second every second.
    times = np.r_[np.arange(0, 2, 0.1), 2 + np.arange(0, 2, 0.025)]
    windows = sliding_frame_times(times, 2, 1.0, 1.0)
    assert times[windows[:, 0]].round(3).tolist() == [0, 1, 2, 3]
    assert windows[2].tolist() == [20, 59] and windows[0].tolist() == [0, 9]


def test_segments_smooth_merge_and_background():
    """One window's slip is smoothed away, a short run joins a neighbour, and below the threshold is
    background. Fails if smoothing is off by a window, if a short segment survives -min_segment, or if
    a threshold is ignored."""
    names = ['a', 'b', 'c']
    rows = [[0.9, 0.05, 0.05]] * 6 + [[0.2, 0.7, 0.1]] + [[0.9, 0.05, 0.05]] * 3 + [[0.1, 0.1, 0.8]] * 6
    starts = np.arange(len(rows)) * 1.0
    ends = starts + 2.0
    raw = find_segments(rows, starts, ends, names, smooth=1, min_segment=0)
    assert [segment['label'] for segment in raw] == ['a', 'b', 'a', 'c']
    assert raw[0]['start_s'] == 0 and raw[-1]['end_s'] == 17 and raw[1]['start_s'] == 6.5 and raw[1]['end_s'] == 7.5
    smoothed = find_segments(rows, starts, ends, names, smooth=3, min_segment=0)
    assert [(segment['label'], segment['start_s'], segment['end_s']) for segment in smoothed] == [
        ('a', 0.0, 10.5), ('c', 10.5, 17.0)]
    assert smoothed[0]['probability'] == pytest.approx(np.mean([row[0] for row in rows[:10]]), abs=1e-4)
    merged = find_segments(rows, starts, ends, names, smooth=1, min_segment=2)
    assert [segment['label'] for segment in merged] == ['a', 'c']
    dim = [[0.4, 0.3, 0.3]] * 4 + [[0.9, 0.05, 0.05]] * 4
    background = find_segments(dim, np.arange(8.0), np.arange(8.0) + 2, names, smooth=1, threshold=0.5)
    assert [segment['label'] for segment in background] == ['background', 'a']
    assert background[0]['probability'] == pytest.approx(0.4)


def test_the_picture_of_two_hours_reads_in_hours_minutes_and_seconds():
    """Two hours of 10 s windows with 12 classes taking turns: the axis ticks every quarter hour in
    h:mm:ss, the legend holds the 8 classes that win the most time, and a thumbnail sits in each of 12
    slots. Fails if the axis counts raw seconds or picks unround steps (0:16:40), or the legend lists
    every class."""
    rng = np.random.default_rng(0)
    starts = np.arange(1400) * 5.12
    turns = np.repeat(rng.permutation(np.tile(np.arange(12), 4)), 35)[:1400]
    probabilities = np.full((1400, 400), 0.1 / 399)
    probabilities[np.arange(1400), turns] = 0.9
    names = [f'class {index}' for index in range(400)]
    segments = find_segments(probabilities, starts, starts + 10.24, names)
    classes = winning_classes(segments)
    thumbnails = [torch.zeros(3, 18, 32, dtype=torch.uint8)] * 12
    figure = timeline_figure(starts, starts + 10.24, probabilities, names, segments, classes, thumbnails)
    curves, band, strip = figure.axes[:3]
    axis = strip.xaxis
    end = starts[-1] + 10.24
    ticks = [tick for tick in axis.get_major_locator().tick_values(0, end) if 0 <= tick <= end]
    assert [axis.get_major_formatter()(tick) for tick in ticks] == [
        f'{hours}:{minutes:02d}:00' for hours in range(3) for minutes in range(0, 60, 15)][:len(ticks)]
    assert len(ticks) == 8
    assert len(classes) == 8 and [text.get_text() for text in curves.get_legend().get_texts()] == classes
    assert len(strip.child_axes) == 12 and len(band.patches) + len(band.collections) >= len(segments)
    short = timeline_figure([0, 0.64], [1.28, 1.92], probabilities[:2, :4], names[:4],
                            [{'start_s': 0, 'end_s': 1.92, 'label': 'class 0', 'probability': 0.9}], ['class 0'])
    axis = short.axes[2].xaxis
    assert axis.get_major_formatter()(0.4) == '0:00:00.4'


def test_window_features_are_what_the_head_reads_for_those_logits(tmp_path):
    """classify_windows(features=True): each window's features are the model's pooled representation
    of its normalised view, and its probabilities the softmax of the head's linear layer on them,
    across batch boundaries (5 windows, batches of 2). Fails if features and logits come from
    different views or passes, if a batch's rows are shuffled, or if the view is left unnormalised."""
    video = write_long_video(tmp_path / 'clip.mp4', 1, 40, 48)
    model = randomise_(VideoClassifier(timesformer_tiny(), MODEL_CLASSES, SETTINGS)).eval()
    settings = SETTINGS.replace(num_crops=1)
    with WindowStream(video, settings) as stream:
        results = list(classify_windows(model, stream, settings, batch_size=2, features=True))
    with WindowStream(video, settings) as stream:
        windows = list(stream)
    assert len(results) == len(windows) == 5
    for result, window in zip(results, windows):
        view = crop_views(window.frames[None], settings.img_size)
        with torch.inference_mode():
            pooled = model.features(normalize(view, settings.mean, settings.std))[0]
            logits = model.head.fc(pooled)
        assert torch.allclose(result.features, pooled, atol=1e-5)
        assert torch.allclose(result.probabilities, logits.softmax(dim=-1), atol=1e-5)


def test_a_video_shorter_than_a_window_is_one_window_said_in_one_line(tmp_path, caplog):
    """Three frames for windows of 16: one window of the three, repeated, and one warning line naming
    the video. Fails if such a video gives no window, or repeats frames without saying so."""
    video = write_long_video(tmp_path / 'three.mp4', 3 / FPS, 48, 64)
    settings = Preprocessing(num_frames=4, frame_interval=4, img_size=32, short_side=48)
    with caplog.at_level('WARNING', logger='frame_stream'), WindowStream(video, settings) as stream:
        windows = list(stream)
    assert [window.frame_indices for window in windows] == [[0, 0, 1, 2]]
    assert [record.getMessage() for record in caplog.records] == [
        f'{video}: 0.12 s, shorter than a window; it is one window, frames repeated']
