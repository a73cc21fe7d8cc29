"""Annotation parsing, frame-index sampling, real decoding with both decoders, and unreadable videos."""
import json
import logging
import os
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import dataset
import video_decoding
from annotations import UNLABELLED, AnnotationError, load_annotations, load_class_map
from dataset import UnreadableDatasetError, VideoDataset, collate_clips, collate_views
from frame_sampling import sample_frame_indices, sample_frame_times
from preprocessing import Preprocessing
from video_decoding import DECODERS, DecordReader, PyAVReader, decord, resize_short_side
from demo.make_demo_dataset import CLASSES, make_demo_dataset, render_clip, write_video


def demo_videos(demo_data, split='train'):
    return [demo_data / line.split('\t')[0] for line in (demo_data / f'{split}.txt').read_text().splitlines()]


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def touch_video(path):
    """An empty placeholder where parsing only needs a file to exist."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


# ---------------------------------------------------------------- class maps

def test_class_map_json_with_string_indices(tmp_path):
    path = write(tmp_path / 'map.json', json.dumps({'b': '1', 'a': '0', 'c': '2'}))
    assert load_class_map(path) == ['a', 'b', 'c']


def test_class_map_one_name_per_line(tmp_path):
    assert load_class_map(write(tmp_path / 'map.txt', 'zebra\n\napple\n')) == ['zebra', 'apple']


def test_real_kinetics_class_map(shared_dir):
    names = load_class_map(shared_dir / 'formats' / 'k400_classmap.json')
    assert len(names) == 400 and names[0] == 'abseiling'


@pytest.mark.parametrize('content, message', [
    ({'a': 0, 'b': 2}, 'without gaps'),
    ({'a': 0, 'b': 0}, 'share index 0'),
    ({'a': 'zero'}, "index 'zero'"),
])
def test_bad_class_maps(tmp_path, content, message):
    path = write(tmp_path / 'map.json', json.dumps(content))
    with pytest.raises(AnnotationError, match=message) as error:
        load_class_map(path)
    assert str(path) in str(error.value)


def test_a_class_map_is_json_by_its_extension_in_any_case(tmp_path):
    """Fails if classmap.JSON is read as one name per line (its braces as class names)."""
    assert load_class_map(write(tmp_path / 'classmap.JSON', json.dumps({'b': 1, 'a': 0}))) == ['a', 'b']


@pytest.mark.parametrize('name, text, where, first', [
    ('map.txt', 'walking\nrunning\n\nwalking\n', 'map.txt:4', 'map.txt:1'),
    ('map.json', json.dumps(['walking', 'running', 'walking']), 'map.json: entry 2', 'map.json: entry 0'),
    ('map.json', json.dumps({'air drumming': 0, 'air_drumming': 1}), 'map.json: index 1', 'map.json: index 0'),
])
def test_a_name_given_twice_is_reported_against_the_class_map(tmp_path, name, text, where, first):
    """Fails on the code that read the class map and then blamed the training list for its repeat."""
    path = write(tmp_path / name, text)
    with pytest.raises(AnnotationError) as error:
        load_class_map(path)
    assert str(error.value).startswith(f'{tmp_path / where}: class ') and f'(first at {tmp_path / first})' in \
        str(error.value)


def test_class_map_with_invalid_json_names_the_line(tmp_path):
    path = write(tmp_path / 'map.json', '{"a": 0,\n "b" 1}')
    with pytest.raises(AnnotationError, match=f'{path}:2'):
        load_class_map(path)


# ---------------------------------------------------------------- lists

def test_list_with_names_tabs_spaces_comments_and_root(tmp_path):
    listing = write(tmp_path / 'lists' / 'train.txt',
                    '# a comment\n'
                    'air drumming/x 1.mp4\tair_drumming\n'
                    '\n'
                    'abseiling/y.mp4 abseiling\n'
                    'abseiling/z.mp4   2\n')
    samples, names = load_annotations(listing, root_dir=tmp_path / 'videos',
                                      class_names=['abseiling', 'air drumming', 'archery'])
    assert names == ['abseiling', 'air drumming', 'archery']
    assert samples == [(str(tmp_path / 'videos' / 'air drumming' / 'x 1.mp4'), 1),
                       (str(tmp_path / 'videos' / 'abseiling' / 'y.mp4'), 0),
                       (str(tmp_path / 'videos' / 'abseiling' / 'z.mp4'), 2)]


def test_list_paths_default_to_the_list_folder(tmp_path):
    listing = write(tmp_path / 'data' / 'val.txt', 'a.mp4 0\nb.mp4 1\n')
    samples, names = load_annotations(listing)
    assert samples == [(str(tmp_path / 'data' / 'a.mp4'), 0), (str(tmp_path / 'data' / 'b.mp4'), 1)]
    assert names == ['0', '1']


def test_list_names_without_class_map_are_sorted(tmp_path):
    samples, names = load_annotations(write(tmp_path / 'l.txt', 'a.mp4 zebra\nb.mp4 apple\n'))
    assert names == ['apple', 'zebra'] and [label for _, label in samples] == [1, 0]


@pytest.mark.parametrize('text, line, message', [
    ('a.mp4 0\nonly_a_path.mp4\n', 2, 'expected "relative/path.mp4 label"'),
    ('a.mp4\t0\t1\n', 1, 'expected "relative/path.mp4 label"'),
    ('a.mp4 0\nb.mp4 7\n', 2, 'label 7 is out of range for 4 classes'),
    ('a.mp4 -1\n', 1, 'label -1 is out of range'),
])
def test_malformed_list_lines_name_file_and_line(tmp_path, text, line, message):
    listing = write(tmp_path / 'bad.txt', text)
    with pytest.raises(AnnotationError, match=message) as error:
        load_annotations(listing, num_classes=4)
    assert str(error.value).startswith(f'{listing}:{line}:')


def test_unknown_class_name_names_file_and_line(tmp_path):
    listing = write(tmp_path / 'bad.txt', 'a.mp4 cat\nb.mp4 dog\n')
    with pytest.raises(AnnotationError, match=f"{listing}:2: label 'dog' is not a class of the class map"):
        load_annotations(listing, class_names=['cat', 'bird'])


def test_index_out_of_the_class_maps_range(tmp_path):
    listing = write(tmp_path / 'bad.txt', 'a.mp4 2\n')
    with pytest.raises(AnnotationError, match=f'{listing}:1: label 2 is out of range for 2 classes'):
        load_annotations(listing, class_names=['cat', 'bird'])


def test_names_mixed_with_indices_need_a_class_map(tmp_path):
    listing = write(tmp_path / 'bad.txt', 'a.mp4 0\nb.mp4 dog\n')
    with pytest.raises(AnnotationError, match=f'{listing}:2: .*give a class map'):
        load_annotations(listing)


def test_num_class_must_match_the_class_map(tmp_path):
    with pytest.raises(AnnotationError, match='the class map has 2 classes where 400 are asked for'):
        load_annotations(write(tmp_path / 'l.txt', 'a.mp4 0\n'), class_names=['a', 'b'], num_classes=400)


def test_empty_list_and_missing_file(tmp_path):
    with pytest.raises(AnnotationError, match='lists no videos'):
        load_annotations(write(tmp_path / 'empty.txt', '# nothing\n'))
    with pytest.raises(AnnotationError, match='absent.txt: no such file or folder'):
        load_annotations(tmp_path / 'absent.txt')


def test_samples_per_class_cap_keeps_file_order(tmp_path):
    listing = write(tmp_path / 'l.txt', ''.join(f'{i}.mp4 {i % 2}\n' for i in range(7)))
    samples, _ = load_annotations(listing, num_samples_per_cls=2)
    assert [os.path.basename(path) for path, _ in samples] == ['0.mp4', '1.mp4', '2.mp4', '3.mp4']
    with pytest.raises(ValueError, match='num_samples_per_cls must be positive'):
        load_annotations(listing, num_samples_per_cls=0)


@pytest.mark.parametrize('name, head', [
    ('train.txt', 'a.mp4 0\nb.mp4 1\n'),
    ('classes.txt', 'abseiling\nair drumming\n'),
    ('classes.json', '{"abseiling": 0,\n "air drumming": 1,\n'),
    ('train.csv', 'label,youtube_id,time_start,time_end,split\nabseiling,abc,0,10,train\n'),
])
@pytest.mark.parametrize('byte_order_mark', [b'', b'\xef\xbb\xbf'])
def test_non_utf8_bytes_name_file_and_line(tmp_path, name, head, byte_order_mark):
    path = tmp_path / name
    path.write_bytes(byte_order_mark + head.encode() + 'caf\u00e9 0\n'.encode('latin-1'))
    read = load_class_map if name.startswith('classes') else load_annotations
    with pytest.raises(AnnotationError, match=rf'^{path}:3: not UTF-8 text \(byte 0xe9\)'):
        read(path)


def test_a_path_listed_with_two_labels_is_refused_naming_both_lines(tmp_path):
    listing = write(tmp_path / 'l.txt', 'a.mp4 0\nb.mp4 1\na.mp4 1\n')
    with pytest.raises(AnnotationError, match=rf"^{listing}:3: {tmp_path / 'a.mp4'} is listed with label '1' here "
                                              rf"and with '0' at {listing}:1$"):
        load_annotations(listing)


def test_repeated_lines_are_kept_with_one_warning(tmp_path, caplog):
    # A name and an index of the same class are the same label.
    listing = write(tmp_path / 'l.txt', 'a.mp4 cat\nb.mp4 1\na.mp4 0\nb.mp4 dog\nc.mp4 0\n')
    with caplog.at_level(logging.WARNING, logger='annotations'):
        samples, _ = load_annotations(listing, class_names=['cat', 'dog'])
    assert [label for _, label in samples] == [0, 1, 0, 1, 0]
    assert len(caplog.records) == 1
    assert caplog.records[0].getMessage() == (f"{listing}: 2 lines repeat a video listed before with the same label "
                                              f"(first: {tmp_path / 'a.mp4'} at {listing}:1 and {listing}:3); "
                                              f"each line is kept")


def test_the_number_of_inferred_classes_is_said(tmp_path, caplog):
    listing = write(tmp_path / 'l.txt', 'a.mp4 0\nb.mp4 3\nc.mp4 7\nd.mp4 3\n')
    with caplog.at_level(logging.WARNING, logger='annotations'):
        _, names = load_annotations(listing)
    assert names == [str(index) for index in range(8)]
    assert [record.getMessage() for record in caplog.records] == [
        f'{listing}: 8 classes inferred from the largest label, 7, as neither a class map nor a class count is given; '
        f'no sample has label 1, 2, 4, 5, 6']
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger='annotations'):
        load_annotations(listing, num_classes=10)
        load_annotations(listing, class_names=[str(index) for index in range(8)])
    assert not caplog.records


# ---------------------------------------------------------------- Kinetics CSV

KINETICS_CSV = ('label,youtube_id,time_start,time_end,split\n'
                'air drumming,abc,14,24,train\n'
                'abseiling,-def_,0,10,train\n')


@pytest.mark.parametrize('folders', ['label', 'underscored', 'none'])
def test_kinetics_csv_with_or_without_label_folders(tmp_path, folders):
    csv_path = write(tmp_path / 'train.csv', KINETICS_CSV)
    root = tmp_path / 'videos'
    folder = {'label': 'air drumming', 'underscored': 'air_drumming', 'none': ''}[folders]
    touch_video(root / folder / 'abc_000014_000024.mp4')
    samples, names = load_annotations(csv_path, root_dir=root, class_names=['abseiling', 'air_drumming'])
    assert names == ['abseiling', 'air_drumming']
    first_folder = {'label': 'abseiling', 'underscored': 'abseiling', 'none': ''}[folders]
    assert samples == [(str(root / folder / 'abc_000014_000024.mp4'), 1),
                       (str(root / first_folder / '-def__000000_000010.mp4'), 0)]


def test_byte_order_marks_are_ignored(tmp_path):
    csv_path = tmp_path / 'bom.csv'
    csv_path.write_bytes(b'\xef\xbb\xbf' + KINETICS_CSV.encode())
    listing = tmp_path / 'bom.txt'
    listing.write_bytes(b'\xef\xbb\xbfa.mp4 0\n')
    class_map = tmp_path / 'bom_map.txt'
    class_map.write_bytes(b'\xef\xbb\xbfabseiling\nair drumming\n')
    names = load_class_map(class_map)
    assert names == ['abseiling', 'air drumming']
    assert [label for _, label in load_annotations(csv_path, class_names=names)[0]] == [1, 0]
    assert load_annotations(listing)[0] == [(str(tmp_path / 'a.mp4'), 0)]


def test_kinetics_csv_against_the_real_class_map(tmp_path, shared_dir):
    names = load_class_map(shared_dir / 'formats' / 'k400_classmap.json')
    samples, _ = load_annotations(write(tmp_path / 'k.csv', KINETICS_CSV), class_names=names)
    assert [label for _, label in samples] == [names.index('air_drumming'), names.index('abseiling')]


@pytest.mark.parametrize('text, message', [
    ('label,youtube_id,time_start\nx,abc,1\n', r':1: the Kinetics CSV header lacks time_end'),
    ('label,youtube_id,time_start,time_end,split\nx,abc,1,2,train\nx,abd,one,2,train\n',
     r':3: time_start and time_end must be integers'),
    ('label,youtube_id,time_start,time_end,split\n,abc,1,2,train\n', r':2: empty label or youtube_id'),
])
def test_malformed_kinetics_csv(tmp_path, text, message):
    csv_path = write(tmp_path / 'bad.csv', text)
    with pytest.raises(AnnotationError, match=str(csv_path) + message):
        load_annotations(csv_path)


# ---------------------------------------------------------------- folder per class

def test_folder_per_class(tmp_path):
    root = tmp_path / 'UCF-101'
    for relative in ('Archery/v_Archery_g01_c01.avi', 'Archery/v_Archery_g01_c02.AVI', 'Archery/notes.txt',
                     'Basketball/nested/v_Basketball_g01_c01.mp4'):
        touch_video(root / relative)
    samples, names = load_annotations(root)
    assert names == ['Archery', 'Basketball']
    assert [(os.path.relpath(path, root), label) for path, label in samples] == [
        ('Archery/v_Archery_g01_c01.avi', 0), ('Archery/v_Archery_g01_c02.AVI', 0),
        ('Basketball/nested/v_Basketball_g01_c01.mp4', 1)]
    with pytest.raises(AnnotationError, match="Basketball: label 'Basketball' is not a class of the class map"):
        load_annotations(root, class_names=['Archery'])
    with pytest.raises(AnnotationError, match='found no folders'):
        load_annotations(root / 'Archery')


def test_an_empty_class_folder_is_refused_naming_it(tmp_path):
    # Dropping it would shift the index of every later class.
    root = tmp_path / 'UCF-101'
    for relative in ('Archery/a.avi', 'Basketball/notes.txt', 'Biking/b.mp4'):
        touch_video(root / relative)
    with pytest.raises(AnnotationError, match=rf'^{root / "Basketball"}: a class folder with no videos'):
        load_annotations(root)


def test_demo_dataset_is_deterministic_from_its_seed(tmp_path):
    first, again, other = (make_demo_dataset(tmp_path / name, seed=seed, clips_per_class=(1, 1, 0), progress=False)
                           for name, seed in (('a', 0), ('b', 0), ('c', 1)))
    files = sorted(path.relative_to(first) for path in first.rglob('*') if path.is_file())
    assert len(files) == 4 * 2 + 4
    assert [name for name in files if (first / name).read_bytes() != (again / name).read_bytes()] == []
    assert (first / 'train.txt').read_text() == (other / 'train.txt').read_text()
    videos = [name for name in files if name.suffix == '.mp4']
    assert all((first / name).read_bytes() != (other / name).read_bytes() for name in videos)


def test_demo_lists_and_folders_agree(demo_data):
    names = load_class_map(demo_data / 'classmap.json')
    assert names == list(CLASSES)
    from_list, _ = load_annotations(demo_data / 'train.txt', class_names=names)
    from_folders, _ = load_annotations(demo_data / 'train', class_names=names)
    assert sorted(from_list) == sorted(from_folders) and len(from_list) == 4 * len(CLASSES)


# ---------------------------------------------------------------- unlabelled input for prediction

def test_a_video_is_never_read_as_an_annotation_file(demo_data):
    video = demo_videos(demo_data)[0]
    assert load_annotations(video, require_labels=False) == ([(str(video), UNLABELLED)], [])
    with pytest.raises(AnnotationError, match=rf'^{video}: a video, where labels are needed'):
        load_annotations(video)


def test_prediction_takes_every_video_below_a_folder(tmp_path):
    for relative in ('b.mp4', 'a/nested/c.MKV', 'a/d.webm', 'a/notes.txt', 'a/folder.mp4/e.avi', 'f.flv', 'g.ts'):
        touch_video(tmp_path / 'videos' / relative)
    samples, names = load_annotations(tmp_path / 'videos', require_labels=False)
    assert [os.path.relpath(path, tmp_path / 'videos') for path, _ in samples] == [
        'a/d.webm', 'a/folder.mp4/e.avi', 'a/nested/c.MKV', 'b.mp4', 'f.flv', 'g.ts']
    # A video alone, in a container less common than mp4, is a video, never an annotation file.
    assert load_annotations(tmp_path / 'videos' / 'f.flv', require_labels=False)[0] == [
        (str(tmp_path / 'videos' / 'f.flv'), UNLABELLED)]
    assert {label for _, label in samples} == {UNLABELLED} and names == []
    # A folder per class is a folder of videos too: prediction ignores what the folders say.
    samples, _ = load_annotations(tmp_path / 'videos' / 'a', require_labels=False)
    assert len(samples) == 3
    with pytest.raises(AnnotationError, match='no videos'):
        load_annotations(write(tmp_path / 'text' / 'notes.txt', '').parent, require_labels=False)


def test_hidden_files_and_folders_are_skipped_and_counted(tmp_path, caplog):
    """Fails on the code that read macOS `._clip.mp4` AppleDouble files and hidden folders as videos
    (a 1-byte `._clip.mp4` made folder inference exit 1)."""
    root = tmp_path / 'videos'
    for relative in ('walking/a.mp4', 'walking/._a.mp4', 'running/b.mp4', 'running/.cache/c.mp4',
                     '.Trashes/walking/d.mp4', '._e.mp4'):
        touch_video(root / relative)
    for require_labels, expected in ((True, [('running/b.mp4', 0), ('walking/a.mp4', 1)]),
                                     (False, [('running/b.mp4', UNLABELLED), ('walking/a.mp4', UNLABELLED)])):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger='annotations'):
            samples, _ = load_annotations(root, require_labels=require_labels)
        assert [(os.path.relpath(path, root), label) for path, label in samples] == expected
        assert caplog.messages == [f'{root}: 4 hidden video files skipped (names starting with a dot, such as '
                                   f'macOS ._ files)']


def test_prediction_lists_may_omit_labels(tmp_path):
    listing = write(tmp_path / 'l.txt', 'my clip.mp4\nb.mp4 dog\nc d/e.mp4\t\nf.mp4\tcat\n')
    samples, names = load_annotations(listing, class_names=['cat', 'dog'], require_labels=False)
    assert samples == [(str(tmp_path / 'my clip.mp4'), UNLABELLED), (str(tmp_path / 'b.mp4'), 1),
                       (str(tmp_path / 'c d/e.mp4'), UNLABELLED), (str(tmp_path / 'f.mp4'), 0)]
    assert names == ['cat', 'dog']
    # Where labels are needed, a line without one is refused, not split into a path and a "label".
    with pytest.raises(AnnotationError, match=rf"^{listing}:1: expected \"relative/path.mp4 label\", "
                                              rf"got 'my clip.mp4'"):
        load_annotations(listing, class_names=['cat', 'dog'])


def test_prediction_from_explicit_paths(demo_data, tmp_path):
    videos = demo_videos(demo_data)[:2] + [tmp_path / 'missing.mp4']
    settings = Preprocessing(num_frames=4, frame_interval=4, img_size=32, num_clips=2, num_crops=3)
    clips = VideoDataset.from_preprocessing(videos, settings)
    assert clips.mode == 'predict' and len(clips) == 3 and clips.labels.tolist() == [UNLABELLED] * 3
    items = [clips[index] for index in range(len(clips))]
    assert items[0]['video'].shape[:3] == (2, 4, 3) and min(items[0]['video'].shape[-2:]) == settings.short_side
    batch = collate_views(items, settings)
    assert batch['video'].shape == (2, 6, 4, 3, 32, 32)
    assert batch['path'] == [str(video) for video in videos[:2]] and batch['label'].tolist() == [UNLABELLED] * 2
    assert batch['failed'] == [(str(videos[2]), 'no such file')]
    with pytest.raises(ValueError, match='a sequence of video paths has no labels'):
        VideoDataset(videos, mode='test')


# ---------------------------------------------------------------- frame indices

def test_train_indices_in_range_window_length_and_evenly_spaced():
    rng = np.random.default_rng(0)
    for _ in range(200):
        indices = sample_frame_indices(300, 8, 8 * 32, 'train', rng=rng)
        assert indices.shape == (1, 8) and indices.dtype == np.int64
        assert indices.min() >= 0 and indices.max() < 300
        assert indices[0, -1] - indices[0, 0] == 8 * 32 - 1
        assert np.all(np.diff(indices) >= 36)
    starts = {int(sample_frame_indices(300, 8, 256, 'train', rng=rng)[0, 0]) for _ in range(300)}
    assert starts == set(range(300 - 256 + 1))


def test_train_indices_are_deterministic_under_a_seed():
    draw = lambda seed: [sample_frame_indices(1000, 8, 64, 'train', rng=rng)
                         for rng in [np.random.default_rng(seed)] for _ in range(5)]
    assert all(np.array_equal(a, b) for a, b in zip(draw(3), draw(3)))
    assert not all(np.array_equal(a, b) for a, b in zip(draw(3), draw(4)))


def test_val_takes_the_centre_window():
    indices = sample_frame_indices(100, 4, 40, 'val')
    assert indices.tolist() == [[30, 43, 56, 69]]


def test_test_windows_are_evenly_spaced():
    indices = sample_frame_indices(300, 8, 64, 'test', num_clips=3)
    assert indices.shape == (3, 8)
    assert indices[:, 0].tolist() == [39, 118, 196] and indices[:, -1].tolist() == [102, 181, 259]
    # One test clip is the validation clip.
    assert np.array_equal(sample_frame_indices(301, 8, 64, 'test'), sample_frame_indices(301, 8, 64, 'val'))


def test_sampling_rejects_bad_arguments():
    with pytest.raises(ValueError, match='a video of 0 frames'):
        sample_frame_indices(0, 8, 64, 'val')
    with pytest.raises(ValueError, match='mode must be one of'):
        sample_frame_indices(10, 8, 64, 'eval')


@pytest.mark.parametrize('mode', ['train', 'val', 'test'])
def test_short_videos_repeat_frames_instead_of_failing(mode):
    indices = sample_frame_indices(5, 8, 256, mode, num_clips=2, rng=np.random.default_rng(0))
    for clip in indices:
        assert clip.tolist() == [0, 0, 1, 1, 2, 2, 3, 4]
    # Longer than num_frames but shorter than the window: the whole video, no repeats.
    clip = sample_frame_indices(40, 8, 256, mode, num_clips=2, rng=np.random.default_rng(0))[0]
    assert clip[0] == 0 and clip[-1] == 39 and len(set(clip.tolist())) == 8


def test_window_in_seconds_follows_the_frame_rate():
    # 0.8 s is 20 frames at 25 fps and 40 at 50 fps; at a constant rate the frames sampled are
    # those of a window of that many frames.
    for fps, frames in ((25, 20), (50, 40)):
        for mode in ('val', 'test'):
            by_time = sample_frame_times(np.arange(301) / fps, 8, 0.8, mode, num_clips=3)
            assert np.array_equal(by_time, sample_frame_indices(301, 8, frames, mode, num_clips=3))


def write_variable_rate_video(path, times):
    """A video whose frame i is shown from times[i] seconds, every pixel of it 3 * i."""
    with av.open(str(path), mode='w') as container:
        stream = container.add_stream('libx264', rate=60)
        stream.width, stream.height, stream.pix_fmt = 64, 48, 'yuv420p'
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        stream.options = {'preset': 'ultrafast'}
        for index, moment in enumerate(times):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 3 * index, np.uint8), format='rgb24')
            frame.pts, frame.time_base = round(moment * 1000), Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


@pytest.mark.parametrize('decoder', DECODERS)
def test_window_in_seconds_on_a_variable_frame_rate_covers_those_seconds(tmp_path, decoder):
    """Fails on the code that sized a window from the average rate: 80 frames in 3 s are 26.7 fps, and
    one second's window took 27 frames of the 60 fps part, 0.43 s of video."""
    if decoder == 'decord' and decord is None:
        pytest.skip('decord is not installed')
    # Two seconds at 10 fps, then one second at 60 fps.
    times = [index / 10 for index in range(20)] + [2 + index / 60 for index in range(60)]
    write_variable_rate_video(tmp_path / 'variable.mp4', times)
    listing = write(tmp_path / 'l.txt', 'variable.mp4 0\n')
    item = VideoDataset(listing, mode='val', num_frames=5, window_seconds=1.0, short_side=48, decoder=decoder)[0]
    sampled = (item['video'][0, :, 0, 24, 32].float() / 3).round().long().tolist()
    # The centre second of three, 1.0 s to 2.0 s: frames 10 to 19, at evenly spaced times.
    assert sampled == [10, 12, 14, 16, 19]


