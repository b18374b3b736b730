"""What ``streaming.kafka.clients`` tells about a client without a broker to talk to."""

from __future__ import annotations

from kafka import KafkaConsumer

from streaming.kafka.clients import client_state


def test_client_state_tells_a_consumer_that_never_joined_its_group() -> None:
    consumer = KafkaConsumer(bootstrap_servers="127.0.0.1:1", group_id="g", api_version=(3, 0))
    try:
        consumer.subscribe(["t"])
        state = client_state(consumer)
    finally:
        consumer.close()
    assert state.startswith("coordinator None, member <unjoined>, generation -1")
    assert "rejoin needed True, join in flight False, assigned 0, paused 0, fetchable 0" in state


def test_client_state_reads_question_marks_where_a_client_lacks_what_it_reads() -> None:
    state = client_state(object())
    assert "coordinator ?" in state and "parked ?" in state
    assert all(value == "?" for value in (f.rsplit(" ", 1)[1] for f in state.split(", ")))
