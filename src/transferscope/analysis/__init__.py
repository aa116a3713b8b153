"""Analyses of a study beyond the paper's curves.

- ``cka``: linear CKA with the unbiased HSIC estimator, in minibatches (pure maths);
  ``similarity``: CKA between a study's networks, layer by layer.
- ``transferability``: LogME, H-score, a ridge linear probe (pure maths); ``estimate``: score a
  study's cut points from its base networks alone, before (or instead of) training the rest.
- ``filters``: pictures of the first layer's filters.
- ``convergence``: were the base networks still improving when training stopped?
- ``recommend``: freeze or fine-tune, by amount of target data.
- ``reading``: the results in words, each claim with its 95% CI; comparing two studies.
- ``analyze``: all of it for one study directory, as report sections.

>>> from transferscope.analysis import analyze_study, estimate, compare_studies  # doctest: +SKIP
>>> analysis = analyze_study("results/my-study")                                 # doctest: +SKIP
"""

from transferscope.analysis.analyze import Analysis, Section, analyze_study
from transferscope.analysis.cka import MinibatchCKA, SmallBatchError, linear_cka
from transferscope.analysis.estimate import Estimate, estimate, format_estimate, score_correlations
from transferscope.analysis.reading import Comparison, compare_frames, compare_studies, reading
from transferscope.analysis.transferability import h_score, linear_probe, logme

__all__ = ["Analysis", "Comparison", "Estimate", "MinibatchCKA", "Section", "SmallBatchError", "analyze_study",
           "compare_frames", "compare_studies", "estimate", "format_estimate", "h_score", "linear_cka",
           "linear_probe", "logme", "reading", "score_correlations"]
