"""The worker: the shell around the pure core that reads Kafka, learns, and makes it durable.

=================  ==========================================================================
module             holds
=================  ==========================================================================
``daemon``         ``Daemon``: poll, decode, step, emit, checkpoint, publish
``checkpoint``     atomic, checksummed checkpoints in a format that cannot run code
``lock``           one owner at a time for a worker's files
``alignment``      event-time alignment of the two streams: which one to pause (pure)
``pausing``        that alignment applied to a live consumer
``handoff``        one partition's open join windows as a record its next owner installs
``handoff_topic``  publishing those records to Kafka and reading the newest back
``deltas``         the additive statistics that workers of one group exchange
``liveness``       a watchdog for a consumer the group left without partitions
``outbound``       side outputs tracked until the broker acknowledges them
``side_topics``    dead letters, late rows and joined records
``parquet_log``    the rolling Parquet log of joined records
``metrics``        the Prometheus endpoint, the status file and ``encore status``
``stats``          a worker's live counts
``compile_cache``  JAX's persistent compilation cache for a worker
``gc_tuning``      the cyclic garbage collector's settings for the poll loop
=================  ==========================================================================
"""

from streaming.worker.checkpoint import CheckpointError, CheckpointWriteError
from streaming.worker.daemon import Daemon
from streaming.worker.lock import DirLock, InUseError
from streaming.worker.parquet_log import LogWriteError, ParquetLog, read_log

__all__ = [
    "CheckpointError",
    "CheckpointWriteError",
    "Daemon",
    "DirLock",
    "InUseError",
    "LogWriteError",
    "ParquetLog",
    "read_log",
]
