"""prepare_videos.py as users run it: real processes on generated videos, read back with PyAV and the dataset."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

from annotations import load_annotations, load_class_map
from command_lines import run_in_one_process
from dataset import VideoDataset
from demo.make_demo_dataset import make_demo_dataset
from run_outputs import read_run_metrics
from test_training_cli import demo_flags, run_dir, train
from videos import keyframes_of, moving_square, quadrants, write_video

REPOSITORY = Path(__file__).resolve().parents[1]
# How long a killed run may take to leave a half-written video behind.
KILL_WAIT_S = 60


def prepare(*flags, wait=True):
    command = [sys.executable, str(REPOSITORY / 'prepare_videos.py'), *map(str, flags)]
    if not wait:
        # A session of its own, so that the test can kill the command with its worker processes.
        return subprocess.Popen(command, cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    return subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True, timeout=300)


def video_facts(path):
    """(height, width, frames, frame rate, keyframe indices, audio streams) of a video file."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        facts = (stream.height, stream.width, stream.frames, stream.average_rate)
        audio = len(container.streams.audio)
    return (*facts, keyframes_of(path), audio)


def write_with_audio(path, frames, fps, keyframe_interval):
    """An H.264 video with an AAC track of silence, as downloaded clips have."""
    with av.open(str(path), mode='w') as container:
        video = container.add_stream('libx264', rate=fps)
        video.height, video.width = frames.shape[1:3]
        video.pix_fmt = 'yuv420p'
        video.options = {'preset': 'ultrafast', 'g': str(keyframe_interval), 'sc_threshold': '0'}
        audio = container.add_stream('aac', rate=44100, layout='mono')
        for array in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(array, format='rgb24')))
        silence = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format='fltp', layout='mono')
        silence.sample_rate = 44100
        container.mux(audio.encode(silence))
        container.mux(audio.encode())
        container.mux(video.encode())
    return path


def test_a_high_resolution_video_is_prepared_small_dense_and_listed(tmp_path):
    """A 1280x720 clip with audio and one keyframe in 250 frames (as video sites serve them), a
    phone clip tagged with a rotation and an unreadable file, listed with names. Fails if the short
    side, frame count or rate change, keyframes stay sparse, audio stays, the rotation is lost, the
    unreadable file enters the new list, or the list's paths or labels do not match."""
    source = tmp_path / 'source'
    (source / 'up').mkdir(parents=True)
    (source / 'phone').mkdir()
    write_with_audio(source / 'up' / 'wide.mp4', moving_square(40, 720, 1280), fps=30, keyframe_interval=250)
    write_video(source / 'phone' / 'upright.mp4', quadrants(20, 48, 64), fps=24, rotation=270)
    (source / 'broken.mp4').write_bytes(np.random.default_rng(0).bytes(5000))
    (source / 'train.txt').write_text('up/wide.mp4\tmoving_up\nphone/upright.mp4\tphone call\nbroken.mp4\tmoving_up\n')
    out = tmp_path / 'prepared'
    result = prepare(source / 'train.txt', out, '-workers', '2')
    assert result.returncode == 0, result.stderr[-3000:]
    assert '2 videos prepared (0 of them already)' in result.stdout and '1 failed' in result.stdout

    assert video_facts(source / 'up' / 'wide.mp4')[-2:] == ([0], 1)
    assert video_facts(out / 'up' / 'wide.mp4') == (320, 568, 40, 30, [0, 16, 32], 0)
    # Never enlarged; the rotation applied to the pixels: stored sideways, shown upright.
    assert video_facts(out / 'phone' / 'upright.mp4') == (64, 48, 20, 24, [0, 16], 0)
    shown = np.rot90(quadrants(1, 48, 64)[0], k=-1)
    with av.open(str(out / 'phone' / 'upright.mp4')) as container:
        frame = next(container.decode(video=0))
        assert frame.rotation == 0
        assert np.abs(frame.to_ndarray(format='rgb24').astype(float) - shown).mean() < 4

    assert (out / 'train.txt').read_text() == 'up/wide.mp4\tmoving_up\nphone/upright.mp4\tphone call\n'
    samples, names = load_annotations(out / 'train.txt')
    assert samples == [(str(out / 'up' / 'wide.mp4'), 0), (str(out / 'phone' / 'upright.mp4'), 1)]
    assert names == ['moving_up', 'phone call']
    clips = VideoDataset(out / 'train.txt', mode='val', num_frames=8, frame_interval=4, short_side=64)
    assert clips[0]['video'].shape == (1, 8, 3, 64, 114)
    with (out / 'failed.csv').open() as handle:
        (failure,) = list(csv.DictReader(handle))
    assert failure['path'] == str(source / 'broken.mp4') and 'InvalidData' in failure['reason']


