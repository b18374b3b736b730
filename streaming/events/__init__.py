"""The event contract (JSON, versioned by ``schema``) and its decoder to columnar batches.

Two event types travel on two topics, both keyed by ``user_id``:

``impression`` (schema ``"impression/1"`` or ``"impression/2"``)
    ``request_id``, ``user_id``, ``surface``, ``ts`` (event time, ms), ``context`` (the user and
    request features, ``d_user`` floats), ``candidates`` (track ids, up to ``max_candidates``),
    ``candidate_features`` (one ``d_track`` list per candidate), ``shown`` (indices into
    ``candidates``, in the order shown), ``propensities`` (the logging policy's probability of each
    shown choice given the ones above it), ``policy`` and ``policy_version``.

``outcome`` (schema ``"outcome/1"``)
    ``request_id``, ``user_id``, ``track_id``, ``position`` (0 = top of the slate), ``ts``,
    ``ms_played``, ``track_duration_ms``, ``reason_end`` (one of ``REASONS_END``), and optionally
    ``saved``, ``liked``, ``added_to_playlist`` (default false).

Field names follow the public music-streaming skip-prediction data where one exists.

The two impression versions differ only in how float features may be written:

==================  ==================================================================
schema              ``context`` / ``candidate_features``
==================  ==================================================================
``impression/1``    JSON number arrays (``[0.1, ...]`` / ``[[0.5, ...], ...]``)
``impression/2``    each field on its own: the JSON arrays above, or a string holding the
                    standard base64 (RFC 4648, ``+/``, ``=``-padded, no line breaks) of
                    little-endian float32 values, row-major: ``d_user`` values for
                    ``context``, ``len(candidates) x d_track`` for ``candidate_features``
==================  ==================================================================

The binary form is about a third of the size (an impression of 20 candidates x 16 features:
~2.3 KB instead of ~7.3 KB) and decodes without a Python float per value: msgspec decodes the
base64 to bytes, and a batch's bytes become its feature arrays in one ``np.frombuffer``. Values
are float32 either way (JSON numbers are rounded to float32 in the batch), so an event decodes
to the same batch in both forms. Producers writing the binary form say ``impression/2``, so a
decoder that only knows ``impression/1`` rejects it as ``unknown_schema`` instead of misreading
it; a base64 string under ``impression/1`` is ``wrong_type``. ``with_features`` and
``float32_bytes`` write the binary form.

Decoding goes from raw bytes straight to typed msgspec structs and then to numpy columns; no
per-event dicts reach the math. Decoding is total: whatever the bytes, a message either decodes
to values every later stage (the join, the reward model, the policy update) takes as they are,
or raises (or, in batch decoding, becomes a ``Reject`` carrying) a ``DecodeError`` whose
``code`` is one of ``ERROR_CODES``. ``low_propensity``, ``large_features`` and
``ts_ahead_of_record`` are values that parse but could not be learned from, or would disturb
what is learned from other events; their bounds are ``Limits`` fields (``EventsConfig`` in the
daemon's config):

=====================  ============================================================
code                   meaning
=====================  ============================================================
``too_large``          the message is over ``max_message_bytes``
``invalid_utf8``       the bytes are not UTF-8
``invalid_json``       not one JSON object (malformed, trailing data)
``unknown_schema``     ``schema`` is missing or not a version this decoder knows
``missing_field``      a required field is absent
``unknown_field``      a field the schema does not define
``wrong_type``         a field has the wrong JSON type (or a number is out of range);
                       a base64 feature string under ``impression/1``
``non_finite``         a NaN or infinite number, a binary float32 NaN or infinity, or a
                       JSON number beyond float32's range
``bad_value``          an impossible value: negative time or duration, an empty id,
                       ``ms_played`` over 10x the duration, a position < 0 or >= 2**31; a feature
                       string that is not standard base64
``empty_candidates``   an impression with no candidates, or nothing shown
``bad_shape``          lengths disagree (features per candidate, context size,
                       propensities per shown item, bytes of a binary feature field
                       other than 4 x its value count) or too many candidates
``bad_shown``          a shown index out of range or repeated
``bad_propensity``     a propensity outside (0, 1]
``unknown_reason_end`` ``reason_end`` not in ``REASONS_END``
``too_deep``           nested more than ``MAX_DEPTH`` (32) ``[`` or ``{`` deep (a valid
                       event nests 3 deep)
``low_propensity``     a propensity below ``min_propensity`` (1e-6): 0 or a weight past
                       any sane range in float32
``large_features``     ``context``, or a candidate's features, with a Euclidean norm over
                       ``max_feature_norm`` (10): the linear policies' float32 statistics
                       lose their precision (NaN) beyond that
``ts_ahead_of_record`` ``ts`` more than ``max_event_ahead_ms`` ahead of the Kafka
                       record's own timestamp (CreateTime or LogAppendTime; no bound
                       where it is unknown): it would move the join's event-time
                       watermark and make the on-time events after it late (60,000;
                       the daemon uses its join's ``allowed_lateness_ms``)
=====================  ============================================================

Where a message breaks several rules, ``too_deep`` comes before all but ``too_large`` and
``invalid_utf8``, ``ts_ahead_of_record`` right after the other checks of ``ts``,
``low_propensity`` right after ``bad_propensity``, and ``large_features`` last, after the
float32 features' ``non_finite``. The record timestamp bound keeps replays deterministic: it
compares two values stored in the log, never a clock, so a record gets the same verdict every
time it is read.

The package's modules, by job; import the public names from the package:

=================  ========================================================================
module             holds
=================  ========================================================================
``contract``       the schema and feature-encoding constants, ``REASONS_END``,
                   ``ERROR_CODES``, ``DecodeError``, ``Impression``, ``Outcome``, ``Limits``,
                   ``Reject``, ``ImpressionBatch``, ``OutcomeBatch``, ``key64``
``decode_one``     ``decode_impression`` and ``decode_outcome`` (one message)
``decode_batch``   ``decode_impressions`` and ``decode_outcomes`` (many messages)
``columns``        ``impressions_to_batch`` and ``outcomes_to_batch`` (validated events to
                   columns)
``encode``         ``encode``, ``with_features`` and ``float32_bytes``
``process``        ``Decoding``: decoding in a second process, one batch ahead
=================  ========================================================================
"""

