"""The report of a study: every word, figure and table of ``report.md`` / ``report.html``.

- ``markdown``: report.md (and html.py: report.html); ``figures``: the paper's Fig. 2 and 3;
  ``tables``: the per-layer table and the ``estimate`` command's; ``text``: the one number and
  cell format, headings' anchors and pipe tables.
- ``sections``: the analyses of a study (computed by transferscope.analysis) as report sections;
  ``analysis_figures``: their figures; ``reading``: the results in words, each claim with its
  95% CI, and the comparison of two studies.

>>> from transferscope.report import analyze_study, compare_studies   # doctest: +SKIP
>>> analysis = analyze_study("results/my-study")                      # doctest: +SKIP
"""

from transferscope.report.markdown import ReportMeta, write_report
from transferscope.report.reading import Comparison, compare_frames, compare_studies, reading
from transferscope.report.sections import Analysis, Section, analyze_study
from transferscope.report.tables import format_estimate
from transferscope.stats import mean_ci, relative, summarize

__all__ = ["Analysis", "Comparison", "ReportMeta", "Section", "analyze_study", "compare_frames", "compare_studies",
           "format_estimate", "mean_ci", "reading", "relative", "summarize", "write_report"]
