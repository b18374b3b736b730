"""THE config object: defaults, then a TOML file, then ``ENCORE_<SECTION>__<KEY>`` variables, then flags.

Why one long module: every key is declared here once, with its type, default, unit and
description, so that the loader, the validation and the generated reference
(``docs/configuration.md``) read the same definition; most of the length is those declarations.

Unknown sections and keys are errors, every duration is an integer with ``_ms`` in its name, and
relations between fields are checked when a section is built. ``rewards`` and ``bandits`` never read
config: ``streaming`` maps these sections to keyword arguments.

Every key carries its description and unit in its field's metadata (``doc``, ``unit``);
:func:`reference_markdown` renders them, with each key's type, default and environment variable,
as ``docs/configuration.md`` (``encore config reference`` prints it). The ``[join]`` section is
``streaming.join.JoinConfig``, whose descriptions are the ``Attributes:`` of its docstring.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import json
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

from streaming.join import JoinConfig

SECRET_KEYS = ("password", "secret", "token", "sasl_oauth")


class ConfigError(ValueError):
    """A config value, file, variable or flag is invalid; the message names it."""


def _key(default: Any, doc: str, unit: str = "") -> Any:
    """A config key: its default, a one-line description and its unit (for the reference)."""
    return field(default=default, metadata={"doc": doc, "unit": unit})


def _table(doc: str) -> Any:
    """A config key holding a table (TOML table; JSON object in a variable or flag), empty by default."""
    return field(default_factory=dict[str, Any], metadata={"doc": doc, "unit": ""})


# The consumer settings kafka-python accepts that a user may pass through ``client_options``.
# encore owns group_id, enable_auto_commit, deserializers and offsets; they are not passable.
CONSUMER_PASSTHROUGH = frozenset(
    {
        "client_rack",
        "fetch_max_wait_ms",
        "fetch_min_bytes",
        "fetch_max_bytes",
        "max_partition_fetch_bytes",
        "request_timeout_ms",
        "retry_backoff_ms",
        "reconnect_backoff_ms",
        "reconnect_backoff_max_ms",
        "max_in_flight_requests_per_connection",
        "check_crcs",
        "isolation_level",
        "metadata_max_age_ms",
        "max_poll_interval_ms",
        "heartbeat_interval_ms",
        "receive_buffer_bytes",
        "send_buffer_bytes",
        "connections_max_idle_ms",
        "ssl_check_hostname",
        "ssl_crlfile",
        "ssl_ciphers",
        "sasl_kerberos_service_name",
        "sasl_kerberos_domain_name",
        "api_version",
    }
)


@dataclass(frozen=True)
class KafkaConfig:
    """Where the cluster is and how to talk to it."""

    bootstrap_servers: str = _key(
        "",
        "Kafka brokers as `host:port[,host:port...]`; empty: the local broker that "
        "`encore broker start` runs.",
    )
    client_id: str = _key(
        "encore",
        "Prefix of the client id of every consumer (`-consumer`), producer (`-producer`) and "
        "admin client (`-admin`); the worker's id when `scale.worker_id` is empty.",
    )
    group_id: str = _key(
        "encore-daemon", "Consumer group of the daemons; its workers share the partitions."
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = _key(
        "PLAINTEXT", "How every client connects to the brokers; `SASL_*` needs `sasl_mechanism`."
    )
    sasl_mechanism: str = _key(
        "", "SASL mechanism (for example `PLAIN`, `SCRAM-SHA-256`); required with `SASL_*`."
    )
    sasl_plain_username: str = _key("", "User name for SASL `PLAIN` or `SCRAM`.")
    sasl_plain_password: str = _key(
        "", "Password for SASL `PLAIN` or `SCRAM`; redacted in logs, checkpoints and snapshots."
    )
    ssl_cafile: str = _key(
        "", "CA certificate file (PEM) the brokers' certificates are checked with."
    )
    ssl_certfile: str = _key("", "Client certificate file (PEM).")
    ssl_keyfile: str = _key("", "Client private key file (PEM).")
    ssl_password: str = _key(
        "", "Password of `ssl_keyfile`; redacted in logs, checkpoints and snapshots."
    )
    poll_timeout_ms: int = _key(
        200,
        "Longest one poll waits for records, so the daemon's loop never blocks longer; below "
        "`session_timeout_ms`.",
    )
    max_poll_records: int = _key(
        20_000,
        "Most records one poll (one decode and one step) takes; a larger poll shares a step's "
        "fixed costs (padded model and policy updates, per-partition join passes) among more events.",
        "records",
    )
    max_partition_fetch_bytes: int = _key(
        4 * 1024 * 1024,
        "Bytes one fetch takes from one partition: larger fetches give fewer, fuller polls; "
        "`client_options.max_partition_fetch_bytes` overrides it.",
    )
    session_timeout_ms: int = _key(
        10_000, "Consumer group session timeout: a worker silent this long leaves the group."
    )
    rejoin_unassigned_ms: int = _key(
        30_000,
        "A daemon that has held no partition this long while its stable group leaves some "
        "unowned rejoins the group, and replaces its consumer if that does not help; 0: off, "
        "else at least `session_timeout_ms`.",
    )
    lean_records: bool = _key(
        True,
        "Read records through encore's own parser of v2 record batches (several times faster); "
        "false: kafka-python's record objects. Refused, with a warning, on a kafka-python it "
        "does not know.",
    )
    stall_restart_ms: int = _key(
        120_000,
        "A consumer that has returned nothing this long while its partitions have lag (or lag "
        "that cannot be read) is closed and opened anew; 0: off, else at least "
        "`session_timeout_ms`.",
    )
    align_ms: int = _key(
        10_000,
        "A partition read further ahead than this in event time of the same partition of the "
        "other stream (impressions, outcomes) is paused until that one catches up; 0: off.",
    )
    side_max_refused: int = _key(
        100,
        "Output records (dead letters, late rows, joined records, snapshots, deltas, handoffs) "
        "the broker may refuse for good, each counted, logged and dropped; one more stops the "
        "daemon with exit code 73; 0: the first one does.",
        "records",
    )
    side_max_message_bytes: int = _key(
        1_000_000,
        "`max.message.bytes` assumed for an output topic whose setting the broker does not tell.",
    )
    dead_letter_prefix_bytes: int = _key(
        65_536,
        "Most bytes of the original message that a dead letter too large for its topic keeps "
        "(besides the original's size and SHA-256).",
    )
    client_options: Mapping[str, Any] = _table(
        "Further consumer settings passed to kafka-python; only the keys listed below this table."
    )

    def __post_init__(self) -> None:
        _positive(
            self,
            "poll_timeout_ms",
            "max_poll_records",
            "max_partition_fetch_bytes",
            "session_timeout_ms",
            "side_max_message_bytes",
        )
        for name in ("side_max_refused", "dead_letter_prefix_bytes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"kafka.{name} must be 0 or positive, got {getattr(self, name)}")
        if self.align_ms < 0:
            raise ConfigError(f"kafka.align_ms must be 0 (off) or positive, got {self.align_ms}")
        if self.poll_timeout_ms >= self.session_timeout_ms:
            raise ConfigError(
                f"kafka.poll_timeout_ms ({self.poll_timeout_ms}) must be below "
                f"kafka.session_timeout_ms ({self.session_timeout_ms})"
            )
        if self.stall_restart_ms and self.stall_restart_ms < self.session_timeout_ms:
            raise ConfigError(
                f"kafka.stall_restart_ms ({self.stall_restart_ms}) must be 0 (off) or at least "
                f"kafka.session_timeout_ms ({self.session_timeout_ms})"
            )
        if self.rejoin_unassigned_ms and self.rejoin_unassigned_ms < self.session_timeout_ms:
            raise ConfigError(
                f"kafka.rejoin_unassigned_ms ({self.rejoin_unassigned_ms}) must be 0 (off) or at "
                f"least kafka.session_timeout_ms ({self.session_timeout_ms}), so that a "
                "rebalance in progress finishes before the watchdog asks the group"
            )
        unknown = sorted(set(self.client_options) - CONSUMER_PASSTHROUGH)
        if unknown:
            raise ConfigError(
                f"kafka.client_options has keys the consumer does not accept or encore owns: "
                f"{unknown}; allowed: {sorted(CONSUMER_PASSTHROUGH)}"
            )
        if self.security_protocol.startswith("SASL") and not self.sasl_mechanism:
            raise ConfigError("kafka.sasl_mechanism is required when security_protocol is SASL_*")

    def security(self) -> dict[str, Any]:
        """Client settings for security, passed to every consumer, producer and admin client."""
        out: dict[str, Any] = {"security_protocol": self.security_protocol}
        for name in (
            "sasl_mechanism",
            "sasl_plain_username",
            "sasl_plain_password",
            "ssl_cafile",
            "ssl_certfile",
            "ssl_keyfile",
            "ssl_password",
        ):
            value = getattr(self, name)
            if value:
                out[name] = value
        return out


@dataclass(frozen=True)
class Topics:
    """Topic names, and the partitions and replicas ``encore topics create`` gives them."""

    impressions: str = _key("encore.impressions", "Impression events, keyed by `user_id`.")
    outcomes: str = _key("encore.outcomes", "Outcome events, keyed by `user_id`.")
    dlq: str = _key(
        "encore.dlq", "Dead letters: events that failed to decode or validate, with the reason."
    )
    late: str = _key(
        "encore.late",
        "Impressions and outcomes the join refused (late, duplicate, or an outcome whose "
        "impression never came), one JSON record each.",
    )
    snapshots: str = _key(
        "encore.policy-snapshots",
        "Policy snapshots the re-ranker loads (compacted).",
    )
    deltas: str = _key(
        "encore.policy-deltas",
        "Additive policy deltas the workers of one group exchange (`scale.share_deltas`).",
    )
    joined: str = _key(
        "encore.joined", "Joined records, sent when `log.publish_joined` is true (live evaluation)."
    )
    handoff: str = _key(
        "encore.partition-state",
        "Open join windows moving between workers when partitions move (compacted).",
    )
    catalogue: str = _key(
        "encore.catalogue",
        "The track catalogue: features per track, keyed by track id, a null value withdraws "
        "the track (compacted; `encore catalogue load` writes it).",
    )
    partitions: int = _key(
        4, "Partitions of each topic `encore topics create` creates.", "partitions"
    )
    replication_factor: int = _key(
        1, "Replicas of each partition `encore topics create` asks for.", "replicas"
    )

    def __post_init__(self) -> None:
        _positive(self, "partitions", "replication_factor")
        names = [
            self.impressions,
            self.outcomes,
            self.dlq,
            self.late,
            self.snapshots,
            self.deltas,
            self.joined,
            self.handoff,
            self.catalogue,
        ]
        if len(set(names)) != len(names):
            raise ConfigError(f"topic names must be distinct, got {names}")

    def for_run(self, run_id: str) -> Topics:
        """Every topic name with ``.{run_id}`` appended: a run of its own on a shared broker
        (the demo, a test, a benchmark), whose topics no other run reads or creates."""
        names = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return dataclasses.replace(
            self, **{k: f"{v}.{run_id}" for k, v in names.items() if isinstance(v, str)}
        )


@dataclass(frozen=True)
class EventsConfig:
    """Limits the decoder enforces, and how encore's own producers write float features.

    The three bounds on values (``min_propensity``, ``max_feature_norm``,
    ``max_event_ahead_ms``) send events that parse but cannot be learned from to the dead-letter
    topic, each with its own code; ``streaming.events.Limits`` says why each default is what it is.
    """

    max_message_bytes: int = _key(1_000_000, "Largest event message the decoder accepts.")
    max_candidates: int = _key(4096, "Most candidates in one impression.", "candidates")
    d_user: int = _key(16, "Features in an impression's `context`.", "features")
    d_track: int = _key(16, "Features of each candidate track.", "features")
    feature_encoding: Literal["float32", "json"] = _key(
        "float32",
        "How encore's own producers (the demo, `encore simulate`, the re-ranker's impression log) "
        "write features: `float32` (base64 little-endian, schema `impression/2`, smaller and "
        "faster to decode) or `json` (number arrays, `impression/1`); the decoder reads both.",
    )
    decode_process: bool = _key(
        True,
        "Decode each batch in a second process while the daemon learns from the batch before; "
        "false: in the daemon's own process. The result is the same.",
    )
    min_propensity: float = _key(
        1e-6,
        "Smallest logged propensity learned from, in [1.18e-38, 1]; below it the event is a "
        "dead letter (`low_propensity`).",
        "probability",
    )
    max_feature_norm: float = _key(
        10.0,
        "Largest Euclidean norm of the context and of each candidate's features; above it the "
        "event is a dead letter (`large_features`); `inf`: no bound.",
    )
    max_event_ahead_ms: int = _key(
        -1,
        "Most an event's `ts` may be ahead of its Kafka record's timestamp (a dead letter, "
        "`ts_ahead_of_record`, beyond it); -1: `join.allowed_lateness_ms`.",
    )

    def __post_init__(self) -> None:
        _positive(self, "max_message_bytes", "max_candidates", "d_user", "d_track")
        _positive(self, "max_feature_norm")  # NaN is refused below
        if not 1.1754943508222875e-38 <= self.min_propensity <= 1.0:
            raise ConfigError(
                "EventsConfig.min_propensity must be in [1.18e-38, 1] (a positive normal "
                f"float32), got {self.min_propensity}"
            )
        if self.max_feature_norm != self.max_feature_norm:
            raise ConfigError("EventsConfig.max_feature_norm must be a number, got nan")
        if self.max_event_ahead_ms < -1:
            raise ConfigError(
                "EventsConfig.max_event_ahead_ms must be -1 (the join's allowed_lateness_ms) "
                f"or >= 0, got {self.max_event_ahead_ms}"
            )


# The models of ``rewards.MODELS`` a worker trains from its events (``session`` reads each play's
# listening history, which the worker keeps per partition: ``reward.history_length``).
REWARD_MODELS = ("survival", "skip", "completion", "direct", "session")


@dataclass(frozen=True)
class RewardSpec:
    """The composite reward the policy learns from, and the reward model the daemon trains."""

    kind: str = _key(
        "stream30",
        "Composite reward the policy maximises: `stream30`, `linear`, `listen_fraction` or "
        "`denoised` (`rewards.CompositeReward(kind=kind, **params)`).",
    )
    params: Mapping[str, Any] = _table("Keyword arguments of the composite reward.")
    model: str = _key(
        "survival",
        "Reward model the daemon trains online: `survival`, `skip`, `completion`, `direct` or "
        "`session` (its factory in `rewards`: `rewards.MODELS[model](**model_params)`).",
    )
    model_params: Mapping[str, Any] = _table("Keyword arguments of the reward model's factory.")
    history_length: int = _key(
        8,
        'With `model = "session"`: each listener\'s last plays the model reads (kept per '
        "partition, in the checkpoint, moved with the partition on a rebalance).",
        "plays",
    )
    history_listeners: int = _key(
        20_000,
        'With `model = "session"`: listeners whose history each partition keeps; past it, '
        "those whose newest play is oldest are dropped (`history_listeners_evicted`).",
        "listeners",
    )

    def __post_init__(self) -> None:
        _positive(self, "history_length", "history_listeners")
        if self.model not in REWARD_MODELS:
            raise ConfigError(
                f"reward.model must be one of {list(REWARD_MODELS)}, got {self.model!r}"
            )


@dataclass(frozen=True)
class PolicySpecConfig:
    """Which policy to run, by its name in ``bandits.registry.POLICIES``, with its parameters."""

    name: str = _key(
        "squarecb",
        "Policy to run: its name in `bandits.registry.POLICIES`. The default explores (SquareCB: "
        "inverse-gap weighting over LinUCB's ridge scores, exact propensities well above "
        "`events.min_propensity`), so what `encore rerank` logs supports off-policy evaluation; "
        "`linucb` ranks greedily (every propensity 1.0).",
    )
    params: Mapping[str, Any] = _table(
        "Keyword arguments (hyperparameters) of the policy's factory. For the linear policies: "
        "`adapt_window` (adaptation to changing tastes, on by default: the memory of a "
        "challenger fitted with forgetting, in multiples of the joint dimension; 0 turns it "
        "off), `discount` (a fixed forgetting factor per update), `n_ids` (the hashed "
        "per-track table: size it to about 20 times the catalogue), `alpha`, `ridge` and the "
        "others of `bandits.linucb`."
    )
    slate_size: int = _key(
        1, "Tracks the re-ranker returns for a request that names no `slate_size`.", "tracks"
    )
    update_every_ms: int = _key(
        300_000,
        "The longest event time a policy update waits for. The daemon learns closed feedback "
        "once every partition's watermark has passed its window, in one order, in updates of "
        "2,048 rows or of what an interval of this length (by window end) holds at its end: "
        "the learned policy is the same, bit for bit, however polls cut the stream, restarts "
        "included. 0 learns each batch's feedback as its windows close (the policy then "
        "depends on the cuts, within float rounding for its sums).",
        "ms",
    )
    warn_id_collisions: float = _key(
        0.05,
        "Warn when more than this fraction of the tracks the policy has learned of share a "
        "per-track slot (`params.n_ids`, hashed by id) with another track; the fraction is "
        "`encore_track_slots_shared` either way.",
    )

    def __post_init__(self) -> None:
        _positive(self, "slate_size")
        if self.update_every_ms < 0:
            raise ConfigError(
                f"policy.update_every_ms must be 0 or more, got {self.update_every_ms}"
            )
        if not 0.0 <= self.warn_id_collisions <= 1.0:
            raise ConfigError(
                f"policy.warn_id_collisions must be in [0, 1], got {self.warn_id_collisions}"
            )


@dataclass(frozen=True)
class CheckpointConfig:
    """How often the worker's whole state is written, and where."""

    dir: str = _key(
        ".encore/checkpoints",
        "Folder of this worker's checkpoints, status file and (by default) JAX cache; one "
        "worker per folder, held with a lock.",
    )
    every_events: int = _key(
        50_000,
        "A checkpoint is written once this many events have come since the last one, or "
        "`every_ms` has passed, whichever is first.",
        "events",
    )
    every_ms: int = _key(10_000, "A checkpoint is written at least this often while events come.")
    keep: int = _key(3, "Newest checkpoints kept; older ones are removed.", "checkpoints")

    def __post_init__(self) -> None:
        _positive(self, "every_events", "every_ms", "keep")


