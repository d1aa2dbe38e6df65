"""`anima pipeline`: ordered steps (spec), references between them (refs), the run cache (cache), MLflow
parent/child wiring (context) and the loop that ties them together (runner)."""
