"""AMQP 0-9-1 messaging exchanges from a real RabbitMQ (Debian's rabbitmq-server, a node of
its own started by the test) and the pika client, through a recording relay: a producer's
publishes and a consumer's deliveries, counted against the broker's own queue count."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

import pika
import pika.exceptions
import pytest

from tests.conftest import require, wait_for_port
from tests.l7_relay import Relay, free_port, replay

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
QUEUE = "otelbpf.orders"
EXCHANGE = "otelbpf.events"
MESSAGES = 23
ROUTED = 2  # through EXCHANGE rather than the default exchange


@pytest.fixture
def rabbitmq():
    require(os.path.exists(SERVER), "rabbitmq-server is not installed")
    base = tempfile.mkdtemp(prefix="otelbpf-rabbitmq-")
    port, dist, epmd = free_port(), free_port(), free_port()
    with open(os.path.join(base, "enabled_plugins"), "w") as plugins:
        plugins.write("[].\n")  # no management plugin: a quicker start
    env = dict(os.environ, HOME=base, RABBITMQ_NODENAME=f"otelbpf{port}@localhost", RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
               RABBITMQ_NODE_PORT=str(port), RABBITMQ_DIST_PORT=str(dist), ERL_EPMD_PORT=str(epmd),
               ERL_EPMD_ADDRESS="127.0.0.1", RABBITMQ_MNESIA_BASE=f"{base}/mnesia", RABBITMQ_LOG_BASE=f"{base}/log",
               RABBITMQ_ENABLED_PLUGINS_FILE=f"{base}/enabled_plugins", RABBITMQ_PID_FILE=f"{base}/pid",
               RABBITMQ_CONFIG_FILE=f"{base}/rabbitmq", RABBITMQ_ADVANCED_CONFIG_FILE=f"{base}/advanced.config",
               RABBITMQ_CONF_ENV_FILE=f"{base}/rabbitmq-env.conf",
               RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}")
    log = open(os.path.join(base, "server.log"), "w")
    proc = subprocess.Popen([SERVER], env=env, cwd=base, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert wait_for_port(port, 90), "rabbitmq-server did not start"
        deadline = time.monotonic() + 60
        while True:  # the port opens before the broker takes connections
            try:
                pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port)).close()
                break
            except pika.exceptions.AMQPConnectionError:
                assert time.monotonic() < deadline, "rabbitmq did not accept connections in 60 s"
                time.sleep(0.2)
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the node we started, in its own session
        proc.wait(60)
        epmd_binary = shutil.which("epmd")
        if epmd_binary:  # the node started its own epmd on a port of ours: stop it too
            subprocess.run([epmd_binary, "-kill"], env=env, capture_output=True, timeout=10)
        shutil.rmtree(base, ignore_errors=True)


def test_publishes_and_deliveries_match_the_broker(rabbitmq):
    with Relay(rabbitmq) as relay:
        producer = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", relay.port))
        channel = producer.channel()
        channel.confirm_delivery()  # each publish waits for the broker's ack: the count below is settled
        channel.queue_declare(QUEUE)
        channel.exchange_declare(EXCHANGE, "direct")
        channel.queue_bind(QUEUE, EXCHANGE, "orders")
        for i in range(MESSAGES):
            channel.basic_publish("", QUEUE, b"order %d" % i)
        for i in range(ROUTED):
            channel.basic_publish(EXCHANGE, "orders", b"routed %d" % i)
        queued = channel.queue_declare(QUEUE, passive=True).method.message_count
        with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="404"):
            channel.basic_publish("otelbpf.missing", "x", b"lost")  # NOT_FOUND closes the channel
        producer.close()

        consumer = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", relay.port))
        channel = consumer.channel()
        bodies = []
        for method, _, body in channel.consume(QUEUE, inactivity_timeout=5):
            assert method is not None, "a message the broker counted never came"
            channel.basic_ack(method.delivery_tag)
            bodies.append(body)
            if len(bodies) == queued:
                break
        channel.cancel()
        left = channel.queue_declare(QUEUE, passive=True).method.message_count
        consumer.close()
        relay.wait_idle()
    assert queued == MESSAGES + ROUTED and left == 0

    (published, producing), (delivered, consuming) = (replay(records) for records in relay.connections)
    assert producing.protocol == consuming.protocol == "amqp"
    assert dict(producing.counters) == {"channel_errors": 1} and dict(consuming.counters) == {}
    assert [e.attributes["messaging.destination.name"] for e in published] == \
        ["amq.default"] * MESSAGES + [EXCHANGE] * ROUTED + ["otelbpf.missing"]
    assert {e.attributes["messaging.operation.type"] for e in published} == {"send"}
    assert len(delivered) == queued
    assert [e.attributes["messaging.message.body.size"] for e in delivered] == [len(body) for body in bodies]
    assert {(e.operation, e.attributes["messaging.system"], e.attributes["messaging.rabbitmq.destination.routing_key"])
            for e in delivered} == {("receive", "rabbitmq", QUEUE), ("receive", "rabbitmq", "orders")}
