"""stemstream.codec (see SPEC.md section 2)."""
