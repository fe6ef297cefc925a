"""Blueprints: each trigger translates its binding into one use-case call and maps the result."""
