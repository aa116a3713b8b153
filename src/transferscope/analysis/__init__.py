"""What the report computes beyond the paper's curves: tables and dataclasses, no words or figures
(report/ writes those).

- ``cka``: linear CKA with the unbiased HSIC estimator, in minibatches (pure maths);
  ``similarity``: CKA between a study's networks, layer by layer.
- ``transferability``: LogME, H-score, a ridge linear probe (pure maths); ``estimate``: score a
  study's cut points from its base networks alone, before (or instead of) training the rest.
- ``filters``: the first layer's filters of the recorded networks.
- ``convergence``: were the base networks still improving when training stopped?
- ``recommend``: freeze or fine-tune, by amount of target data.
- ``networks``: recorded networks back from a study directory, and their layer outputs.

>>> from transferscope.analysis import estimate      # doctest: +SKIP
>>> table = estimate("results/my-study").table        # doctest: +SKIP
"""

from transferscope.analysis.cka import MinibatchCKA, SmallBatchError, linear_cka
from transferscope.analysis.estimate import Estimate, estimate, score_correlations
from transferscope.analysis.transferability import h_score, linear_probe, logme

__all__ = ["Estimate", "MinibatchCKA", "SmallBatchError", "estimate", "h_score", "linear_cka",
           "linear_probe", "logme", "score_correlations"]
