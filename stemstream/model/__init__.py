"""stemstream.model (see SPEC.md section 2)."""
