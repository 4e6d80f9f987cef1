"""primage: composition root (settings, app factory, CLI)."""