def test_window_in_seconds_on_a_real_50_fps_video(tmp_path):
    frames = render_clip(0, np.random.default_rng(0), num_frames=60)
    # Stamp each frame's index in its first pixel row, to read back which frames were sampled.
    frames[:, :8] = np.arange(60, dtype=np.uint8)[:, None, None, None] * 4
    write_video(tmp_path / 'fast.mp4', frames, fps=50)
    listing = write(tmp_path / 'l.txt', 'fast.mp4 0\n')
    item = VideoDataset(listing, mode='val', num_frames=5, window_seconds=0.4, short_side=64)[0]
    stamps = item['video'][0, :, 0, 2, 40].float() / 4
    # 0.4 s at 50 fps is 20 frames: the centre window 20..39, five frames across it.
    assert torch.allclose(stamps, torch.tensor([20.0, 24.0, 29.0, 34.0, 39.0]), atol=1.0)


# ---------------------------------------------------------------- decoding

def assert_decoders_agree(path, indices):
    decord_reader, pyav_reader = DecordReader(path), PyAVReader(path)
    try:
        assert decord_reader.num_frames == pyav_reader.num_frames
        assert decord_reader.fps == pytest.approx(pyav_reader.fps)
        from_decord, from_pyav = decord_reader.read(indices), pyav_reader.read(indices)
        everything = pyav_reader.read(np.arange(pyav_reader.num_frames))
    finally:
        decord_reader.close()
        pyav_reader.close()
    assert from_decord.shape == from_pyav.shape == (len(indices), *everything.shape[1:])
    assert from_decord.dtype == np.uint8
    # Both wrap FFmpeg's decoder and colour conversion: the frames are the same to the bit.
    assert np.array_equal(from_decord, from_pyav)
    # Skipping unwanted frames changes nothing in the wanted ones.
    assert np.array_equal(from_pyav, everything[indices])


