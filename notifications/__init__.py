"""Renders and sends the e-mails of Directory Sync; knows nothing about Microsoft Graph."""
