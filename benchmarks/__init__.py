"""encore's benchmark suites: speed, memory, regret and estimator error next to the real peers.

Run ``python -m benchmarks NAME [--quick] [--out DIR]``; see ``benchmarks/_runner.py``.
"""