def test_decoders_agree_on_generated_videos(demo_data):
    for path in demo_videos(demo_data)[:4]:
        assert_decoders_agree(path, np.array([17, 0, 3, 3, 23, 9]))


def test_decoders_agree_on_real_clips(shared_videos):
    for path in shared_videos:
        assert_decoders_agree(path, np.array([251, 0, 36, 72, 72, 109, 145, 181, 218, 40]))


@pytest.mark.parametrize('decoder', ['decord', 'pyav'])
def test_dataset_items_train_and_test(shared_videos, tmp_path, decoder):
    listing = write(tmp_path / 'k.txt', ''.join(f'{path}\t0\n' for path in shared_videos))
    train = VideoDataset(listing, mode='train', num_frames=8, frame_interval=32, short_side=128, decoder=decoder)
    test = VideoDataset(listing, mode='test', num_frames=8, frame_interval=8, short_side=128, num_clips=3,
                        decoder=decoder)
    for index, (height, width) in enumerate([(128, 228), (128, 227)]):
        item = train[index]
        assert item['video'].shape == (8, 3, height, width) and item['video'].dtype == torch.uint8
        assert item['label'] == 0 and item['index'] == index and item['failed'] == []
        assert item['path'] == str(shared_videos[index])
        tested = test[index]
        assert tested['video'].shape == (3, 8, 3, height, width)
        # What was read travels with the item: the test windows' frames, and the seconds they span.
        frames = tested['video_frames']
        assert frames == (252, 302)[index] and tested['decode_ms'] > 0
        assert tested['frame_indices'] == sample_frame_indices(frames, 8, 64, 'test', num_clips=3).tolist()
        times = (DecordReader if decoder == 'decord' else PyAVReader)(shared_videos[index]).frame_times()
        first, last = min(map(min, tested['frame_indices'])), max(map(max, tested['frame_indices']))
        assert (tested['start_s'], tested['end_s']) == pytest.approx((times[first], times[last + 1]))
        assert len(item['frame_indices']) == 1 and len(item['frame_indices'][0]) == 8
    batch = collate_clips([train[0], train[1]])
    assert batch['video'].shape == (2, 8, 3, 128, 227) and batch['video_frames'] == [252, 302]
    assert batch['label'].dtype == torch.int64 and batch['skipped'] == 0 and batch['failed'] == []
    assert batch['path'] == [str(path) for path in shared_videos[:2]]


