"""The Prefect entry point beside prefect.yaml (``entrypoint: pipelines/gan_pipeline.py:gan_pipeline``)
and ``python -m pipelines.gan_pipeline``. The flows live in the installed package, ganops.flows; this
folder is not installed, so its name cannot collide with another distribution's."""

from ganops.telemetry import disable_telemetry

disable_telemetry()  # before ganops.flows imports Prefect, whose analytics start on import

from ganops.flows import gan_pipeline, gan_sweep, main, serve_deployment  # noqa: E402

__all__ = ["gan_pipeline", "gan_sweep", "serve_deployment"]

if __name__ == "__main__":
    main()
