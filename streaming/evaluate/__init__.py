"""``encore evaluate``: off-policy evaluation of a target policy on logged records.

The math lives in ``bandits.ope``; this module reads files, maps columns, builds the target
policy's probabilities, shows progress and writes the report. Usage::

    encore evaluate LOG.parquet --column-map action=item_id,reward=click,propensity=pscore \\
        --target-prob-columns 'target_prob_*' --estimators ips,snips,dr --out report/

The target policy is one of

- ``--target-prob-columns``: per-row probabilities of each action (``k`` columns, a glob or a
  comma list, in action order);
- ``--target-action-column``: the action a deterministic target would take in each row;
- ``--policy NAME [--policy-param key=value ...]``: a ``bandits.registry`` policy fitted offline
  on the first ``--train-fraction`` of the log (contexts from ``--context-columns``, each action
  a fixed candidate with one-hot features); the rest of the log is evaluated, with the policy's
  action probabilities estimated by Monte Carlo over ``--policy-samples`` draws of ``rank``;
- ``--policy-checkpoint DIR`` or ``--policy-snapshot NAME``: the policy the daemon learned.

Beside the estimates, the table, ``report.md`` and ``estimates.png`` show the logging policy's
own value (the mean logged reward, with its interval) as a reference and the effective sample
size of every estimate. Warnings go to stderr, one line each: an effective sample size below
the floor of ``bandits.ope.diagnostics``, and a target that learned from the rows it evaluates
(as far as its provenance tells: see ``streaming.evaluate.targets``). Progress goes to stderr as
well: a bar on a terminal, one plain line per step elsewhere.

Live mode (``--topic``) is fed by the shell through ``live_consume``: it takes an iterable of
``(LoggedFeedback, TargetProbs)`` batches and keeps an anytime-valid confidence sequence per
estimator, so an evaluation can be watched on the stream and stopped whenever it is conclusive.
See docs/evaluate.md.
"""

from streaming.evaluate.cli import build_parser, main
from streaming.evaluate.live import LiveResult, live_consume

__all__ = ["LiveResult", "build_parser", "live_consume", "main"]
