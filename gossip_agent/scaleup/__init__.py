"""Scale-up requests: from the XDP program's events to the leader's source."""
