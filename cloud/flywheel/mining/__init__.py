"""Mining: choose the few pool samples worth labeling, at any pool size.

- strategies (:mod:`._strategies`): ``make_strategy(name, **cfg)(state, budget, rng)``
  -> :class:`Selection` (indices, a reason per index, scores); names in
  :data:`STRATEGIES`; ``auto`` picks by label-budget regime (see its docstring);
- scale (:mod:`._scale`): batched, near-linear primitives on float32 memmaps,
  faiss neighbours and k-means, optional Ray fan-out of the scoring;
- runs (:mod:`._run`): :class:`MiningRun` checkpoints scored batches and resumes;
  :func:`annotation_batch` / :func:`dedupe_against` hand the selection to an
  annotation task without queueing anything twice;
- harness (:mod:`._harness`): :func:`simulate` replays labeling with an oracle.

Errors::

    cloud.errors.CitybrainError
    └── MiningError
        ├── MiningInputError (also cloud.errors.InvalidInput)
        │   └── BudgetExceedsPool
        └── RunConflict (also cloud.errors.Conflict)
"""

from ._features import EXTRACTORS, extract_features
from ._harness import (
    TRAINERS,
    TrainEvalResult,
    check_budgets,
    curve_summary,
    flywheel_head_train_eval,
    format_table,
    logistic_train_eval,
    plot_curves,
    simulate,
    stratified_split,
)
from ._run import (
    AnnotationBatch,
    LinearHead,
    MiningRun,
    Prelabel,
    annotation_batch,
    dedupe_against,
    queued_positions,
)
from ._scale import batched_probs, kcenter_greedy, kmeans_assign, nearest_distance
from ._strategies import STRATEGIES, make_strategy, select, uncertainty_scores
from ._types import (
    BudgetExceedsPool,
    MiningError,
    MiningInputError,
    PoolState,
    RunConflict,
    Selection,
    Strategy,
)

__all__ = [
    "EXTRACTORS",
    "STRATEGIES",
    "TRAINERS",
    "AnnotationBatch",
    "BudgetExceedsPool",
    "LinearHead",
    "MiningError",
    "MiningInputError",
    "MiningRun",
    "PoolState",
    "Prelabel",
    "RunConflict",
    "Selection",
    "Strategy",
    "TrainEvalResult",
    "annotation_batch",
    "batched_probs",
    "check_budgets",
    "curve_summary",
    "dedupe_against",
    "extract_features",
    "flywheel_head_train_eval",
    "format_table",
    "kcenter_greedy",
    "kmeans_assign",
    "logistic_train_eval",
    "make_strategy",
    "nearest_distance",
    "plot_curves",
    "queued_positions",
    "select",
    "simulate",
    "stratified_split",
    "uncertainty_scores",
]
