"""Training throughput of our TimeSformer and transformers' on the same weights, side by side.

For each implementation (ours, transformers' TimesformerForVideoClassification), with and without
torch.compile, and each batch size: AdamW training steps on a random batch under autocast, in a
process of its own (compile caches and memory peaks stay apart). Reports clips per second, peak
memory over the timed steps (model, optimizer state and activations: the CUDA allocator's peak, or
on a CPU the resident set's high-water mark), and model FLOPs utilisation: 3 x the forward pass's
FLOPs (forward, and backward at twice the forward) per clip, times clips per second, over the
device's peak for the dtype.

    python benchmarks/bench_train.py                      # on a GPU: B/16 8x224, bf16, batch 8 and 16
    python benchmarks/bench_train.py --config small --batch_sizes 2 4 --dtype float32   # a CPU
    python benchmarks/bench_train.py --peak_tflops 989    # a GPU the table below does not know
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_model import CONFIGS, autocast, build, our_config, reset_peak_resident, resident_bytes  # noqa: E402
from utils import count_flops, write_csv  # noqa: E402

IMPLEMENTATIONS = ('sdpa', 'hf')
# Dense bf16 / fp16 tensor-core peaks (no sparsity) by device name, TFLOP/s: vendors' data sheets.
PEAK_TFLOPS = {'H200': 989.4, 'H100': 989.4, 'A100': 312.0, 'L40S': 362.1, 'A10': 125.0, 'V100': 125.0,
               'RTX 4090': 165.2, 'RTX 3090': 71.0}


def device_peak(device, override):
    """Peak TFLOP/s for the MFU column: --peak_tflops, else the table by GPU name, else None."""
    if override:
        return override
    if device != 'cuda':
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


def measure(implementation, config_name, batch_size, compiled, dtype, warmup, steps, device):
    """{'clips_per_s', 'peak_mib'} of `steps` timed training steps after `warmup` ones."""
    torch.manual_seed(0)
    model, run = build(implementation, config_name)
    model.to(device).train()
    if compiled:
        model.compile()
    config = our_config(config_name)
    video = torch.randn(batch_size, config.num_frames, 3, config.img_size, config.img_size, device=device)
    target = torch.randint(0, config.num_classes, (batch_size,), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == 'cuda')

    def step():
        with autocast(device, dtype):
            loss = torch.nn.functional.cross_entropy(run(video), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    synchronize = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
    synchronize()
    if device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_resident()  # from here: the model, its optimizer state and the steps, not the building
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if device == 'cuda' else resident_bytes('VmHWM')
    return {'clips_per_s': batch_size * steps / seconds, 'peak_mib': peak / 2**20}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    on_gpu = torch.cuda.is_available()
    parser.add_argument('--config', default='base' if on_gpu else 'small', choices=list(CONFIGS))
    parser.add_argument('--batch_sizes', type=int, nargs='+', default=[8, 16] if on_gpu else [2, 4])
    parser.add_argument('--dtype', default='bfloat16' if on_gpu else 'float32',
                        choices=['float32', 'bfloat16', 'float16'], help='autocast dtype (float32: none)')
    parser.add_argument('--compile', default='both', choices=['both', 'off', 'on'])
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--steps', type=int, default=10 if on_gpu else 3)
    parser.add_argument('--device', default='cuda' if on_gpu else 'cpu')
    parser.add_argument('--peak_tflops', type=float, help='the device peak for the dtype, for MFU')
    parser.add_argument('--csv', type=Path, default=Path('outputs/bench_train.csv'))
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    if args.worker:
        implementation, batch_size, compiled = json.loads(args.worker)
        print(json.dumps(measure(implementation, args.config, batch_size, compiled, dtype, args.warmup,
                                 args.steps, args.device)))
        return

    compile_modes = {'both': (False, True), 'off': (False,), 'on': (True,)}[args.compile]
    jobs = [(implementation, batch_size, compiled) for compiled in compile_modes
            for batch_size in args.batch_sizes for implementation in IMPLEMENTATIONS]
    results = {}
    for job in tqdm(jobs, desc='benchmark'):
        command = [sys.executable, __file__, '--worker', json.dumps(job), '--config', args.config,
                   '--dtype', args.dtype, '--warmup', str(args.warmup), '--steps', str(args.steps),
                   '--device', args.device]
        # Blocks of 64 KiB or more go back to the system on free, so a CPU's resident size follows the tensors.
        output = subprocess.run(command, check=True, capture_output=True, text=True,
                                env={**os.environ, 'MALLOC_MMAP_THRESHOLD_': str(64 * 1024)}).stdout
        results[job] = json.loads(output.splitlines()[-1])

    config = our_config(args.config)
    model, _ = build('sdpa', args.config)
    video = torch.zeros(1, config.num_frames, 3, config.img_size, config.img_size)
    train_flops = 3 * 2 * count_flops(model, video)  # count_flops gives multiply-adds per clip
    peak = device_peak(args.device, args.peak_tflops)
    device_name = torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'
    rows = []
    for compiled in compile_modes:
        for batch_size in args.batch_sizes:
            ours, theirs = (results[implementation, batch_size, compiled] for implementation in IMPLEMENTATIONS)
            rows.append({
                'device': device_name, 'config': args.config, 'dtype': args.dtype, 'compile': compiled,
                'batch_size': batch_size, 'ours_clips_per_s': ours['clips_per_s'],
                'hf_clips_per_s': theirs['clips_per_s'], 'speedup_vs_hf': ours['clips_per_s'] / theirs['clips_per_s'],
                'ours_peak_mib': ours['peak_mib'], 'hf_peak_mib': theirs['peak_mib'],
                'ours_mfu': ours['clips_per_s'] * train_flops / (peak * 1e12) if peak else None,
                'hf_mfu': theirs['clips_per_s'] * train_flops / (peak * 1e12) if peak else None,
            })
    print(f'TimeSformer {args.config} ({config.num_frames}x{config.img_size}) training steps on {device_name}, '
          f'{args.dtype}, {args.steps} steps after {args.warmup}; {train_flops / 1e9:.0f} GFLOP per clip'
          + (f'; MFU against {peak} TFLOP/s' if peak else ''))
    print(f"{'compile':7} {'batch':>5} {'ours clip/s':>11} {'hf clip/s':>9} {'x hf':>5} {'ours MiB':>9} "
          f"{'hf MiB':>9} {'ours MFU':>8} {'hf MFU':>7}")
    for row in rows:
        mfu = (f"{row['ours_mfu']:8.1%} {row['hf_mfu']:7.1%}" if peak else f"{'-':>8} {'-':>7}")
        print(f"{str(row['compile']):7} {row['batch_size']:5d} {row['ours_clips_per_s']:11.2f} "
              f"{row['hf_clips_per_s']:9.2f} {row['speedup_vs_hf']:5.2f} {row['ours_peak_mib']:9.0f} "
              f"{row['hf_peak_mib']:9.0f} {mfu}")
    write_csv(rows, args.csv)


if __name__ == '__main__':
    main()
