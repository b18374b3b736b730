"""THE config object: defaults, then a TOML file, then ``ENCORE_<SECTION>__<KEY>`` variables, then flags.

Unknown sections and keys are errors, every duration is an integer with ``_ms`` in its name, and
relations between fields are checked when a section is built. ``rewards`` and ``bandits`` never read
config: ``streaming`` maps these sections to keyword arguments.
"""

from __future__ import annotations

import dataclasses
import json
import os
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
    """Where the cluster is and how to talk to it.

    ``bootstrap_servers`` empty means: the local broker that ``encore broker start`` runs.
    """

    bootstrap_servers: str = ""
    client_id: str = "encore"
    group_id: str = "encore-daemon"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_plain_username: str = ""
    sasl_plain_password: str = ""
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    ssl_password: str = ""
    poll_timeout_ms: int = 200
    # Records one poll (one decode and one step) takes at most. A step's fixed costs (the
    # padded policy and model updates, the joins' per-partition passes) are shared by more
    # events the larger the poll: on 562,081 events through the local broker, one daemon's whole
    # run went from about 34,500 (5,000) to 36,200 (10,000) and 40,900 events/s (20,000).
    max_poll_records: int = 20_000
    # Bytes one fetch takes from a partition (kafka-python's default is 1 MiB, about 430
    # float32 impressions). With the decoding process a larger fetch means fewer, fuller polls:
    # on 1,011,672 events, 72 polls of 19,000 records in the median against 168 of 5,100 (the
    # README's daemon benchmark). ``client_options.max_partition_fetch_bytes`` overrides it.
    max_partition_fetch_bytes: int = 4 * 1024 * 1024
    session_timeout_ms: int = 10_000
    # A daemon that has held no partition this long while its stable group leaves some unowned
    # rejoins the group; still nothing at the next check (or a group not stable at two checks
    # in a row), it replaces its consumer (streaming.liveness); 0 turns the watchdog off.
    rejoin_unassigned_ms: int = 30_000
    # The daemon reads (offset, key, value) records parsed from v2 batches in one loop
    # (streaming.kafka_records, ~3.6x faster than kafka-python's per-record objects); false
    # keeps kafka-python's own records. Refused, with a warning, on another kafka-python.
    lean_records: bool = True
    # A daemon whose consumer returned nothing this long while its partitions have lag (or lag
    # that cannot be read) closes it and opens a new one (Daemon.restart_consumer); 0: off.
    stall_restart_ms: int = 120_000
    # A partition read more than this far ahead in event time of the same partition of the other
    # stream (impressions vs outcomes) is paused until that one catches up (streaming.align), so
    # a backlog's outcomes do not outrun their impressions and overflow the join's pending
    # buffer; 0 turns alignment off.
    align_ms: int = 10_000
    # Records of the daemon's outputs (dead letters, late rows, joined records, snapshots,
    # deltas, handoffs) the broker refuses for good (not a timeout: too large even when
    # truncated, a topic that takes no such record) are counted, logged and dropped; one more
    # than this stops the daemon, exit code 73 (streaming.outbound); 0 stops at the first.
    side_max_refused: int = 100
    # The max.message.bytes assumed for an output topic whose setting the broker does not tell
    # (an admin client not allowed to describe it): the broker's own default is 1,048,588.
    side_max_message_bytes: int = 1_000_000
    # A dead letter too large for its topic keeps at most this many of the original's bytes
    # (besides its size and SHA-256), and says truncated.
    dead_letter_prefix_bytes: int = 65_536
    client_options: Mapping[str, Any] = field(default_factory=dict[str, Any])

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
    """Topic names and the partition count ``encore topics create`` uses."""

    impressions: str = "encore.impressions"
    outcomes: str = "encore.outcomes"
    dlq: str = "encore.dlq"
    late: str = "encore.late"
    snapshots: str = "encore.policy-snapshots"
    deltas: str = "encore.policy-deltas"
    joined: str = "encore.joined"
    handoff: str = "encore.partition-state"  # compacted: open join windows moving between workers
    partitions: int = 4
    replication_factor: int = 1

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

    ``feature_encoding`` is what the demo's and ``encore simulate``'s listeners and the
    ``encore rerank`` impression log send: ``"float32"`` (base64 little-endian float32 strings,
    schema ``impression/2``, ~3x smaller and much faster to decode) or ``"json"`` (number arrays,
    schema ``impression/1``). The decoder accepts both, whatever this says.

    ``decode_process``: the daemon decodes each batch in a second process
    (``streaming.decode_process``) while it learns from the batch before; false decodes in the
    daemon's own process. Either way the result is the same.

    Three bounds send values that parse but cannot be learned from to the dead-letter topic,
    each with its own code (``streaming.events.Limits`` says why each default is what it is):
    ``min_propensity`` (``low_propensity`` below it), ``max_feature_norm`` (``large_features``
    above it; ``inf``: no bound) and ``max_event_ahead_ms``, how far an event's ``ts`` may be
    ahead of its Kafka record's timestamp (``ts_ahead_of_record`` beyond it). Its default, -1,
    means the join's ``allowed_lateness_ms``: an event further ahead than that would make the
    on-time events after it late.
    """

    max_message_bytes: int = 1_000_000
    max_candidates: int = 4096
    d_user: int = 16
    d_track: int = 16
    feature_encoding: Literal["float32", "json"] = "float32"
    decode_process: bool = True
    min_propensity: float = 1e-6
    max_feature_norm: float = 10.0
    max_event_ahead_ms: int = -1

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


REWARD_MODELS = ("survival", "skip", "completion", "direct")


@dataclass(frozen=True)
class RewardSpec:
    """The composite reward the policy learns from, and the reward model the daemon trains.

    ``kind`` and ``params`` build ``rewards.CompositeReward(kind=kind, **params)`` (kinds:
    stream30, linear, listen_fraction, denoised); ``model`` and ``model_params`` build the
    reward model (``rewards.<model>_model(**model_params)``).
    """

    kind: str = "stream30"
    params: Mapping[str, Any] = field(default_factory=dict[str, Any])
    model: str = "survival"
    model_params: Mapping[str, Any] = field(default_factory=dict[str, Any])

    def __post_init__(self) -> None:
        if self.model not in REWARD_MODELS:
            raise ConfigError(
                f"reward.model must be one of {list(REWARD_MODELS)}, got {self.model!r}"
            )


@dataclass(frozen=True)
class PolicySpecConfig:
    """Which policy to run, by its name in ``bandits.registry.POLICIES``, with its parameters."""

    name: str = "linucb"
    params: Mapping[str, Any] = field(default_factory=dict[str, Any])
    slate_size: int = 1

    def __post_init__(self) -> None:
        _positive(self, "slate_size")


@dataclass(frozen=True)
class CheckpointConfig:
    """How often the worker's whole state is written, and where."""

    dir: str = ".encore/checkpoints"
    every_events: int = 50_000
    every_ms: int = 10_000
    keep: int = 3

    def __post_init__(self) -> None:
        _positive(self, "every_events", "every_ms", "keep")