from __future__ import annotations

from streaming.events.columns import impressions_to_batch, outcomes_to_batch
from streaming.events.contract import (
    CENSORING_REASONS,
    ERROR_CODES,
    FEATURE_ENCODINGS,
    IMPRESSION_SCHEMA,
    IMPRESSION_SCHEMA_V2,
    IMPRESSION_SCHEMAS,
    MAX_DEPTH,
    MAX_INT,
    MAX_PLAY_RATIO,
    MAX_POSITION,
    OUTCOME_SCHEMA,
    REASONS_END,
    DecodeError,
    ErrorCode,
    FeatureEncoding,
    Impression,
    ImpressionBatch,
    Limits,
    Outcome,
    OutcomeBatch,
    Reject,
    T,
    key64,
)
from streaming.events.decode_batch import RecordTimestamps, decode_impressions, decode_outcomes
from streaming.events.decode_one import decode_impression, decode_outcome
from streaming.events.encode import encode, float32_bytes, with_features

__all__ = [
    "CENSORING_REASONS",
    "ERROR_CODES",
    "FEATURE_ENCODINGS",
    "IMPRESSION_SCHEMA",
    "IMPRESSION_SCHEMAS",
    "IMPRESSION_SCHEMA_V2",
    "MAX_DEPTH",
    "MAX_INT",
    "MAX_PLAY_RATIO",
    "MAX_POSITION",
    "OUTCOME_SCHEMA",
    "REASONS_END",
    "DecodeError",
    "ErrorCode",
    "FeatureEncoding",
    "Impression",
    "ImpressionBatch",
    "Limits",
    "Outcome",
    "OutcomeBatch",
    "RecordTimestamps",
    "Reject",
    "T",
    "decode_impression",
    "decode_impressions",
    "decode_outcome",
    "decode_outcomes",
    "encode",
    "float32_bytes",
    "impressions_to_batch",
    "key64",
    "outcomes_to_batch",
    "with_features",
]
