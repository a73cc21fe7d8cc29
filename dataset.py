"""Video clips from annotation files: parse, sample frame indices, decode only those, align on the CPU.

Sources (`load_annotations`):
- a list, the original repository's and MMAction2's: `relative/path.mp4 label` per line, tab or space separated
  (with a tab the path may contain spaces), label a class index or a class name;
- a Kinetics CSV (`label,youtube_id,time_start,time_end,split`), files named
  `{youtube_id}_{start:06d}_{end:06d}.mp4`, inside a folder per label or not;
- a folder per class (UCF101, HMDB51): `data_path/{class}/*.mp4`.
For prediction, where labels are optional, also a single video, a folder of videos (every video below
it, sorted; the folders mean nothing), a list whose lines may be paths alone, or a sequence of video
paths. A name ending in a video extension is always a video, never read as an annotation file.
Relative paths are joined to `root_dir`, or to the annotation file's folder when no root is given.
A class map (`load_class_map`) is JSON name -> index or one name per line. Unlabelled items have
label -1 (UNLABELLED).

A dataset item is a dict: `video` uint8 (T, 3, H, W) in training, (num_clips, T, 3, H, W) in
val (one clip), test and predict, resized so the short side is `short_side`, or None when the
video could not be read (evaluation drops it); `label` int; `index` int and `path` str, the item
actually returned; `failed` [(path, reason)], the unreadable videos met on the way. Carrying the
failures in the item lets them cross worker processes with the batch. `collate_clips` (training)
and `collate_views` (evaluation) batch items; see their docs for the batch.
"""
import codecs
import csv
import importlib.metadata
import io
import json
import logging
import os
import sys
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch.utils.data import Dataset, get_worker_info

from command_line import error_line

try:
    import decord
except ImportError:
    decord = None

log = logging.getLogger(__name__)

# decord 0.6.0 and its maintained fork decord2 install the same `decord` module: with both installed,
# uninstalling either deletes the module files the other still needs.
DECORD_DISTRIBUTIONS = ('decord', 'decord2')
DECORD_FIX = 'pip uninstall -y decord decord2 && pip install decord2'


def installed_decords(path=None):
    """{name: version} of the installed distributions that provide the decord module (path: sys.path)."""
    path = sys.path if path is None else path
    return {name: dist.version for name in DECORD_DISTRIBUTIONS
            for dist in importlib.metadata.distributions(name=name, path=path)}


def _usable_decord(module):
    """module, or None when it lacks its files; says in one line how to repair a mixed install."""
    found = installed_decords()
    if len(found) > 1:
        log.warning('%s are both installed and overwrite each other\'s decord module; run: %s',
                    ' and '.join(f'{name} {version}' for name, version in found.items()), DECORD_FIX)
    if module is not None and not hasattr(module, 'VideoReader'):
        # What uninstalling one of the two leaves behind: the folder, without the module's files.
        log.warning('the decord module in %s is incomplete; decoding with PyAV. Run: %s',
                    ', '.join(module.__path__), DECORD_FIX)
        return None
    return module


decord = _usable_decord(decord)

VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mkv', '.webm', '.mov', '.m4v', '.mpg', '.mpeg', '.ts', '.mts', '.m2ts',
                    '.flv', '.3gp', '.wmv', '.ogv')
KINETICS_COLUMNS = ('label', 'youtube_id', 'time_start', 'time_end')
MODES = ('train', 'val', 'test', 'predict')
# Modes that read num_clips windows of each video for multi-view testing.
MULTI_VIEW_MODES = ('test', 'predict')
UNLABELLED = -1
# How messages name a source given as a sequence of video paths.
GIVEN_VIDEOS = 'the given videos'
DECODERS = ('decord', 'pyav')
# A skip ratio is only judged after this many failures, so a few bad files early in an epoch
# cannot stop a mostly healthy list by chance.
MIN_FAILURES_TO_ABORT = 32
# Rows of a Kinetics CSV probed on disk to tell whether files sit in a folder per label.
LAYOUT_PROBE_ROWS = 32
# Values named in one log line before the rest are only counted.
MAX_NAMED = 8
# Seconds within which two timestamps are one moment: containers round them (to 1/90000 s, 1 ms).
TIME_TOLERANCE = 1e-6


class AnnotationError(ValueError):
    """An annotation or class map file that cannot be used; the message names file and line."""


class DecodeError(RuntimeError):
    """A video that cannot be decoded; the message says why."""


class UnreadableDatasetError(RuntimeError):
    """Too many videos of one annotation source failed, so training would see almost nothing."""


# ---------------------------------------------------------------- annotations

def _canonical(name):
    """Class names compare with spaces as underscores: Kinetics CSVs and class maps differ there."""
    return name.strip().replace(' ', '_')