@dataclass(frozen=True)
class RerankConfig:
    """The re-ranking endpoint and the limits of what it accepts.

    ``max_body_bytes``: the largest ``POST /rank`` body (413 above it, refused before it is
    read). ``max_id_chars``: the longest ``user_id``, ``request_id``, ``surface`` and candidate
    id (400 above it). ``max_connections``: connections held at once, one thread each; beyond
    it a new connection takes the place of the one that has waited longest for its request, if
    that one has waited over ``evict_waiting_ms`` (0: never), and is answered 503 otherwise.
    ``read_timeout_ms``: the longest a connection may take to send one whole request (from the
    moment the service waits for it: an idle keep-alive connection too) and to take its answer;
    it is closed after that. ``health_degraded_ms``: how long ``/healthz`` says ``degraded``
    after a served impression went unlogged or an impression's send failed.
    """

    host: str = "127.0.0.1"
    port: int = 8765
    snapshot_every_ms: int = 5_000
    max_body_bytes: int = 1_000_000
    max_id_chars: int = 256
    max_connections: int = 64
    read_timeout_ms: int = 10_000
    evict_waiting_ms: int = 1_000
    health_degraded_ms: int = 300_000

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
class LogConfig:
    """The rolling Parquet log of joined records (what off-policy evaluation reads)."""

    dir: str = ".encore/log"  # empty: no log
    rows_per_file: int = 100_000
    max_file_age_ms: int = 60_000
    max_candidates: int = 64  # candidates kept per impression in the log
    candidate_features: bool = True
    publish_joined: bool = False  # also send each joined record to topics.joined (live OPE)
    background: bool = True  # write on a thread of its own (flushed before every checkpoint)

    def __post_init__(self) -> None:
        _positive(self, "rows_per_file", "max_file_age_ms", "max_candidates")


