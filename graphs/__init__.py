"""LangGraph state machines (episode, adaptation, judge), the SQLite store and their CLIs."""
