"""Sweeps over params.yaml: an Optuna study whose trials are DVC experiments and MLflow child runs
(``ganops sweep``; the Prefect flow ``gan-sweep``). ``spec`` reads the sweep file, ``workspace``
runs one trial's pipeline in a git worktree of its own, ``study`` drives the study, ``ranking``
ranks the trials with the registry's noise test."""
