"""Offline batch jobs (`batchserve run`): JSONL in, JSONL out, resumable and prefix-aware."""
