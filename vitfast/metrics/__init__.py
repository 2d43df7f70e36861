"""Library metrics: a classifier's top-1/top-5 and loss, a CLIP's zero-shot accuracy and retrieval
recall. They take a model and loaders; nothing here knows about folders, flags or the trainer."""

from vitfast.metrics.classification import evaluate
from vitfast.metrics.clip import (RECALL_AT, TEMPLATES, ClipEvalData, encode_pairs, evaluate_clip, retrieval_metrics,
                                  zero_shot_accuracy, zero_shot_classifier)

__all__ = ["RECALL_AT", "TEMPLATES", "ClipEvalData", "encode_pairs", "evaluate", "evaluate_clip", "retrieval_metrics",
           "zero_shot_accuracy", "zero_shot_classifier"]
