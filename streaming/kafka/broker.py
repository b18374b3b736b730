"""A real, local, single-node Apache Kafka (KRaft) broker that encore fetches, starts and stops.

The broker's jars (``org.apache.kafka:kafka_2.13`` and its runtime dependencies) are resolved
from Maven Central with Maven into a cache folder outside git, once, and reused. ``start``
formats KRaft storage, launches one combined broker+controller JVM bound to 127.0.0.1 on free
ports, waits until it answers a metadata request, and records its bootstrap address in
``<state_dir>/broker.json`` where other commands find it. ``stop`` ends that JVM (and only that
JVM) cleanly, with SIGKILL as the last resort, so no Java process is left behind.

Why one long module: fetching, configuring, starting, waiting for and stopping the broker are
one lifecycle over one state folder; most of the length is the failure cases each step explains.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"


class BrokerError(RuntimeError):
    """The local broker could not be fetched, started, reached or stopped; the message says why."""


def cache_dir() -> Path:
    """Where fetched jars live: ``$ENCORE_CACHE_DIR`` or ``~/.cache/encore``."""
    return Path(os.environ.get("ENCORE_CACHE_DIR", Path.home() / ".cache" / "encore"))


def default_state_dir() -> Path:
    """Where the local broker's data, logs and address live: ``$ENCORE_STATE_DIR`` or ``.encore``."""
    return Path(os.environ.get("ENCORE_STATE_DIR", Path.cwd() / ".encore"))


