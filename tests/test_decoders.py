"""decord2 against PyAV on the real clips, the default decoder and the fallback between the two, and an
environment where decord 0.6.0 and decord2 overwrite each other."""
import inspect
import logging
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from einops import rearrange

import video_decoding
from command_lines import run_python
from data_trainer import VideoDataModule
from dataset import VideoDataset
from frame_sampling import sample_frame_indices
from video_decoding import DECORD_FIX, DecordReader, PyAVReader, installed_decords
from videos import keyframes_of, noise, quadrants, write_video

REPO = Path(__file__).resolve().parents[1]
# Mean absolute difference in 8-bit levels between decoded flat colours and the colours written: H.264
# blurs their borders a little; a frame turned the wrong way differs by about 100.
COLOUR_TOLERANCE = 4.0


def write_dist_info(folder, name, version):
    """The metadata folder pip writes for an installed distribution, as importlib.metadata reads it."""
    info = folder / f'{name}-{version}.dist-info'
    info.mkdir(parents=True)
    (info / 'METADATA').write_text(f'Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n')


def test_decord2_frames_of_the_real_clips_equal_pyav(shared_videos):
    found = installed_decords()
    assert set(found) == {'decord2'}, f'expected decord2 alone, found {found}; run: {DECORD_FIX}'
    # The module's own version says whose files it is: decord 0.6.0's installed over decord2 would say 0.6.0.
    assert video_decoding.decord.__version__ == found['decord2']
    indices = np.array([251, 0, 36, 72, 72, 109, 145, 181, 218, 40])
    for path in shared_videos:
        decord_reader, pyav_reader = DecordReader(path), PyAVReader(path)
        try:
            from_decord2, from_pyav = decord_reader.read(indices), pyav_reader.read(indices)
        finally:
            decord_reader.close()
            pyav_reader.close()
        assert from_decord2.dtype == np.uint8 and from_decord2.shape == from_pyav.shape
        # The decoder-agreement tolerance of test_dataset.py: both wrap FFmpeg, the frames are equal to the bit.
        assert np.array_equal(from_decord2, from_pyav), path.name


def assert_frames(frames, expected, name):
    assert frames.shape == expected.shape, f'{name}: {frames.shape}, expected {expected.shape}'
    difference = np.abs(frames.astype(np.float64) - expected).mean()
    assert difference < COLOUR_TOLERANCE, f'{name}: {difference:.1f} levels off'


