"""An example kernel plugin: a route (plugin.py) and a backend (backend.py)."""