def test_kinetics_csv_and_class_folders_keep_their_format(tmp_path):
    """Fails if a Kinetics CSV loses a column or its label folders, or if a folder per class is not
    mirrored as one (a class whose videos all failed must stay, as an empty folder the dataset names)."""
    kinetics = tmp_path / 'kinetics'
    for label, youtube_id in (('abseiling', 'aaa'), ('air drumming', 'bbb')):
        (kinetics / label).mkdir(parents=True)
        write_video(kinetics / label / f'{youtube_id}_000010_000020.mp4', moving_square(6, 32, 48))
    (kinetics / 'train.csv').write_text('label,youtube_id,time_start,time_end,split\n'
                                        'abseiling,aaa,10,20,train\n"air drumming",bbb,10,20,train\n')
    folders = tmp_path / 'folders'
    for name in ('jump', 'run', 'sit'):
        (folders / name).mkdir(parents=True)
    write_video(folders / 'jump' / 'a.avi', moving_square(6, 32, 48), codec='mpeg4')
    write_video(folders / 'run' / 'b.mp4', moving_square(6, 32, 48))
    (folders / 'sit' / 'c.mp4').write_bytes(b'not a video')
    for source, out in ((kinetics / 'train.csv', tmp_path / 'k_out'), (folders, tmp_path / 'f_out')):
        result = prepare(source, out, '-workers', '1')
        assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / 'k_out' / 'train.csv').read_text() == (kinetics / 'train.csv').read_text().replace(
        '"air drumming"', 'air drumming')
    assert load_annotations(tmp_path / 'k_out' / 'train.csv') == (
        [(str(tmp_path / 'k_out' / 'abseiling' / 'aaa_000010_000020.mp4'), 0),
         (str(tmp_path / 'k_out' / 'air drumming' / 'bbb_000010_000020.mp4'), 1)], ['abseiling', 'air drumming'])
    assert sorted(path.name for path in (tmp_path / 'f_out').rglob('*.mp4')) == ['a.mp4', 'b.mp4']
    with pytest.raises(ValueError, match='sit: a class folder with no videos'):
        load_annotations(tmp_path / 'f_out')


def test_a_class_whose_videos_all_failed_keeps_the_later_classes_indices(tmp_path):
    """A list of named classes without a class map numbers them sorted: with the one video of `dog`
    unreadable, the prepared list alone says cat 0, eel 1 where the source said eel 2. Fails on the
    code that wrote that list without a word: training on it shifted every later class."""
    source = tmp_path / 'source'
    source.mkdir()
    write_video(source / 'a.mp4', moving_square(6, 32, 48))
    write_video(source / 'c.mp4', moving_square(6, 32, 48))
    (source / 'b.mp4').write_bytes(b'not a video')
    (source / 'train.txt').write_text('a.mp4 cat\nb.mp4 dog\nc.mp4 eel\n')
    result = prepare(source / 'train.txt', tmp_path / 'out', '-workers', '1')
    assert result.returncode == 0, result.stderr[-3000:]
    class_map = tmp_path / 'out' / 'train_classmap.json'
    assert 'no video of dog could be prepared' in result.stderr and f'-class_map {class_map}' in result.stdout
    samples, names = load_annotations(tmp_path / 'out' / 'train.txt', class_names=load_class_map(class_map))
    assert names == ['cat', 'dog', 'eel'] and [label for _, label in samples] == [0, 2]


