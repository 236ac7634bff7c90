"""Evaluation library, used by the trainers and by the commands alike (no I/O beyond what a caller asks for):

* :mod:`~prm_rl.evaluation.accuracy`: held-out accuracy of a policy (greedy, scored by the training verifier).
* :mod:`~prm_rl.evaluation.prm_quality`: how well an implicit PRM ranks responses and finds the first wrong step
  on held-out samples (the ``prm_eval/*`` metrics, docs/prm_eval.md), with its token heatmaps.
* :mod:`~prm_rl.evaluation.saved_run`: a finished run's PRM evaluated again, from its saved config.
* :mod:`~prm_rl.evaluation.best_of_n`: choosing one of N responses by the PRM, against voting and pass@N.
* :mod:`~prm_rl.evaluation.monte_carlo`: Monte-Carlo step labels, the costly baseline a PRM replaces.
* :mod:`~prm_rl.evaluation.prm_scoring`: a PRM's scores of given (prompt, response) rows.

Each has a command in :mod:`prm_rl.cli` that parses arguments and calls it.
"""