def _named(values):
    """'a, b, c' naming at most MAX_NAMED values, then how many more."""
    values = [str(value) for value in values]
    more = f' and {len(values) - MAX_NAMED} more' if len(values) > MAX_NAMED else ''
    return ', '.join(values[:MAX_NAMED]) + more


def _read_text(path):
    """The text of a UTF-8 file (a leading byte-order mark, as spreadsheet tools on Windows write,
    is dropped); other bytes are an AnnotationError naming the line."""
    data = Path(path).read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b'\n') + 1
        raise AnnotationError(f'{path}:{line}: not UTF-8 text (byte 0x{data[error.start]:02x}); '
                              f'save the file as UTF-8') from None


def load_class_map(path):
    """Class names in index order from JSON (name -> index, or a list) or one name per line."""
    path = Path(path)
    text = _read_text(path)
    if path.suffix.lower() == '.json':
        try:
            content = json.loads(text)
        except json.JSONDecodeError as error:
            raise AnnotationError(f'{path}:{error.lineno}: not valid JSON ({error.msg})') from None
        if isinstance(content, list):
            return _unique_names([(str(name), f'{path}: entry {index}') for index, name in enumerate(content)])
        if not isinstance(content, dict):
            raise AnnotationError(f'{path}: expected a JSON object of class name -> index or a list of names')
        by_index = {}
        for name, value in content.items():
            try:
                index = int(value)
            except (TypeError, ValueError):
                raise AnnotationError(f'{path}: class {name!r} has index {value!r}, expected an integer') from None
            if index in by_index:
                raise AnnotationError(f'{path}: classes {by_index[index]!r} and {name!r} share index {index}')
            by_index[index] = name
        if sorted(by_index) != list(range(len(by_index))):
            raise AnnotationError(f'{path}: class indices must be 0..{len(by_index) - 1} without gaps')
        return _unique_names([(by_index[index], f'{path}: index {index}') for index in range(len(by_index))])
    return _unique_names([(line.strip(), f'{path}:{number}') for number, line in enumerate(text.splitlines(), 1)
                          if line.strip()])


def _unique_names(named):
    """Names of (name, where) pairs in order; a name given twice (spaces and underscores alike) is an
    AnnotationError naming both places in the class map."""
    first = {}
    for name, where in named:
        earlier = first.setdefault(_canonical(name), where)
        if earlier != where:
            raise AnnotationError(f'{where}: class {name!r} is named again (first at {earlier})')
    return [name for name, _ in named]


def _assign_labels(entries, source, class_names=None, num_class=None):
    """Label tokens (indices or names) of (path, token, where) entries -> ([(path, label)], names)."""
    def is_index(token):
        return token.lstrip('-').isdigit()

    if class_names is not None:
        lookup = {}
        for index, name in enumerate(class_names):
            if lookup.setdefault(_canonical(name), index) != index:
                raise AnnotationError(f'{source}: the class map names {name!r} twice')
        if num_class is not None and num_class != len(class_names):
            raise AnnotationError(f'{source}: the class map has {len(class_names)} classes, num_class is {num_class}')
        samples = []
        for path, token, where in entries:
            if _canonical(token) in lookup:
                samples.append((path, lookup[_canonical(token)]))
            elif is_index(token):
                samples.append((path, _check_range(int(token), len(class_names), where)))
            else:
                raise AnnotationError(f'{where}: label {token!r} is not a class of the class map')
        return samples, list(class_names)
    if not entries:
        return [], [str(index) for index in range(num_class or 0)]
    numbered = [entry for entry in entries if is_index(entry[1])]
    named = [entry for entry in entries if not is_index(entry[1])]
    if numbered and named:
        raise AnnotationError(f'{named[0][2]}: label {named[0][1]!r} is a name where other lines give indices '
                              f'(e.g. {numbered[0][2]}); give a class map')
    if named:
        names = sorted({token for _, token, _ in named})
        if num_class is not None and len(names) != num_class:
            raise AnnotationError(f'{source}: {len(names)} distinct class names but num_class is {num_class}; '
                                  f'give a class map')
        lookup = {name: index for index, name in enumerate(names)}
        return [(path, lookup[token]) for path, token, _ in entries], names
    size = num_class if num_class is not None else _infer_num_class(entries, source)
    return [(path, _check_range(int(token), size, where)) for path, token, where in entries], \
        [str(index) for index in range(size)]


def _infer_num_class(entries, source):
    """Classes implied by index labels without a class map or num_class: the largest label + 1,
    said in one warning line that names the indices no sample has."""
    labels = {int(token) for _, token, _ in entries}
    size = max(labels) + 1
    missing = sorted(set(range(size)) - labels)
    absent = f'; no sample has label {_named(missing)}' if missing else ''
    log.warning('%s: %d classes inferred from the largest label, %d, as neither a class map nor num_class '
                'is given%s', source, size, size - 1, absent)
    return size