@dataclass(frozen=True)
class MetricsConfig:
    """The Prometheus endpoint and the status file ``encore status`` reads."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9464  # 0: any free port
    refresh_ms: int = 2_000

    def __post_init__(self) -> None:
        _positive(self, "refresh_ms")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"metrics.port must be in [0, 65535], got {self.port}")


@dataclass(frozen=True)
class ScaleConfig:
    """Several workers in one group learning one global (linear) policy through deltas."""

    share_deltas: bool = False
    worker_id: str = ""  # empty: kafka.client_id; must differ between the workers of a group


@dataclass(frozen=True)
class JaxConfig:
    """How the daemon gets its compiled JAX functions (each costs about a second to compile).

    ``compile_ahead`` compiles every function a step calls on a thread once the first records
    have arrived, so the first polls do not wait for the compiler. It is off by default: on a
    loaded 2-core machine that thread kept kafka-python's network loop from running long enough
    for the group to rebalance, and the consumer was then left with no partitions (seen once in a
    full daemon benchmark run). ``compilation_cache``
    keeps compiled functions in JAX's persistent cache, so a restarted worker loads them instead
    of compiling again; ``compilation_cache_dir`` (empty: ``<checkpoint.dir>/jax-cache``, beside
    the state it serves) is where. The cache holds native code that JAX runs: keep the directory
    writable by the worker's user only, like the checkpoints. The cache directory is a process-wide
    JAX setting: the first worker of a process that opens sets it (unless the embedding program
    set one), and it is unset again when that worker closes.
    """

    compile_ahead: bool = False
    compilation_cache: bool = True
    compilation_cache_dir: str = ""


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
        if path is not None:
            try:
                data = tomllib.loads(Path(path).read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"cannot read config file {path}: {exc}") from exc
            for section, values in data.items():
                if not isinstance(values, dict):
                    raise ConfigError(f"{path}: [{section}] must be a table")
                layers.setdefault(section, {}).update(typing.cast(dict[str, Any], values))
        for name, raw in env.items():
            if name.startswith("ENCORE_") and "__" in name:
                section, _, key = name[len("ENCORE_") :].lower().partition("__")
                layers.setdefault(section, {})[key] = _EnvString(raw, name)
        for item in overrides:
            lhs, sep, raw = item.partition("=")
            section, dot, key = lhs.strip().partition(".")
            if not sep or not dot:
                raise ConfigError(f"--set takes section.key=value, got {item!r}")
            layers.setdefault(section, {})[key] = _EnvString(raw, f"--set {lhs}")
        return cls._build(layers)

    @classmethod
    def _build(cls, layers: Mapping[str, Mapping[str, Any]]) -> Self:
        sections = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(layers) - set(sections))
        if unknown:
            raise ConfigError(f"unknown config section(s) {unknown}; known: {sorted(sections)}")
        built: dict[str, Any] = {}
        hints = typing.get_type_hints(cls)
        for name in sections:
            section_cls = hints[name]
            built[name] = _build_section(name, section_cls, layers.get(name, {}))
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


def env_name(section: str, key: str) -> str:
    """The environment variable that sets ``section.key``."""
    return f"ENCORE_{section.upper()}__{key.upper()}"


def _build_section(section: str, section_cls: type[Any], values: Mapping[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(section_cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in [{section}]; known: {sorted(fields)} "
            f"(environment: {env_name(section, '<key>')})"
        )
    hints = typing.get_type_hints(section_cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        kwargs[key] = _coerce(f"{section}.{key}", hints[key], value)
    try:
        return section_cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[{section}]: {exc}") from exc


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
