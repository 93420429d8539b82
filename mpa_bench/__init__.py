"""mpa-bench: benchmarks of the handover agent against strongSwan's charon."""
