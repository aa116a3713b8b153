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

>>> from transferscope.analysis.estimate import estimate      # doctest: +SKIP
>>> table = estimate("results/my-study").scores       # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

#: public name -> the module of this package that defines it (imported when first used: the
#: analyses pull in torch and scipy, which a report served from the cache never needs). The
#: function ``estimate`` is not among them: it shares its name with its module, so it is imported
#: from there (``from transferscope.analysis.estimate import estimate``).
_EXPORTS = {"MinibatchCKA": "cka", "SmallBatchError": "cka", "linear_cka": "cka", "Estimate": "estimate",
            "score_correlations": "estimate", "h_score": "transferability",
            "linear_probe": "transferability", "logme": "transferability"}

if TYPE_CHECKING:
    from transferscope.analysis.cka import MinibatchCKA, SmallBatchError, linear_cka
    from transferscope.analysis.estimate import Estimate, score_correlations
    from transferscope.analysis.transferability import h_score, linear_probe, logme


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"transferscope.analysis.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'transferscope.analysis' has no attribute {name!r}")


__all__ = ["Estimate", "MinibatchCKA", "SmallBatchError", "h_score", "linear_cka",
           "linear_probe", "logme", "score_correlations"]
