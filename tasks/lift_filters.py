"""Liftings of the global filter and threshold ops (registered with tasks.lift.lifts)."""
