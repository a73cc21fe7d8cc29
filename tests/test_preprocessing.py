"""Preprocessing settings: plain-type round trip, validation, normalisation."""
import json

import pytest
import torch

from preprocessing import DATA_STATICS, Preprocessing, data_statics, default_short_side, normalize


def test_round_trip_through_json_keeps_every_field():
    settings = Preprocessing(num_frames=4, frame_interval=2, img_size=32, mean=(0.5, 0.4, 0.3),
                             std=(0.2, 0.3, 0.4), num_clips=2, num_crops=1)
    back = Preprocessing.from_dict(json.loads(json.dumps(settings.to_dict())))
    assert back == settings
    assert back.short_side == default_short_side(32) == 37


def test_unknown_and_invalid_settings_are_refused():
    with pytest.raises(ValueError, match='colour_space'):
        Preprocessing.from_dict({'colour_space': 'rgb'})
    with pytest.raises(ValueError, match='short_side 100 is smaller than img_size 224'):
        Preprocessing(short_side=100)
    with pytest.raises(ValueError, match='num_crops'):
        Preprocessing(num_crops=0)
    with pytest.raises(ValueError, match='data_statics must be one of'):
        data_statics('imagnet')


def test_normalize_uses_each_channel_statistic():
    mean, std = DATA_STATICS['imagenet']
    video = torch.rand(2, 3, 3, 4, 5)
    out = normalize(video, mean, std)
    for channel in range(3):
        expected = (video[:, :, channel] - mean[channel]) / std[channel]
        torch.testing.assert_close(out[:, :, channel], expected)
    # uint8 frames, as decoded, are scaled to [0, 1] first.
    frames = torch.randint(0, 256, (2, 3, 3, 4, 5), dtype=torch.uint8)
    torch.testing.assert_close(normalize(frames, mean, std), normalize(frames.double().div(255).float(), mean, std))
