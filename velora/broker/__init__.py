"""The local Apache Kafka runtime: fetch the broker's jars, format, start, stop."""

from velora.broker.fetch import fetch, is_fetched, libs_dir
from velora.broker.server import BrokerConfig, LocalBroker, free_port

__all__ = ["BrokerConfig", "LocalBroker", "fetch", "free_port", "is_fetched", "libs_dir"]
