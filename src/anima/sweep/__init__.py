"""`anima sweep`: Optuna 5 studies over any config key of a training stage.

Modules, one concern each: `space` (parse and check the search space, turn suggestions into overrides),
`study` (storage, sampler, pruner, study name, trial budget), `pruning` (the Lightning callback),
`objective` (one trial = compose + validate + train as a child MLflow run), `results` (best value on the
parent run, plots, the reproducing preset, registering the top trials), `recover` (trials of dead workers),
`tags` (the tag and trial-attribute names they share). The training function arrives as an argument.
"""
