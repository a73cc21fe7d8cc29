"""One test-time evaluation for the training command's test and model_inference.py -eval: the views of
a video averaged in one place, one torchmetrics MetricCollection, and the report written from it.

    metrics = test_metrics(num_classes, preprocessing)   # what LitVideoClassifier's test updates too
    metrics.update(view_logits, labels)                  # (B, V, K) logits of V clip-major views, (B,)
    metrics.compute()                                    # top1, top5, *_1view, per_class_*, confusion

The views' softmax is averaged (`average_views`), as the probabilities every output shows are; the
one-view figures read the preprocessing's centre view (`OneView`). Both sides update the same
collection with the same logits, so their numbers agree by construction.
"""
from pathlib import Path

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix
from torchmetrics.wrappers import LambdaInputTransformer

from utils import write_csv, write_json
from visualize import confusion_figure, save_png

# The scalar results of test_metrics, in the order summaries list them.
SCALAR_METRICS = ('top1', 'top5', 'top1_1view', 'top5_1view')


def average_views(view_logits):
    """Logits (..., V, K) of V views -> (..., K) probabilities: the softmax averaged over the views."""
    return view_logits.softmax(dim=-1).mean(dim=-2)


class OneView:
    """Logits (B, V, K) -> (B, K) of the one-view figure's view: the preprocessing's centre view (the
    centre crop of the middle clip, `Preprocessing.centre_view`), or the middle view when there is no
    preprocessing or the batch has another number of views."""

    def __init__(self, preprocessing=None):
        self.view, self.views = (preprocessing.centre_view, preprocessing.num_views) if preprocessing else (None, None)

    def __call__(self, view_logits):
        views = view_logits.shape[1]
        return view_logits[:, self.view if views == self.views else views // 2]


def test_metrics(num_classes, preprocessing=None):
    """The MetricCollection of a test, updated with (view_logits (B, V, K), labels (B,)): top1, top5,
    per_class_top1 and per_class_top5 (K,) and confusion (K, K) (rows the true class, counts) of the
    averaged views (average_views), top1_1view and top5_1view of the one view (OneView)."""
    top5 = min(5, num_classes)

    def accuracy(k, view, average='micro'):
        return LambdaInputTransformer(MulticlassAccuracy(num_classes, top_k=k, average=average), view)

    one_view = OneView(preprocessing)
    return MetricCollection({
        'top1': accuracy(1, average_views), 'top5': accuracy(top5, average_views),
        'top1_1view': accuracy(1, one_view), 'top5_1view': accuracy(top5, one_view),
        'per_class_top1': accuracy(1, average_views, 'none'), 'per_class_top5': accuracy(top5, average_views, 'none'),
        'confusion': LambdaInputTransformer(MulticlassConfusionMatrix(num_classes), average_views),
    }, compute_groups=False)


def scalar_results(results):
    """{'videos', SCALAR_METRICS...} as Python numbers from test_metrics' computed tensors."""
    return {'videos': int(results['confusion'].sum()), **{name: float(results[name]) for name in SCALAR_METRICS}}


def per_class_rows(results, class_names):
    """One row per class of test_metrics' results: index, name, videos, top-1 and top-5 accuracy (empty
    without videos), and the class its videos were most often taken for, with the count."""
    confusion = results['confusion']
    others = confusion.clone()
    others.fill_diagonal_(0)
    confused_videos, confused = others.max(dim=1)
    rows = []
    for index, name in enumerate(class_names):
        videos = int(confusion[index].sum())
        rows.append({'index': index, 'class': name, 'videos': videos,
                     'top1': round(float(results['per_class_top1'][index]), 6) if videos else '',
                     'top5': round(float(results['per_class_top5'][index]), 6) if videos else '',
                     'most_confused_with': class_names[confused[index]] if confused_videos[index] else '',
                     'confused_videos': int(confused_videos[index])})
    return rows


class Evaluation:
    """test_metrics over labelled inference results (inference.VideoResult), one video at a time."""

    def __init__(self, num_classes, preprocessing=None):
        self.metrics = test_metrics(num_classes, preprocessing)

    def add(self, result):
        self.metrics.update(result.view_logits[None], torch.tensor([result.label]))

    def results(self):
        """test_metrics' computed tensors."""
        return self.metrics.compute()


def write_report(results, class_names, folder, views):
    """A test's report in folder from test_metrics' results: metrics.json (scalar_results and the views,
    e.g. '2x3'), per_class_accuracy.csv (per_class_rows) and confusion_matrix.png (confusion_figure).
    Returns the metrics."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    metrics = {**scalar_results(results), 'views': views}
    write_json(metrics, folder / 'metrics.json')
    write_csv(per_class_rows(results, class_names), folder / 'per_class_accuracy.csv')
    save_png(confusion_figure(results['confusion'], class_names), folder / 'confusion_matrix.png')
    return metrics
