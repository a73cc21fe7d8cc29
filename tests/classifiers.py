"""Tiny classifiers saved the ways users bring them, and a PNG's size."""
import struct

import pytest

from our_format import save_weights
from preprocessing import Preprocessing
from reference import randomise_
from video_transformer import VideoClassifier, timesformer_tiny

CLASSES = ['moving_up', 'moving_down', 'growing', 'shrinking']
SETTINGS = Preprocessing(num_frames=4, frame_interval=2, img_size=32, num_clips=2, num_crops=3)


def export(path, class_names=CLASSES, preprocessing=SETTINGS):
    """A randomised tiny classifier saved as our export folder; returns the folder."""
    config = timesformer_tiny(num_classes=len(class_names or CLASSES))
    save_weights(randomise_(VideoClassifier(config, class_names, preprocessing)), path)
    return path


def png_size(path):
    """(width, height) from a PNG's IHDR chunk; fails on anything that is not a PNG."""
    data = path.read_bytes()
    assert data[:8] == b'\x89PNG\r\n\x1a\n' and data[12:16] == b'IHDR'
    return struct.unpack('>II', data[16:24])


def hf_folder(path, mean, std):
    """A randomised tiny transformers TimeSformer with CLASSES as labels and a processor file with
    mean, std, a short side of 36 and crops of 32, saved in path; returns path."""
    transformers = pytest.importorskip('transformers')
    config = transformers.TimesformerConfig(image_size=32, patch_size=8, num_frames=4, hidden_size=32,
                                            num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                                            num_labels=4, id2label=dict(enumerate(CLASSES)))
    randomise_(transformers.TimesformerForVideoClassification(config)).save_pretrained(path)
    transformers.VideoMAEImageProcessor(image_mean=list(mean), image_std=list(std), size={'shortest_edge': 36},
                                        crop_size={'height': 32, 'width': 32}).save_pretrained(path)
    return path
