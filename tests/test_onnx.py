"""ONNX export of every model, run with onnxruntime against PyTorch, and inference through onnxruntime:
real tiny models, real exporter and onnxruntime, the commands as users run them."""
import csv
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

onnx = pytest.importorskip('onnx', reason="the onnx extra: pip install -e '.[onnx]'")
onnxruntime = pytest.importorskip('onnxruntime', reason="the onnx extra: pip install -e '.[onnx]'")
pytest.importorskip('onnxscript', reason="the onnx extra: pip install -e '.[onnx]'")

from classifiers import CLASSES, SETTINGS, export, hf_folder  # noqa: E402
from command_lines import run_in_one_process  # noqa: E402
import onnx_export  # noqa: E402
from onnx_export import OnnxError, check_graph, export_onnx, save_with_onnx  # noqa: E402
from onnx_inference import OnnxClassifier  # noqa: E402
from weight_formats import WeightLoadError  # noqa: E402
from reference import randomise_  # noqa: E402
from video_transformer import (VideoClassifier, timesformer_tiny, videomae_tiny, vivit_tiny,  # noqa: E402
                               vjepa2_tiny)
from our_format import save_weights  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]

VARIANTS = {
    'timesformer divided': timesformer_tiny(),
    'timesformer space_only': timesformer_tiny(attention_type='space_only'),
    'timesformer joint': timesformer_tiny(attention_type='joint_space_time'),
    'vivit fact_encoder': vivit_tiny(),
    'vivit fact_encoder 37e1801': vivit_tiny(fact_encoder_attention='divided', img_size=48, patch_size=8),
    'vivit joint': vivit_tiny(attention_type='joint_space_time', pos_emb_type='joint'),
    'vivit divided': vivit_tiny(attention_type='divided_space_time'),
    'vivit fact_dot_product': vivit_tiny(attention_type='fact_dot_product'),
    'videomae': videomae_tiny(),
    'vjepa2': vjepa2_tiny(),
}


def onnx_logits(path, video):
    """onnxruntime's logits of the file on the CPU for a float32 video (B, T, 3, S, S)."""
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    return torch.from_numpy(session.run(['logits'], {'video': video.numpy()})[0])


def videos(config, batch, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, config.num_frames, 3, config.img_size, config.img_size, generator=generator)


@pytest.mark.parametrize('name', VARIANTS)
def test_every_variant_exports_and_one_file_runs_batch_1_and_3_as_pytorch(name, tmp_path):
    """Fails if an operator exports wrongly (einops' regroupings, SDPA, ViViT's class-token averaging,
    VideoMAE's zero k bias in Attention.qkv_bias, V-JEPA 2's rotary tables computed in forward), or if
    the batch axis comes out fixed: traced at batch 1, Dim.DYNAMIC gives logits (1, K) for any batch."""
    config = VARIANTS[name]
    model = randomise_(VideoClassifier(config)).eval()
    export_onnx(model, tmp_path / 'model.onnx')
    graph = onnx.load(str(tmp_path / 'model.onnx'))
    (batch_axis, *fixed) = graph.graph.input[0].type.tensor_type.shape.dim
    assert batch_axis.dim_param and [axis.dim_value for axis in fixed] == [config.num_frames, 3, config.img_size,
                                                                            config.img_size]
    for batch in (1, 3):
        video = videos(config, batch, seed=10 + batch)
        with torch.no_grad():
            expected = model(video)
        logits = onnx_logits(tmp_path / 'model.onnx', video)
        assert logits.shape == (batch, config.num_classes)
        assert (logits - expected).abs().max() < 1e-4, (name, batch)