@dataclass(frozen=True)
class RerankConfig:
    """The re-ranking endpoint and the limits of what it accepts."""

    host: str = _key("127.0.0.1", "Address the re-ranking service listens on.")
    port: int = _key(8765, "Port the re-ranking service listens on; 0: any free port.", "port")
    snapshot_every_ms: int = _key(
        5_000, "How often the daemon publishes a policy snapshot to `topics.snapshots`."
    )
    max_body_bytes: int = _key(
        1_000_000, "Largest `POST /rank` body; a larger one is answered 413 before it is read."
    )
    max_id_chars: int = _key(
        256,
        "Longest `user_id`, `request_id`, `surface` and candidate id; a longer one is answered 400.",
        "characters",
    )
    max_connections: int = _key(64, "Connections held at once, one thread each.", "connections")
    read_timeout_ms: int = _key(
        10_000,
        "Longest a connection may take to send one whole request (counted from when the "
        "service waits for it, so an idle keep-alive connection too) and to take its answer; "
        "it is closed after that.",
    )
    evict_waiting_ms: int = _key(
        1_000,
        "A connection beyond `max_connections` takes the place of the one that has waited "
        "longest for its request if that one has waited longer than this, and is answered 503 "
        "otherwise; 0: never.",
    )
    health_degraded_ms: int = _key(
        300_000,
        "How long `/healthz` says `degraded` after a served impression went unlogged or an "
        "impression's send failed.",
    )

    def __post_init__(self) -> None:
        _positive(
            self,
            "snapshot_every_ms",
            "max_body_bytes",
            "max_id_chars",
            "max_connections",
            "read_timeout_ms",
            "health_degraded_ms",
        )
        if self.evict_waiting_ms < 0:
            raise ConfigError(
                f"rerank.evict_waiting_ms must be 0 (off) or positive, got {self.evict_waiting_ms}"
            )
        if not 0 <= self.port < 65536:
            raise ConfigError(f"rerank.port must be in [0, 65535], got {self.port}")


