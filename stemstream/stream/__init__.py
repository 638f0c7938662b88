"""stemstream.stream (see SPEC.md section 2)."""
