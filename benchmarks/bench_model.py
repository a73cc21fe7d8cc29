"""Forward and training-step time and peak memory of our TimeSformer, side by side in one run.

Three implementations with the same config and the same weights:
  sdpa      our model, attention through F.scaled_dot_product_attention (the default)
  explicit  our model, the attention module's explicit softmax(QK^T / sqrt(d)) V path
  hf        transformers' TimesformerForVideoClassification (benchmark-only dependency)

Times are taken in turns, the three implementations in one process per config and mode, after a
warm-up step each. Peak memory is the most one step holds beyond the model and its optimizer state:
on CUDA the allocator's peak; on CPU the rise of the resident set's high-water mark over one step,
in a process of its own where glibc returns every block of 64 KiB or more to the system on free,
so the resident size follows the live tensors.

On the CPU, `repeats` more steps of each run under the profiler to find the floor of a step: the
time in the linear layers' matrix products (aten::addmm, aten::mm) and in the AdamW update, work
every implementation of the same function does with the same shapes and FLOPs. A step can be at most
total / floor faster than transformers' however little the rest costs; the table prints that bound
beside the speedup.

    python benchmarks/bench_model.py                       # both configs, CSV in outputs/
    python benchmarks/bench_model.py --configs small --repeats 5
    python benchmarks/bench_model.py --configs base --modes train --dtype bfloat16
"""
import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_export import hf_timesformer_config  # noqa: E402
from utils import set_attention_fused, write_csv  # noqa: E402
from video_transformer import VideoClassifier, timesformer_base_patch16_224  # noqa: E402
from weight_formats import convert_hf_timesformer  # noqa: E402

# Same numerics as transformers' TimesformerConfig defaults (the preset's LayerNorm eps 1e-6 and
# exact GELU, no dropout or stochastic depth), so both sides compute the same function.
CONFIGS = {
    'base': dict(num_frames=8, img_size=224),
    'small': dict(num_frames=8, img_size=112, embed_dims=384, num_heads=6),
}
IMPLEMENTATIONS = ('sdpa', 'explicit', 'hf')
NUM_CLASSES = 400


def our_config(name):
    return timesformer_base_patch16_224(**CONFIGS[name], drop_path_rate=0.0, num_classes=NUM_CLASSES)


def hf_model(config):
    from transformers import TimesformerConfig, TimesformerForVideoClassification
    torch.manual_seed(0)
    return TimesformerForVideoClassification(TimesformerConfig(**hf_timesformer_config(config)))


def build(implementation, config_name):
    """(model, function of a video) to measure; ours always carries the transformers model's weights."""
    config = our_config(config_name)
    reference = hf_model(config)
    if implementation == 'hf':
        return reference, lambda video: reference(pixel_values=video).logits
    ours = VideoClassifier(config)
    ours.load_state_dict(convert_hf_timesformer(reference.state_dict()))
    return ours, set_attention_fused(ours, implementation == 'sdpa')


def autocast(device, dtype):
    """Autocast to `dtype` on `device`; float32 turns it off."""
    return torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32)


def resident_bytes(field):
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in bytes."""
    with open('/proc/self/status') as status:
        line = next(line for line in status if line.startswith(field + ':'))
    return int(line.split()[1]) * 1024


def reset_peak_resident():
    """Start a new VmHWM peak from the current resident size (Linux 4.0+)."""
    with open('/proc/self/clear_refs', 'w') as clear_refs:
        clear_refs.write('5')


def make_step(implementation, config_name, mode, device, dtype):
    """A function running one `mode` step ('forward' or 'train': with backward and AdamW) of a batch of 1,
    under autocast to `dtype` unless it is float32."""
    torch.manual_seed(0)
    model, run = build(implementation, config_name)
    model.to(device)
    config = our_config(config_name)
    video = torch.randn(1, config.num_frames, 3, config.img_size, config.img_size, device=device)
    target = torch.zeros(1, dtype=torch.long, device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        if mode == 'forward':
            model.eval()
            with torch.no_grad(), autocast(device, dtype):
                run(video)
        else:
            model.train()
            with autocast(device, dtype):
                loss = torch.nn.functional.cross_entropy(run(video), target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if device == 'cuda':
            torch.cuda.synchronize()

    step()  # warm-up: allocator, kernels and optimizer state
    return step


def in_turns(measure, config_name, mode, repeats, device, dtype):
    """{implementation: medians of the numbers measure(step) returns}, over `repeats` steps of every
    implementation taken in turns in this one process, so that drift of the machine reaches all alike."""
    steps = {implementation: make_step(implementation, config_name, mode, device, dtype)
             for implementation in IMPLEMENTATIONS}
    samples = {implementation: [] for implementation in IMPLEMENTATIONS}
    for _ in range(repeats):
        for implementation, step in steps.items():
            samples[implementation].append(measure(step))
    return {implementation: [statistics.median_high(column) for column in zip(*values)]
            for implementation, values in samples.items()}


def timed(step):
    """(seconds of one step,)."""
    start = time.perf_counter()
    step()
    return (time.perf_counter() - start,)


def profiled(step):
    """(seconds of one CPU step under the profiler, seconds of it in linear-layer GEMMs and AdamW)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        (total,) = timed(step)
    events = {event.key: event for event in profiler.key_averages()}
    gemm_us = sum(events[name].self_cpu_time_total for name in ('aten::addmm', 'aten::mm') if name in events)
    adamw = events.get('Optimizer.step#AdamW.step')
    return total, (gemm_us + (adamw.cpu_time_total if adamw else 0.0)) / 1e6


