"""One module per DVC stage of dvc.yaml, each with one public function of the same name taking the
validated params and the project root. Only this layer reads ``Params``, resolves the project's
paths (ganops.paths) and opens MLflow runs; the library packages take their own config section or
plain arguments. Import the stage module itself (``from ganops.stages.train import train``): this
package imports nothing, so a stage's code is exactly what its module imports (dvc.yaml's deps)."""

# In the order dvc.yaml lists them and a run executes them: train scores its snapshots against the
# reference statistics, or with the domain classifier, so both come before it.
STAGES = ("prepare", "train_evaluator", "reference_stats", "train", "evaluate", "export", "register")
