"""Pictures of predictions: a video's frames with its top classes, where the class token looked
(attention rollout), and the confusion matrix of an evaluation.

Figures are `matplotlib.figure.Figure` objects drawn without pyplot, so no global backend or
window is involved; `save_png` writes one.

Attention rollout (Abnar & Zuidema, 2020, "Quantifying Attention Flow in Transformers"): each
block's attention weights (G, heads, N, N) are averaged over heads, the identity is added for the
residual connection, and rows are renormalised to sum to 1; the product of these matrices from the
first block to the last says how much each token's input reaches each output token. The map drawn is
what the head reads: the class token's row over the patch tokens; for VideoMAE, which averages its
tokens, the mean of the rows; for V-JEPA 2, the rollout continues through its attentive pooler's
self-attention blocks and ends in its query's cross-attention row. The rollout goes through the attention that
mixes patches of a frame: TimeSformer's divided `spatial_attn` (one map per frame, so the temporal
attention between them is left out), space_only's and ViViT fact_encoder's spatial blocks (one map
per token frame), and joint space-time attention (one map over all patches of all frames).
"""
import matplotlib.colors
import numpy as np
import torch
from einops import rearrange
from matplotlib.figure import Figure

from preprocessing import normalize
from utils import record_attention

# Frames in a strip at most; longer clips show this many, evenly spaced.
MAX_STRIP_FRAMES = 16
# Inches per frame in a strip, at least this many frames wide so the bar chart's labels fit, and
# the bar chart's height; at DPI a strip of n frames is a PNG of 160 * max(n, 4) x 360 pixels.
FRAME_INCHES, MIN_STRIP_FRAMES, CHART_INCHES, DPI = 1.6, 4, 2.0, 100
# Confusion matrix figure: heat map and the list of the worst-confused pairs beside it, class names on the
# axes up to MAX_TICK_LABELS classes, counts in the cells up to MAX_COUNTED_CLASSES. The map's side grows
# with the classes between its bounds (inches); a 7-point tick label and an 8-point monospace list line
# take about these many inches per character and per line.
WORST_PAIRS, MAX_TICK_LABELS, MAX_COUNTED_CLASSES = 30, 40, 30
MIN_MAP_INCHES, MAX_MAP_INCHES, MAP_INCHES_PER_CLASS = 4.5, 9.0, 0.3
TICK_CHARACTER_INCHES, LIST_POINTS, LIST_CHARACTER_INCHES, LIST_LINE_INCHES = 0.06, 8, 0.07, 0.14
COLORBAR_INCHES, MARGIN_INCHES = 1.2, 0.8
# Counts take this share of a cell's side, within these font sizes (points).
COUNT_FONT_SHARE, MIN_COUNT_POINTS, MAX_COUNT_POINTS = 0.4, 4, 14
ATTENTION_ALPHA = 0.5
# Characters of a class name that fit beside the bar chart (one frame's width at 8 points).
LABEL_CHARACTERS = 26


def save_png(figure, path):
    """Write `figure` to `path` as PNG at DPI."""
    figure.savefig(path, format='png', dpi=DPI)


# ---------------------------------------------------------------- attention rollout

def attention_rollout(maps, pooling='cls_token', query=None):
    """Rollout of attention through blocks in order: maps [(G, heads, N, N)] -> the share of each
    token that the head reads, per group G (see the module doc): (G, N - 1), the class token's share of
    each patch token ('cls_token') or the patch tokens' mean share ('mean'); (G, N), the mean row
    ('fc_norm'); or through a pooling query's cross-attention weights `query` (G, heads, 1, N)
    ('attentive')."""
    tokens = maps[0].shape[-1]
    identity = torch.eye(tokens, dtype=maps[0].dtype, device=maps[0].device)
    rollout = identity
    for weights in maps:
        mixed = weights.mean(dim=1) + identity
        rollout = (mixed / mixed.sum(dim=-1, keepdim=True)) @ rollout
    if pooling == 'attentive':
        return (query.mean(dim=1) @ rollout)[:, 0]
    if pooling == 'fc_norm':
        return rollout.mean(dim=1)
    return rollout[:, 1:, 1:].mean(dim=1) if pooling == 'mean' else rollout[:, 0, 1:]