@dataclass(frozen=True)
class CatalogueConfig:
    """The track catalogue `encore rerank` follows, so requests may name candidates by id."""

    follow: bool = _key(
        False,
        "Follow `topics.catalogue` in `encore rerank`: a request without `candidate_features` "
        "takes its candidates' features from the catalogue (the newest record of each track).",
    )
    unknown: str = _key(
        "reject",
        "A candidate the catalogue does not know: `reject` answers 400 `unknown_track` naming "
        "it; `zeros` scores it from a zero feature vector (counted as `unknown_tracks`).",
    )
    wait_ms: int = _key(
        30_000,
        "How long `encore rerank` waits at start to read the catalogue topic up to its end "
        "before it serves (requests by id are answered 503 `catalogue_loading` until then).",
    )

    def __post_init__(self) -> None:
        if self.unknown not in ("reject", "zeros"):
            raise ConfigError(
                f"catalogue.unknown must be 'reject' or 'zeros', got {self.unknown!r}"
            )
        if self.wait_ms < 0:
            raise ConfigError(f"catalogue.wait_ms must be >= 0, got {self.wait_ms}")


@dataclass(frozen=True)
class LogConfig:
    """The rolling Parquet log of joined records (what off-policy evaluation reads)."""

    dir: str = _key(".encore/log", "Folder of the Parquet log of joined records; empty: no log.")
    rows_per_file: int = _key(
        100_000, "A log file is committed once it holds this many rows.", "rows"
    )
    max_file_age_ms: int = _key(
        60_000, "A log file is committed once it is this old, however few rows it holds."
    )
    max_candidates: int = _key(64, "Candidates kept per impression in the log.", "candidates")
    candidate_features: bool = _key(True, "Write each kept candidate's features into the log.")
    publish_joined: bool = _key(
        False, "Also send each joined record to `topics.joined` (live off-policy evaluation)."
    )
    background: bool = _key(
        True, "Write the log on a thread of its own, flushed before every checkpoint."
    )
    reward_plays: bool = _key(
        True,
        "Also log each play the reward model learns from, with the model's prediction for it "
        "just before the update that learned it, in `<dir>/reward-plays`: what "
        "`encore rewards report <dir>` scores.",
    )

    def __post_init__(self) -> None:
        _positive(self, "rows_per_file", "max_file_age_ms", "max_candidates")