def start_preparing(tmp_path, count, ready):
    """Writes `count` 150-frame 640x360 clips and their list, starts the command on them in the
    background (one worker, short side 240) and returns (the process, the list, its out folder) once
    ready(out folder) holds."""
    source = tmp_path / 'source'
    source.mkdir()
    frames = moving_square(150, 360, 640)
    for index in range(count):
        write_video(source / f'clip_{index}.mp4', np.roll(frames, index * 40, axis=2))
    listing = source / 'train.txt'
    listing.write_text(''.join(f'clip_{index}.mp4\t{index % 2}\n' for index in range(count)))
    out = tmp_path / 'prepared'
    running = prepare(listing, out, '-workers', '1', '-short_side', '240', wait=False)
    deadline = time.monotonic() + KILL_WAIT_S
    while not ready(out):
        assert running.poll() is None and time.monotonic() < deadline, 'finished before it could be stopped'
        time.sleep(0.01)
    return running, listing, out


def test_a_killed_preparation_resumes_without_redoing_or_keeping_half_videos(tmp_path):
    """SIGKILL to the command and its workers while a video is half written, then a rerun. Fails if
    a half-written video sits where a finished one belongs (it would be skipped as done), if the
    rerun re-encodes the finished videos, or if the half-written file is left behind."""
    running, listing, out = start_preparing(tmp_path, 4, lambda out: list(out.glob('*.mp4')) and
                                            list(out.glob('*.partial')))
    os.killpg(running.pid, signal.SIGKILL)
    running.wait()
    finished = {path: path.stat() for path in out.glob('*.mp4')}
    (partial,) = out.glob('*.partial')
    assert 0 < len(finished) < 4 and partial.with_suffix('') not in finished
    for path in finished:
        assert video_facts(path)[2] == 150  # every finished output whole

    result = prepare(listing, out, '-workers', '1', '-short_side', '240')
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'4 videos prepared ({len(finished)} of them already)' in result.stdout
    for path, before in finished.items():
        after = path.stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), path
    assert not list(out.glob('*.partial'))
    assert all(video_facts(out / f'clip_{index}.mp4')[2] == 150 for index in range(4))
    assert (out / 'train.txt').read_text() == listing.read_text()


def test_ctrl_c_stops_with_one_line_and_a_rerun_goes_on(tmp_path):
    """SIGINT to the command's process group, as a terminal's Ctrl-C sends it, while it prepares. Fails
    on the code that ended in tracebacks of the command and each worker (exit 1), or that left a
    half-written video."""
    running, listing, out = start_preparing(tmp_path, 6, lambda out: list(out.rglob('*.mp4')))
    os.killpg(running.pid, signal.SIGINT)
    _, err = running.communicate(timeout=KILL_WAIT_S)
    assert running.returncode == 130 and 'Traceback' not in err, err[-3000:]
    (line,) = [line for line in err.splitlines() if line.startswith('prepare_videos.py')]
    assert line.startswith('prepare_videos.py: interrupted; ') and 'the same command goes on' in line
    assert not list(out.rglob('*.partial'))
    result = prepare(listing, out, '-workers', '1', '-short_side', '240')
    assert result.returncode == 0, result.stderr[-3000:]
    assert '6 videos prepared' in result.stdout


