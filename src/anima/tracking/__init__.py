"""MLflow glue: one stage = one run; the tracking contract of DESIGN.md lives here."""
