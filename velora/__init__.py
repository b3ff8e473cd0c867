"""The core of the Velora ledger: errors, settings, topics, Kafka clients, the local broker.

The bottom layer: it imports nothing else of the project.
"""