def test_bad_flags_and_paths_stop_with_one_line_and_exit_2(tmp_path):
    """Fails if a mistake prints a traceback, exits otherwise, or writes anything; an OUT_DIR holding
    the source would have its videos skipped as prepared and its list rewritten onto itself. Catches
    the code where an OUT_DIR that cannot be made (a file in the way) or a settings file that is not
    JSON ended in a traceback, and where a -root_dir that is not there failed every video one by one."""
    source = tmp_path / 'source'
    source.mkdir()
    (source / 'train.txt').write_text('a.mp4\t0\n')
    (source / 'labels.txt').write_text('a.mp4\n')
    resumed = tmp_path / 'resumed'
    resumed.mkdir()
    (resumed / 'prepare_videos.json').write_text(json.dumps({'short_side': 256, 'keyframe_interval': 16, 'crf': 23}))
    (tmp_path / 'file').write_text('')
    garbled = tmp_path / 'garbled'
    garbled.mkdir()
    (garbled / 'prepare_videos.json').write_text('{"short_side": 3')
    cases = {
        'crf': ([source / 'train.txt', tmp_path / 'o', '-crf', '60'], '-crf 60: expected an integer from 0 to 51'),
        'workers': ([source / 'train.txt', tmp_path / 'o', '--workers', '0'], '-workers 0: expected an integer'),
        'short side': ([source / 'train.txt', tmp_path / 'o', '-short_side', '1'], '-short_side 1'),
        'missing': ([tmp_path / 'none.txt', tmp_path / 'o'], 'none.txt: no such file or folder'),
        # Every video would fail: the list's paths start from it.
        'no root dir': ([source / 'train.txt', tmp_path / 'o', '-root_dir', tmp_path / 'gone'],
                        f'-root_dir {tmp_path / "gone"}: no such folder'),
        'inside': ([source, source / 'out'], 'must lie outside the source folder'),
        'onto itself': ([source / 'train.txt', source], 'OUT_DIR would overwrite the source'),
        'above': ([source / 'train.txt', tmp_path], 'OUT_DIR would overwrite the source'),
        'no label': ([source / 'labels.txt', tmp_path / 'o'], 'labels.txt:1: expected "relative/path.mp4 label"'),
        'other settings': ([source / 'train.txt', resumed], 'was prepared with -short_side 256'),
        'no out dir': ([source / 'train.txt'], 'the following arguments are required: out_dir'),
        'a file in the way': ([source / 'train.txt', tmp_path / 'file'], f'{tmp_path / "file"}: File exists'),
        'below a file': ([source / 'train.txt', tmp_path / 'file' / 'o'],
                         f'{tmp_path / "file" / "o"}: Not a directory'),
        'settings not JSON': ([source / 'train.txt', garbled], f'{garbled / "prepare_videos.json"}: not the settings '
                                                                f'file of a preparation'),
    }
    results = run_in_one_process('prepare_videos.py', {name: arguments for name, (arguments, _) in cases.items()})
    for name, (_, expected) in cases.items():
        result = results[name]
        assert result['code'] == 2, (name, result)
        lines = result['stderr'].splitlines()
        assert len(lines) == 1 and lines[0].startswith('prepare_videos.py: error: ') and expected in lines[0], \
            (name, lines)
    assert not (tmp_path / 'o').exists()


def test_the_prepared_demo_trains_as_the_original(tmp_path):
    """The demo clips before and after prepare_videos.py (re-encoded at crf 23 with a keyframe every
    16 frames; 64 pixels, never enlarged): every clip's sampled frames agree within 5 levels, and the
    demo recipe, same seed, an epoch of 16 clips per class, takes the same steps: per-step training
    losses within 0.01 (under 0.001 here, where one step's loss differs from the next by 0.03 to 0.3).
    Fails if preparing loses or reorders frames, or the new lists pair other labels with the clips.
    The full demo training (20 epochs) on prepared clips is too long for the suite: see the README."""
    data = make_demo_dataset(tmp_path / 'demo', seed=0, clips_per_class=(16, 4, 1), progress=False)
    prepared = tmp_path / 'prepared'
    for split in ('train', 'val', 'test'):
        result = prepare(data / f'{split}.txt', prepared)
        assert result.returncode == 0, result.stderr[-3000:]
    (prepared / 'classmap.json').write_text((data / 'classmap.json').read_text())
    assert keyframes_of(prepared / 'train' / 'moving_up' / 'train_0000.mp4')[:2] == [0, 16]
    settings = dict(mode='val', num_frames=8, frame_interval=4, short_side=64, class_map=data / 'classmap.json')
    before, after = VideoDataset(data / 'train.txt', **settings), VideoDataset(prepared / 'train.txt', **settings)
    assert len(before) == len(after) == 64 and np.array_equal(before.labels, after.labels)
    for index in range(len(before)):
        difference = (before[index]['video'].float() - after[index]['video'].float()).abs().mean()
        assert difference < 5, (before.path(index), float(difference))  # crf 23 on the demo's noisy texture: 2-3
    losses = {}
    for name, root in (('original', data), ('prepared', prepared)):
        result = train('-recipe', 'demo', *demo_flags(root), '-epoch', '1', '-num_workers', '0', '-seed', '0',
                       '-log_interval', '1', '-root_dir', tmp_path / f'runs_{name}')
        assert result.returncode == 0, result.stderr[-3000:]
        rows = read_run_metrics(run_dir(tmp_path / f'runs_{name}') / 'log' / 'csv')
        losses[name] = np.array([row['train/loss'] for row in rows if row.get('train/loss') is not None])
    assert len(losses['original']) == len(losses['prepared']) >= 8
    assert np.abs(losses['original'] - losses['prepared']).max() < 0.01, losses
