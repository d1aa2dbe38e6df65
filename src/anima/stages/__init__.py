"""The stages: one module per `anima <stage>` command, each taking its composed, validated config.

Which stages exist, their config schema and their one-line help are listed in `anima.config.catalog` (import-
free, so `anima --help` stays fast); a stage's module is imported only when it runs.
"""
