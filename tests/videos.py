"""Videos the tests write with PyAV (any codec and pixel format the local FFmpeg can encode), and
their keyframes as the packets say."""
import av
import numpy as np

# A dark red background and a light square that moves right: the colours tell a decoder that swaps
# channels or sizes from one that does not.
BACKGROUND, SQUARE = (150, 30, 30), (230, 230, 120)


def can_encode(codec):
    """Whether the local PyAV / FFmpeg build has an encoder named codec."""
    try:
        av.codec.Codec(codec, 'w')
    except (av.codec.codec.UnknownCodecError, ValueError):
        return False
    return True


def moving_square(num_frames, height, width, gray=False):
    """uint8 (num_frames, height, width, 3): a square of a quarter of the short side moving
    across the frame; gray=True gives its luma on all three channels."""
    side = max(2, min(height, width) // 4)
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for index in range(num_frames):
        frame[:] = BACKGROUND
        left = (width - side) * index // max(1, num_frames - 1)
        top = (height - side) // 2
        frame[top:top + side, left:left + side] = SQUARE
        frames[index] = frame
    if gray:
        frames[:] = frames.mean(axis=-1, keepdims=True).astype(np.uint8)
    return frames


def quadrants(num_frames, height, width):
    """uint8 (num_frames, height, width, 3): four flat colours, one per quarter of the frame, so each
    rotation and flip of it differs from the others."""
    frame = np.empty((height, width, 3), dtype=np.uint8)
    top, left = height // 2, width // 2
    frame[:top, :left], frame[:top, left:] = (220, 40, 40), (40, 200, 40)
    frame[top:, :left], frame[top:, left:] = (40, 40, 220), (230, 230, 230)
    return np.repeat(frame[None], num_frames, axis=0)


def noise(num_frames, height, width, seed=0):
    """uint8 (num_frames, height, width, 3) of uniform noise: every frame costs the decoder the same,
    so decoding time counts frames."""
    return np.random.default_rng(seed).integers(0, 256, (num_frames, height, width, 3), dtype=np.uint8)


def write_video(path, frames, fps=25, codec='libx264', pix_fmt='yuv420p', rotation=None, keyframe_interval=None):
    """Encode uint8 (N, H, W, 3) RGB frames to path, with rotation (degrees counter-clockwise, as
    PyAV's VideoFrame.rotation reads it back) in the display matrix when given, and with libx264 a
    keyframe every keyframe_interval frames exactly (else x264's default, 250 at most); returns path."""
    height, width = frames.shape[1:3]
    with av.open(str(path), mode='w') as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if rotation is not None:
            stream.set_display_rotation(rotation)
        stream.options = {'preset': 'ultrafast'} if codec == 'libx264' else {}
        if keyframe_interval is not None:
            # No scene-cut keyframes in between, so the spacing is what the test asks for.
            stream.options |= {'g': str(keyframe_interval), 'keyint_min': str(keyframe_interval), 'sc_threshold': '0'}
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format='rgb24')))
        container.mux(stream.encode())
    return path


def keyframes_of(path):
    """Frame indices of the keyframes, read from the packets (presentation order)."""
    with av.open(str(path)) as container:
        packets = [packet for packet in container.demux(video=0) if packet.pts is not None]
    order = {pts: index for index, pts in enumerate(sorted(packet.pts for packet in packets))}
    return sorted(order[packet.pts] for packet in packets if packet.is_keyframe)


def write_long_video(path, seconds, height, width, fps=25):
    """An H.264 clip of `seconds`, written frame by frame so it never sits in memory whole."""
    with av.open(str(path), mode='w') as container:
        stream = container.add_stream('libx264', rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, 'yuv420p'
        stream.options = {'preset': 'ultrafast'}
        count = int(seconds * fps)
        for index in range(count):
            frame = moving_square(1, height, width)[0]
            frame = np.roll(frame, index * width // count, axis=1)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')))
        container.mux(stream.encode())
    return path


ODD_VIDEOS = {
    # name: (frames, height, width, fps, codec, pix_fmt, gray)
    'vp9.webm': (12, 48, 64, 25, 'libvpx-vp9', 'yuv420p', False),
    'hevc.mkv': (12, 48, 64, 25, 'libx265', 'yuv420p', False),
    'mpeg4.avi': (12, 48, 64, 25, 'mpeg4', 'yuv420p', False),
    'portrait.mp4': (12, 96, 48, 25, 'libx264', 'yuv420p', False),
    'odd_97x61.mp4': (12, 61, 97, 25, 'libx264', 'yuv444p', False),
    'gray.mp4': (12, 48, 64, 25, 'libx264', 'gray', True),
    'yuv444.mp4': (12, 48, 64, 25, 'libx264', 'yuv444p', False),
    'fps60.mp4': (120, 36, 48, 60, 'libx264', 'yuv420p', False),
    'uhd_3840x2160.mp4': (5, 2160, 3840, 25, 'libx264', 'yuv420p', False),
    'two_frames.mp4': (2, 48, 64, 25, 'libx264', 'yuv420p', False),
}


def write_odd_videos(folder):
    """ODD_VIDEOS the local FFmpeg can encode, under folder/odd; returns {name: path}."""
    (folder / 'odd').mkdir(parents=True, exist_ok=True)
    written = {}
    for name, (frames, height, width, fps, codec, pix_fmt, gray) in ODD_VIDEOS.items():
        if can_encode(codec):
            written[name] = write_video(folder / 'odd' / name, moving_square(frames, height, width, gray), fps=fps,
                                        codec=codec, pix_fmt=pix_fmt)
    return written
