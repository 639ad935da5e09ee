"""Test doubles of the outside world (fake Kubernetes API, network namespaces), over real I/O."""
