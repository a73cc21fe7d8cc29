"""The picture of a timeline: the probabilities of the classes that win a segment as curves over
time, the segments as a band of coloured spans with their names, and thumbnails along the time axis;
the axis in h:mm:ss, so a two-hour video reads as well as a minute. A matplotlib Figure drawn
without pyplot, as visualize.py draws; visualize.save_png writes it."""
import numpy as np
from einops import rearrange
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from frame_stream import format_time
from visualize import DPI, shorten

FIGURE_INCHES = (16, 6.4)
# Heights of the curves, the segment band and the thumbnail strip, relative.
HEIGHT_RATIOS = (4, 0.7, 1.4)
BACKGROUND_COLOUR = '0.85'
# A segment's name is written in it when it spans this share of the time axis at least.
NAMED_SHARE = 0.04
# Tick steps the time axis picks from, in seconds: whole seconds, minutes and hours read well.
TIME_STEPS = [1, 2, 5, 10]


def time_axis(axes):
    """Ticks at round numbers of seconds, written h:mm:ss (tenths below ten seconds between ticks)."""
    axes.xaxis.set_major_locator(MaxNLocator(nbins=10, steps=TIME_STEPS, min_n_ticks=3))

    def label(seconds, _):
        ticks = axes.xaxis.get_majorticklocs()
        step = np.diff(ticks).min() if len(ticks) > 1 else 1.0
        return format_time(seconds, decimals=1 if step < 1 else 0)

    axes.xaxis.set_major_formatter(FuncFormatter(label))


def timeline_figure(starts, ends, probabilities, class_names, segments, classes, thumbnails=(), title=None):
    """The timeline picture. starts, ends (W,) seconds of the windows; probabilities (W, K); segments
    as timeline.find_segments gives them; classes: the names whose curves are drawn (at most ten), in
    the legend's order, each with its colour in the band (other labels grey); thumbnails
    [(start_s, end_s, uint8 (3, h, w))]."""
    starts, ends, probabilities = np.asarray(starts), np.asarray(ends), np.asarray(probabilities)
    centres = (starts + ends) / 2
    begin, end = float(starts.min()), float(ends.max())
    figure = Figure(figsize=FIGURE_INCHES, dpi=DPI)
    grid = figure.add_gridspec(3, 1, height_ratios=HEIGHT_RATIOS, left=0.05, right=0.84, top=0.92, bottom=0.08,
                               hspace=0.08)
    curves = figure.add_subplot(grid[0])
    band = figure.add_subplot(grid[1], sharex=curves)
    strip = figure.add_subplot(grid[2], sharex=curves)
    colours = {}
    for position, name in enumerate(classes):
        colours[name] = f'C{position}'  # matplotlib's colour cycle of ten colours
        curves.plot(centres, probabilities[:, class_names.index(name)], color=colours[name], linewidth=1.2,
                    label=shorten(name))
    curves.set_ylim(0, 1.02)
    curves.set_xlim(begin, end)
    curves.set_ylabel('probability')
    curves.grid(alpha=0.3)
    curves.tick_params(labelbottom=False)
    if colours:
        curves.legend(loc='upper left', bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    band.set_yticks([])
    band.set_ylim(0, 1)
    band.tick_params(labelbottom=False)
    for segment in segments:
        width = segment['end_s'] - segment['start_s']
        colour = colours.get(segment['label'], BACKGROUND_COLOUR)
        band.broken_barh([(segment['start_s'], width)], (0, 1), facecolors=colour, edgecolors='white', linewidth=0.5)
        if width >= NAMED_SHARE * (end - begin):
            band.text(segment['start_s'] + width / 2, 0.5, shorten(segment['label'], 18), ha='center', va='center',
                      fontsize=7, clip_on=True)
    band.set_ylabel('segments', rotation=0, ha='right', va='center', fontsize=8)
    strip.set_yticks([])
    strip.set_ylim(0, 1)
    slot = (end - begin) / max(1, len(thumbnails))
    for start, stop, frame in thumbnails:
        # Kept whole inside the strip: the first and last sit half a slot in from the ends.
        centre = min(max((start + stop) / 2, begin + slot / 2), end - slot / 2)
        inset = strip.inset_axes([centre - 0.45 * slot, 0.05, 0.9 * slot, 0.9], transform=strip.get_xaxis_transform())
        inset.imshow(rearrange(frame, 'c h w -> h w c').numpy())
        inset.set_axis_off()
    strip.set_xlabel('time (h:mm:ss)')
    time_axis(strip)
    if title:
        figure.suptitle(title, fontsize=9)
    return figure
