"""Test harnesses shipped with the package, for this project's tests and later issues'."""
