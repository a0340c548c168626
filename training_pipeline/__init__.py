"""Training pipeline: one feature version -> a tracked, registered, gated model."""