def test_val_items_are_the_same_for_both_decoders(shared_videos, tmp_path):
    listing = write(tmp_path / 'k.txt', f'{shared_videos[0]}\t0\n')
    items = [VideoDataset(listing, mode='val', num_frames=8, frame_interval=32, short_side=96, decoder=decoder)[0]
             for decoder in ('decord', 'pyav')]
    assert torch.equal(items[0]['video'], items[1]['video'])


def test_resize_short_side_keeps_the_aspect_ratio():
    frames = np.random.default_rng(0).integers(0, 256, size=(2, 180, 320, 3), dtype=np.uint8)
    video = resize_short_side(frames, 90)
    assert video.shape == (2, 3, 90, 160) and video.dtype == torch.uint8 and video.is_contiguous()
    portrait = resize_short_side(frames.transpose(0, 2, 1, 3).copy(), 90)
    assert portrait.shape == (2, 3, 160, 90)
    assert resize_short_side(frames, 180).shape == (2, 3, 180, 320)


def test_pyav_decodes_when_decord_is_missing(demo_data, monkeypatch, caplog):
    monkeypatch.setattr(video_decoding, 'decord', None)
    with caplog.at_level(logging.WARNING, logger='dataset'):
        clips = VideoDataset(demo_data / 'val.txt', mode='val', num_frames=4, frame_interval=4, short_side=32)
    assert clips.decoders == ('pyav',)
    assert 'decord is not installed' in caplog.text
    assert clips[0]['video'].shape[:3] == (1, 4, 3)