@pytest.mark.parametrize('rotation', (90, 180, 270))
def test_a_video_with_a_rotation_tag_reads_as_displayed_by_both_decoders(tmp_path, rotation):
    """A display matrix (every phone video shot upright has one; phones write 270 here, "rotate=90"
    in older tools) turns the stored frames into the shown ones. Fails on PyAV frames taken as stored:
    sideways at 90 and 270, upside down at 180, where decord2 showed them upright, so predictions
    depended on the decoder. decord2 3.4.0 raises on frames 48 or 96 pixels wide, rotated or not:
    the dataset then falls back to PyAV, which must show them the same way."""
    for height, width in ((64, 128), (48, 96)):
        stored = quadrants(4, height, width)
        shown = np.rot90(stored, k=rotation // 90, axes=(1, 2))
        path = write_video(tmp_path / f'phone_{width}.mp4', stored, rotation=rotation)
        readers = (DecordReader, PyAVReader) if width == 128 else (PyAVReader,)
        for reader_class in readers:
            reader = reader_class(path)
            try:
                assert_frames(reader.read(np.array([3, 0])), shown[[3, 0]], f'{reader_class.__name__} {width}')
            finally:
                reader.close()
        (tmp_path / 'list.txt').write_text(f'{path.name}\t0\n')
        for decoder in ('decord', 'pyav'):
            clips = VideoDataset(tmp_path / 'list.txt', mode='val', num_frames=2, frame_interval=2,
                                 short_side=height, decoder=decoder)
            frames = rearrange(clips[0]['video'][0].numpy(), 't c h w -> t h w c')
            assert_frames(frames, shown[[0, 3]], f'dataset, {decoder} first, {width}')


@pytest.mark.parametrize('container', ['mp4', 'mpegts'])
def test_a_video_that_does_not_start_at_zero_has_the_same_times_in_both_decoders(tmp_path, container):
    """A file whose first frame is shown at 2 s (an MPEG-TS cut from a broadcast starts where it
    was): both readers count from its first frame, so the seconds of a clip, a timeline window or a
    feature row do not depend on the decoder. Fails on PyAV's times read as the container's (2.0,
    2.04, ... where decord says 0, 0.04, ...)."""
    path = tmp_path / f'late.{container}'
    with av.open(str(path), mode='w', format=container) as output:
        stream = output.add_stream('libx264', rate=25)
        stream.width = stream.height = 32
        stream.pix_fmt = 'yuv420p'
        for index, array in enumerate(noise(20, 32, 32)):
            frame = av.VideoFrame.from_ndarray(array, format='rgb24')
            frame.pts = 50 + index  # 2 s at 25 fps
            output.mux(stream.encode(frame))
        output.mux(stream.encode())
    times = {}
    for reader_class in (DecordReader, PyAVReader):
        reader = reader_class(path)
        try:
            times[reader_class.__name__] = reader.frame_times()
        finally:
            reader.close()
    np.testing.assert_allclose(times['PyAVReader'], times['DecordReader'], atol=1e-3)
    np.testing.assert_allclose(times['PyAVReader'][:3], [0, 0.04, 0.08], atol=1e-3)
    (tmp_path / 'list.txt').write_text(f'{path.name}\t0\n')
    starts = {decoder: VideoDataset(tmp_path / 'list.txt', mode='val', num_frames=2, frame_interval=2, short_side=32,
                                    decoder=decoder)[0]['start_s'] for decoder in ('decord', 'pyav')}
    assert starts['pyav'] == pytest.approx(starts['decord'], abs=1e-3) and starts['pyav'] < 1, starts


def test_decord_is_the_default_and_each_decoder_falls_back_to_the_other(demo_data, tmp_path, caplog):
    assert inspect.signature(VideoDataModule).parameters['decoder'].default == 'decord'
    good = demo_data / (demo_data / 'val.txt').read_text().split('\t')[0]
    (tmp_path / 'random.mp4').write_bytes(np.random.default_rng(0).bytes(20000))
    (tmp_path / 'list.txt').write_text(f'{good}\t0\nrandom.mp4\t1\n')
    settings = dict(mode='val', num_frames=4, frame_interval=4, short_side=32)
    default = VideoDataset(tmp_path / 'list.txt', **settings)
    by_pyav = VideoDataset(tmp_path / 'list.txt', decoder='pyav', **settings)
    assert default.decoders == ('decord', 'pyav') and by_pyav.decoders == ('pyav', 'decord')
    assert torch.equal(default[0]['video'], by_pyav[0]['video'])
    for clips, tried in ((default, ('decord: RuntimeError', 'pyav: InvalidDataError')),
                         (by_pyav, ('pyav: InvalidDataError', 'decord: RuntimeError'))):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger='dataset'):
            clips[1]
        message = caplog.records[0].getMessage()
        # The requested decoder first, then the other.
        assert 'random.mp4' in message and 0 <= message.find(tried[0]) < message.find(tried[1])


def test_both_decord_distributions_are_found(tmp_path):
    write_dist_info(tmp_path, 'decord', '0.6.0')
    write_dist_info(tmp_path, 'decord2', '3.4.0')
    assert installed_decords(path=[str(tmp_path)]) == {'decord': '0.6.0', 'decord2': '3.4.0'}
    assert installed_decords(path=[str(tmp_path / 'nothing')]) == {}


