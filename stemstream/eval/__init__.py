"""stemstream.eval (see SPEC.md section 2)."""
