"""What happens when in a long video: the model's clip slid over it (frame_stream.WindowStream), the
windows batched through the model, and segments of consecutive windows that agree.

    with WindowStream('match.mp4', settings) as stream:
        timeline = Timeline(stream, model_class_names(model))
        for result in classify_windows(model, stream, settings, batch_size=8):  # WindowResult, in order
            timeline.add(result)
    timeline.segments(smooth=3, threshold=0.0, min_segment=1.28)  # [{start_s, end_s, label, probability}]

A window's views are cut and normalised by the code of the test split and of classification
(dataset.crop_views, inference.view_outputs); its probabilities are the softmax averaged over them.
Segments: the probabilities are smoothed by a centred moving average over `smooth` windows; each
window takes its smoothed top-1 class, or `background` below `threshold`; a window stands for the
time around its centre (a stride's worth, the first and last reaching to the video's window ends),
so segments tile the time the windows cover; runs of one class are segments, and a segment shorter
than `min_segment` seconds joins the neighbour whose class the model finds the likelier over it.
"""
import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dataset import crop_views
from evaluation import average_views
from frame_stream import format_time
from inference import view_outputs
from timeline_figure import timeline_figure
from utils import write_json
from video_decoding import DecodeError
from visualize import save_png

BACKGROUND = 'background'
# Classes whose probability the picture draws at most: those that win the most time.
MAX_CURVES = 8
# Windows whose middle frames the timeline picture shows along its time axis, evenly spread.
MAX_THUMBNAILS = 12
# Defaults: a moving average over three windows (a window and its neighbours) irons out one
# window's slip; no threshold, so every window takes a class unless -threshold asks otherwise.
DEFAULT_SMOOTH, DEFAULT_THRESHOLD = 3, 0.0


@dataclass
class WindowResult:
    """One window classified: probabilities (K,) the softmax averaged over its views; features
    (D,) the pooled representation averaged over its views (None unless asked for, or for ONNX);
    thumbnail uint8 (3, h, w) its middle frame, resized (None unless asked for)."""

    path: str
    index: int
    start_s: float
    end_s: float
    frame_indices: list
    probabilities: torch.Tensor
    features: torch.Tensor = None
    thumbnail: torch.Tensor = None