def test_the_check_names_the_difference_of_a_graph_that_is_not_the_models(tmp_path):
    """Fails if the check after writing compares nothing: the graph of the weights before a change
    against the changed model must fail, naming the difference, and leave no file."""
    model = randomise_(VideoClassifier(timesformer_tiny())).eval()
    export_onnx(model, tmp_path / 'model.onnx')
    randomise_(model, seed=1)
    with pytest.raises(OnnxError, match=r"onnxruntime's float32 logits differ from PyTorch's by [\d.e+-]+ at "
                                        r'batch 1 \(tolerance 0.0001\)'):
        check_graph(model, tmp_path / 'model.onnx', 'float32')
    before = (tmp_path / 'model.onnx').read_bytes()
    model.backbone.cls_token.data.fill_(float('nan'))  # the export's own check fails: nothing is replaced
    with pytest.raises(OnnxError, match='non-finite logits at batch 1'):
        export_onnx(model, tmp_path / 'model.onnx')
    assert (tmp_path / 'model.onnx').read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ['model.onnx']  # no staging left


def test_float16_and_int8_exports(tmp_path):
    """Fails if -fp16 leaves the weights in float32 or changes the graph's float32 interface, or if
    -quantize int8 quantises no linear layer."""
    model = randomise_(VideoClassifier(videomae_tiny()), std=0.05).eval()
    half = export_onnx(model, tmp_path / 'half.onnx', fp16=True)
    graph = onnx.load(str(tmp_path / 'half.onnx'))
    matrices = [tensor for tensor in graph.graph.initializer if len(tensor.dims) == 2]
    assert matrices and all(tensor.data_type == onnx.TensorProto.FLOAT16 for tensor in matrices)
    assert [item.type.tensor_type.elem_type for item in (*graph.graph.input, *graph.graph.output)] == \
        [onnx.TensorProto.FLOAT] * 2
    assert half['precision'] == 'float16' and max(half['differences'].values()) < 1e-2
    int8 = export_onnx(model, tmp_path / 'int8.onnx', quantize='int8')
    operators = {node.op_type for node in onnx.load(str(tmp_path / 'int8.onnx')).graph.node}
    assert {'MatMulInteger', 'DynamicQuantizeLinear'} <= operators
    video = videos(model.config, 3, seed=0)
    with torch.no_grad():
        expected = model(video)
    assert (onnx_logits(tmp_path / 'int8.onnx', video) - expected).abs().max() < 0.05
    assert int8['precision'] == 'int8' and int8['opset'] >= 18


def test_weights_past_protobufs_limit_go_beside_the_graph_and_run(tmp_path, monkeypatch):
    """The README: weights above protobuf's 2 GiB go to model.onnx.data beside model.onnx. With the limit
    lowered to nothing, the tiny model's take that path: fails if the export leaves the weights file in
    its staging folder (the graph then names a file that is not there), if inference cannot read it, or
    if a later export of weights that fit keeps the earlier .data."""
    monkeypatch.setattr(onnx_export, 'PROTOBUF_LIMIT', 0)
    model = randomise_(VideoClassifier(timesformer_tiny(), CLASSES, SETTINGS)).eval()
    save_with_onnx(model, tmp_path / 'out', save_weights)
    assert sorted(path.name for path in (tmp_path / 'out').iterdir()) == ['config.json', 'model.onnx',
                                                                          'model.onnx.data', 'model.safetensors']
    graph = onnx.load(str(tmp_path / 'out' / 'model.onnx'), load_external_data=False).graph
    assert any(tensor.data_location == onnx.TensorProto.EXTERNAL for tensor in graph.initializer)
    video = videos(model.config, 2, seed=3)
    with torch.no_grad():
        expected = model(video)
    assert (OnnxClassifier.load(tmp_path / 'out')(video) - expected).abs().max() < 1e-4
    monkeypatch.undo()  # protobuf's limit again
    save_with_onnx(model, tmp_path / 'out', save_weights)
    assert sorted(path.name for path in (tmp_path / 'out').iterdir()) == ['config.json', 'model.onnx',
                                                                          'model.safetensors']
    assert sorted(path.name for path in tmp_path.iterdir()) == ['out']  # no staging left