def _check_range(label, num_class, where):
    if not 0 <= label < num_class:
        raise AnnotationError(f'{where}: label {label} is out of range for {num_class} classes')
    return label


def _check_repeats(entries, samples, source):
    """Refuse a path listed with two labels, naming both lines; warn once when paths repeat."""
    first = {}
    repeats = []
    for (path, token, where), (_, label) in zip(entries, samples):
        if path not in first:
            first[path] = (token, label, where)
            continue
        first_token, first_label, first_where = first[path]
        if first_label != label:
            raise AnnotationError(f'{where}: {path} is listed with label {token or "none"!r} here and with '
                                  f'{first_token or "none"!r} at {first_where}')
        repeats.append((path, first_where, where))
    if repeats:
        path, first_where, where = repeats[0]
        log.warning('%s: %d lines repeat a video listed before with the same label (first: %s at %s and %s); '
                    'each line is kept', source, len(repeats), path, first_where, where)


def _parse_list(path, root, require_labels):
    """(path, label token or None, where) per line of an original repository / MMAction2 list. Without a tab, a line
    whose end is a video file name is a path alone, which only prediction accepts."""
    entries = []
    for line_number, line in enumerate(io.StringIO(_read_text(path)), 1):
        text = line.strip()
        if not text or text.startswith('#'):
            continue
        where = f'{path}:{line_number}'
        if '\t' in text:
            fields = [field.strip() for field in text.split('\t')]
        elif text.lower().endswith(VIDEO_EXTENSIONS):
            fields = [text]
        else:
            fields = text.rsplit(None, 1)
        if len(fields) == 1 and not require_labels:
            entries.append((str(root / fields[0]), None, where))
        elif len(fields) == 2 and all(fields):
            entries.append((str(root / fields[0]), fields[1], where))
        else:
            raise AnnotationError(f'{where}: expected "relative/path.mp4 label", got {text!r}')
    return entries


def _kinetics_folder(root, rows):
    """Folder naming for a Kinetics CSV: a folder per label as written, with underscores, or none."""
    namings = (lambda label: label, _canonical, lambda label: '')
    for label, file, _ in rows[:LAYOUT_PROBE_ROWS]:
        for naming in namings:
            if (root / naming(label) / file).exists():
                return naming
    return namings[0]


def _parse_kinetics_csv(path, root):
    """(path, label token, where) per row of a Kinetics CSV."""
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=''))
    missing = [column for column in KINETICS_COLUMNS if column not in (reader.fieldnames or ())]
    if missing:
        raise AnnotationError(f'{path}:1: the Kinetics CSV header lacks {", ".join(missing)} '
                              f'(expected {",".join(KINETICS_COLUMNS)},split)')
    rows = []
    for row in reader:
        where = f'{path}:{reader.line_num}'
        try:
            start, end = int(row['time_start']), int(row['time_end'])
        except (TypeError, ValueError):
            raise AnnotationError(f'{where}: time_start and time_end must be integers, '
                                  f'got {row["time_start"]!r} and {row["time_end"]!r}') from None
        if not row['youtube_id'] or not row['label']:
            raise AnnotationError(f'{where}: empty label or youtube_id')
        rows.append((row['label'], f'{row["youtube_id"]}_{start:06d}_{end:06d}.mp4', where))
    naming = _kinetics_folder(root, rows)
    return [(str(root / naming(label) / file), label, where) for label, file, where in rows]


def _videos_under(folder):
    """(video files anywhere below folder, sorted; how many hidden ones were skipped). Hidden: a
    name on the way that starts with a dot (`.cache/`, macOS `._clip.mp4` AppleDouble files), left
    out as every file browser does."""
    found = [file for file in folder.rglob('*') if file.suffix.lower() in VIDEO_EXTENSIONS and file.is_file()]
    videos = sorted(file for file in found if not any(part.startswith('.')
                                                      for part in file.relative_to(folder).parts))
    return videos, len(found) - len(videos)


def _say_hidden(folder, count):
    if count:
        log.warning('%s: %d hidden video files skipped (names starting with a dot, such as macOS ._ files)',
                    folder, count)


def _parse_folders(path):
    """(path, folder name, where) per video of a folder-per-class tree; an empty class folder is
    refused, as it would shift the index of every later class. Hidden folders and files are
    skipped (_videos_under)."""
    folders = sorted(child for child in path.iterdir() if child.is_dir() and not child.name.startswith('.'))
    if not folders:
        raise AnnotationError(f'{path}: expected a folder per class, found no folders '
                              f'(videos without labels can only be predicted)')
    videos, hidden = _videos_under(path)
    _say_hidden(path, hidden)
    by_folder = {}
    for file in videos:
        by_folder.setdefault(file.relative_to(path).parts[0], []).append(file)
    entries = []
    for folder in folders:
        if folder.name not in by_folder:
            raise AnnotationError(f'{folder}: a class folder with no videos ({" ".join(VIDEO_EXTENSIONS)}); '
                                  f'remove it or add its videos')
        entries += [(str(file), folder.name, str(folder)) for file in by_folder[folder.name]]
    return entries


