"""encore's benchmark suites: speed, memory, regret and estimator error next to the real peers.

Run ``python -m benchmarks NAME [--quick] [--out DIR]``; see ``benchmarks/_runner.py``.
``python -m benchmarks report DIR [--to PATH]`` renders DIR's results as markdown
(``benchmarks/report.py``); ``benchmarks/README.md`` is that page for the latest run.
"""
