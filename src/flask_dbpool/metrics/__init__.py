"""Exporters of :meth:`Pool.stats` to metrics systems, each an optional extra."""
