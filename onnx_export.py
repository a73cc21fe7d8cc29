"""ONNX export of a VideoClassifier, checked against PyTorch with onnxruntime before it is kept.

The graph of `model.onnx` takes the model's input, a normalised float32 video `video` (B, T, 3, S, S), and
returns `logits` (B, K); only the batch axis is free. torch.export's exporter (`dynamo=True`) writes it:
the TorchScript exporter still works in torch 2.13 but is deprecated. `fp16=True` computes in float16
behind the same float32 input and output (for GPU serving); `quantize='int8'` quantises the weights of
the linear layers with onnxruntime's dynamic quantisation (for CPU serving).

    save_with_onnx(model, 'export/', save_weights)   # export/model.onnx beside model.safetensors, config.json
"""
import contextlib
import copy
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from command_line import error_line
from weight_formats import WeightLoadError

log = logging.getLogger(__name__)

ONNX_FILE = 'model.onnx'
INPUT_NAME, OUTPUT_NAME = 'video', 'logits'
INSTALL_HINT = "pip install -e '.[onnx]'"
# The batch the graph is traced at: torch.export specialises an axis of size 1 (a batch-1 example with
# Dim.DYNAMIC gives a graph whose logits are (1, K) whatever comes in), so the example has 2 videos.
TRACE_BATCH = 2
# The batches the written file is run at: one file must take both.
CHECK_BATCHES = (1, 3)
# Largest difference from PyTorch's float32 logits that a check lets through: float32 absolutely;
# float16 relative to the largest logit (float16 keeps about 3 decimal digits). int8 is not held to a
# tolerance: its accuracy change is measured on a test set (model_inference.py -eval).
FLOAT32_TOLERANCE = 1e-4
FLOAT16_TOLERANCE = 1e-2
PRECISIONS = ('float32', 'float16', 'int8')
# The lowest opset torch.onnx's exporter writes (its torchlib's): asked for less, it writes this one.
MIN_OPSET = 18
# protobuf cannot hold a file above 2 GiB: larger weights go to model.onnx.data beside it.
PROTOBUF_LIMIT = 2 ** 31 - 2 ** 20


# Loggers that report the exporter's and its graph optimiser's every step (hundreds of lines at INFO)
# and the torchvision operators it skips.
EXPORTER_LOGGERS = ('torch.onnx', 'onnxscript', 'onnx_ir')
# onnxruntime's log levels: 3 is errors only (its warnings on graph optimisation are not the user's).
ERRORS_ONLY = 3


class OnnxError(WeightLoadError):
    """An ONNX file that cannot be written, read or run as its export folder says."""


def import_onnx_packages(*names):
    """The modules `names` (onnx, onnxscript, onnxruntime), or an OnnxError naming the extra to install."""
    modules = []
    for name in names:
        try:
            modules.append(__import__(name))
        except ImportError:
            raise OnnxError(f'ONNX needs the packages of the `onnx` extra ({name} is not installed): '
                            f'{INSTALL_HINT}') from None
    return modules


def open_session(path, providers, name=None, problem='not an ONNX model onnxruntime can run'):
    """An onnxruntime InferenceSession of the file, or an OnnxError naming it (as `name`, default its
    path), the `problem` and onnxruntime's reason."""
    (onnxruntime,) = import_onnx_packages('onnxruntime')
    options = onnxruntime.SessionOptions()
    options.log_severity_level = ERRORS_ONLY
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=providers)
    except Exception as error:  # onnxruntime's own error types (InvalidProtobuf, Fail, ...)
        raise OnnxError(f'{name or path}: {problem} ({error_line(error, first=True)})') from None


@contextlib.contextmanager
def quiet_loggers(names):
    """Only errors from the loggers `names` (and their children) while inside."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


class Float16Model(nn.Module):
    """A float16 copy of a classifier behind float32 input and output: (B, T, 3, S, S) -> (B, K)."""

    def __init__(self, model):
        super().__init__()
        self.model = copy.deepcopy(model).half()

    def forward(self, video):
        return self.model(video.half()).float()


def random_videos(model, batch, seed=0):
    """float32 (batch, T, C, S, S) normal noise the size of the model's input, the same for a seed."""
    c = model.config
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, c.num_frames, c.in_channels, c.img_size, c.img_size, generator=generator)


def export_graph(model, path, *, opset=None, fp16=False):
    """Write the eval-mode classifier's graph to `path` (float32 video -> logits, batch axis free)."""
    import_onnx_packages('onnx', 'onnxscript')
    module = Float16Model(model).eval() if fp16 else model
    size = sum(tensor.numel() * tensor.element_size() for tensor in module.state_dict().values())
    batch = torch.export.Dim('batch', min=1)
    try:
        with warnings.catch_warnings(), quiet_loggers(EXPORTER_LOGGERS):
            warnings.simplefilter('ignore')  # the exporter's notes on its own internals, nothing for the user
            torch.onnx.export(module, (random_videos(model, TRACE_BATCH),), str(path), dynamo=True,
                              dynamic_shapes=({0: batch},), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              opset_version=opset, external_data=size > PROTOBUF_LIMIT, verbose=False)
    except Exception as error:  # the exporter raises many types; each is one reason to report
        raise OnnxError(f'torch.onnx.export failed: {error_line(error, first=True)}') from error