@dataclass(frozen=True)
class MetricsConfig:
    """The Prometheus endpoint and the status file ``encore status`` reads."""

    enabled: bool = _key(True, "Serve the daemon's Prometheus endpoint.")
    host: str = _key("127.0.0.1", "Address the Prometheus endpoint listens on.")
    port: int = _key(9464, "Port of the Prometheus endpoint; 0: any free port.", "port")
    refresh_ms: int = _key(
        2_000,
        "How often the daemon refreshes its metrics and the status file "
        "(`<checkpoint.dir>/status.json`) that `encore status` reads.",
    )

    def __post_init__(self) -> None:
        _positive(self, "refresh_ms")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"metrics.port must be in [0, 65535], got {self.port}")


@dataclass(frozen=True)
class ScaleConfig:
    """Several workers in one group learning one global (linear) policy through deltas."""

    share_deltas: bool = _key(
        False,
        "Each worker publishes its policy's additive deltas to `topics.deltas` and folds in "
        "the others': one global policy (linear policies only).",
    )
    worker_id: str = _key(
        "",
        "This worker's id among the workers that share deltas, different for each; empty: "
        "`kafka.client_id`.",
    )
    independent_workers: bool = _key(
        False,
        "Several workers of one group each learn a policy of their own from the partitions they "
        "hold. Without it (or `share_deltas`), a worker refuses to join a group another worker "
        "is in.",
    )


