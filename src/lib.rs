//! Hosts the workspace-wide `examples/` and `tests/`; it has no code of its own.