def test_pyav_takes_over_files_decord_fails_on(tmp_path, caplog):
    frames = render_clip(1, np.random.default_rng(0), num_frames=30)
    # decord cannot find the end of an MPEG-TS stream; PyAV also needs its seek-free path here.
    write_video(tmp_path / 'stream.ts', frames, fps=25, container_format='mpegts')
    with pytest.raises(Exception):
        DecordReader(tmp_path / 'stream.ts').read(np.array([0, 29]))
    listing = write(tmp_path / 'l.txt', 'stream.ts 0\n')
    with caplog.at_level(logging.DEBUG, logger='dataset'):
        item = VideoDataset(listing, mode='val', num_frames=4, frame_interval=8, short_side=64)[0]
    assert item['failed'] == [] and item['video'].shape == (1, 4, 3, 64, 64)
    assert 'pyav read' in caplog.text and 'decord:' in caplog.text


def test_memory_stays_flat_over_many_reads(demo_data):
    clips = VideoDataset(demo_data / 'train.txt', mode='test', num_frames=8, frame_interval=4, short_side=48,
                         num_clips=2)

    def resident_mib():
        with open('/proc/self/statm') as statm:
            return int(statm.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20

    for index in range(len(clips)):
        clips[index]
    before = resident_mib()
    for _ in range(6):
        for index in range(len(clips)):
            clips[index]
    assert resident_mib() - before < 16


# ---------------------------------------------------------------- unreadable videos

@pytest.fixture
def broken_list(demo_data, tmp_path):
    """A list of 4 good videos and 4 bad ones: missing, empty, random bytes, truncated."""
    good = demo_videos(demo_data)[:4]
    (tmp_path / 'empty.mp4').touch()
    (tmp_path / 'random.mp4').write_bytes(np.random.default_rng(0).bytes(20000))
    (tmp_path / 'truncated.mp4').write_bytes(good[0].read_bytes()[:3000])
    bad = [tmp_path / name for name in ('missing.mp4', 'empty.mp4', 'random.mp4', 'truncated.mp4')]
    lines = [f'{path}\t{i % 4}\n' for i, path in enumerate(good + bad)]
    return write(tmp_path / 'broken.txt', ''.join(lines)), bad


# A corrupt file names each decoder tried (decord falls back to PyAV) and what it raised.
# A corrupt file names each decoder tried (each falls back to the other) and what it raised.
CORRUPT_REASONS = dict.fromkeys(('decord', 'pyav'), ('decord: RuntimeError', 'pyav: InvalidDataError'))


def unreadable_reasons(decoder):
    return {'missing.mp4': ('no such file',), 'empty.mp4': ('empty file',), 'random.mp4': CORRUPT_REASONS[decoder],
            'truncated.mp4': CORRUPT_REASONS[decoder]}


@pytest.mark.parametrize('decoder', ['decord', 'pyav'])
def test_unreadable_videos_are_replaced_in_training(broken_list, caplog, decoder):
    listing, bad = broken_list
    clips = VideoDataset(listing, mode='train', num_frames=4, frame_interval=4, short_side=32, decoder=decoder)
    reasons = unreadable_reasons(decoder)
    for index, path in enumerate(bad, start=4):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger='dataset'):
            item = clips[index]
        assert item['failed'][0][0] == str(path) and all(part in item['failed'][0][1] for part in reasons[path.name])
        # The item returned is another, readable one, with its own path and label.
        assert item['index'] < 4 and item['path'] == clips.path(item['index'])
        assert item['label'] == clips.labels[item['index']] and item['video'].shape == (4, 3, 32, 32)
        first = caplog.records[0]
        assert first.levelno == logging.WARNING
        assert str(path) in first.getMessage() and 'replaced by another' in first.getMessage()
    batch = collate_clips([clips[index] for index in range(len(clips))])
    assert batch['skipped'] == len(batch['failed']) >= len(bad) and batch['video'].shape[0] == len(clips)