def _require(tool: str, how: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise BrokerError(f"`{tool}` was not found on PATH. {how}")
    return path


def java_path() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    return _require(
        "java",
        "The local Kafka broker needs a Java 17+ runtime: install one, e.g. "
        "`apt-get install openjdk-17-jre-headless`, or set JAVA_HOME.",
    )


_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.encore</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version></dependency>
  </dependencies>
</project>
"""


def fetch_jars(version: str = KAFKA_VERSION, *, quiet: bool = True) -> Path:
    """Resolve the broker's jars with Maven into the cache (once) and return their folder."""
    libs = cache_dir() / f"kafka-{version}" / "libs"
    marker = libs / ".complete"
    if marker.exists():
        return libs
    mvn = _require(
        "mvn",
        "encore fetches the Kafka broker from Maven Central with Maven: install it, e.g. "
        "`apt-get install maven`, or point encore at an existing cluster with "
        "--bootstrap-servers.",
    )
    libs.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=libs.parent) as tmp:
        (Path(tmp) / "pom.xml").write_text(_POM.format(kafka=version, log4j=LOG4J_VERSION))
        staging = Path(tmp) / "libs"
        cmd = [
            mvn,
            "-B",
            *(["-q"] if quiet else []),
            "-f",
            str(Path(tmp) / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ]
        log.info("fetching Apache Kafka %s from Maven Central into %s", version, libs)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not any(staging.glob(f"kafka_2.13-{version}.jar")):
            raise BrokerError(
                f"Maven could not resolve org.apache.kafka:kafka_2.13:{version} "
                f"(exit {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            )
        if libs.exists():
            shutil.rmtree(libs)
        staging.rename(libs)
    marker.write_text("\n".join(sorted(p.name for p in libs.glob("*.jar"))) + "\n")
    return libs


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Broker settings for a single node; TEST_SETTINGS makes groups join and topics appear fast.
BASE_SETTINGS: dict[str, str] = {
    "process.roles": "broker,controller",
    "node.id": "1",
    "controller.listener.names": "CONTROLLER",
    "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
    "inter.broker.listener.name": "PLAINTEXT",
    "offsets.topic.replication.factor": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    # a transaction left open by a killed worker is aborted within a second of its timeout
    "transaction.abort.timed.out.transaction.cleanup.interval.ms": "1000",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "num.partitions": "4",
    "auto.create.topics.enable": "false",
    "group.initial.rebalance.delay.ms": "0",
    "log.retention.hours": "168",
}
TEST_SETTINGS: dict[str, str] = {
    "offsets.topic.num.partitions": "4",
    "log.segment.bytes": "16777216",
}


@dataclass(frozen=True)
class BrokerInfo:
    """What ``broker.json`` records about a running local broker."""

    pid: int
    bootstrap_servers: str
    controller_port: int
    state_dir: str
    log_file: str
    version: str


@dataclass
class LocalBroker:
    """One local KRaft broker whose files live under ``state_dir``.

    Args:
        state_dir: folder for ``server.properties``, ``data/``, ``broker.log`` and ``broker.json``.
        version: Apache Kafka version to fetch and run.
        settings: extra broker settings, applied over ``BASE_SETTINGS``.
        heap_mb: JVM heap size in MiB.
    """

    state_dir: Path = field(default_factory=default_state_dir)
    version: str = KAFKA_VERSION
    settings: Mapping[str, str] = field(default_factory=dict[str, str])
    heap_mb: int = 512
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def info_path(self) -> Path:
        return self.state_dir / "broker.json"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "broker.log"

    def info(self) -> BrokerInfo | None:
        """The recorded broker, if its process is alive; a stale record is removed."""
        try:
            raw = json.loads(self.info_path.read_text())
            info = BrokerInfo(**raw)
        except (OSError, ValueError, TypeError):
            return None
        if not _is_our_jvm(info.pid):
            self.info_path.unlink(missing_ok=True)
            return None
        return info

    def _ports(self) -> tuple[int, int]:
        """Reuse the ports of an earlier run of this state dir (so a restart keeps its address)."""
        props = self.state_dir / "server.properties"
        if props.exists():
            kv = dict(line.split("=", 1) for line in props.read_text().splitlines() if "=" in line)
            listeners = kv.get("listeners", "")
            try:
                broker = int(listeners.split("PLAINTEXT://127.0.0.1:")[1].split(",")[0])
                controller = int(listeners.split("CONTROLLER://127.0.0.1:")[1])
                if _port_free(broker) and _port_free(controller):
                    return broker, controller
            except (IndexError, ValueError):
                pass
        return free_port(), free_port()

    def start(self, *, timeout_s: float = 90.0) -> BrokerInfo:
        """Start the broker (fetching jars first if needed) and wait until it serves requests."""
        running = self.info()
        if running is not None:
            return running
        java = java_path()
        libs = fetch_jars(self.version)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        data = self.state_dir / "data"
        port, cport = self._ports()
        settings = {
            **BASE_SETTINGS,
            "controller.quorum.voters": f"1@127.0.0.1:{cport}",
            "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
            "log.dirs": str(data),
            **self.settings,
        }
        props = self.state_dir / "server.properties"
        props.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        log4j = self.state_dir / "log4j2.properties"
        log4j.write_text(
            "status = warn\n"
            "appender.file.type = File\nappender.file.name = F\n"
            f"appender.file.fileName = {self.log_file}\n"
            "appender.file.layout.type = PatternLayout\n"
            "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = INFO\nrootLogger.appenderRef.f.ref = F\n"
            "logger.kafka.name = kafka\nlogger.kafka.level = INFO\n"
            "logger.state.name = state.change.logger\nlogger.state.level = WARN\n"
        )
        jvm = [
            java,
            f"-Xmx{self.heap_mb}m",
            f"-Xms{min(self.heap_mb, 256)}m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            str(libs / "*"),
        ]
        if not (data / "meta.properties").exists():
            cluster_id = _cluster_id()
            fmt = subprocess.run(
                [*jvm, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)],
                capture_output=True,
                text=True,
                check=False,
            )
            if fmt.returncode != 0:
                raise BrokerError(f"formatting KRaft storage failed:\n{fmt.stdout}{fmt.stderr}")
        out = (self.state_dir / "broker.stdout").open("ab")
        proc = subprocess.Popen(
            [*jvm, "kafka.Kafka", str(props)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()
        self._proc = proc
        info = BrokerInfo(
            pid=proc.pid,
            bootstrap_servers=f"127.0.0.1:{port}",
            controller_port=cport,
            state_dir=str(self.state_dir),
            log_file=str(self.log_file),
            version=self.version,
        )
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise BrokerError(
                    f"the broker exited with code {proc.returncode} while starting; "
                    f"see {self.log_file} and {self.state_dir / 'broker.stdout'}:\n{_tail(self.log_file)}"
                )
            if _serves_metadata(info.bootstrap_servers):
                break
            if time.monotonic() > deadline:
                _terminate(proc.pid, timeout_s=10, proc=proc)
                raise BrokerError(
                    f"the broker did not answer within {timeout_s:.0f} s; "
                    f"see {self.log_file}:\n{_tail(self.log_file)}"
                )
            time.sleep(0.25)
        self.info_path.write_text(json.dumps(info.__dict__, indent=2))
        return info

    def stop(self, *, timeout_s: float = 30.0) -> bool:
        """Stop the recorded broker; True if one was running. Never leaves the JVM behind."""
        info = self.info()
        if info is None:
            return False
        proc = self._proc if self._proc is not None and self._proc.pid == info.pid else None
        _terminate(info.pid, timeout_s=timeout_s, proc=proc)
        self._proc = None
        self.info_path.unlink(missing_ok=True)
        return True

    def wipe(self) -> None:
        """Stop the broker and delete its data and logs."""
        self.stop()
        shutil.rmtree(self.state_dir, ignore_errors=True)


def _cluster_id() -> str:
    """A random KRaft cluster id: URL-safe base64 of a UUID, never starting with ``-``.

    ``kafka-storage format -t -abc`` reads an id that starts with ``-`` as an option and fails
    (1 start in 64); Kafka's own ``Uuid.randomUuid`` redraws such ids, and so does this.
    """
    import base64

    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the JVM binds it
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _serves_metadata(bootstrap: str) -> bool:
    host, port = bootstrap.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            pass
    except OSError:
        return False
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    except (KafkaError, OSError, ValueError):
        return False
    try:
        brokers = admin.describe_cluster().get("brokers", [])
        return any(not b.get("is_fenced", False) for b in brokers)
    except (KafkaError, OSError, ValueError):
        return False
    finally:
        admin.close()


def _is_our_jvm(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"kafka.Kafka" in cmdline


def _terminate(pid: int, *, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM the process group, wait, then SIGKILL; returns once the process is gone."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            if proc is not None:
                proc.wait(timeout=5)
            return
        except PermissionError:
            os.kill(pid, sig)
        if proc is not None:
            try:
                proc.wait(timeout=wait_s)
                return
            except subprocess.TimeoutExpired:
                continue
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                waited, _ = os.waitpid(pid, os.WNOHANG)
                if waited == pid:
                    return
            except ChildProcessError:
                if not Path(f"/proc/{pid}").exists() or _zombie(pid):
                    return
            time.sleep(0.1)
    raise BrokerError(f"broker process {pid} did not exit after SIGKILL")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"
