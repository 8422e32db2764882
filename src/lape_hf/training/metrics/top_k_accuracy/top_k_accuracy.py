"""Top-1 and top-k accuracy of class scores, as an `evaluate` metric module shipped inside lape_hf.

`evaluate.load("accuracy")` fetches its script from the Hub, which fails offline; this module is loaded by path
(`lape_hf.training.load_accuracy_metric()`), online and offline alike. It takes the scores (logits or
probabilities) rather than predicted classes, so that one pass gives both top-1 and top-k accuracy. The counting is
scikit-learn's (`accuracy_score` of the argmax, so a tie goes to the lower class index; `top_k_accuracy_score`).
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import accuracy_score, top_k_accuracy_score

_DESCRIPTION = """
Top-1 accuracy (the fraction of examples whose highest-scoring class is the reference) and top-k accuracy (the
fraction whose reference is among the k highest-scoring classes; k is capped at the number of classes).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): one row of class scores (logits or probabilities) per example.
    references (`list` of `int`): the true class index of each example.
    k (`int`, defaults to 5): how many of the highest-scoring classes count as a hit for top-k accuracy.
Returns:
    accuracy (`float`): top-1 accuracy in [0, 1].
    top{k}_accuracy (`float`): top-k accuracy in [0, 1], e.g. `top5_accuracy`.
Example:
    >>> metric = evaluate.load("path/to/top_k_accuracy")
    >>> metric.compute(predictions=[[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], references=[2, 0], k=2)
    {'accuracy': 0.5, 'top2_accuracy': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TopKAccuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, k: int = 5) -> dict[str, float]:
        scores = np.asarray(predictions, dtype=np.float64)
        targets = np.asarray(references, dtype=np.int64)
        if scores.ndim != 2 or scores.shape[0] != targets.shape[0]:
            raise ValueError(
                f"predictions must be one row of class scores per reference: got {scores.shape} scores for "
                f"{targets.shape[0]} references."
            )
        num_classes = scores.shape[1]
        if targets.size and (targets.min() < 0 or targets.max() >= num_classes):
            raise ValueError(f"references must be class indices in [0, {num_classes}), got {sorted(set(targets))}.")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k={k!r} must be a positive integer.")
        accuracy = float(accuracy_score(targets, scores.argmax(axis=1))) if targets.size else float("nan")
        if k >= num_classes:  # every class is among the top k: sklearn warns, and refuses two-column binary scores
            top_k = 1.0 if targets.size else float("nan")
        elif k == 1:
            top_k = accuracy
        else:  # here num_classes > k >= 2: sklearn's multiclass case; `labels` names classes absent from references
            top_k = top_k_accuracy_score(targets, scores, k=k, labels=np.arange(num_classes))
        return {"accuracy": accuracy, f"top{k}_accuracy": float(top_k)}
