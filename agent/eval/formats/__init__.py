"""The built-in benchmark formats; importing this package registers them (one module per family)."""
