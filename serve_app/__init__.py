"""Common AI Server on Ray Serve: HTTP ingress, settings, storage and the app builder."""
