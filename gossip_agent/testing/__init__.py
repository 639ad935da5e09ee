"""Test harnesses shipped with the package (fake Kubernetes API, network namespaces)."""