@dataclass(frozen=True)
class JaxConfig:
    """How the daemon gets its compiled JAX functions (each costs about a second to compile)."""

    compile_ahead: bool = _key(
        False,
        "Compile every function a step calls on a thread once the first records arrive, so the "
        "first polls do not wait for the compiler; off by default because on a small, loaded "
        "machine that thread can hold up kafka-python's network loop long enough to lose the "
        "group's partitions.",
    )
    compilation_cache: bool = _key(
        True,
        "Keep compiled functions in JAX's persistent cache, so a restarted worker loads them "
        "instead of compiling again.",
    )
    compilation_cache_dir: str = _key(
        "",
        "Folder of that cache, which holds native code JAX runs (keep it writable by the "
        "worker's user only); empty: `<checkpoint.dir>/jax-cache`. Process-wide: the first "
        "worker of a process sets it, and unsets it when it closes.",
    )


@dataclass(frozen=True)
class Config:
    """The whole configuration of an encore process."""

    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    topics: Topics = field(default_factory=Topics)
    events: EventsConfig = field(default_factory=EventsConfig)
    join: JoinConfig = field(default_factory=JoinConfig)
    reward: RewardSpec = field(default_factory=RewardSpec)
    policy: PolicySpecConfig = field(default_factory=PolicySpecConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    rerank: RerankConfig = field(default_factory=RerankConfig)
    catalogue: CatalogueConfig = field(default_factory=CatalogueConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    jax: JaxConfig = field(default_factory=JaxConfig)

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        overrides: Sequence[str] = (),
    ) -> Self:
        """Build a config from defaults, a TOML file, environment variables and ``KEY=VALUE`` flags.

        Args:
            path: a TOML file with ``[section]`` tables, or None.
            env: environment (``os.environ`` by default); ``ENCORE_<SECTION>__<KEY>`` is read.
            overrides: ``section.key=value`` strings (from ``--set``), applied last.

        Raises:
            ConfigError: an unknown section or key, a value of the wrong type, or a broken relation.
        """
        env = os.environ if env is None else env
        layers: dict[str, dict[str, Any]] = {}
        origins: dict[tuple[str, str], str] = {}  # (section, key) -> where its value came from
        if path is not None:
            try:
                data = tomllib.loads(Path(path).read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"cannot read config file {path}: {exc}") from exc
            for section, values in data.items():
                if not isinstance(values, dict):
                    raise ConfigError(f"{path}: [{section}] must be a table")
                layers.setdefault(section, {}).update(typing.cast(dict[str, Any], values))
                origins.update({(section, key): str(path) for key in values})
        for name, raw in env.items():
            if name.startswith("ENCORE_") and "__" in name:
                section, _, key = name[len("ENCORE_") :].lower().partition("__")
                layers.setdefault(section, {})[key] = _EnvString(raw, name)
                origins[section, key] = name
        for item in overrides:
            lhs, sep, raw = item.partition("=")
            section, dot, key = lhs.strip().partition(".")
            if not sep or not dot:
                raise ConfigError(f"--set takes section.key=value, got {item!r}")
            layers.setdefault(section, {})[key] = _EnvString(raw, f"--set {lhs.strip()}")
            origins[section, key] = f"--set {lhs.strip()}"
        return cls._build(layers, origins)

    @classmethod
    def _build(
        cls,
        layers: Mapping[str, Mapping[str, Any]],
        origins: Mapping[tuple[str, str], str] | None = None,
    ) -> Self:
        origins = origins or {}
        sections = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(layers) - set(sections))
        if unknown:
            given = _given(origins, [(s, k) for s in unknown for k in layers[s]])
            hint = _did_you_mean_section(unknown, layers, origins)
            raise ConfigError(
                f"unknown config section(s) {unknown}{hint}{given}; known: {sorted(sections)}"
            )
        built: dict[str, Any] = {}
        hints = _hints(cls)
        for name in sections:
            section_cls = hints[name]
            built[name] = _build_section(name, section_cls, layers.get(name, {}), origins)
        return cls(**built)

    def redacted(self) -> dict[str, Any]:
        """The effective config as plain data with secrets replaced, for logs and checkpoints."""

        def walk(obj: Any, key: str = "") -> Any:
            if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
                return {f.name: walk(getattr(obj, f.name), f.name) for f in dataclasses.fields(obj)}
            if isinstance(obj, Mapping):
                m = typing.cast(Mapping[str, Any], obj)
                return {k: walk(v, k) for k, v in m.items()}
            if isinstance(obj, str) and obj and any(s in key for s in SECRET_KEYS):
                return "***"
            return obj

        return typing.cast(dict[str, Any], walk(self))

    def to_json(self) -> str:
        return json.dumps(self.redacted(), sort_keys=True)