@pytest.mark.parametrize('mode', ['val', 'test', 'predict'])
def test_unreadable_videos_are_left_out_of_evaluation(broken_list, caplog, mode):
    # Never another video in its place: a metric or a result row would carry the wrong file's label.
    listing, bad = broken_list
    settings = Preprocessing(num_frames=4, frame_interval=4, img_size=32, short_side=32, num_clips=2, num_crops=3)
    clips = VideoDataset.from_preprocessing(listing, settings, mode=mode)
    with caplog.at_level(logging.WARNING, logger='dataset'):
        samples = [clips[index] for index in range(len(clips))]
    reasons = unreadable_reasons('decord')
    for index, path in enumerate(bad, start=4):
        sample = samples[index]
        assert sample['video'] is None and sample['index'] == index
        assert all(sample[key] is None for key in dataset.READ_KEYS)
        assert [failure[0] for failure in sample['failed']] == [str(path)]
        assert all(part in sample['failed'][0][1] for part in reasons[path.name])
        assert f'unreadable video {path}' in caplog.text
    assert caplog.text.count('left out') == len(bad)
    views = settings if mode != 'val' else settings.replace(num_clips=1, num_crops=1)
    batch = collate_views(samples, views)
    clips_per_item = 1 if mode == 'val' else 2 * 3
    assert batch['video'].shape == (4, clips_per_item, 4, 3, 32, 32)
    assert batch['index'].tolist() == [0, 1, 2, 3] and batch['label'].tolist() == clips.labels[:4].tolist()
    assert batch['path'] == [clips.path(index) for index in range(4)]
    assert batch['frame_indices'] == [sample['frame_indices'] for sample in samples[:4]]
    assert batch['skipped'] == len(bad) and [path for path, _ in batch['failed']] == [str(path) for path in bad]
    # A batch of unreadable videos only is empty, with the shape of its views.
    empty = collate_views(samples[4:], views)
    assert empty['video'].shape == (0, clips_per_item, 4, 3, 32, 32) and empty['video'].dtype == torch.uint8
    assert empty['label'].shape == empty['index'].shape == (0,) and empty['path'] == []
    assert empty['skipped'] == len(bad)


