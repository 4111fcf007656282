"""Training (docs/architecture.md): the loop (``train``), its settings (``config``) and parts,
the objectives and their options."""
