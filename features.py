"""Features: the pooled representation the head reads (`VideoClassifier.features`: the final-normed
class token, the mean-pooled tokens, or V-JEPA 2's attentive pooler's output), one row per video with
its views averaged, written as they come.

    features, rows = extract_features(model, loader, settings)      # (N, D) float32, N index rows
    with FeatureWriter('out/') as writer:                            # out/features.npy, out/index.csv
        writer.add(features, rows)

`model_inference.py -features OUT` writes them beside its usual output, from the same forward pass as
the logits (inference.classify with features=True).
"""
import csv
import os
import struct
from pathlib import Path

import numpy as np

from annotations import UNLABELLED
from inference import VideoResult, classify

FEATURES_FILE, INDEX_FILE = 'features.npy', 'index.csv'
INDEX_COLUMNS = ('row', 'path', 'start_s', 'end_s', 'label')
# features.npy's header is rewritten in place as rows are added, so it has a fixed size: 128 bytes keep
# the rows 64-byte aligned, as numpy's own writer does, and leave room for any row count.
HEADER_BYTES = 128
NPY_VERSION = b'\x01\x00'


def npy_header(rows, dim):
    """The HEADER_BYTES bytes of an .npy (format 1.0) file of float32 (rows, dim), C order."""
    description = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}"
    prefix = np.lib.format.MAGIC_PREFIX + NPY_VERSION
    text = description.ljust(HEADER_BYTES - len(prefix) - 2 - 1) + '\n'
    return prefix + struct.pack('<H', len(text)) + text.encode('latin1')


class FeatureWriter:
    """Writes features (N, D) float32 and their index to out_dir as they come: features.npy (an .npy
    numpy.load reads, rows in the order added) and index.csv (INDEX_COLUMNS: the row of features.npy,
    the video, the seconds its frames span, its label's name or empty).

    How the .npy grows on disk: its rows are appended as raw float32 after a fixed-size header that
    is rewritten in place with the row count after each add, both files flushed, so a run stopped
    at any point leaves two valid files. close() (or leaving the `with` block, an exception or
    Ctrl-C included) cuts both back to the rows of the last add that finished; after a hard kill
    (SIGKILL, power) index.csv may list up to one add's rows more than features.npy holds, each
    with its `row`. dim, when known, sizes a file of no rows; else the first add sets it.
    """

    def __init__(self, out_dir, dim=None):
        self.folder = Path(out_dir)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.dim, self.rows = dim, 0
        self._array = open(self.folder / FEATURES_FILE, 'wb')
        self._index = open(self.folder / INDEX_FILE, 'w', newline='')
        self._writer = csv.DictWriter(self._index, fieldnames=INDEX_COLUMNS)
        self._writer.writeheader()
        self._write_header()
        self._index.flush()
        self._index_bytes = self._index.tell()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def add(self, features, rows):
        """Append features (N, D) (a tensor or an array, cast to float32) and their N index rows, dicts
        with path, start_s, end_s and label (a name, or None/'' without one)."""
        features = np.ascontiguousarray(np.asarray(features, dtype=np.float32))
        if features.ndim != 2 or len(features) != len(rows):
            raise ValueError(f'features must be (N, D) with one row per index row, got {features.shape} for '
                             f'{len(rows)} rows')
        if self.dim is None:
            self.dim = features.shape[1]
        if features.shape[1] != self.dim:
            raise ValueError(f'features of width {features.shape[1]} added to rows of width {self.dim}')
        self._array.write(features.tobytes())
        self._array.flush()
        for offset, row in enumerate(rows):
            self._writer.writerow({'row': self.rows + offset, 'path': row['path'], 'start_s': row['start_s'],
                                   'end_s': row['end_s'], 'label': row.get('label') or ''})
        self._index.flush()
        self.rows += len(rows)
        self._index_bytes = self._index.tell()
        self._write_header()

    def _write_header(self):
        self._array.seek(0)
        self._array.write(npy_header(self.rows, self.dim or 0))
        self._array.seek(0, os.SEEK_END)
        self._array.flush()

    def close(self):
        """Cut both files back to the rows added (see the class doc) and close them."""
        if self._array.closed:
            return
        self._write_header()
        self._array.truncate(HEADER_BYTES + self.rows * (self.dim or 0) * 4)
        self._index.truncate(self._index_bytes)
        self._array.close()
        self._index.close()


def feature_row(result, class_names=None):
    """A VideoResult's index row: path, start_s, end_s, and label (its class name, or None)."""
    label = None
    if result.label != UNLABELLED:
        label = class_names[result.label] if class_names else str(result.label)
    return {'path': result.path, 'start_s': round(result.start_s, 6), 'end_s': round(result.end_s, 6),
            'label': label}


def extract_features(model, loader, preprocessing, batch_size=8, device='cpu'):
    """The features of every video the loader (inference.prediction_loader) reads: float32 (N, D), one
    row per video, its views' features averaged, and the N index rows (feature_row, with the model's
    class names). Videos that cannot be read are left out, as the loader's dataset logs."""
    features, rows = [], []
    for outcome in classify(model, loader, preprocessing, batch_size, device, features=True):
        if isinstance(outcome, VideoResult):
            features.append(outcome.features.numpy())
            rows.append(feature_row(outcome, model.class_names))
    dim = model.config.embed_dims
    return (np.stack(features) if features else np.zeros((0, dim), dtype=np.float32)), rows
