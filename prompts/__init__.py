"""Planner prompt templates (Jinja): package data, read with importlib.resources."""
