"""Running an exported model.onnx with onnxruntime in place of the PyTorch model: `OnnxClassifier` is
called as a VideoClassifier is where inference.classify calls it, and carries what inference reads of
one (config, class_names, preprocessing), from the export folder's config.json. No PyTorch model is built.

    model = OnnxClassifier.load('export/')          # or 'export/model.onnx'; device 'cuda' for onnxruntime-gpu
    logits = model(video)                           # float32 (N, T, 3, S, S) -> (N, K)
"""
import json
from pathlib import Path

import torch

from command_line import error_line
from model_loading import class_names_for
from onnx_export import INPUT_NAME, ONNX_FILE, OUTPUT_NAME, OnnxError, import_onnx_packages, open_session
from preprocessing import Preprocessing
from utils import reject_unknown
from video_transformer import CONFIG_FIELDS, VideoTransformerConfig
from weight_config import current_fields
from weight_formats import OUR_FORMAT


def find_onnx(source):
    """The ONNX file `source` names: a `.onnx` file, or a folder's model.onnx; None for other weights."""
    path = Path(source)
    if path.suffix.lower() == '.onnx':
        return path
    if path.is_dir() and (path / ONNX_FILE).is_file():
        return path / ONNX_FILE
    return None


def providers_for(device):
    """onnxruntime's execution providers for -device: the CPU for auto and cpu, CUDA (onnxruntime-gpu)
    for cuda and cuda:N; an OnnxError for a CUDA device this onnxruntime cannot use."""
    if device in (None, 'auto', 'cpu'):
        return ['CPUExecutionProvider']
    kind, _, index = str(device).partition(':')
    if kind != 'cuda' or not (index == '' or index.isdigit()):
        raise OnnxError(f'-device {device}: expected auto, cpu, cuda or cuda:N')
    (onnxruntime,) = import_onnx_packages('onnxruntime')
    if 'CUDAExecutionProvider' not in onnxruntime.get_available_providers():
        raise OnnxError(f'-device {device}: this onnxruntime has no CUDA provider; install onnxruntime-gpu in place '
                        f'of onnxruntime')
    return [('CUDAExecutionProvider', {'device_id': int(index or 0)}), 'CPUExecutionProvider']


def read_export_config(path):
    """config.json beside the ONNX file: (VideoTransformerConfig, class names or None, Preprocessing or None)."""
    config_file = Path(path).parent / 'config.json'
    try:
        meta = json.loads(config_file.read_text())
    except FileNotFoundError:
        raise OnnxError(f'{path}: needs the config.json of its export folder beside it (class names, '
                        f'preprocessing): export it with export_weights.py WEIGHTS FOLDER -onnx') from None
    except (OSError, ValueError) as error:
        raise OnnxError(f'{config_file}: cannot be read as JSON ({error_line(error, first=True)})') from None
    if not isinstance(meta, dict) or meta.get('format') != OUR_FORMAT:
        raise OnnxError(f'{config_file}: not the config.json of an export_weights.py folder (format '
                        f'{OUR_FORMAT!r})')
    try:
        # Fields of earlier versions read as load_model reads them; a later version's are refused.
        config = current_fields(meta['config'], config_file)
        reject_unknown(config, CONFIG_FIELDS, 'its config has fields this version does not know:', ValueError)
        config = VideoTransformerConfig(**config)
        settings = meta.get('preprocessing')
        preprocessing = Preprocessing.from_dict(settings) if settings is not None else None
    except (KeyError, TypeError, ValueError) as error:
        raise OnnxError(f'{config_file}: {error_line(error, first=True)}') from None
    return config, class_names_for(meta.get('class_names'), config.num_classes, config_file), preprocessing


class OnnxClassifier:
    """model.onnx in an onnxruntime session: float32 video (N, T, 3, S, S) -> float32 logits (N, K) as
    torch tensors on the CPU, with config, class_names and preprocessing from its config.json."""

    def __init__(self, path, session, config, class_names=None, preprocessing=None):
        self.path, self.session = Path(path), session
        self.config, self.class_names, self.preprocessing = config, class_names, preprocessing
        self.providers = session.get_providers()

    @classmethod
    def load(cls, source, device='auto', num_frames=None, img_size=None):
        """The ONNX model `source` (find_onnx) on -device's providers (providers_for). num_frames and
        img_size, when given, must be the graph's: only its batch axis is free. OnnxError when the
        graph's input or output does not fit its config.json."""
        path = find_onnx(source)
        if path is None or not path.is_file():
            raise OnnxError(f'{source}: no such ONNX file')
        config, class_names, preprocessing = read_export_config(path)
        session = open_session(path, providers_for(device))
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if [item.name for item in inputs] != [INPUT_NAME] or [item.name for item in outputs] != [OUTPUT_NAME]:
            raise OnnxError(f'{path}: takes {[item.name for item in inputs]} and gives '
                            f'{[item.name for item in outputs]}; an export_weights.py graph takes '
                            f'[{INPUT_NAME!r}] and gives [{OUTPUT_NAME!r}]')
        shape, expected = inputs[0].shape, [config.num_frames, config.in_channels, config.img_size, config.img_size]
        if preprocessing is not None:
            expected = [preprocessing.num_frames, config.in_channels, preprocessing.img_size, preprocessing.img_size]
        if len(shape) != 5 or list(shape[1:]) != expected or inputs[0].type != 'tensor(float)':
            raise OnnxError(f'{path}: takes {inputs[0].type} {shape}, but its config.json says videos of '
                            f'(batch, {", ".join(map(str, expected))}) float32; export the weights again')
        if list(outputs[0].shape[1:]) != [config.num_classes]:
            raise OnnxError(f'{path}: gives logits {outputs[0].shape}, but its config.json says '
                            f'{config.num_classes} classes; export the weights again')
        for flag, value, fixed in (('num_frames', num_frames, shape[1]), ('img_size', img_size, shape[3])):
            if value is not None and value != fixed:
                raise OnnxError(f'-{flag} {value}: the ONNX graph {path} takes {fixed} (only its batch is free); '
                                f'export the weights with -set {flag}={value} -onnx, or run them with PyTorch')
        return cls(path, session, config, class_names, preprocessing)

    def __call__(self, video):
        """float32 (N, T, 3, S, S) on the CPU -> float32 logits (N, K) on the CPU."""
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: video.float().cpu().numpy()})
        return torch.from_numpy(logits)

    def to(self, device):
        """Kept on its providers (load's device): the videos come normalised on the CPU."""
        return self

    def __repr__(self):
        return f'OnnxClassifier({self.path}, providers={self.providers})'

