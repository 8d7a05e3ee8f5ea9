"""pytest glue for pytest-compress (markers, fixtures, options, reports)."""
