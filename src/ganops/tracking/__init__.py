"""MLflow for the stages: the store (store), the pipeline's run and its lineage (runs), the model
registry and promotion (registry). Import the module you need; this package imports nothing."""
