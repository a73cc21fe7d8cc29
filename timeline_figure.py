"""The picture of a timeline: the probabilities of the classes that win a segment as curves over
time, the segments as a band of coloured spans with their names, and thumbnails along the time axis;
the axis in h:mm:ss, so a two-hour video reads as well as a minute. A matplotlib Figure drawn
without pyplot, as visualize.py draws; visualize.save_png writes it."""
import numpy as np
from einops import rearrange
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MultipleLocator

from frame_stream import format_time
from visualize import DPI, shorten

FIGURE_INCHES = (16, 6.4)
# Heights of the curves, the segment band and the thumbnail strip, relative.
HEIGHT_RATIOS = (4, 0.7, 1.4)
BACKGROUND_COLOUR = '0.85'
# Band labels: characters of 7 points (about 0.6 of their size wide) that fit in a segment, at least
# this many, else the segment is left unnamed (its colour is in the legend).
LABEL_POINTS, CHARACTER_WIDTH, MIN_LABEL_CHARACTERS = 7, 0.6, 8
LEFT, RIGHT = 0.05, 0.84
# Tick steps of the time axis in seconds: round numbers of seconds, minutes and hours.
TIME_STEPS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200)
MAX_TICKS = 10


def time_axis(axes, begin, end):
    """Ticks at the first round step that gives at most MAX_TICKS, written h:mm:ss (with tenths
    when the step is below a second)."""
    step = next((step for step in TIME_STEPS if (end - begin) / step <= MAX_TICKS), TIME_STEPS[-1])
    axes.xaxis.set_major_locator(MultipleLocator(step))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda seconds, _: format_time(seconds, 1 if step < 1 else 0)))


def timeline_figure(starts, ends, probabilities, class_names, segments, classes, thumbnails=(), title=None,
                    ylabel='probability'):
    """The timeline picture. starts, ends (W,) seconds of the windows; probabilities (W, K) drawn at
    the windows' centres; segments as timeline.find_segments gives them; classes: the names whose
    curves are drawn (at most ten), in the legend's order, each with its colour in the band (other
    labels grey); thumbnails [uint8 (3, h, w)] of windows spread evenly over the time, drawn in
    equal slots along it."""
    starts, ends, probabilities = np.asarray(starts), np.asarray(ends), np.asarray(probabilities)
    centres = (starts + ends) / 2
    begin, end = float(starts.min()), float(ends.max())
    figure = Figure(figsize=FIGURE_INCHES, dpi=DPI)
    grid = figure.add_gridspec(3, 1, height_ratios=HEIGHT_RATIOS, left=LEFT, right=RIGHT, top=0.92, bottom=0.08,
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
    curves.set_ylabel(ylabel)
    curves.grid(alpha=0.3)
    curves.tick_params(labelbottom=False)
    if colours:
        curves.legend(loc='upper left', bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    band.set_yticks([])
    band_points = FIGURE_INCHES[0] * (RIGHT - LEFT) * 72
    band.set_ylim(0, 1)
    band.tick_params(labelbottom=False)
    for segment in segments:
        width = segment['end_s'] - segment['start_s']
        colour = colours.get(segment['label'], BACKGROUND_COLOUR)
        band.broken_barh([(segment['start_s'], width)], (0, 1), facecolors=colour, edgecolors='white', linewidth=0.5)
        characters = int(width / (end - begin) * band_points / (LABEL_POINTS * CHARACTER_WIDTH))
        if characters >= MIN_LABEL_CHARACTERS:
            band.text(segment['start_s'] + width / 2, 0.5, shorten(segment['label'], characters), ha='center',
                      va='center', fontsize=LABEL_POINTS)
    band.set_ylabel('segments', rotation=0, ha='right', va='center', fontsize=8)
    strip.set_yticks([])
    strip.set_ylim(0, 1)
    slot = (end - begin) / max(1, len(thumbnails))
    for position, frame in enumerate(thumbnails):
        centre = begin + (position + 0.5) * slot
        inset = strip.inset_axes([centre - 0.45 * slot, 0.05, 0.9 * slot, 0.9], transform=strip.get_xaxis_transform())
        inset.imshow(rearrange(frame, 'c h w -> h w c').numpy())
        inset.set_axis_off()
    strip.set_xlabel('time (h:mm:ss)')
    time_axis(strip, begin, end)
    if title:
        figure.suptitle(title, fontsize=9)
    return figure
