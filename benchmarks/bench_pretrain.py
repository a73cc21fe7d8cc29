"""Seconds per training step on this machine: VideoMAE's masked autoencoding at a mask ratio beside
fine-tuning the same encoder as a classifier, same clips, same batch, side by side in one run.

  pretrain  tube mask drawn, the encoder on the visible tubelets, the decoder on all of them, the
            normalised-pixel loss, backward, an AdamW step (pretrain_trainer.LitMaskedAutoencoder's)
  finetune  the classifier on every token, cross-entropy, backward, an AdamW step
The two take turns for --repeats rounds after an untimed warm-up, each keeping its best time, so that
a burst of other work on a shared machine does not decide the ratio.

    python benchmarks/bench_pretrain.py                       # a small VideoMAE on the CPU
    python benchmarks/bench_pretrain.py --embed_dims 768 --depth 12 --img_size 224 --decoder_dim 384 \\
        --decoder_depth 4 --batch_size 8 --device cuda       # VideoMAE-B
"""
import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from preprocessing import DATA_STATICS, Preprocessing  # noqa: E402
from pretrain_trainer import LitMaskedAutoencoder  # noqa: E402
from video_transformer import VideoClassifier, videomae_base_patch16_224  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    for name, default in (('embed_dims', 192), ('num_heads', 3), ('depth', 6), ('num_frames', 16), ('img_size', 112),
                          ('decoder_dim', 96), ('decoder_depth', 2), ('batch_size', 2), ('repeats', 5)):
        parser.add_argument(f'--{name}', type=int, default=default)
    parser.add_argument('--mask_ratio', type=float, default=0.9)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--threads', type=int, help='torch CPU threads')
    return parser.parse_args()


def timed(step, device):
    if device.startswith('cuda'):
        torch.cuda.synchronize()
    started = time.perf_counter()
    step()
    if device.startswith('cuda'):
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = videomae_base_patch16_224(embed_dims=args.embed_dims, num_heads=args.num_heads,
                                       num_transformer_layers=args.depth, num_frames=args.num_frames,
                                       img_size=args.img_size, num_classes=400, drop_path_rate=0.0)
    mean, std = DATA_STATICS['imagenet']
    preprocessing = Preprocessing(num_frames=args.num_frames, frame_interval=4, img_size=args.img_size, mean=mean,
                                  std=std)
    pretraining = LitMaskedAutoencoder(config, preprocessing.to_dict(), mask_ratio=args.mask_ratio,
                                       decoder_dim=args.decoder_dim, decoder_depth=args.decoder_depth).to(args.device)
    classifier = VideoClassifier(config).to(args.device)
    optimisers = {'pretrain': torch.optim.AdamW(pretraining.parameters(), lr=1e-4),
                  'finetune': torch.optim.AdamW(classifier.parameters(), lr=1e-4)}
    video = torch.randn(args.batch_size, args.num_frames, 3, args.img_size, args.img_size, device=args.device)
    labels = torch.randint(0, 400, (args.batch_size,), device=args.device)

    def pretrain():
        loss = pretraining(video, pretraining.draw_mask(args.batch_size))
        loss.backward()
        optimisers['pretrain'].step()
        optimisers['pretrain'].zero_grad(set_to_none=True)

    def finetune():
        loss = F.cross_entropy(classifier(video), labels)
        loss.backward()
        optimisers['finetune'].step()
        optimisers['finetune'].zero_grad(set_to_none=True)

    steps = {'pretrain': pretrain, 'finetune': finetune}
    for step in steps.values():  # warm-up
        step()
    best = {name: float('inf') for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            best[name] = min(best[name], timed(step, args.device))
    tokens = config.num_patches * config.num_time_steps
    visible = tokens - int(args.mask_ratio * config.num_patches) * config.num_time_steps
    print(f'VideoMAE {args.depth} blocks of width {args.embed_dims}, {args.num_frames}x{args.img_size} '
          f'({tokens} tokens), decoder {args.decoder_depth} x {args.decoder_dim}, batch {args.batch_size}, '
          f'{args.device} ({torch.get_num_threads()} threads), best of {args.repeats}')
    print(f'  pretrain at mask {args.mask_ratio:.2f} ({visible} visible tokens): {best["pretrain"]:.3f} s/step')
    print(f'  finetune (all {tokens} tokens):              {best["finetune"]:.3f} s/step')
    print(f'  ratio pretrain / finetune: {best["pretrain"] / best["finetune"]:.2f}')


if __name__ == '__main__':
    main()
