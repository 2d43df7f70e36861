"""The training application: `vitfast train`'s loop (loop.py), what it optimizes (tasks.py) and
`vitfast eval`'s folder-level glue (evaluate.py). The library below never imports it."""

from vitfast.train.evaluate import evaluate_clip_folder, evaluate_folder
from vitfast.train.loop import (BEST_DIR, METRICS_NAME, STATE_NAME, Interrupted, TrainConfig, TrainingError,
                                TrainUsageError, train)

__all__ = ["BEST_DIR", "METRICS_NAME", "STATE_NAME", "Interrupted", "TrainConfig", "TrainUsageError", "TrainingError",
           "evaluate_clip_folder", "evaluate_folder", "train"]
