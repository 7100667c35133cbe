"""Liftings of the global mask and label ops (registered with tasks.lift.lifts)."""
