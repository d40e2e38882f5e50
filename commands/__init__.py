"""The write side: commands, their pure decisions, and the handlers that append events."""

from commands.handlers import SendResult, send_message
from commands.model import Limits, SendMessage
from commands.ports import EventLog, IdempotencyStore, IdGenerator, SendRecord

__all__ = [
    "EventLog",
    "IdGenerator",
    "IdempotencyStore",
    "Limits",
    "SendMessage",
    "SendRecord",
    "SendResult",
    "send_message",
]