def rollout_modules(config):
    """Names of the Attention modules the rollout goes through, in block order; a ValueError for
    variants without attention among a frame's patches alone (fact_dot_product, the original repository's
    37e1801 fact_encoder, whose spatial groups interleave patches)."""
    blocks = range(config.num_transformer_layers)
    if config.pooling == 'attentive':
        return [f'backbone.blocks.{index}.attn.attn' for index in blocks] + \
            [f'head.pooler.blocks.{index}.attn.attn' for index in range(config.num_pooler_layers)]
    if config.attention_type == 'divided_space_time':
        return [f'backbone.blocks.{index}.spatial_attn.attn' for index in blocks]
    if config.attention_type in ('space_only', 'joint_space_time') or (
            config.attention_type == 'fact_encoder' and config.fact_encoder_attention == 'self_attn'):
        return [f'backbone.blocks.{index}.attn.attn' for index in blocks]
    raise ValueError(f'attention maps are drawn for divided_space_time, space_only, joint_space_time and '
                     f'fact_encoder (self_attn) models, not {config.arch} {config.attention_type}'
                     f'{" (" + config.fact_encoder_attention + ")" if config.attention_type == "fact_encoder" else ""}')


def frame_attention(model, frames, preprocessing, device='cpu'):
    """Where the head looked in one view, uint8 frames (T, 3, S, S): the rollout per token frame,
    float (T', grid, grid), stretched to [0, 1] over the whole view so frames compare."""
    config = model.config
    names = rollout_modules(config)
    video = normalize(frames.to(device), preprocessing.mean, preprocessing.std)
    with torch.inference_mode(), record_attention(model) as attentions:
        model(video[None])
        query = attentions['head.pooler.cross_attn'].weights if config.pooling == 'attentive' else None
        relevance = attention_rollout([attentions[name].weights for name in names], config.pooling, query)
    grid = config.img_size // config.patch_size
    if config.attention_type == 'joint_space_time':
        relevance = rearrange(relevance, '1 (p t) -> t p', p=grid * grid)
    maps = rearrange(relevance, 't (h w) -> t h w', h=grid).float().cpu()
    return (maps - maps.min()) / (maps.max() - maps.min()).clamp_min(torch.finfo(maps.dtype).tiny)


# ---------------------------------------------------------------- one video

def shorten(label, length=LABEL_CHARACTERS):
    """label, cut to `length` characters with an ellipsis."""
    return label if len(label) <= length else label[:length - 1] + '\u2026'


