"""Evaluation: which images (splits), scores through the Predictor, tables, figures, and export parity.

* :mod:`~polypseg.evaluation.splits`: the split of the weights' run, ground-truth boxes, calibration images.
* :mod:`~polypseg.evaluation.evaluate`: :func:`evaluate`, :func:`run_evaluation` with its
  :class:`EvaluationOptions` (``polypseg evaluate``).
* :mod:`~polypseg.evaluation.tables`: the printed table and the literature table.
* :mod:`~polypseg.evaluation.reports`: Dice histogram, worst cases, training curves (``--report``).
* :mod:`~polypseg.evaluation.parity`: an export beside PyTorch (``polypseg export``).
* :mod:`~polypseg.evaluation.concat`: which decoder concatenation order fits weights (``polypseg inspect --data``).
"""

from polypseg.evaluation.concat import ConcatFit, score_concat_orders
from polypseg.evaluation.evaluate import (
    EVALUATION_FILES,
    EvaluationOptions,
    EvaluationReport,
    EvaluationResult,
    evaluate,
    evaluation_predictor,
    run_evaluation,
    run_evaluations,
)
from polypseg.evaluation.splits import (
    calibration_paths,
    dataset_names,
    is_training_dataset,
    read_truth_boxes,
    resolve_split,
)
from polypseg.evaluation.tables import LITERATURE_CSV, format_literature_table, format_table, literature_csv

__all__ = [
    "EVALUATION_FILES",
    "ConcatFit",
    "LITERATURE_CSV",
    "EvaluationOptions",
    "EvaluationReport",
    "EvaluationResult",
    "calibration_paths",
    "dataset_names",
    "evaluate",
    "evaluation_predictor",
    "format_literature_table",
    "format_table",
    "is_training_dataset",
    "literature_csv",
    "read_truth_boxes",
    "resolve_split",
    "run_evaluation",
    "run_evaluations",
    "score_concat_orders",
]