def _parse_source(data_path, root_dir, require_labels):
    """(path, label token or None, where) per video of an annotation file, a folder or a video."""
    if not data_path.exists():
        raise AnnotationError(f'{data_path}: no such file or folder')
    root = Path(root_dir) if root_dir is not None else data_path.parent
    if data_path.is_dir():
        if require_labels:
            return _parse_folders(data_path)
        videos, hidden = _videos_under(data_path)
        _say_hidden(data_path, hidden)
        if not videos:
            raise AnnotationError(f'{data_path}: no videos ({" ".join(VIDEO_EXTENSIONS)}) in this folder')
        return [(str(file), None, str(file)) for file in videos]
    if data_path.suffix.lower() in VIDEO_EXTENSIONS:
        if require_labels:
            raise AnnotationError(f'{data_path}: a video, where labels are needed: give a list, a Kinetics CSV '
                                  f'or a folder per class')
        return [(str(data_path), None, str(data_path))]
    if data_path.suffix.lower() == '.csv':
        return _parse_kinetics_csv(data_path, root)
    return _parse_list(data_path, root, require_labels)


def load_annotations(data_path, root_dir=None, class_names=None, num_class=None, num_samples_per_cls=None,
                     require_labels=True, read_labels=True):
    """Parse a source (see the module doc) into ([(path, label)], class names).

    data_path: a list, a Kinetics CSV (.csv), a folder per class, or, with require_labels=False,
    also a video, a folder of videos or a sequence of video paths; unlabelled items get UNLABELLED.
    class_names (index -> name) maps name labels to indices; without it, names are sorted.
    num_samples_per_cls keeps at most that many labelled samples per class, in file order.
    read_labels=False leaves every item UNLABELLED, whatever the source says (self-supervised pretraining).
    """
    if num_samples_per_cls is not None and num_samples_per_cls < 1:
        raise ValueError(f'num_samples_per_cls must be positive, got {num_samples_per_cls}')
    if isinstance(data_path, (str, os.PathLike)):
        source = Path(data_path)
        entries = _parse_source(source, root_dir, require_labels)
    elif require_labels:
        raise ValueError('a sequence of video paths has no labels; give an annotation file or folder')
    else:
        source = GIVEN_VIDEOS
        entries = [(os.fspath(path), None, os.fspath(path)) for path in data_path]
    if not entries:
        raise AnnotationError(f'{source}: lists no videos')
    if not read_labels:
        entries = [(path, None, where) for path, _, where in entries]
    labelled = [entry for entry in entries if entry[1] is not None]
    assigned, names = _assign_labels(labelled, source, class_names, num_class)
    assigned = iter(assigned)
    samples = [next(assigned) if token is not None else (path, UNLABELLED) for path, token, _ in entries]
    _check_repeats(entries, samples, source)
    if num_samples_per_cls is not None:
        counts = np.zeros(len(names), dtype=np.int64)
        kept = []
        for path, label in samples:
            if label != UNLABELLED:
                if counts[label] == num_samples_per_cls:
                    continue
                counts[label] += 1
            kept.append((path, label))
        samples = kept
    return samples, names


# ---------------------------------------------------------------- frame indices

def sample_frame_indices(total_frames, num_frames, window, mode, num_clips=1, rng=None):
    """Frame indices (clips, num_frames), int64, evenly spaced in windows of `window` frames.

    train: one window at a random start (rng, a numpy Generator). test and predict: num_clips windows
    centred in equal parts of the range of starts; val: the same with one clip, the centre window.
    Indices run from the window's first to its last frame, the original repository's rule. A video shorter than
    the window is the window: its frames are spread over num_frames, repeating frames when it has
    fewer than num_frames.
    """
    if total_frames < 1:
        raise ValueError(f'cannot sample from a video of {total_frames} frames')
    if mode not in MODES:
        raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
    span = min(window, total_frames)
    last_start = total_frames - span
    if mode == 'train':
        starts = rng.integers(0, last_start + 1, size=1)
    else:
        clips = num_clips if mode in MULTI_VIEW_MODES else 1
        starts = np.floor((np.arange(clips) + 0.5) * last_start / clips).astype(np.int64)
    offsets = np.linspace(0, span - 1, num_frames).astype(np.int64)
    return starts[:, None] + offsets[None, :]