def prediction_figure(frames, labels, probabilities, attention=None, title=None):
    """A strip of the frames (uint8 (T, 3, S, S), at most MAX_STRIP_FRAMES of them, evenly spaced)
    above a bar chart of the top classes (labels, probabilities in [0, 1], best first). attention
    (T', grid, grid) in [0, 1] is drawn over each frame, frame t taking token frame t * T' // T."""
    shown = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), MAX_STRIP_FRAMES)).round().astype(int))
    columns = max(len(shown), MIN_STRIP_FRAMES)
    figure = Figure(figsize=(FRAME_INCHES * columns, FRAME_INCHES + CHART_INCHES), dpi=DPI)
    grid = figure.add_gridspec(2, columns, height_ratios=(FRAME_INCHES, CHART_INCHES), left=0.02, right=0.98,
                               top=0.9, bottom=0.13, hspace=0.35, wspace=0.04)
    size = frames.shape[-1]
    for column, index in enumerate(shown):
        axes = figure.add_subplot(grid[0, column])
        axes.imshow(rearrange(frames[index], 'c h w -> h w c').numpy())
        if attention is not None:
            heat = attention[index * len(attention) // len(frames)].numpy()
            axes.imshow(heat, cmap='jet', alpha=ATTENTION_ALPHA, vmin=0, vmax=1, interpolation='bilinear',
                        extent=(-0.5, size - 0.5, size - 0.5, -0.5))
        axes.set_title(f'frame {index}', fontsize=7)
        axes.set_axis_off()
    # The first column's width is left to the class names.
    chart = figure.add_subplot(grid[1, 1:])
    positions = np.arange(len(labels))
    chart.barh(positions, probabilities, color='tab:blue')
    chart.set_yticks(positions, [shorten(label) for label in labels], fontsize=8)
    chart.invert_yaxis()
    chart.set_xlim(0, 1)
    chart.tick_params(axis='x', labelsize=7)
    chart.set_xlabel('probability (softmax averaged over views)', fontsize=7)
    for position, probability in zip(positions, probabilities):
        chart.text(min(probability, 0.85) + 0.01, position, f'{probability:.1%}', va='center', fontsize=7)
    if title:
        figure.suptitle(title, fontsize=8)
    return figure


# ---------------------------------------------------------------- evaluation

def worst_confusions(confusion, count=WORST_PAIRS):
    """The `count` largest off-diagonal cells of confusion[true, predicted] (counts), largest first:
    [(true, predicted, videos)]."""
    others = confusion.clone()
    others.fill_diagonal_(0)
    values, flat = others.flatten().topk(min(count, others.numel()))
    return [(index // confusion.shape[1], index % confusion.shape[1], value)
            for value, index in zip(values.tolist(), flat.tolist()) if value > 0]


def confusion_figure(confusion, class_names, title='confusion matrix'):
    """The confusion matrix (K, K) of counts, rows the true class, as a heat map of each row's
    shares with the classes sorted by name (class names on the axes up to MAX_TICK_LABELS classes,
    each cell's count written in it up to MAX_COUNTED_CLASSES), and the worst-confused pairs listed
    beside it or under it, where it leaves less of the canvas empty. The canvas is sized to its
    content: the map grows with the classes up to MAX_MAP_INCHES (readable at 400 classes), the list
    is as wide as its longest line and as tall as its lines."""
    order = sorted(range(len(class_names)), key=lambda index: class_names[index])
    counts = confusion[order][:, order].double()
    shares = counts / counts.sum(dim=1, keepdim=True).clamp_min(1)
    totals = confusion.sum(dim=1)
    lines = [f'{videos:>6}  {videos / max(1, int(totals[true])):5.0%}  {class_names[true]} -> {class_names[predicted]}'
             for true, predicted, videos in worst_confusions(confusion)] or ['no confusions']
    lines = ['worst-confused pairs', f'{"videos":>6}  {"share":>5}  true -> predicted', '', *lines]
    labelled = len(class_names) <= MAX_TICK_LABELS
    label_inches = max(map(len, class_names)) * TICK_CHARACTER_INCHES if labelled else 0.0
    map_inches = min(MAX_MAP_INCHES, max(MIN_MAP_INCHES, MAP_INCHES_PER_CLASS * len(class_names)))
    heat_width, heat_height = map_inches + label_inches + COLORBAR_INCHES, map_inches + label_inches
    list_width, list_height = max(map(len, lines)) * LIST_CHARACTER_INCHES, len(lines) * LIST_LINE_INCHES
    # The list goes where it leaves less of the canvas empty: under the map (empty beside the list)
    # or beside it (empty under the list).
    below = (max(heat_width, list_width) - list_width) * list_height < list_width * max(0, heat_height - list_height)
    if below:
        size = (max(heat_width, list_width) + MARGIN_INCHES, heat_height + list_height + MARGIN_INCHES)
    else:
        size = (heat_width + list_width + MARGIN_INCHES, max(heat_height, list_height) + MARGIN_INCHES)
    figure = Figure(figsize=size, dpi=DPI, layout='constrained')
    grid = (figure.add_gridspec(2, 1, height_ratios=(heat_height, list_height)) if below else
            figure.add_gridspec(1, 2, width_ratios=(heat_width, list_width)))
    heat = figure.add_subplot(grid[0, 0])
    # A square root scale lifts the small off-diagonal shares that matter at hundreds of classes.
    norm = matplotlib.colors.PowerNorm(0.5, vmin=0, vmax=1)
    image = heat.imshow(shares.numpy(), cmap='viridis', norm=norm, interpolation='nearest')
    figure.colorbar(image, ax=heat, fraction=0.05, pad=0.02, label="share of the true class's videos")
    heat.set_xlabel('predicted class')
    heat.set_ylabel('true class')
    heat.set_title(f'{title} ({int(counts.sum())} videos, {len(class_names)} classes sorted by name)', fontsize=9)
    if labelled:
        ticks = range(len(order))
        heat.set_xticks(ticks, [class_names[index] for index in order], rotation=90, fontsize=7)
        heat.set_yticks(ticks, [class_names[index] for index in order], fontsize=7)
    if len(class_names) <= MAX_COUNTED_CLASSES:
        write_counts(heat, counts, image.cmap(norm(shares.numpy())), map_inches * 72 / len(class_names))
    listing = figure.add_subplot(grid[1, 0] if below else grid[0, 1])
    listing.set_axis_off()
    listing.text(0, 1, '\n'.join(lines), va='top', ha='left', family='monospace', fontsize=LIST_POINTS,
                 transform=listing.transAxes)
    return figure


def write_counts(axes, counts, colours, cell_points):
    """Each cell's count (K, K) in its centre, white on dark cells and black on light ones (colours
    (K, K, 4) RGBA, the cells' own), in a font that fits a cell of cell_points."""
    size = min(MAX_COUNT_POINTS, max(MIN_COUNT_POINTS, COUNT_FONT_SHARE * cell_points))
    luminance = colours[..., :3] @ np.array([0.299, 0.587, 0.114])
    for (row, column), count in np.ndenumerate(counts.numpy().astype(np.int64)):
        axes.text(column, row, str(count), ha='center', va='center', fontsize=size,
                  color='white' if luminance[row, column] < 0.5 else 'black')


# ---------------------------------------------------------------- masked autoencoding

RECONSTRUCTION_ROWS = ('frames', 'masked input', 'reconstruction')


def reconstruction_figure(frames, masked, reconstructed, title=None):
    """For each clip, three strips: its frames, the masked input and the reconstruction, each
    (B, T, 3, S, S) in [0, 1] (masked_autoencoder.reconstruct), at most MAX_STRIP_FRAMES frames a strip."""
    clips, length = frames.shape[:2]
    shown = np.unique(np.linspace(0, length - 1, min(length, MAX_STRIP_FRAMES)).round().astype(int))
    rows = clips * len(RECONSTRUCTION_ROWS)
    figure = Figure(figsize=(FRAME_INCHES * len(shown), FRAME_INCHES * rows), dpi=DPI)
    grid = figure.add_gridspec(rows, len(shown), left=0.06, right=0.99, top=0.95 if title else 0.99, bottom=0.01,
                               hspace=0.1, wspace=0.04)
    for clip in range(clips):
        for part, (name, video) in enumerate(zip(RECONSTRUCTION_ROWS, (frames, masked, reconstructed))):
            row = clip * len(RECONSTRUCTION_ROWS) + part
            for column, index in enumerate(shown):
                axes = figure.add_subplot(grid[row, column])
                axes.imshow(rearrange(video[clip, index], 'c h w -> h w c').float().cpu().numpy())
                axes.set_xticks([])
                axes.set_yticks([])
                if column == 0:
                    axes.set_ylabel(f'clip {clip}\n{name}', fontsize=7)
    if title:
        figure.suptitle(title, fontsize=8)
    return figure
