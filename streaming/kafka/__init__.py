"""Everything that speaks to Kafka: the only code in encore that imports kafka-python.

=============  ==============================================================================
module         holds
=============  ==============================================================================
``clients``    consumers, producers and the admin client as encore configures them; topic
               specs, reachability, the errors a worker rides out
``records``    lean consumer records ``(offset, key, value, timestamp)`` parsed straight from
               the fetched record batches (compiled regular path: ``_native.c``)
``polled``     one poll's records of one topic, by partition
``rebalance``  a rebalance listener whose work runs off kafka-python's network loop
``broker``     a real local single-node Apache Kafka (KRaft) that encore fetches and runs
=============  ==============================================================================
"""

from streaming.kafka.broker import BrokerError, BrokerInfo, LocalBroker
from streaming.kafka.clients import (
    LeanRecord,
    TopicPartition,
    bootstrap_servers,
    ensure_topics,
    make_admin,
    make_consumer,
    make_producer,
)
from streaming.kafka.polled import Polled
from streaming.kafka.rebalance import OffLoopListener

__all__ = [
    "BrokerError",
    "BrokerInfo",
    "LeanRecord",
    "LocalBroker",
    "OffLoopListener",
    "Polled",
    "TopicPartition",
    "bootstrap_servers",
    "ensure_topics",
    "make_admin",
    "make_consumer",
    "make_producer",
]