def peak_bytes(step, device):
    """The most `step` holds at once beyond what was allocated before it."""
    if device == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        step()
        return torch.cuda.max_memory_allocated() - baseline
    gc.collect()
    reset_peak_resident()
    baseline = resident_bytes('VmRSS')
    step()
    return resident_bytes('VmHWM') - baseline


def check_same_function(config_name, dtype):
    """Max |logit difference| of our model against transformers' on one video, both under autocast to `dtype`."""
    reference, _ = build('hf', config_name)
    ours, _ = build('sdpa', config_name)
    config = our_config(config_name)
    video = torch.randn(1, config.num_frames, 3, config.img_size, config.img_size)
    with torch.no_grad(), autocast('cpu', dtype):
        return (ours.eval()(video) - reference.eval()(pixel_values=video).logits).abs().max().item()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--configs', nargs='+', default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument('--modes', nargs='+', default=['forward', 'train'], choices=['forward', 'train'])
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--threads', type=int, default=torch.get_num_threads(),
                        help='CPU threads per measurement (default: all cores)')
    parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16', 'float16'],
                        help='autocast dtype of the steps (default: float32, no autocast)')
    parser.add_argument('--csv', type=Path, default=Path('outputs/bench_model.csv'))
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    if args.worker:
        quantity, config, mode, *implementation = json.loads(args.worker)
        if quantity in ('time', 'floor'):
            measure = timed if quantity == 'time' else profiled
            print(json.dumps(in_turns(measure, config, mode, args.repeats, args.device, dtype)))
        else:
            step = make_step(implementation[0], config, mode, args.device, dtype)
            print(json.dumps({'peak_bytes': peak_bytes(step, args.device)}))
        return

    # Times: one process per config and mode. Memory: one per implementation too, where blocks of
    # 64 KiB or more go back to the system on free, so the resident size follows the tensors.
    jobs = [('time', config, mode) for config in args.configs for mode in args.modes]
    jobs += [('memory', config, mode, implementation) for config in args.configs
             for mode in args.modes for implementation in IMPLEMENTATIONS]
    if args.device == 'cpu':
        jobs += [('floor', config, mode) for config in args.configs for mode in args.modes]
    memory_env = {**os.environ, 'MALLOC_MMAP_THRESHOLD_': str(64 * 1024)}
    results = {}
    for job in tqdm(jobs, desc='benchmark'):
        command = [sys.executable, __file__, '--worker', json.dumps(job), '--repeats', str(args.repeats),
                   '--device', args.device, '--threads', str(args.threads), '--dtype', args.dtype]
        output = subprocess.run(command, check=True, capture_output=True, text=True,
                                env=memory_env if job[0] == 'memory' else None).stdout
        results[tuple(job)] = json.loads(output.splitlines()[-1])

    rows = []
    for config in args.configs:
        difference = check_same_function(config, dtype)
        for mode in args.modes:
            seconds = results['time', config, mode]
            ours, explicit, hf = ({'seconds': seconds[name][0], **results['memory', config, mode, name]}
                                  for name in IMPLEMENTATIONS)
            rows.append({
                'config': config, 'mode': mode, 'device': args.device, 'threads': args.threads, 'dtype': args.dtype,
                'sdpa_s': ours['seconds'], 'explicit_s': explicit['seconds'], 'hf_s': hf['seconds'],
                'sdpa_peak_mib': ours['peak_bytes'] / 2**20, 'explicit_peak_mib': explicit['peak_bytes'] / 2**20,
                'hf_peak_mib': hf['peak_bytes'] / 2**20,
                'speedup_vs_explicit': explicit['seconds'] / ours['seconds'],
                'speedup_vs_hf': hf['seconds'] / ours['seconds'],
                'max_abs_logit_diff_vs_hf': difference,
            })
            if ('floor', config, mode) in results:
                floors = results['floor', config, mode]
                rows[-1].update({f'{name}_floor_share': floor / total for name, (total, floor) in floors.items()})
                rows[-1]['max_speedup_vs_hf'] = floors['hf'][0] / floors['hf'][1]
    header = (f"{'config':6} {'mode':8} {'sdpa s':>8} {'explicit s':>10} {'hf s':>8} "
              f"{'sdpa MiB':>9} {'expl MiB':>9} {'hf MiB':>9} {'x expl':>7} {'x hf':>6} {'max x hf':>8} "
              f"{'|dlogit|':>9}")
    print(f'TimeSformer, batch 1, {args.device}, {args.threads} threads, {args.dtype}, median of {args.repeats}')
    print(header)
    for row in rows:
        bound = f"{row['max_speedup_vs_hf']:8.2f}" if 'max_speedup_vs_hf' in row else f"{'-':>8}"
        print(f"{row['config']:6} {row['mode']:8} {row['sdpa_s']:8.3f} {row['explicit_s']:10.3f} {row['hf_s']:8.3f} "
              f"{row['sdpa_peak_mib']:9.0f} {row['explicit_peak_mib']:9.0f} {row['hf_peak_mib']:9.0f} "
              f"{row['speedup_vs_explicit']:7.2f} {row['speedup_vs_hf']:6.2f} {bound} "
              f"{row['max_abs_logit_diff_vs_hf']:9.1e}")
    if 'max_speedup_vs_hf' in rows[0]:
        print("max x hf: transformers' step time over the part of it in linear-layer GEMMs and AdamW, "
              'which every implementation of the same function repeats')
    write_csv(rows, args.csv)

if __name__ == '__main__':
    main()
