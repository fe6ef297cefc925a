"""Directory Sync: synchronizes users and groups from Microsoft Entra ID into the portal's user store."""

__version__ = "0.1.0"
