"""Local Service Bus stand-in: an AMQP 1.0 broker that the real azure-servicebus client works against.

Usage::

    from local.broker import LocalServiceBus

    bus = LocalServiceBus.declared().start()  # the queues of infra/queues.json, as Azure holds them
    client = ServiceBusClient.from_connection_string(bus.connection_string)
    ...
    bus.stop()
"""

from .server import LocalServiceBus

__all__ = ["LocalServiceBus"]
