"""Per-environment YAML presets (``<env_id>.yaml``), picked automatically by env id."""
