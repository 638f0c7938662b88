"""stemstream.train (see SPEC.md section 2)."""
