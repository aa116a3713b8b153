"""Report of a finished study: the paper's Fig. 2 and 3, a per-layer table and ``report.md``."""

from transferscope.report.markdown import ReportMeta, write_report
from transferscope.report.stats import mean_ci, relative, summarize

__all__ = ["ReportMeta", "mean_ci", "relative", "summarize", "write_report"]
