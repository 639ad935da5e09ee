"""The local SERVICE_LIST map behind one Protocol (dataplane.base.DataPlane)."""
