"""Classifying videos with trained weights: the weights and the preprocessing they were trained
with, the views of the DataModule's test split, the softmax averaged over views, one result per
video as it comes.

    model = load_classifier(resolve_weights('best.ckpt'))   # or a Hub id, an export folder...
    settings = inference_preprocessing(model, num_clips=2)  # the weights' own, flags on top
    loader = prediction_loader('videos/', settings, class_names=model.class_names, num_workers=2)
    for outcome in classify(model, loader, settings):       # VideoResult or VideoFailure, as they come
        ...                                                 # result_record(outcome, model_class_names(model))

Frames are sampled, decoded, resized and cropped by dataset.py exactly as for the DataModule's test
split (`VideoDataset`, `collate_views`), in loader workers while the model runs; here the uint8
views are normalised (`preprocessing.normalize`) on the device and go through the model in chunks
of `batch_size` views.
"""
import csv
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HFValidationError, HfHubHTTPError, LocalEntryNotFoundError
from huggingface_hub.utils import validate_repo_id
from torch.utils.data import DataLoader
from tqdm import tqdm

from annotations import UNLABELLED, AnnotationError, load_class_map
from dataset import VideoDataset, collate_views
from evaluation import average_views
from model_loading import load_model
from onnx_inference import OnnxClassifier, find_onnx
from preprocessing import Preprocessing, data_statics, normalize
from utils import counted
from visualize import prediction_figure, save_png
from weight_files import WEIGHT_FILES
from weight_formats import WeightLoadError

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = ('.ckpt', '.pth', '.pyth', '.pt', '.bin', '.safetensors', '.npz', '.onnx')
# What a Hub snapshot needs: configs (model, processor) and safetensors weights; pickled
# pytorch_model.bin only when a repository has no safetensors.
HUB_FILES = ['*.json', '*.safetensors']


# ---------------------------------------------------------------- weights and settings

def is_hub_id(text):
    """Whether `text` can be a Hub repository id `owner/name` (huggingface_hub's rules); a path that
    exists, or ends like a weights file, is never taken for one."""
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return text.count('/') == 1


def resolve_weights(source):
    """A weights file or folder as given, or the local snapshot of a Hugging Face Hub repository id
    (`facebook/timesformer-base-finetuned-k400`), fetched into huggingface_hub's cache (HF_HUB_CACHE,
    HF_HUB_OFFLINE honoured). WeightLoadError when neither is there."""
    path = Path(source)
    if path.exists() or not is_hub_id(str(source)) or path.suffix.lower() in WEIGHT_SUFFIXES:
        return path
    try:
        folder = Path(snapshot_download(str(source), allow_patterns=HUB_FILES))
        if not any((folder / name).is_file() for name in WEIGHT_FILES):
            folder = Path(snapshot_download(str(source), allow_patterns=HUB_FILES + ['pytorch_model.bin']))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WeightLoadError(f'{source}: no such file or folder, and not found on the Hugging Face Hub '
                              f'({reason})') from None
    return folder


def load_classifier(source, class_map=None, onnx_device='auto', **overrides):
    """load_model(source, **overrides), or for an ONNX export (a .onnx file, a folder with model.onnx)
    an OnnxClassifier on `onnx_device`'s providers, with the class names of `class_map` (JSON name ->
    index or one name per line) in place of the weights' own; a class map of another size than the head
    is an AnnotationError naming both counts. Overrides that are None are left out."""
    overrides = {name: value for name, value in overrides.items() if value is not None}
    if find_onnx(source) is not None:
        model = OnnxClassifier.load(source, onnx_device, **overrides)
    else:
        model = load_model(source, **overrides)
    if class_map is not None:
        names = load_class_map(class_map)
        if len(names) != model.config.num_classes:
            raise AnnotationError(f'{class_map}: {len(names)} classes, but the model has {model.config.num_classes} '
                                  f'outputs')
        model.class_names = names
    return model


def model_class_names(model):
    """The model's class names, or its class indices as strings when it carries none."""
    return model.class_names or [str(index) for index in range(model.config.num_classes)]


