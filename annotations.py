"""Annotation sources -> [(video path, label)] and class names.

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
"""
import codecs
import csv
import io
import json
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mkv', '.webm', '.mov', '.m4v', '.mpg', '.mpeg', '.ts', '.mts', '.m2ts',
                    '.flv', '.3gp', '.wmv', '.ogv')
KINETICS_COLUMNS = ('label', 'youtube_id', 'time_start', 'time_end')
UNLABELLED = -1
# How messages name a source given as a sequence of video paths.
GIVEN_VIDEOS = 'the given videos'
# Rows of a Kinetics CSV probed on disk to tell whether files sit in a folder per label.
LAYOUT_PROBE_ROWS = 32
# Values named in one log line before the rest are only counted.
MAX_NAMED = 8


class AnnotationError(ValueError):
    """An annotation or class map file that cannot be used; the message names file and line."""


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


def _assign_labels(entries, source, class_names=None, num_classes=None):
    """Label tokens (indices or names) of (path, token, where) entries -> ([(path, label)], names)."""
    def is_index(token):
        return token.lstrip('-').isdigit()

    if class_names is not None:
        lookup = {}
        for index, name in enumerate(class_names):
            if lookup.setdefault(_canonical(name), index) != index:
                raise AnnotationError(f'{source}: the class map names {name!r} twice')
        if num_classes is not None and num_classes != len(class_names):
            raise AnnotationError(f'{source}: the class map has {len(class_names)} classes where {num_classes} '
                                  f'are asked for')
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
        return [], [str(index) for index in range(num_classes or 0)]
    numbered = [entry for entry in entries if is_index(entry[1])]
    named = [entry for entry in entries if not is_index(entry[1])]
    if numbered and named:
        raise AnnotationError(f'{named[0][2]}: label {named[0][1]!r} is a name where other lines give indices '
                              f'(e.g. {numbered[0][2]}); give a class map')
    if named:
        names = sorted({token for _, token, _ in named})
        if num_classes is not None and len(names) != num_classes:
            raise AnnotationError(f'{source}: {len(names)} distinct class names where {num_classes} classes are '
                                  f'asked for; give a class map')
        lookup = {name: index for index, name in enumerate(names)}
        return [(path, lookup[token]) for path, token, _ in entries], names
    size = num_classes if num_classes is not None else _infer_num_classes(entries, source)
    return [(path, _check_range(int(token), size, where)) for path, token, where in entries], \
        [str(index) for index in range(size)]


def _infer_num_classes(entries, source):
    """Classes implied by index labels without a class map or a class count: the largest label + 1,
    said in one warning line that names the indices no sample has."""
    labels = {int(token) for _, token, _ in entries}
    size = max(labels) + 1
    missing = sorted(set(range(size)) - labels)
    absent = f'; no sample has label {_named(missing)}' if missing else ''
    log.warning('%s: %d classes inferred from the largest label, %d, as neither a class map nor a class count '
                'is given%s', source, size, size - 1, absent)
    return size


def _check_range(label, num_classes, where):
    if not 0 <= label < num_classes:
        raise AnnotationError(f'{where}: label {label} is out of range for {num_classes} classes')
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


def load_annotations(data_path, root_dir=None, class_names=None, num_classes=None, num_samples_per_cls=None,
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
    assigned, names = _assign_labels(labelled, source, class_names, num_classes)
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
