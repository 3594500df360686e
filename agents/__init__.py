"""Persona agents: records, cultures, prompt templates and model backends."""
