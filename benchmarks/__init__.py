"""transferscope's benchmark suite (issue #4): ``python -m benchmarks [--quick] [--only NAME ...]``.

Each benchmark measures in one run on this machine and reports ratios (absolute times are noisy),
the machine, and the figures behind them; results go to ``results/bench/results.{json,md}`` and, for
a full run, ``docs/performance.md`` and ``docs/scaling.png``.
"""
