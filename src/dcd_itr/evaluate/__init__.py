"""Evaluation: score every (image, caption) pair and turn the scores into full-ranking metrics.

- :mod:`~dcd_itr.evaluate.scoring` -- encode a split in batches, score all pairs of a cross-encoder (resumable
  score shards), re-rank a dual encoder's top k with a cross-encoder (the cascade).
- :mod:`~dcd_itr.evaluate.models` -- the model-level API: metrics of a saved model folder, of a cross-encoder
  given by spec, of a dual -> cross cascade.

The metrics themselves (Recall@K, RSUM, median rank, tie rule) are :mod:`dcd_itr.metrics`.
"""

from dcd_itr.evaluate.models import evaluate_cascade, evaluate_cross_encoder, evaluate_model
from dcd_itr.evaluate.scoring import PairScores, encode_all, rank_cascade, score_all_pairs

__all__ = [
    "PairScores",
    "encode_all",
    "evaluate_cascade",
    "evaluate_cross_encoder",
    "evaluate_model",
    "rank_cascade",
    "score_all_pairs",
]
