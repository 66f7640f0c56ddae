"""MLflow for the stages: ``store`` connects to the tracking store, ``runs`` opens the pipeline's run
and records its lineage, ``registry`` registers models and decides promotion. Import the module you
need; this package imports nothing."""