def classify_windows(model, stream, preprocessing, batch_size=8, device='cpu', features=False, thumbnails=()):
    """WindowResult per window of `stream` (an iterable of frame_stream.Window), in order. Windows go
    through the model together, batch_size views at a time (at least one window); each has
    preprocessing.num_crops views. Windows whose index is in `thumbnails` keep their middle frame.
    A DecodeError of the stream comes after the results of every window before it."""
    pending = []

    def run():
        if not pending:
            return
        views = torch.stack([crop_views(window.frames[None], preprocessing.img_size, preprocessing.num_crops)
                             for window in pending])
        logits, pooled = view_outputs(model, views, preprocessing, batch_size, device, features)
        probabilities = average_views(logits)
        for position, window in enumerate(pending):
            thumbnail = window.frames[len(window.frames) // 2].clone() if window.index in thumbnails else None
            yield WindowResult(stream.path, window.index, window.start_s, window.end_s, window.frame_indices,
                               probabilities[position], None if pooled is None else pooled[position].mean(dim=0),
                               thumbnail)
        pending.clear()

    try:
        for window in stream:
            pending.append(window)
            if len(pending) * preprocessing.num_crops >= batch_size:
                yield from run()
    except DecodeError as error:
        yield from run()
        raise error
    yield from run()


def moving_average(values, width):
    """Moving average over `width` rows of values (W, K), centred for an odd width (an even one takes
    one row more after a row than before it); at the ends, the mean of the rows there are."""
    rows = len(values)
    sums = np.concatenate([np.zeros((1, values.shape[1])), np.cumsum(values, axis=0)])
    low = np.clip(np.arange(rows) - (width - 1) // 2, 0, rows)
    high = np.clip(np.arange(rows) + width // 2 + 1, 0, rows)
    return (sums[high] - sums[low]) / (high - low)[:, None]


def window_cells(starts, ends):
    """(W, 2) seconds each window stands for: from halfway between its centre and the previous one's
    to halfway to the next one's; the first from its start, the last to its end."""
    centres = (np.asarray(starts) + np.asarray(ends)) / 2
    edges = np.concatenate([[starts[0]], (centres[1:] + centres[:-1]) / 2, [ends[-1]]])
    return np.stack([edges[:-1], edges[1:]], axis=1)


def find_segments(probabilities, starts, ends, class_names, smooth=DEFAULT_SMOOTH, threshold=DEFAULT_THRESHOLD,
                  min_segment=0.0):
    """Segments of windows with probabilities (W, K) over [starts, ends] seconds (see the module
    doc): [{'start_s', 'end_s', 'label', 'probability'}] in time order, probability the mean over
    its windows of its class's probability (of the top one for background)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if len(probabilities) == 0:
        return []
    smoothed = moving_average(probabilities, smooth)
    labels = np.where(smoothed.max(axis=1) >= threshold, smoothed.argmax(axis=1), -1)
    cells = window_cells(starts, ends)
    # Runs of one label as [label, first window, last window].
    breaks = np.flatnonzero(np.diff(labels)) + 1
    runs = [[int(labels[first]), int(first), int(last) - 1]
            for first, last in zip(np.r_[0, breaks], np.r_[breaks, len(labels)])]

    def score(label, first, last):  # how likely the model finds `label` over windows first..last
        return threshold if label < 0 else smoothed[first:last + 1, label].mean()

    while len(runs) > 1:
        lengths = [cells[last, 1] - cells[first, 0] for _, first, last in runs]
        shortest = int(np.argmin(lengths))
        if lengths[shortest] >= min_segment:
            break
        _, first, last = runs[shortest]
        neighbours = [position for position in (shortest - 1, shortest + 1) if 0 <= position < len(runs)]
        into = max(neighbours, key=lambda position: score(runs[position][0], first, last))
        runs[into][1], runs[into][2] = min(runs[into][1], first), max(runs[into][2], last)
        del runs[shortest]
        merged = []
        for run in runs:  # neighbours of one label that the removal brought together join
            if merged and merged[-1][0] == run[0]:
                merged[-1][2] = run[2]
            else:
                merged.append(run)
        runs = merged
    segments = []
    for label, first, last in runs:
        chosen = probabilities[first:last + 1]
        probability = chosen.max(axis=1).mean() if label < 0 else chosen[:, label].mean()
        segments.append({'start_s': round(float(cells[first, 0]), 3), 'end_s': round(float(cells[last, 1]), 3),
                         'label': BACKGROUND if label < 0 else class_names[label],
                         'probability': round(float(probability), 4)})
    return segments


def window_record(result, class_names, topk=5):
    """A WindowResult as plain types (JSON lines): path, window, start_s, end_s, the top-k labels and
    probabilities, and the frame numbers read."""
    probabilities, indices = result.probabilities.topk(min(topk, len(class_names)))
    return {'path': result.path, 'window': result.index, 'start_s': round(result.start_s, 3),
            'end_s': round(result.end_s, 3), 'labels': [class_names[index] for index in indices.tolist()],
            'probabilities': [round(value, 6) for value in probabilities.tolist()], 'frames': result.frame_indices}


def window_row(record):
    """A window_record flattened to windows.csv's columns (window_columns)."""
    row = {key: record[key] for key in ('window', 'start_s', 'end_s')}
    for rank, (label, probability) in enumerate(zip(record['labels'], record['probabilities']), 1):
        row.update({f'top{rank}_label': label, f'top{rank}_probability': probability})
    row['frames'] = ' '.join(map(str, record['frames']))
    return row


def window_columns(topk):
    """windows.csv's columns: window, start_s, end_s, top{i}_label, top{i}_probability, frames."""
    ranked = [f'top{rank}_{name}' for rank in range(1, topk + 1) for name in ('label', 'probability')]
    return ['window', 'start_s', 'end_s', *ranked, 'frames']


class Timeline:
    """The windows of one video as they are classified: their probabilities (W, K) and spans, the
    thumbnails of up to MAX_THUMBNAILS windows evenly spread (`thumbnail_windows`), and windows.csv
    written row by row (flushed) when csv_path is given."""

    def __init__(self, stream, class_names, csv_path=None, topk=5):
        self.path, self.class_names, self.topk = stream.path, class_names, min(topk, len(class_names))
        # The windows whose centres lie nearest the centres of MAX_THUMBNAILS equal slots of the time.
        centres = (stream.starts + stream.ends) / 2
        slots = min(stream.num_windows, MAX_THUMBNAILS)
        targets = stream.starts[0] + (np.arange(slots) + 0.5) * (stream.ends[-1] - stream.starts[0]) / slots
        self.thumbnail_windows = set(np.abs(centres[None] - targets[:, None]).argmin(axis=1).tolist())
        self.probabilities, self.starts, self.ends = [], [], []
        self.thumbnails = []  # uint8 (3, h, w) of thumbnail_windows, in time order
        self._csv = self._rows = None
        if csv_path is not None:
            csv_path.parent.mkdir(parents=True, exist_ok=True)
            self._csv = csv_path.open('w', newline='')
            self._rows = csv.DictWriter(self._csv, fieldnames=window_columns(self.topk))
            self._rows.writeheader()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._csv is not None:
            self._csv.close()

    def add(self, result):
        """Record a WindowResult; returns its window_record."""
        self.probabilities.append(result.probabilities.numpy())
        self.starts.append(result.start_s)
        self.ends.append(result.end_s)
        if result.thumbnail is not None:
            self.thumbnails.append(result.thumbnail)
        record = window_record(result, self.class_names, self.topk)
        if self._rows is not None:
            self._rows.writerow(window_row(record))
            self._csv.flush()
        return record

    @property
    def windows(self):
        return len(self.probabilities)

    def segments(self, smooth=DEFAULT_SMOOTH, threshold=DEFAULT_THRESHOLD, min_segment=0.0):
        """find_segments over the windows added so far."""
        if not self.probabilities:
            return []
        return find_segments(np.stack(self.probabilities), self.starts, self.ends, self.class_names, smooth,
                             threshold, min_segment)


def format_segments(path, segments, summary):
    """Segments as a table of text: the video and `summary`, then start, end, class and mean
    probability per segment."""
    width = max([len('class')] + [len(segment['label']) for segment in segments])
    lines = [f'{path}: {summary}', f'  {"start":>11}  {"end":>11}  {"class":<{width}}  probability']
    lines += [f'  {format_time(segment["start_s"]):>11}  {format_time(segment["end_s"]):>11}  '
              f'{segment["label"]:<{width}}  {segment["probability"]:11.1%}' for segment in segments]
    return '\n'.join(lines)


def winning_classes(segments, limit=MAX_CURVES):
    """Names of the classes that win a segment, the longest total time first, at most `limit`."""
    totals = {}
    for segment in segments:
        if segment['label'] != BACKGROUND:
            totals[segment['label']] = totals.get(segment['label'], 0) + segment['end_s'] - segment['start_s']
    return sorted(totals, key=lambda name: -totals[name])[:limit]


def run_timeline(model, stream, preprocessing, class_names, folder=None, *, batch_size=8, device='cpu', topk=5,
                 smooth=DEFAULT_SMOOTH, threshold=DEFAULT_THRESHOLD, min_segment=None, features=False,
                 on_window=None):
    """The timeline of one opened WindowStream: its windows classified (classify_windows), each
    passed to on_window(WindowResult, window_record) as it comes; with `folder`, windows.csv written
    row by row, then segments.json and timeline.png. min_segment defaults to one window's length.
    Returns (segments, windows classified, the line of the DecodeError that ended the video early
    or None); what was read before such an error is kept and written."""
    folder = Path(folder) if folder is not None else None
    if min_segment is None:
        min_segment = float(stream.ends[0] - stream.starts[0])
    error = None
    with Timeline(stream, class_names, folder / 'windows.csv' if folder else None, topk) as timeline:
        try:
            for result in classify_windows(model, stream, preprocessing, batch_size, device, features,
                                           timeline.thumbnail_windows):
                record = timeline.add(result)
                if on_window is not None:
                    on_window(result, record)
        except DecodeError as failure:
            error = str(failure)
    segments = timeline.segments(smooth, threshold, min_segment)
    if folder is not None and segments:
        write_json(segments, folder / 'segments.json')
        # The curves are the smoothed probabilities the segments were found from: over hours of windows
        # the raw ones are a thicket.
        figure = timeline_figure(timeline.starts, timeline.ends, moving_average(np.stack(timeline.probabilities),
                                                                                 smooth),
                                 class_names, segments, winning_classes(segments), timeline.thumbnails,
                                 title=f'{stream.path} ({format_time(stream.duration_s, 0)})',
                                 ylabel=f'probability (mean of {smooth} windows)' if smooth > 1 else 'probability')
        save_png(figure, folder / 'timeline.png')
    return segments, timeline.windows, error