class _EnvString(str):
    """A value that came from an environment variable or flag, parsed by the field's type."""

    origin: str

    def __new__(cls, value: str, origin: str) -> _EnvString:
        obj = super().__new__(cls, value)
        obj.origin = origin
        return obj


@functools.cache
def _hints(cls: type[Any]) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def env_name(section: str, key: str) -> str:
    """The environment variable that sets ``section.key``."""
    return f"ENCORE_{section.upper()}__{key.upper()}"


def _build_section(
    section: str,
    section_cls: type[Any],
    values: Mapping[str, Any],
    origins: Mapping[tuple[str, str], str],
) -> Any:
    fields = {f.name: f for f in dataclasses.fields(section_cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        given = _given(origins, [(section, k) for k in unknown])
        guesses = [
            ((section, k), (section, close[0]))
            for k in unknown
            if (close := difflib.get_close_matches(k, list(fields), n=1))
        ]
        raise ConfigError(
            f"unknown key(s) {unknown} in [{section}]{_did_you_mean(guesses, origins)}{given}; "
            f"known: {sorted(fields)} "
            f"(environment: {env_name(section, '<key>')})"
        )
    hints = _hints(section_cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        where = f"{section}.{key}"
        if not isinstance(value, _EnvString) and (section, key) in origins:
            where = f"{where} (from {origins[section, key]})"
        kwargs[key] = _coerce(where, hints[key], value)
    try:
        return section_cls(**kwargs)
    except (TypeError, ValueError) as exc:
        # a range or relation check: say where each value of the section that was set came from
        given = _given(origins, [(section, k) for k in values])
        if isinstance(exc, ConfigError):
            raise ConfigError(f"{exc}{given}") from exc
        raise ConfigError(f"[{section}]: {exc}{given}") from exc


def _did_you_mean(
    guesses: Sequence[tuple[tuple[str, str], tuple[str, str]]],
    origins: Mapping[tuple[str, str], str],
) -> str:
    """`` (did you mean join.window_ms?)``: the known key closest to each unknown one, or ``""``.

    Each guess is ``((section, key) given, (section, key) known)``, and is written the way its
    value was given: a variable's name for a value from a variable, ``section.key`` otherwise.
    """

    def spelled(section: str, key: str, origin: str) -> str:
        if not key:
            return f"[{section}]"
        return env_name(section, key) if origin.startswith("ENCORE_") else f"{section}.{key}"

    named: list[tuple[str, str]] = []
    for given, known in guesses:
        origin = origins.get(given, "")
        pair = (spelled(*given, origin), spelled(*known, origin))
        if pair not in named:
            named.append(pair)
    if not named:
        return ""
    if len(named) == 1:
        return f" (did you mean {named[0][1]}?)"
    return " (did you mean " + ", ".join(f"{k} for {g}" for g, k in named) + "?)"


def _did_you_mean_section(
    unknown: Sequence[str],
    layers: Mapping[str, Mapping[str, Any]],
    origins: Mapping[tuple[str, str], str],
) -> str:
    """:func:`_did_you_mean` for unknown sections: the closest section, with the key if it has it."""
    known = sections()
    guesses: list[tuple[tuple[str, str], tuple[str, str]]] = []
    for section in unknown:
        close = difflib.get_close_matches(section, list(known), n=1)
        if not close:
            continue
        fields = [f.name for f in dataclasses.fields(known[close[0]])]
        for key in layers[section] or [""]:
            if key and key not in fields:
                near = difflib.get_close_matches(key, fields, n=1)
                guesses.append(((section, key), (close[0], near[0] if near else "")))
            else:
                guesses.append(((section, key), (close[0], key)))
    return _did_you_mean(guesses, origins)


def _given(origins: Mapping[tuple[str, str], str], keys: Sequence[tuple[str, str]]) -> str:
    """`` (set: a.b by ENCORE_A__B, ...)``: where the values of ``keys`` came from, or ``""``."""
    known = [
        f"{s}.{k} by " + ("--set" if origins[s, k] == f"--set {s}.{k}" else origins[s, k])
        for s, k in keys
        if (s, k) in origins
    ]
    return f" (set: {', '.join(known)})" if known else ""


def _coerce(where: str, hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if isinstance(value, _EnvString):
        where = f"{where} (from {value.origin})"
        if hint is bool:
            low = value.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{where} must be a boolean, got {value!r}")
        if hint is int:
            try:
                return int(value)
            except ValueError:
                raise ConfigError(f"{where} must be an integer, got {value!r}") from None
        if hint is float:
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{where} must be a number, got {value!r}") from None
        if origin is Mapping or hint is Mapping:
            try:
                parsed = json.loads(value)
            except ValueError:
                raise ConfigError(f"{where} must be a JSON object, got {value!r}") from None
            return _coerce(where, hint, parsed)
        value = str(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be a boolean, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{where} must be one of {list(allowed)}, got {value!r}")
        return value
    if origin is Mapping or origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a table, got {value!r}")
        return dict(typing.cast(Mapping[str, Any], value))
    if isinstance(hint, types.UnionType):
        return value
    raise ConfigError(f"{where}: unsupported config type {hint!r}")


def _positive(obj: object, *names: str) -> None:
    section = type(obj).__name__
    for name in names:
        value = getattr(obj, name)
        if value <= 0:
            raise ConfigError(f"{section}.{name} must be positive, got {value}")


def sections() -> dict[str, type[Any]]:
    """Each section's name and its dataclass, in the order of :class:`Config`."""
    hints = _hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


class KeyDoc(typing.NamedTuple):
    """One config key as the reference shows it."""

    section: str
    key: str
    type: str  # "integer", "number", "boolean", "string", "table" or "one of ..."
    default: str  # as TOML writes it
    unit: str  # "" where the value has none
    env: str
    doc: str


def key_docs() -> list[KeyDoc]:
    """Every key of every section with its type, default, unit, variable and description.

    A key's description and unit are its field's metadata (``doc``, ``unit``); the keys of a
    section defined outside this module (``[join]``) take theirs from the ``Attributes:`` of the
    section's docstring and units from their names. A unit left unsaid is ``ms`` for a name
    ending in ``_ms`` and ``bytes`` for one ending in ``_bytes``.

    Raises:
        ConfigError: a key has no description.
    """
    out: list[KeyDoc] = []
    for section, section_cls in sections().items():
        hints = _hints(section_cls)
        attributes = _attributes(section_cls)
        for f in dataclasses.fields(section_cls):
            doc = str(f.metadata.get("doc", "")) or attributes.get(f.name, "")
            if not doc:
                raise ConfigError(f"{section}.{f.name} has no description")
            unit = str(f.metadata.get("unit", "")) or _FOREIGN_UNITS.get(section, {}).get(
                f.name, ""
            )
            if not unit:
                unit = (
                    "ms" if f.name.endswith("_ms") else "bytes" if f.name.endswith("_bytes") else ""
                )
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
            out.append(
                KeyDoc(
                    section,
                    f.name,
                    _type_name(hints[f.name]),
                    _toml_value(default),
                    unit,
                    env_name(section, f.name),
                    doc,
                )
            )
    return out


def reference_markdown() -> str:
    """``docs/configuration.md``: every section and key, rendered from the definitions here.

    Example:
        >>> "| `window_ms` | integer | `1800000` | ms | `ENCORE_JOIN__WINDOW_MS` |" in reference_markdown()
        True
    """
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated from streaming/config.py by `encore config reference > "
        "docs/configuration.md`; edit the definitions there, not this file. -->",
        "",
        "Every key can be set in the TOML file given with `--config` (one `[section]` table per "
        "section), by an environment variable `ENCORE_<SECTION>__<KEY>`, or by "
        "`--set section.key=value`; each of these overrides the ones before it, and the default "
        "applies where none sets a key. A variable or flag gives a table as a JSON object and a "
        "boolean as `true`/`false`, `1`/`0`, `yes`/`no` or `on`/`off`. An unknown section or "
        "key, a value of the wrong type and a value out of range are errors that name the key "
        "and where its value came from.",
    ]
    by_section: dict[str, list[KeyDoc]] = {}
    for k in key_docs():
        by_section.setdefault(k.section, []).append(k)
    for section, section_cls in sections().items():
        lines += ["", f"## `[{section}]`", "", _summary(section_cls), ""]
        lines += [
            "| key | type | default | unit | environment variable | description |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for k in by_section[section]:
            cells = [f"`{k.key}`", k.type, f"`{k.default}`", k.unit, f"`{k.env}`", k.doc]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        if section == "kafka":
            allowed = ", ".join(f"`{name}`" for name in sorted(CONSUMER_PASSTHROUGH))
            lines += ["", f"Keys `client_options` accepts: {allowed}."]
    return "\n".join(lines) + "\n"


# Units of the keys of sections defined outside this module, whose fields carry no metadata.
_FOREIGN_UNITS: Mapping[str, Mapping[str, str]] = {
    "join": {
        "max_open": "impressions",
        "slate_size": "positions",
        "max_pending": "outcomes",
        "max_closed_keys": "impressions",
    }
}


def _attributes(cls: type[Any]) -> dict[str, str]:
    """The ``Attributes:`` section of a Google-style class docstring, one line per name."""
    out: dict[str, str] = {}
    inside, name = False, ""
    for line in (inspect.getdoc(cls) or "").splitlines():
        if line.strip() == "Attributes:":
            inside = True
        elif inside and line and not line.startswith(" "):
            break
        elif inside and (m := re.match(r"^ {4}(\w+): (.*)$", line)):
            name = m.group(1)
            out[name] = m.group(2).strip()
        elif inside and name and line.strip():
            out[name] += " " + line.strip()
    return {k: (v[:1].upper() + v[1:]).replace("``", "`") for k, v in out.items()}


def _summary(cls: type[Any]) -> str:
    """The first paragraph of a class docstring, on one line."""
    doc = inspect.getdoc(cls) or ""
    return " ".join(doc.split("\n\n")[0].split()).replace("``", "`")


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in typing.get_args(hint))
    if hint is Mapping or typing.get_origin(hint) in (Mapping, dict):
        return "table"
    names = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if hint not in names:
        raise ConfigError(f"no reference name for config type {hint!r}")
    return names[hint]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mapping):
        return json.dumps(dict(typing.cast(Mapping[str, Any], value)), sort_keys=True)
    return json.dumps(value)
