"""Sample-quality metrics: FID, KID, Inception Score, precision/recall, and the feature networks they use.

- ``frechet_distance``, ``kernel_inception_distance``, ``inception_score``, ``precision_recall``: scores from
  features ``[N, D]``, in float64, with clear errors for bad input (``fastgan/metrics/scores.py``);
  ``FeatureStats``: streaming, mergeable float64 mean/covariance, so FID over 50k images needs no feature bank.
- ``FIDInceptionV3`` / ``load_inception``: FID's InceptionV3 (pytorch-fid / torch-fidelity architecture, names and
  preprocessing), weights only from a file the user names (``fastgan/metrics/inception.py``).
- ``LeNetFeatures`` / ``cached_lenet``: the small digit classifier of "FID (LeNet features)" for 28x28 data
  (``fastgan/metrics/lenet.py``).
- ``evaluate_images``: every requested score of generated images against real ones (``fastgan eval``).

Not to be confused with ``fastgan.train.metrics``, the training log (metrics.csv).
"""

from .evaluate import METRICS, evaluate_images
from .inception import FIDInceptionV3, InceptionWeightsError, load_inception, resize_bilinear_tf1, to_inception_input
from .lenet import LeNetFeatures, cached_lenet, train_lenet
from .scores import FeatureStats, frechet_distance, inception_score, kernel_inception_distance, precision_recall

__all__ = [
    "METRICS",
    "FIDInceptionV3",
    "FeatureStats",
    "InceptionWeightsError",
    "LeNetFeatures",
    "cached_lenet",
    "evaluate_images",
    "frechet_distance",
    "inception_score",
    "kernel_inception_distance",
    "load_inception",
    "precision_recall",
    "resize_bilinear_tf1",
    "to_inception_input",
    "train_lenet",
]