def sample_frame_times(times, num_frames, window_seconds, mode, num_clips=1, rng=None):
    """Frame indices (clips, num_frames), int64, for windows of window_seconds on a video whose frame
    i is shown from times[i] seconds (increasing): sample_frame_indices by timestamps, so that a
    variable frame rate does not stretch or shrink a window. Starts are placed as there, in
    seconds; a window runs from the frame on screen at its start over the frames that begin within
    window_seconds of it, and its num_frames are the frames on screen at evenly spaced times from
    its first frame to its last. A video shorter than the window is the window."""
    times = np.asarray(times, dtype=np.float64)
    if len(times) < 1:
        raise ValueError('cannot sample from a video of 0 frames')
    if mode not in MODES:
        raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
    # The last frame is shown for a typical frame's duration.
    end = times[-1] + (float(np.median(np.diff(times))) if len(times) > 1 else 0.0)
    span = min(window_seconds, end - times[0])
    latest = end - span - times[0]
    if mode == 'train':
        starts = times[0] + rng.uniform(0, latest, size=1)
    else:
        clips = num_clips if mode in MULTI_VIEW_MODES else 1
        starts = times[0] + (np.arange(clips) + 0.5) * latest / clips

    def on_screen(moments):  # the frame shown at each moment; TIME_TOLERANCE absorbs rounded timestamps
        return np.clip(np.searchsorted(times, np.asarray(moments) + TIME_TOLERANCE, side='right') - 1,
                       0, len(times) - 1)

    windows = []
    for first in on_screen(starts):
        last = max(first, np.searchsorted(times, times[first] + span - TIME_TOLERANCE) - 1)
        windows.append(on_screen(np.linspace(times[first], times[last], num_frames)))
    return np.stack(windows).astype(np.int64)


# ---------------------------------------------------------------- decoding

class DecordReader:
    """A decord VideoReader behind `num_frames`, `fps`, `read(indices)` and `close()`.

    decord2 applies a display matrix (a phone video's rotation) itself. On some frame widths (48, 96
    and 144 pixels of those tried, rotated or not) decord2 3.4.0 returns rows with padding and
    get_batch raises, so the dataset reads those files with PyAV. get_batch seeks to the keyframe
    before a frame in another group of pictures and decodes on from there, but its decoder thread
    decodes ahead between seeks, and at each seek it reads the file from that keyframe to the end.
    """

    def __init__(self, path, threads=1):
        if decord is None:
            raise DecodeError('decord is not installed')
        self._reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=threads)
        self.num_frames = len(self._reader)
        self.fps = float(self._reader.get_avg_fps())

    def read(self, indices):
        """uint8 (N, H, W, 3) frames at indices (N,), in the given order."""
        unique, inverse = np.unique(indices, return_inverse=True)
        return self._reader.get_batch(unique.tolist()).asnumpy()[inverse]

    def frame_times(self):
        """(num_frames,) seconds at which each frame is shown."""
        return self._reader.get_frame_timestamp(range(self.num_frames))[:, 0]

    def close(self):
        # decord frees its demuxer and decoder with the object.
        self._reader = None


def displayed(frame):
    """uint8 (H, W, 3) of a PyAV VideoFrame as a player shows it. Phones store a video shot upright
    as sideways frames plus a display matrix; PyAV reports its rotation (degrees counter-clockwise)
    and leaves applying it to the caller, where decord applies it itself."""
    return np.rot90(frame.to_ndarray(format='rgb24'), k=round(frame.rotation / 90) % 4)


