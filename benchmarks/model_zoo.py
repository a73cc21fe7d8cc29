"""The presets table of the README: parameters (400-class head) and GFLOPs per view, counted on the
meta device (no memory, so the largest presets count in seconds).

    python benchmarks/model_zoo.py
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import video_transformer as vt  # noqa: E402
from utils import count_flops, count_parameters  # noqa: E402

PRESETS = ('timesformer_base_patch16_224', 'timesformer_hr_patch16_448', 'timesformer_large_patch16_224',
           'vivit_base_patch16_224', 'videomae_base_patch16_224', 'videomae_large_patch16_224',
           'vjepa2_vitl_fpc16_256', 'vjepa2_vitg_fpc64_384', 'timesformer_tiny', 'vivit_tiny', 'videomae_tiny',
           'vjepa2_tiny')


def main():
    print(f"{'preset':32} {'attention':20} {'frames x size':>13} {'parameters':>12} {'GFLOPs/view':>12}")
    for name in PRESETS:
        config = getattr(vt, name)()
        if config.num_classes > 100:
            config = config.replace(num_classes=400)
        with torch.device('meta'):
            model = vt.VideoClassifier(config).eval()
            video = torch.zeros(1, config.num_frames, config.in_channels, config.img_size, config.img_size)
        print(f'{name:32} {config.attention_type:20} {config.num_frames:>5} x {config.img_size:<5} '
              f'{count_parameters(model):>12,} {count_flops(model, video) / 1e9:>12.3f}')


if __name__ == '__main__':
    main()
