"""Op family registrations (filled in by the family's module)."""