def test_skips_are_counted_across_worker_processes(broken_list):
    listing, bad = broken_list
    clips = VideoDataset(listing, mode='train', num_frames=4, frame_interval=4, short_side=32)
    loader = DataLoader(clips, batch_size=2, num_workers=2, collate_fn=collate_clips)
    batches = list(loader)
    assert sum(batch['skipped'] for batch in batches) >= len(bad)
    assert sum(len(batch['label']) for batch in batches) == len(clips)


def test_a_mostly_unreadable_list_stops_with_a_clear_error(demo_data, tmp_path):
    good = demo_videos(demo_data)[0]
    lines = [f'{good}\t0\n'] + [f'missing_{i}.mp4\t0\n' for i in range(9)]
    clips = VideoDataset(write(tmp_path / 'mostly_missing.txt', ''.join(lines)), mode='train', num_frames=2,
                         short_side=32)
    with pytest.raises(UnreadableDatasetError, match=r'mostly_missing.txt: \d+ of \d+ videos read could not be '
                                                     r'decoded .*no such file.*check root_dir'):
        for index in range(len(clips)):
            clips[index]


def test_a_list_with_no_readable_video_stops(tmp_path):
    clips = VideoDataset(write(tmp_path / 'none.txt', 'a.mp4 0\nb.mp4 0\n'), mode='train', short_side=32)
    with pytest.raises(UnreadableDatasetError, match='check root_dir'):
        clips[0]