class PyAVReader:
    """PyAV behind the same interface. read() seeks to the keyframe before each wanted frame that
    lies past the frames decoded so far and decodes forward from there, skipping the non-reference
    frames that are not wanted; `decoded_frames` counts the frames decoded since opening."""

    def __init__(self, path, threads=1):
        self._path, self._threads = str(path), threads
        self._open()
        try:
            # From packets alone (no decoding): presentation timestamps, so that frame i is the i-th
            # in presentation order, as decord counts, even with a variable frame rate; and keyframes.
            packets = [(packet.pts, packet.is_keyframe) for packet in self._container.demux(self._stream)
                       if packet.pts is not None]
        except BaseException:
            self.close()
            raise
        self._pts = np.array(sorted(pts for pts, _ in packets), dtype=np.int64)
        # Frame indices of the keyframes, with frame 0 where decoding can always start.
        self._keyframes = np.union1d([0], np.searchsorted(self._pts, [pts for pts, key in packets if key]))
        self.num_frames = len(self._pts)
        self.fps = float(self._stream.average_rate or self._stream.guessed_rate or 0)
        self.decoded_frames = 0

    def _open(self):
        self._container = av.open(self._path)
        if not self._container.streams.video:
            self.close()
            raise DecodeError('no video stream')
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = 'AUTO'
        self._stream.thread_count = self._threads

    def frame_times(self):
        """(num_frames,) seconds at which each frame is shown."""
        return self._pts * float(self._stream.time_base)

    def _runs(self, frames):
        """Sorted unique frame indices -> [(keyframe, frames decoded from it)]: a run starts where
        the keyframe before a frame lies past the frame wanted before it, as seeking there skips
        frames that decoding on would go through."""
        keys = self._keyframes[np.searchsorted(self._keyframes, frames, side='right') - 1]
        starts = np.flatnonzero(np.r_[True, keys[1:] > frames[:-1]])
        return list(zip(keys[starts].tolist(), np.split(frames, starts[1:])))

    def read(self, indices):
        """uint8 (N, H, W, 3) frames at indices (N,), in the given order."""
        unique, inverse = np.unique(indices, return_inverse=True)
        frames = {}
        for keyframe, run in self._runs(unique):
            self._container.seek(int(self._pts[keyframe]), stream=self._stream, backward=True)
            self._stream.codec_context.flush_buffers()
            frames.update(self._decode({int(self._pts[i]): i for i in run}))
        if len(frames) < len(unique):
            # Some containers (MPEG-TS) seek imprecisely or not at all: decode from the start.
            self.close()
            self._open()
            frames = self._decode({int(self._pts[i]): i for i in unique})
        if len(frames) < len(unique):
            missing = sorted(set(unique.tolist()) - frames.keys())
            raise DecodeError(f'{len(missing)} of {len(unique)} frames could not be decoded (first: {missing[0]})')
        return np.stack([frames[i] for i in unique])[inverse]

    def _decode(self, wanted):
        """{frame index: uint8 (H, W, 3)} for wanted {pts: frame index}, from the current position."""
        codec = self._stream.codec_context
        frames = {}
        for packet in self._container.demux(self._stream):
            if packet.pts is not None:
                codec.skip_frame = 'DEFAULT' if packet.pts in wanted else 'NONREF'
            for frame in packet.decode():
                self.decoded_frames += 1
                if frame.pts in wanted:
                    frames[wanted[frame.pts]] = displayed(frame)
            if len(frames) == len(wanted):
                break
        return frames

    def close(self):
        self._container.close()


READERS = {'decord': DecordReader, 'pyav': PyAVReader}


def resize_short_side(frames, short_side):
    """uint8 (N, H, W, 3) array -> uint8 (N, 3, h, w) tensor with min(h, w) == short_side."""
    video = rearrange(torch.from_numpy(frames), 'n h w c -> n c h w')
    height, width = video.shape[-2:]
    scale = short_side / min(height, width)
    size = (max(short_side, round(height * scale)), max(short_side, round(width * scale)))
    if size != (height, width):
        # The permuted view is channels-last in memory, which torch's uint8 antialiased resize
        # handles directly; no float copy of the frames is made.
        video = F.interpolate(video, size=size, mode='bilinear', antialias=True, align_corners=False)
    return video.contiguous()


# ---------------------------------------------------------------- dataset