def inference_preprocessing(model, data_statics_name=None, **changes):
    """The model's Preprocessing with the given changes (fields of Preprocessing; None leaves a
    field alone) and, by name, other normalisation statistics (preprocessing.DATA_STATICS).

    A model whose weights record no preprocessing (image models, bare state dicts) gets the
    Kinetics defaults for its frames and size, said in one warning line. frame_interval without
    window_seconds turns sampling by seconds off, so the interval given is the one used; either
    without sampling turns segments sampling off (a window of frames was asked for), and sampling
    'segments' turns a recorded window in seconds off.
    """
    changes = {name: value for name, value in changes.items() if value is not None}
    if 'frame_interval' in changes and 'window_seconds' not in changes:
        changes['window_seconds'] = None
    spacing = [name for name in ('frame_interval', 'window_seconds') if changes.get(name) is not None]
    if spacing and changes.get('sampling') == 'segments':
        raise ValueError(f'{spacing[0]} spaces the frames of a window; sampling segments spreads them over the '
                         f'whole video (give one of them)')
    if spacing:
        changes.setdefault('sampling', 'interval')
    if changes.get('sampling') == 'segments':
        changes['window_seconds'] = None
    if data_statics_name is not None:
        changes['mean'], changes['std'] = data_statics(data_statics_name)
    recorded = model.preprocessing
    settings = (recorded or Preprocessing(num_frames=model.config.num_frames, img_size=model.config.img_size)
                ).replace(**changes)
    if recorded is None:
        log.warning('the weights record no preprocessing; taking frame interval %d, short side %d, mean %s, '
                    'std %s, %d clip(s) x %d crop(s); flags -frame_interval, -short_side, -data_statics, '
                    '-num_clips, -num_crops change them', settings.frame_interval, settings.short_side,
                    list(settings.mean), list(settings.std), settings.num_clips, settings.num_crops)
    return settings


# ---------------------------------------------------------------- data