def test_the_skip_budget_always_ends(tmp_path):
    # At a fraction of 1 an unreadable list retried forever; any fraction below 1 stops it, in each
    # loader worker on its own, at the MIN_FAILURES_TO_ABORT-th failure.
    listing = write(tmp_path / 'none.txt', ''.join(f'{i}.mp4 0\n' for i in range(8)))
    for fraction in (1, 1.5, -0.1):
        with pytest.raises(ValueError, match=f'max_skip_fraction must be at least 0 and below 1, got {fraction}'):
            VideoDataset(listing, max_skip_fraction=fraction)
    clips = VideoDataset(listing, mode='train', short_side=32, max_skip_fraction=0.99)
    with pytest.raises(UnreadableDatasetError, match=f'{dataset.MIN_FAILURES_TO_ABORT} of '
                                                     f'{dataset.MIN_FAILURES_TO_ABORT} videos read'):
        list(DataLoader(clips, batch_size=2, num_workers=2, collate_fn=collate_clips))


def test_evaluation_of_an_unreadable_list_stops_but_prediction_reports_each_file(tmp_path):
    listing = write(tmp_path / 'none.txt', ''.join(f'{i}.mp4 0\n' for i in range(dataset.MIN_FAILURES_TO_ABORT)))
    test = VideoDataset(listing, mode='test', short_side=32)
    with pytest.raises(UnreadableDatasetError):
        [test[index] for index in range(len(test))]
    predict = VideoDataset(listing, mode='predict', short_side=32)
    batch = collate_views([predict[index] for index in range(len(predict))], Preprocessing(img_size=32))
    assert batch['video'].shape[0] == 0 and len(batch['failed']) == len(predict)


def test_dataset_argument_errors(demo_data):
    with pytest.raises(ValueError, match='mode must be one of'):
        VideoDataset(demo_data / 'val.txt', mode='training')
    with pytest.raises(ValueError, match='decoder must be one of'):
        VideoDataset(demo_data / 'val.txt', decoder='opencv')
    with pytest.raises(ValueError, match='must be positive'):
        VideoDataset(demo_data / 'val.txt', num_frames=0)
    with pytest.raises(ValueError, match='window_seconds must be positive, got 0'):
        VideoDataset(demo_data / 'val.txt', window_seconds=0)