class VideoDataset(Dataset):
    """Clips of a source (see load_annotations), decoded frame by frame only where sampled.

    mode 'train' samples a random window, 'val' the centre one, 'test' and 'predict' num_clips
    windows spread over the video (sample_frame_indices); only 'predict' accepts unlabelled videos, or
    any mode with labelled=False (self-supervised pretraining: a folder of videos, searched
    recursively, or a list of paths, labels read where given and not needed).
    A window spans num_frames * frame_interval frames, or window_seconds of each video when given,
    which evens out different frame rates. decoder 'decord' (the default, decord2: the faster on real
    clips) falls back to PyAV for files decord cannot read, 'pyav' to decord; without decord, PyAV
    reads alone.

    An unreadable video is logged with its path and reason. In training it is replaced by a random
    other item; in val, test and predict the item is dropped (its `video` is None), so metrics and
    results stay with the files they name. Each process (main or loader worker) counts the videos it
    tried and those that failed: in train, val and test, once MIN_FAILURES_TO_ABORT have failed and
    more than max_skip_fraction (0 <= f < 1) of those tried, UnreadableDatasetError stops the run,
    so a list of unreadable videos always stops. predict never stops: every failure is reported
    per file.
    """

    def __init__(self, data_path, mode='train', root_dir=None, class_map=None, num_class=None,
                 num_samples_per_cls=None, num_frames=8, frame_interval=32, window_seconds=None, num_clips=1,
                 short_side=256, decoder='decord', decode_threads=1, max_skip_fraction=0.5, labelled=None):
        if mode not in MODES:
            raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
        if decoder not in DECODERS:
            raise ValueError(f'decoder must be one of {DECODERS}, got {decoder!r}')
        if min(num_frames, frame_interval, num_clips, short_side) < 1:
            raise ValueError('num_frames, frame_interval, num_clips and short_side must be positive')
        if window_seconds is not None and not window_seconds > 0:
            raise ValueError(f'window_seconds must be positive, got {window_seconds}')
        self.max_skip_fraction = check_skip_fraction(max_skip_fraction)
        class_names = load_class_map(class_map) if isinstance(class_map, (str, os.PathLike)) else class_map
        samples, self.class_names = load_annotations(data_path, root_dir, class_names, num_class,
                                                     num_samples_per_cls,
                                                     require_labels=mode != 'predict' if labelled is None else labelled,
                                                     read_labels=labelled is not False)
        self.data_path = str(data_path) if isinstance(data_path, (str, os.PathLike)) else GIVEN_VIDEOS
        # Paths as one bytes array and labels as one int array: worker processes then share them
        # copy-on-write, where a list of Python strings would be copied page by page as
        # reference counts change, and memory would grow over an epoch.
        self.paths = np.array([os.fsencode(path) for path, _ in samples])
        self.labels = np.array([label for _, label in samples], dtype=np.int64)
        self.mode = mode
        self.num_frames = num_frames
        self.frame_interval = frame_interval
        self.window_seconds = window_seconds
        self.num_clips = num_clips if mode in MULTI_VIEW_MODES else 1
        self.short_side = short_side
        if decoder == 'decord' and decord is None:
            log.warning('decord is not installed; decoding with PyAV')
        other = 'pyav' if decoder == 'decord' else 'decord'
        self.decoders = tuple(name for name in (decoder, other) if name != 'decord' or decord is not None)
        self.decode_threads = decode_threads
        self.attempts = 0
        self.failures = 0
        self._rng = None
        self._rng_seed = None

    @classmethod
    def from_preprocessing(cls, data_path, preprocessing, mode='predict', **options):
        """A dataset that samples and resizes as a `preprocessing.Preprocessing` says (frames, frame
        interval or window seconds, short side, clips); options are VideoDataset's other arguments."""
        return cls(data_path, mode, num_frames=preprocessing.num_frames, frame_interval=preprocessing.frame_interval,
                   window_seconds=preprocessing.window_seconds, num_clips=preprocessing.num_clips,
                   short_side=preprocessing.short_side, **options)

    def __len__(self):
        return len(self.labels)

    def path(self, index):
        """The video file of item index."""
        return os.fsdecode(self.paths[index])

    def _generator(self):
        """The generator of a draw. In a loader worker, the worker's own, seeded by the DataLoader from
        the main process's torch RNG at each epoch (or once, with persistent workers). Without
        workers, a new one seeded from torch's global RNG at each draw, so the draws follow that RNG,
        which seed_everything seeds and a resumed checkpoint restores."""
        info = get_worker_info()
        if info is None:
            return np.random.default_rng(int(torch.randint(2**62, ())))
        if info.seed != self._rng_seed:
            self._rng, self._rng_seed = np.random.default_rng(info.seed), info.seed
        return self._rng

    def read_frames(self, reader, indices):
        """uint8 (N, H, W, 3) frames at the flattened indices; the one place frames are decoded."""
        return reader.read(indices.reshape(-1))

    def load(self, path):
        """Decode the sampled frames of one video: uint8 (num_clips, T, 3, H, W)."""
        if not os.path.isfile(path):
            raise DecodeError('no such file')
        if os.path.getsize(path) == 0:
            raise DecodeError('empty file')
        errors = []
        for decoder in self.decoders:
            try:
                frames = self._decode(READERS[decoder], path)
            except Exception as error:  # whatever a decoder raises, the next one may still read the file
                errors.append(f'{decoder}: {error_line(error, named=True)}')
                continue
            if errors:
                log.debug('%s read %s after %s', decoder, path, '; '.join(errors))
            video = resize_short_side(frames, self.short_side)
            return rearrange(video, '(v t) c h w -> v t c h w', v=self.num_clips)
        raise DecodeError('; '.join(errors))

    def _decode(self, reader_class, path):
        """Open, sample, read and release: uint8 (num_clips * T, H, W, 3)."""
        reader = reader_class(path, self.decode_threads)
        try:
            if reader.num_frames < 1:
                raise DecodeError('no frames')
            if self.window_seconds is None:
                window = self.num_frames * self.frame_interval
                indices = sample_frame_indices(reader.num_frames, self.num_frames, window, self.mode, self.num_clips,
                                               self._generator())
            else:  # by timestamps: a variable frame rate's average would size the window wrongly
                indices = sample_frame_times(reader.frame_times(), self.num_frames, self.window_seconds, self.mode,
                                             self.num_clips, self._generator())
            return self.read_frames(reader, indices)
        finally:
            reader.close()

    def _read(self, path, failed):
        """load(path), or None once the failure is logged, counted and appended to failed as
        (path, reason); past the skip budget (see the class doc) UnreadableDatasetError."""
        self.attempts += 1
        try:
            return self.load(path)
        except DecodeError as error:
            reason = str(error)
        failed.append((path, reason))
        self.failures += 1
        log.warning('unreadable video %s: %s; %s', path, reason,
                    'replaced by another' if self.mode == 'train' else 'left out')
        if (self.mode != 'predict' and self.failures >= MIN_FAILURES_TO_ABORT
                and self.failures > self.max_skip_fraction * self.attempts):
            raise UnreadableDatasetError(
                f'{self.data_path}: {self.failures} of {self.attempts} videos read could not be decoded '
                f'(last: {path}: {reason}); check root_dir and the paths in the annotation file')
        return None

    def __getitem__(self, index):
        failed = []
        video = self._read(self.path(index), failed)
        while video is None and self.mode == 'train':
            index = int(self._generator().integers(len(self)))
            video = self._read(self.path(index), failed)
        if video is not None and self.mode == 'train':
            video = video[0]
        return {'video': video, 'label': int(self.labels[index]), 'index': index, 'path': self.path(index),
                'failed': failed}