def prediction_loader(source, preprocessing, *, labelled=False, class_names=None, num_classes=None, batch_size=8,
                      num_workers=0, **options):
    """A DataLoader of uint8 view batches (dataset.collate_views) over `source`: a video, a folder of
    videos, a list (labels optional) or a sequence of paths; labelled=True needs a label for every
    video (the test split's rules). Each batch holds as many videos as fit in batch_size views, at
    least one. class_names map name labels to the model's indices; options go to VideoDataset."""
    dataset = VideoDataset.from_preprocessing(source, preprocessing, mode='test' if labelled else 'predict',
                                              class_map=class_names, num_classes=num_classes, **options)
    if class_names is None and dataset.class_names != [str(i) for i in range(len(dataset.class_names))]:
        raise AnnotationError(f'{source}: labels classes by name, but the model carries no class names to map '
                              f'them to its outputs; give a class map')
    views = preprocessing.num_views
    return DataLoader(dataset, batch_size=max(1, batch_size // views), num_workers=num_workers,
                      collate_fn=partial(collate_views, preprocessing=preprocessing),
                      pin_memory=torch.cuda.is_available(), worker_init_fn=leave_interrupts_to_the_main_process)


def leave_interrupts_to_the_main_process(worker_id):
    """A loader worker ignores Ctrl-C, which reaches every process of the terminal's group: the main
    process says what was written and shuts the workers down. A main process gone mid-transfer leaves a
    worker's fd-sharing thread with a reset connection, which it would print as a traceback after that
    one line: the worker keeps quiet about it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.excepthook = _quiet_when_the_reader_left


def _quiet_when_the_reader_left(kind, value, traceback):
    """sys.excepthook of a loader worker: a connection the main process dropped is no error to report."""
    if not issubclass(kind, (ConnectionResetError, BrokenPipeError)):
        sys.__excepthook__(kind, value, traceback)


# ---------------------------------------------------------------- classification

@dataclass
class VideoResult:
    """One video classified. view_logits (V, K) float32: the logits of its V clip-major views;
    centre_view uint8 (T, 3, S, S): the frames of its one-view figure's view, as the model saw
    them before normalisation; label: its index, or UNLABELLED; frame_indices to end_s: what was
    read (dataset.READ_KEYS); view_features (V, D) float32: the pooled features the head read per
    view, when asked for."""

    path: str
    label: int
    view_logits: torch.Tensor
    centre_view: torch.Tensor
    frame_indices: list
    video_frames: int
    decode_ms: float
    forward_ms: float
    start_s: float = None
    end_s: float = None
    view_features: torch.Tensor = None

    @property
    def probabilities(self):
        """(K,) the softmax averaged over the views (evaluation.average_views)."""
        return average_views(self.view_logits)

    @property
    def features(self):
        """(D,) the pooled features averaged over the views, or None when not asked for."""
        return None if self.view_features is None else self.view_features.mean(dim=0)


@dataclass
class VideoFailure:
    """A video that could not be read, and why."""

    path: str
    error: str


def view_logits(model, views, preprocessing, batch_size, device):
    """uint8 views (B, V, T, 3, S, S) -> float32 logits (B, V, K) on the CPU; batch_size views per
    forward pass, each normalised on `device` as the DataModule does."""
    return view_outputs(model, views, preprocessing, batch_size, device)[0]


def view_outputs(model, views, preprocessing, batch_size, device, features=False):
    """view_logits, and with features=True also the pooled representation the head's linear layer
    reads (VideoClassifier.features), float32 (B, V, D) on the CPU, from the same forward pass (None
    for an ONNX graph, which gives logits only): (logits, features)."""
    logits, pooled = [], []
    pooling = features and not isinstance(model, OnnxClassifier)
    with torch.inference_mode():
        for chunk in views.flatten(0, 1).split(batch_size):
            video = normalize(chunk.to(device, non_blocking=True), preprocessing.mean, preprocessing.std)
            if pooling:
                pooled.append(model.features(video))
                logits.append(model.head.classify(pooled[-1]).float().cpu())
                pooled[-1] = pooled[-1].float().cpu()
            else:
                logits.append(model(video).float().cpu())
    shape = views.shape[:2]
    return torch.cat(logits).view(*shape, -1), torch.cat(pooled).view(*shape, -1) if pooling else None


def classify(model, loader, preprocessing, batch_size=8, device='cpu', features=False):
    """VideoFailure and VideoResult per video of the loader's batches, as they come; with features=True
    each VideoResult carries its view_features. A batch's forward time is shared by its videos in
    proportion to their views (all have the same)."""
    centre = preprocessing.centre_view
    for batch in loader:
        for path, error in batch['failed']:
            yield VideoFailure(path, error)
        views = batch['video']
        if views.shape[0] == 0:
            continue
        started = time.perf_counter()
        logits, pooled = view_outputs(model, views, preprocessing, batch_size, device, features)
        forward_ms = (time.perf_counter() - started) * 1000 / views.shape[0]
        for position, path in enumerate(batch['path']):
            yield VideoResult(path, int(batch['label'][position]), logits[position], views[position, centre],
                              batch['frame_indices'][position], batch['video_frames'][position],
                              batch['decode_ms'][position], forward_ms, batch['start_s'][position],
                              batch['end_s'][position], None if pooled is None else pooled[position])


# ---------------------------------------------------------------- results

def result_record(result, class_names, topk=5):
    """A VideoResult as plain types (JSON lines, CSV): path, the top-k labels, indices and
    probabilities, views, the frame numbers read per clip, the video's frame count, and decode
    and forward times in ms; with `label` (a name) when the video has one."""
    probabilities, indices = result.probabilities.topk(min(topk, len(class_names)))
    record = {'path': result.path}
    if result.label != UNLABELLED:
        record['label'] = class_names[result.label]
    record.update({
        'labels': [class_names[index] for index in indices.tolist()], 'indices': indices.tolist(),
        'probabilities': [round(value, 6) for value in probabilities.tolist()],
        'views': result.view_logits.shape[0], 'frames': result.frame_indices, 'video_frames': result.video_frames,
        'decode_ms': round(result.decode_ms, 1), 'forward_ms': round(result.forward_ms, 1)})
    return record


def csv_columns(topk):
    """The CSV's columns: csv_row's, then `error`, set (and only it and path) for a video that
    could not be read."""
    ranked = [f'top{rank}_{name}' for rank in range(1, topk + 1) for name in ('label', 'index', 'probability')]
    return ['path', 'label', 'views', 'video_frames', 'decode_ms', 'forward_ms', *ranked, 'frames', 'error']


def csv_row(record):
    """A result_record flattened to CSV columns: the label empty for unlabelled videos,
    top{i}_label, top{i}_index, top{i}_probability, and the frames as space-separated numbers,
    clips separated by ' | '."""
    row = {'path': record['path'], 'label': record.get('label', '')}
    row.update({key: record[key] for key in ('views', 'video_frames', 'decode_ms', 'forward_ms')})
    for rank, (label, index, probability) in enumerate(
            zip(record['labels'], record['indices'], record['probabilities']), 1):
        row.update({f'top{rank}_label': label, f'top{rank}_index': index, f'top{rank}_probability': probability})
    row['frames'] = ' | '.join(' '.join(map(str, clip)) for clip in record['frames'])
    return row


def format_result(record):
    """A result_record as a few lines of text: the video, then its top-k classes."""
    width = max(len(label) for label in record['labels'])
    label = f'; label {record["label"]}' if 'label' in record else ''
    frames = counted(len(record['frames'][0]), 'frame')
    lines = [f'{record["path"]}: {counted(record["views"], "view")} of {frames}{label} '
             f'(decode {record["decode_ms"]:.0f} ms, forward {record["forward_ms"]:.0f} ms)']
    lines += [f'  {rank}. {name:<{width}}  {probability:7.2%}' for rank, (name, probability) in
              enumerate(zip(record['labels'], record['probabilities']), 1)]
    return '\n'.join(lines)


def picture_root(source, videos):
    """The folder whose tree the pictures of `videos` (paths) mirror: the list's folder (or the
    folder) `source`, or, when some videos lie outside it (`../clip.mp4`), the deepest folder
    holding them all, so that every picture lands inside the pictures' folder and no two videos
    share one. Paths are made absolute without following links."""
    folder = Path(source).parent if Path(source).is_file() else Path(source)
    return Path(os.path.commonpath([os.path.abspath(path) for path in (folder, *videos)]))


def mirrored_path(folder, video, root, suffix=''):
    """Where an output of `video` goes in `folder`, mirroring its path below `root` (picture_root):
    root/a/clip.mp4 -> folder/a/clip.mp4{suffix}. A ValueError for a video outside root: an output
    never lands outside its folder."""
    relative = Path(os.path.relpath(os.path.abspath(video), os.path.abspath(root)))
    if relative.parts[0] == os.pardir:
        raise ValueError(f'{video} is not below {root}')
    return Path(folder) / relative.with_name(relative.name + suffix)


class ResultWriter:
    """Writes each video's outcome as it comes: result_record as text (format_result) or JSON lines
    on standard output (a failure as {"path", "error"} under JSON), CSV rows flushed per video
    (csv_path), and prediction_figure pictures (pictures: a PNG path for one video, or with
    picture_root, a folder holding every video (picture_root()), a folder mirroring the videos'
    paths below picture_root, `clip.mp4` -> `clip.mp4.png`). attention(frames) -> (T', grid, grid)
    draws the rollout over the frames."""

    def __init__(self, class_names, *, topk=5, json_lines=False, csv_path=None, pictures=None, picture_root=None,
                 attention=None):
        self.class_names, self.topk, self.json_lines = class_names, topk, json_lines
        self.stream = sys.stdout  # looked up now, not at import: a caller may have replaced it
        self.csv_path = Path(csv_path) if csv_path else None
        self.pictures = Path(pictures) if pictures else None
        self.picture_root = Path(os.path.abspath(picture_root)) if picture_root else None
        self.attention = attention
        self._csv = self._rows = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._csv is not None:
            self._csv.close()

    def write(self, outcome):
        """Write a VideoResult or VideoFailure."""
        if isinstance(outcome, VideoFailure):
            if self.json_lines:
                self._say(json.dumps({'path': outcome.path, 'error': outcome.error}))
            if self.csv_path is not None:
                self._write_row({'path': outcome.path, 'error': outcome.error})
            return
        record = result_record(outcome, self.class_names, self.topk)
        self._say(json.dumps(record) if self.json_lines else format_result(record))
        if self.csv_path is not None:
            self._write_row(csv_row(record))
        if self.pictures is not None:
            self._picture(outcome, record)

    def _say(self, text):
        # tqdm.write keeps a progress bar on the terminal below the results.
        tqdm.write(text, file=self.stream)
        self.stream.flush()

    def _write_row(self, row):
        if self._rows is None:
            self.csv_path.parent.mkdir(parents=True, exist_ok=True)
            self._csv = self.csv_path.open('w', newline='')
            self._rows = csv.DictWriter(self._csv, fieldnames=csv_columns(min(self.topk, len(self.class_names))),
                                        restval='')
            self._rows.writeheader()
        self._rows.writerow(row)
        self._csv.flush()

    def picture_path(self, video):
        """Where the picture of `video` goes."""
        if self.picture_root is None:
            return self.pictures / f'{Path(video).name}.png' if self.pictures.is_dir() else self.pictures
        return mirrored_path(self.pictures, video, self.picture_root, '.png')

    def _picture(self, result, record):
        frames = result.centre_view.cpu()
        attention = self.attention(frames) if self.attention is not None else None
        title = f'{result.path}: {record["labels"][0]} {record["probabilities"][0]:.1%}'
        path = self.picture_path(result.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_png(prediction_figure(frames, record['labels'], record['probabilities'], attention, title), path)
