"""Velora: settings, errors, the local Kafka runtime and the `velora` CLI."""
