"""Feature pipeline: raw source -> validated, immutable, versioned feature table."""
