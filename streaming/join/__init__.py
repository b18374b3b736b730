"""Reward-window join: pure functions that pair outcomes with the impression they belong to.

Impressions and outcomes arrive as columnar batches keyed by ``request_key`` (a 64-bit hash of
``request_id``). An impression is *open* for the event-time window ``[ts_ms, ts_ms + window_ms)``;
every outcome with the same key whose ``ts_ms`` lies in that window joins it, aggregated per
slate position by ``JoinConfig.aggregate``. When the watermark passes the window's end the
impression is *closed* and returned, with ``default_reward`` wherever no outcome arrived.

The rules, chosen so that results never depend on how the streams are cut into batches:

- **Two watermarks.** Each stream keeps the largest ``ts_ms`` it has seen. A row whose ``ts_ms``
  is more than ``allowed_lateness_ms`` behind the largest ``ts_ms`` of the rows *before it in its
  own stream* is *late*: a late impression is rejected (``IMPRESSION_LATE``) and a late outcome is
  rejected (``OUTCOME_LATE``). This depends only on the order within each stream, so any batch cut
  and any interleaving of the two streams gives the same verdict.
- **Closing.** ``advance`` moves the join watermark to
  ``min(max impression ts, max outcome ts) - allowed_lateness_ms`` (never backwards) and closes
  every open impression whose window ends at or before it. An outcome that is not late can then
  never belong to a closed impression, because its own stream's watermark is at least the join
  watermark.
- **Outcome before impression.** An outcome with no open impression waits in a *pending* buffer.
  Each new impression takes the pending outcomes that fall in its window. Once the join watermark
  passes the outcome's ``ts_ms`` no impression that is not late can still claim it, so it is
  rejected: ``OUTCOME_CLOSED`` when a recently closed impression with its key started at or
  before it and ended less than ``late_horizon_ms`` before it (it came after its window), else
  ``OUTCOME_ORPHAN``.
- **Duplicates.** Keys are assumed unique per request. An impression whose key is already open
  (or appeared earlier in the same batch) is rejected as ``IMPRESSION_DUPLICATE``; a redelivered
  copy of an impression that has already closed is always late, so it is rejected too. (A key
  reused by a *different* impression after the first closed opens a new window; whether it
  collides with the first depends on timing, so reused keys are outside the guarantee.)
- **Bounded memory.** More than ``max_open`` open impressions evicts the oldest (smallest
  ``ts_ms``, then earliest arrival): they are returned as closed rows with ``evicted=True`` and
  counted. More than ``max_pending`` pending outcomes rejects the oldest as ``OUTCOME_OVERFLOW``.
  The memory of closed keys keeps at most ``max_closed_keys`` entries. Only these capacity limits
  can make results depend on batch cuts.
- **first** is the outcome with the smallest ``ts_ms`` (ties: the larger value), **max** the
  largest value, **sum** the float64 sum taken in ascending value order (so it is the same
  float for any arrival order); each outcome row joins at most one impression.

If one stream goes idle the join watermark stops; pass ``watermark_ms`` to ``advance`` (for example
``now_ms - idle_timeout_ms``, or ``MAX_TIME_MS`` to flush everything) to force progress. A forced
watermark is a promise that nothing at or before it is still to come: forcing it early makes
later rows late that event time alone would have joined.

Payloads are opaque row numbers into the caller's side tables (features, slates, raw outcome
fields). The buffer hands each one back exactly once: an impression's in ``closed`` or
``rejected_impressions``, an outcome's in ``joined`` (with ``row`` pointing at its impression in
``closed``) or ``rejected_outcomes``. ``live_payloads`` lists the ones still held, so the caller
can compact its side tables.

Example:
    >>> import numpy as np
    >>> cfg = JoinConfig(window_ms=100, allowed_lateness_ms=0, slate_size=2, aggregate="max")
    >>> state = init(cfg)
    >>> u64, i64 = np.uint64, np.int64
    >>> imps = JoinImpressions(np.array([7], u64), np.array([1000], i64), np.array([0], i64))
    >>> state, _ = add_impressions(state, imps, cfg)
    >>> outs = JoinOutcomes(np.array([7], u64), np.array([1050], i64), np.array([1], np.int32),
    ...                     np.array([1.0], np.float32), np.array([0], i64))
    >>> state, _ = add_outcomes(state, outs, cfg)
    >>> state, effects = advance(state, cfg, watermark_ms=MAX_TIME_MS)
    >>> effects.closed.reward.tolist(), effects.closed.defaulted.tolist()
    ([[0.0, 1.0]], [[True, False]])
"""

from streaming.join.close import advance
from streaming.join.match import add_impressions, add_outcomes
from streaming.join.rows import take_rows
from streaming.join.state import (
    CUT_DEPENDENT,
    JoinState,
    counters,
    from_arrays,
    init,
    live_payloads,
    to_arrays,
)
from streaming.join.types import (
    IMPRESSION_DUPLICATE,
    IMPRESSION_LATE,
    MAX_TIME_MS,
    NO_TIME_MS,
    OUTCOME_CLOSED,
    OUTCOME_LATE,
    OUTCOME_ORPHAN,
    OUTCOME_OVERFLOW,
    Aggregate,
    Closed,
    JoinConfig,
    JoinedOutcomes,
    JoinEffects,
    JoinImpressions,
    JoinOutcomes,
    RejectedImpressions,
    RejectedOutcomes,
    concat_effects,
)

__all__ = [
    "CUT_DEPENDENT",
    "IMPRESSION_DUPLICATE",
    "IMPRESSION_LATE",
    "MAX_TIME_MS",
    "NO_TIME_MS",
    "OUTCOME_CLOSED",
    "OUTCOME_LATE",
    "OUTCOME_ORPHAN",
    "OUTCOME_OVERFLOW",
    "Aggregate",
    "Closed",
    "JoinConfig",
    "JoinEffects",
    "JoinImpressions",
    "JoinOutcomes",
    "JoinState",
    "JoinedOutcomes",
    "RejectedImpressions",
    "RejectedOutcomes",
    "add_impressions",
    "add_outcomes",
    "advance",
    "concat_effects",
    "counters",
    "from_arrays",
    "init",
    "live_payloads",
    "take_rows",
    "to_arrays",
]
