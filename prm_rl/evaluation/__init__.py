"""Evaluation library, used by the trainers and by the commands alike (no I/O beyond what a caller asks for):

* :mod:`~prm_rl.evaluation.accuracy`: held-out accuracy of a policy (greedy, scored by the training verifier).
* :mod:`~prm_rl.evaluation.prm_quality`: how well an implicit PRM ranks responses and finds the first wrong step
  on held-out samples (the ``prm_eval/*`` metrics, docs/prm_eval.md), with its token heatmaps.
"""