def check_skip_fraction(max_skip_fraction):
    """max_skip_fraction, if 0 <= it < 1: at 1 or more a list of unreadable videos could never stop."""
    if not 0 <= max_skip_fraction < 1:
        raise ValueError(f'max_skip_fraction must be at least 0 and below 1, got {max_skip_fraction}')
    return max_skip_fraction


def spatial_crops(video, size, num_crops=1):
    """(..., H, W) -> num_crops (..., size, size) views: centred on the short side, spread evenly
    along the long side (num_crops 1: the centre; 3: the original repository's three crops, the middle one the centre
    crop to the pixel, as the one view of evaluation reads it)."""
    height, width = video.shape[-2:]
    if min(height, width) < size:
        raise ValueError(f'cannot crop {size} pixels from frames of {height}x{width}')
    across = (min(height, width) - size) // 2
    extra = max(height, width) - size
    along = [extra // 2] if num_crops == 1 else [step * extra // (num_crops - 1) for step in range(num_crops)]
    crops = []
    for offset in along:
        top, left = (across, offset) if width >= height else (offset, across)
        crops.append(video[..., top:top + size, left:left + size])
    return crops


def crop_views(video, size, num_crops=1):
    """Evaluation views of one item: uint8 clips (V, T, 3, H, W) -> (V * num_crops, T, 3, S, S),
    clip-major."""
    crops = spatial_crops(video, size, num_crops)
    return rearrange(torch.stack(crops, dim=1), 'v k t c h w -> (v k) t c h w')


def _batch(samples, video):
    """The batch of the items read, with video the stacked clips or views (see collate_views)."""
    read = [sample for sample in samples if sample['video'] is not None]
    failed = [failure for sample in samples for failure in sample['failed']]
    return {
        'video': video,
        'label': torch.tensor([sample['label'] for sample in read], dtype=torch.int64),
        'index': torch.tensor([sample['index'] for sample in read], dtype=torch.int64),
        'path': [sample['path'] for sample in read],
        'skipped': len(failed),
        'failed': failed,
    }


def collate_clips(samples):
    """Batch training items (all read): video uint8 (B, T, 3, h, w), the clips centre-cropped to the
    batch's smallest height and width (clips of other aspect ratios differ in the long side), which
    the random crop on the device then samples; the other keys as in collate_views, `failed` the
    videos replaced."""
    videos = [sample['video'] for sample in samples]
    height = min(video.shape[-2] for video in videos)
    width = min(video.shape[-1] for video in videos)
    clips = []
    for video in videos:
        top, left = (video.shape[-2] - height) // 2, (video.shape[-1] - width) // 2
        clips.append(video[..., top:top + height, left:left + width])
    return _batch(samples, torch.stack(clips))


def collate_views(samples, preprocessing):
    """Batch evaluation items, with views cut per item (crop_views) so none depends on its batch.

    preprocessing (a `preprocessing.Preprocessing`) gives img_size S, num_crops and, for a batch of
    dropped items only, num_clips and num_frames T. Returns video uint8 (B, V, T, 3, S, S),
    V = num_clips * num_crops, clip-major; label, index int64 (B,); path [str] (B,), the items read;
    skipped int and failed [(path, reason)], the unreadable videos, left out of the batch. B may be
    0 when no video of the batch could be read.
    """
    views = [crop_views(sample['video'], preprocessing.img_size, preprocessing.num_crops)
             for sample in samples if sample['video'] is not None]
    if not views:
        empty = (0, preprocessing.num_clips * preprocessing.num_crops, preprocessing.num_frames, 3,
                 preprocessing.img_size, preprocessing.img_size)
        return _batch(samples, torch.empty(empty, dtype=torch.uint8))
    return _batch(samples, torch.stack(views))
