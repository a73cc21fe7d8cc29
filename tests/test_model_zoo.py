"""The README's preset table: parameters and GFLOPs per view of every preset, counted by
utils.count_parameters and utils.count_flops on the meta device (shapes only, no memory)."""
import re
from pathlib import Path

import pytest
import torch

import video_transformer
from utils import count_flops, count_parameters

README = Path(__file__).resolve().parents[1] / 'README.md'


def preset_rows():
    """[(preset, parameters cell, GFLOPs cell)] of the README's table under '### Presets'."""
    lines = README.read_text().split('### Presets', 1)[1].splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith('| preset |'))
    end = next(index for index in range(start, len(lines)) if not lines[index].startswith('|'))
    rows = lines[start + 2:end]
    cells = [[cell.strip() for cell in row.strip('|').split('|')] for row in rows]
    return [(cell[0].strip('`'), cell[4], cell[5]) for cell in cells]


def test_the_table_lists_every_preset():
    assert [row[0] for row in preset_rows()] == ['timesformer_base_patch16_224', 'timesformer_hr_patch16_448',
                                                 'timesformer_large_patch16_224', 'vivit_base_patch16_224',
                                                 'videomae_base_patch16_224', 'videomae_large_patch16_224',
                                                 'vjepa2_vitl_fpc16_256', 'vjepa2_vitg_fpc64_384',
                                                 'timesformer_tiny', 'vivit_tiny', 'videomae_tiny', 'vjepa2_tiny']


@pytest.mark.parametrize('preset, parameters, gflops', preset_rows())
def test_presets_have_the_parameters_and_multiply_adds_the_readme_states(preset, parameters, gflops):
    """Fails if count_flops counts multiplies and adds apart (twice the papers' figure), misses the
    attention's matrix products, or a preset or the table changes without the other."""
    count, unit, classes = re.fullmatch(r'([\d.]+) (M|K)(?: \((\d+) classes\))?', parameters).groups()
    with torch.device('meta'):
        model = video_transformer.VideoClassifier(getattr(video_transformer, preset)(
            num_classes=int(classes or 400))).eval()
        config = model.config
        video = torch.empty(1, config.num_frames, config.in_channels, config.img_size, config.img_size)
    scale = {'M': 1e6, 'K': 1e3}[unit]
    assert round(count_parameters(model) / scale, len(count.partition('.')[2])) == float(count)
    decimals = len(gflops.partition('.')[2])
    assert round(count_flops(model, video) / 1e9, decimals) == float(gflops)