def quantize_int8(source, destination):
    """onnxruntime's dynamic int8 quantisation of the MatMul and Gemm weights (the linear layers);
    activations are quantised per call."""
    import_onnx_packages('onnxruntime')
    from onnxruntime.quantization import QuantType, quantize_dynamic
    with quiet_loggers(['']):  # it logs every tensor it leaves alone to the root logger
        quantize_dynamic(str(source), str(destination), op_types_to_quantize=['MatMul', 'Gemm'],
                         weight_type=QuantType.QInt8)


def check_graph(model, path, precision, name=None):
    """Run the file with onnxruntime on the CPU at each of CHECK_BATCHES and compare with the model's
    float32 logits: {batch: largest difference}; an OnnxError, naming the file as `name` (default its
    path), when the batch axis is fixed, the output has another shape or a difference passes the
    precision's tolerance."""
    (onnxruntime,) = import_onnx_packages('onnxruntime')
    # The exporter writes opsets that this onnxruntime may not run yet (in 1.32, above 25).
    session = open_session(path, ['CPUExecutionProvider'], name or path,
                           f'onnxruntime {onnxruntime.__version__} cannot run the graph the exporter wrote (a '
                           f'lower opset may run)')
    name = name or path
    batch_axis = session.get_inputs()[0].shape[0]
    if not isinstance(batch_axis, str):
        raise OnnxError(f'{name}: its batch axis came out fixed at {batch_axis}')
    differences = {}
    for batch in CHECK_BATCHES:
        video = random_videos(model, batch, seed=batch)
        with torch.inference_mode():
            expected = model(video).float()
        try:
            (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: video.numpy()})
        except Exception as error:  # onnxruntime's own error types
            raise OnnxError(f'{name}: onnxruntime cannot run it at batch {batch}: {error_line(error, first=True)}') from error
        logits = torch.from_numpy(logits).float()
        if logits.shape != expected.shape:
            raise OnnxError(f'{name}: logits {tuple(logits.shape)} at batch {batch}, PyTorch gives '
                            f'{tuple(expected.shape)}')
        if not logits.isfinite().all():
            raise OnnxError(f'{name}: non-finite logits at batch {batch}')
        differences[batch] = float((logits - expected).abs().max())
        tolerance = {'float32': FLOAT32_TOLERANCE,
                     'float16': FLOAT16_TOLERANCE * max(1.0, float(expected.abs().max()))}.get(precision)
        if tolerance is not None and differences[batch] > tolerance:
            raise OnnxError(f"{name}: onnxruntime's {precision} logits differ from PyTorch's by "
                            f'{differences[batch]:.3g} at batch {batch} (tolerance {tolerance:.3g})')
    return differences


def export_onnx(model, path, *, opset=None, fp16=False, quantize=None, name=None):
    """Export an eval-mode VideoClassifier to `path` and check it (check_graph; errors name the file
    as `name`, default `path`); returns {'precision', 'opset', 'differences'}. quantize: None or
    'int8'. The file is written only when the check passes, beside its external weights (`path`.data)
    when they exceed protobuf's 2 GiB."""
    if model.training:
        raise ValueError('export an eval-mode model (model.eval()): dropout would be in the graph')
    if fp16 and quantize:
        raise ValueError('fp16 and int8 quantisation are two precisions: pick one')
    if quantize not in (None, 'int8'):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    if opset is not None and opset < MIN_OPSET:
        raise ValueError(f'opset {opset}: torch.onnx writes opset {MIN_OPSET} or later')
    onnx = import_onnx_packages('onnx', 'onnxscript', 'onnxruntime')[0]
    path = Path(path)
    precision = 'int8' if quantize else 'float16' if fp16 else 'float32'
    staging = Path(tempfile.mkdtemp(prefix=f'.{path.name}.', dir=path.parent))
    try:
        graph = staging / path.name
        export_graph(model, graph, opset=opset, fp16=fp16)
        if quantize:
            float_graph = graph.rename(staging / f'float.{path.name}')
            quantize_int8(float_graph, graph)
            # The float graph's external weights, if any: the int8 graph holds its own (a quarter the size).
            (staging / f'{path.name}.data').unlink(missing_ok=True)
        differences = check_graph(model, graph, precision, name or path)
        written = next(entry.version for entry in onnx.load(str(graph), load_external_data=False).opset_import
                       if entry.domain in ('', 'ai.onnx'))
        if opset is not None and written != opset:
            raise OnnxError(f'opset {opset} was asked for, the exporter wrote opset {written}')
        for file_name in (path.name, f'{path.name}.data'):
            if (staging / file_name).exists():
                os.replace(staging / file_name, path.parent / file_name)
            elif file_name != path.name:
                (path.parent / file_name).unlink(missing_ok=True)  # an earlier, larger export's weights
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {'precision': precision, 'opset': written, 'differences': differences}


def save_with_onnx(model, directory, save, **options):
    """`save(model, directory)` (the weights and config.json) with directory/model.onnx beside them
    (export_onnx's options). The ONNX file is exported and checked first, in a folder of its own beside
    `directory`: when that fails, nothing in `directory` changes. Returns export_onnx's report."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f'.{directory.name}.onnx.', dir=directory.parent))
    try:
        report = export_onnx(model, staging / ONNX_FILE, name=directory / ONNX_FILE, **options)
        save(model, directory)
        for file in staging.iterdir():
            os.replace(file, directory / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report
