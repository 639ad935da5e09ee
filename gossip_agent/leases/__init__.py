"""Leader lease backends behind one Protocol (leases.base.Lease), chosen by COORDINATION_BACKEND."""
