"""Table Storage for the index of enrollment reminders to come.

``{prefix}Reminders``: PK org, RK user id, ``dueAt`` (when the user's next reminder is due). The same shape and
queries as ``{prefix}Invitations`` (``table_invitations``), in a table of its own: the reminder timer's query
(``dueAt lt now``, across partitions) reads the rows due and no user, and never the recovery timer's rows.
"""
from __future__ import annotations

from ..ports import DueReminders
from .table_invitations import TableInvitations


class TableReminders(TableInvitations, DueReminders):
    TABLE = "Reminders"