def test_importing_dataset_with_both_decords_says_how_to_repair(tmp_path):
    write_dist_info(tmp_path, 'decord', '0.6.0')
    write_dist_info(tmp_path, 'decord2', '3.4.0')
    mixed = run_python('-c', 'import video_decoding', pythonpath=(tmp_path, REPO))
    assert mixed.returncode == 0, mixed.stderr
    lines = mixed.stderr.splitlines()
    assert len(lines) == 1 and 'decord 0.6.0 and decord2 3.4.0' in lines[0] and DECORD_FIX in lines[0]
    # This environment alone: nothing to say.
    alone = run_python('-c', 'import video_decoding')
    assert alone.returncode == 0 and alone.stderr == ''


def test_a_decord_module_without_its_files_falls_back_to_pyav(tmp_path):
    # Uninstalling decord 0.6.0 next to decord2 (or the reverse) deletes the shared module's files and
    # leaves its folder; an empty package ahead on the path stands for that folder here.
    (tmp_path / 'decord').mkdir()
    (tmp_path / 'decord' / '__init__.py').write_text('')
    broken = run_python('-c', 'import video_decoding; print(video_decoding.decord)', pythonpath=(tmp_path, REPO))
    assert broken.returncode == 0, broken.stderr
    assert broken.stdout.strip() == 'None'
    assert 'decord module in' in broken.stderr and 'incomplete' in broken.stderr and DECORD_FIX in broken.stderr


def required_frames(keyframes, frames):
    """Frames a decoder must decode to show sorted frames: from the keyframe before each one, or on
    from the last frame shown where that keyframe lies before it, to the frame."""
    total, position = 0, -1
    for frame in frames:
        keyframe = max(key for key in keyframes if key <= frame)
        total += frame - max(keyframe, position + 1) + 1
        position = frame
    return total


def decord_cpu_seconds(path, frames, repeats=3):
    """Least CPU time (all threads) of decord2's get_batch for frames on a freshly opened reader."""
    best = float('inf')
    for _ in range(repeats):
        reader = DecordReader(path)
        start = time.process_time()
        reader.read(frames)
        best = min(best, time.process_time() - start)
        reader.close()
    return best


def test_frames_decoded_per_clip_follow_the_keyframe_spacing(tmp_path):
    """A 256-frame video with a keyframe every 16 frames (what prepare_videos.py writes) and with
    one keyframe only; the original repository's 8x32 training clip and three 8x16 test windows. PyAV counts its
    frames decoded: exactly those the keyframes require. Fails on the PyAV reader that sought once
    and decoded on from the first wanted frame to the last (as many frames with dense keyframes as
    with one). decord2 gives no count; its frames are estimated from CPU time against decoding every
    frame. get_batch seeks to the keyframe before each frame in another group of pictures, but its
    decoder thread decodes ahead between seeks, so the estimate exceeds the requirement somewhat."""
    num_frames, dense = 256, 16
    train = sample_frame_indices(num_frames, 8, 8 * 32, 'val')[0]
    test = np.unique(sample_frame_indices(num_frames, 8, 8 * 16, 'test', num_clips=3))
    frames = noise(num_frames, 160, 160)
    counts = {}
    for name, interval in (('dense', dense), ('sparse', num_frames)):
        path = write_video(tmp_path / f'{name}.mp4', frames, keyframe_interval=interval)
        keyframes = keyframes_of(path)
        assert keyframes == list(range(0, num_frames, interval))
        for clip in (train, test):
            reader = PyAVReader(path)
            reader.read(clip)
            assert reader.decoded_frames == required_frames(keyframes, clip), (name, clip)
            reader.close()
        estimate = decord_cpu_seconds(path, train) / decord_cpu_seconds(path, np.arange(num_frames)) * num_frames
        counts[name] = (required_frames(keyframes, train), round(estimate))
    (dense_required, dense_estimate), (sparse_required, sparse_estimate) = counts['dense'], counts['sparse']
    assert dense_required <= len(train) * dense and dense_required < sparse_required / 2, counts
    # CPU time also counts colour conversion, seeking and decoding ahead: bounds of 2x either way.
    assert dense_estimate < 2 * dense_required and sparse_estimate > sparse_required / 2, counts