def test_the_default_opset_and_onnxs_own_attention_from_opset_23(tmp_path):
    """The README: the exporter's opset 20 by default, and from opset 23 SDPA becomes ONNX's Attention
    operator. Fails if -opset is not passed to the exporter (both files would be opset 20) or the
    opset-23 graph does not run as PyTorch does."""
    model = randomise_(VideoClassifier(timesformer_tiny())).eval()
    reports = {opset: export_onnx(model, tmp_path / f'{opset}.onnx', opset=opset) for opset in (None, 23)}
    assert reports[None]['opset'] == 20 and reports[23]['opset'] == 23
    operators = {opset: {node.op_type for node in onnx.load(str(tmp_path / f'{opset}.onnx')).graph.node}
                 for opset in reports}
    assert 'Attention' not in operators[None] and 'Attention' in operators[23]
    assert max(reports[23]['differences'].values()) < 1e-4


def test_a_transformers_folder_exported_by_the_command_gives_transformers_logits(tmp_path):
    """Fails if the command's graph drifts from the source's own implementation, not only from ours."""
    transformers = pytest.importorskip('transformers')
    hf = hf_folder(tmp_path / 'hf', mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    done = subprocess.run([sys.executable, 'export_weights.py', str(hf), str(tmp_path / 'out'), '-onnx'],
                          cwd=REPOSITORY, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "onnxruntime's logits differ from PyTorch's by at most" in done.stderr.splitlines()[-1]
    assert sorted(path.name for path in (tmp_path / 'out').iterdir()) == ['config.json', 'model.onnx',
                                                                          'model.safetensors']
    reference = transformers.TimesformerForVideoClassification.from_pretrained(hf).eval()
    video = videos(timesformer_tiny(), 3, seed=5)
    with torch.no_grad():
        expected = reference(pixel_values=video).logits
    assert (onnx_logits(tmp_path / 'out' / 'model.onnx', video) - expected).abs().max() < 1e-4


# ---------------------------------------------------------------- inference through onnxruntime

@pytest.fixture(scope='module')
def onnx_folder(tmp_path_factory):
    """A tiny export folder (2 clips x 3 crops) with model.onnx beside its weights."""
    folder = tmp_path_factory.mktemp('onnx') / 'model'
    model = randomise_(VideoClassifier(timesformer_tiny(), CLASSES, SETTINGS)).eval()
    save_with_onnx(model, folder, save_weights)
    return folder


def read_csv(path):
    with open(path, newline='') as handle:
        return list(csv.DictReader(handle))


def test_model_inference_on_the_export_gives_the_weights_results_in_every_output_mode(onnx_folder, demo_data,
                                                                                         tmp_path):
    """Fails if the onnxruntime path decodes, crops, normalises or averages views otherwise than the
    PyTorch path (top-5 and probabilities within 1e-4, in the table, JSON lines, CSV and -eval)."""
    video = demo_data / 'test' / 'moving_up' / 'test_0000.mp4'
    sources = {'torch': onnx_folder / 'model.safetensors', 'onnx': onnx_folder}
    cases = {}
    for side, weights in sources.items():
        cases[f'{side} table'] = ['-pretrain', weights, '-video_path', video]
        cases[f'{side} json'] = ['-pretrain', weights, '-video_path', demo_data / 'test.txt', '-json',
                                 '-num_workers', '0', '-out', tmp_path / f'{side}.csv']
        cases[f'{side} eval'] = ['-pretrain', weights, '-eval', demo_data / 'test.txt', '-out', tmp_path / side,
                                 '-json', '-num_workers', '0']
    results = run_in_one_process('model_inference.py', cases)
    for name, result in results.items():
        assert result['code'] == 0 and 'Traceback' not in result['stderr'], (name, result['stderr'][-2000:])

    def table(text):
        head, *rows = text.splitlines()
        return [(row.split()[1], float(row.split()[2].rstrip('%'))) for row in rows]

    for (name, torch_side), onnx_side in zip(table(results['torch table']['stdout']),
                                             table(results['onnx table']['stdout'])):
        assert name == onnx_side[0] and abs(torch_side - onnx_side[1]) < 0.01 + 1e-9
    for mode in ('json', 'eval'):
        torch_lines, onnx_lines = ([json.loads(line) for line in results[f'{side} {mode}']['stdout'].splitlines()]
                                   for side in ('torch', 'onnx'))
        assert len(torch_lines) == len(onnx_lines) == (4 if mode == 'json' else 5)
        for expected, got in zip(torch_lines, onnx_lines):
            if 'metrics' in expected:
                assert got['metrics'] == expected['metrics']
                continue
            assert got['labels'] == expected['labels'] and got['frames'] == expected['frames']
            assert got['probabilities'] == pytest.approx(expected['probabilities'], abs=1e-4)
    torch_rows, onnx_rows = read_csv(tmp_path / 'torch.csv'), read_csv(tmp_path / 'onnx.csv')
    assert [row['top1_label'] for row in onnx_rows] == [row['top1_label'] for row in torch_rows]
    assert all(abs(float(a[f'top{rank}_probability']) - float(b[f'top{rank}_probability'])) <= 1e-4
               for a, b in zip(torch_rows, onnx_rows) for rank in range(1, 5))


def test_onnx_mistakes_stop_with_one_line(onnx_folder, demo_data, tmp_path):
    """Fails if a file that is not ONNX, a graph that does not fit its preprocessing, a stray .onnx, a
    flag the graph cannot follow or a missing onnxruntime ends in a traceback or runs anyway."""
    video = demo_data / 'test' / 'moving_up' / 'test_0000.mp4'
    fake = tmp_path / 'fake'
    fake.mkdir()
    (fake / 'model.onnx').write_text('not a graph\n')
    (fake / 'config.json').write_text((onnx_folder / 'config.json').read_text())
    bigger = tmp_path / 'bigger'  # the 32-px graph beside a config.json for 48 px
    bigger.mkdir()
    export(bigger, preprocessing=SETTINGS.replace(img_size=48, short_side=54))
    meta = json.loads((bigger / 'config.json').read_text())
    meta['config']['img_size'] = 48
    (bigger / 'config.json').write_text(json.dumps(meta))
    (bigger / 'model.onnx').write_bytes((onnx_folder / 'model.onnx').read_bytes())
    stray = tmp_path / 'stray.onnx'
    stray.write_bytes((onnx_folder / 'model.onnx').read_bytes())
    cases = {
        'not ONNX': (['-pretrain', fake, '-video_path', video],
                     f'{fake / "model.onnx"}: not an ONNX model onnxruntime can run ('),
        'input does not fit': (['-pretrain', bigger, '-video_path', video],
                               f'{bigger / "model.onnx"}: takes tensor(float) [\'batch\', 4, 3, 32, 32], but its '
                               f'config.json says videos of (batch, 4, 3, 48, 48) float32'),
        'no config.json': (['-pretrain', stray, '-video_path', video],
                           f'{stray}: needs the config.json of its export folder beside it'),
        'attention': (['-pretrain', onnx_folder, '-video_path', video, '-save_vis', tmp_path / 'v.png',
                       '-attention'], '-attention: an ONNX model gives no attention weights'),
        'features': (['-pretrain', onnx_folder, '-video_path', video, '-features', tmp_path / 'features'],
                     '-features: an ONNX model gives logits only, not the features'),
        'other frame count': (['-pretrain', onnx_folder, '-video_path', video, '-num_frames', '8'],
                              '-num_frames 8: the ONNX graph'),
        'cuda': (['-pretrain', onnx_folder, '-video_path', video, '-device', 'cuda'],
                 '-device cuda: this onnxruntime has no CUDA provider; install onnxruntime-gpu'),
    }
    if 'CUDAExecutionProvider' in onnxruntime.get_available_providers():
        del cases['cuda']
    results = run_in_one_process('model_inference.py', {name: flags for name, (flags, _) in cases.items()})
    for name, (_, expected) in cases.items():
        lines = [line for line in results[name]['stderr'].splitlines() if line.strip()]
        assert results[name]['code'] == 2 and results[name]['stdout'] == '', (name, results[name]['stderr'])
        assert len(lines) == 1 and lines[0].startswith('model_inference.py: error: ') and expected in lines[0], \
            (name, lines)
    assert not (tmp_path / 'features').exists()  # refused before anything is written
    # onnxruntime absent: Python's own way of making an import fail (a None in sys.modules).
    without = ("import runpy, sys; sys.modules['onnxruntime'] = None; "
               "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    done = subprocess.run([sys.executable, '-c', without, 'model_inference.py', '-pretrain', str(onnx_folder),
                           '-video_path', str(video)], cwd=REPOSITORY, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "model_inference.py: error: ONNX needs the packages of the `onnx` extra (onnxruntime is not installed): "
        "pip install -e '.[onnx]'"], done.stderr


def test_an_export_folders_config_is_read_as_load_model_reads_it(onnx_folder, tmp_path, caplog):
    """Fails on the code that read an ONNX folder's config.json by a reader of its own: a field of a
    later version was dropped without a word (load_model refuses it), and a config that is not an
    object of fields ended in an AttributeError's traceback. Class names that do not fit the head are
    left out with load_model's warning line."""
    folder = tmp_path / 'export'
    folder.mkdir()
    (folder / 'model.onnx').write_bytes((onnx_folder / 'model.onnx').read_bytes())
    meta = json.loads((onnx_folder / 'config.json').read_text())
    for config, message in (({**meta['config'], 'layer_scale': 0.1}, "fields this version does not know: "
                                                                      "['layer_scale']"),
                            ([1], 'its config is list [1], not the fields of a model')):
        (folder / 'config.json').write_text(json.dumps({**meta, 'config': config}))
        with pytest.raises(WeightLoadError, match=re.escape(f'{folder / "config.json"}: ') + '.*' + re.escape(message)):
            OnnxClassifier.load(folder)
    (folder / 'config.json').write_text(json.dumps({**meta, 'class_names': ['a', 'b']}))
    with caplog.at_level(logging.WARNING):
        assert OnnxClassifier.load(folder).class_names is None
    assert 'its 2 class names do not match its 4 classes; they are left out' in caplog.text


def test_the_export_commands_onnx_flags(tmp_path):
    """Fails if an ONNX option without -onnx is silently ignored, if a failed ONNX export changes the
    folder, or if a later export without -onnx leaves the earlier weights' model.onnx to be run; and on
    the code that called a graph written at an opset onnxruntime cannot run yet "not an ONNX model",
    naming a file that was never kept."""
    source = export(tmp_path / 'source')
    out = tmp_path / 'out'
    cases = {
        'fp16 alone': ([source, out, '-fp16'], 2, '-fp16 is an ONNX option: add -onnx'),
        'with -hf': ([source, out, '-onnx', '-hf'], 2, '-onnx writes beside our config.json, -hf'),
        'two precisions': ([source, out, '-onnx', '-fp16', '-quantize', 'int8'], 2, 'not allowed with argument'),
        'opset below the exporter\'s': ([source, out, '-onnx', '-opset', '17'], 2,
                                        '-opset 17: torch.onnx writes opset 18 or later'),
        # Into the source's own folder: a failed ONNX export must leave it as it was.
        'opset the exporter lacks': ([source, source, '-onnx', '-opset', '99'], 2,
                                     'cannot run the graph the exporter wrote (a lower opset may run)'),
        'onnx': ([source, out, '-onnx'], 0, None),
        'again without -onnx': ([source, out], 0, None),
    }
    before = {path.name: path.read_bytes() for path in source.iterdir()}
    results = run_in_one_process('export_weights.py', {name: flags for name, (flags, _, _) in cases.items()})
    assert {path.name: path.read_bytes() for path in source.iterdir()} == before
    for name, (_, code, expected) in cases.items():
        result = results[name]
        assert result['code'] == code and 'Traceback' not in result['stderr'], (name, result['stderr'][-2000:])
        if expected is not None:
            lines = [line for line in result['stderr'].splitlines() if expected in line]
            assert len(lines) == 1, (name, result['stderr'][-2000:])
    # The export without -onnx replaced the folder whole: no model.onnx of the earlier export is left.
    assert sorted(path.name for path in out.iterdir()) == ['config.json', 'model.safetensors']
    assert sorted(path.name for path in tmp_path.iterdir()) == ['out', 'source']  # no staging left
