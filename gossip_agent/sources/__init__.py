"""Where the leader's truth comes from, behind one Protocol (sources.base.Source)."""
