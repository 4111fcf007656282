"""Foundations (docs/architecture.md): errors, atomic files, locks, hashing, seeds, registries,
settings, progress, statistics and pictures. Imports nothing else of dmattack."""
