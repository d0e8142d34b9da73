"""Data records, readers, converters from official formats and seeded synthetic generators."""
