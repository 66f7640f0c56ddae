"""The validated configuration: one pydantic tree that mirrors params.yaml.

Every stage calls :func:`load_params` first, so a misspelt key, a wrong type or an out-of-range
value stops the stage with the key's path and the reason, before any output is written.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ganops import GanopsError
from ganops.latents import check_truncation

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(GanopsError):
    """params.yaml is missing, unreadable or invalid."""


class _Section(BaseModel):
    # extra="forbid" is what turns a misspelt key into an error instead of a silently ignored knob.
    model_config = ConfigDict(extra="forbid", frozen=True)


# The sources that read data.path; each is one entry of ganops.data.sources.SOURCES (tests/test_data.py
# checks that the names here and there agree).
SOURCES_READING_A_PATH = ("imagefolder", "mnist-idx", "cifar10")


class DataParams(_Section):
    source: Literal["mnist5k", "digits", "imagefolder", "mnist-idx", "cifar10", "mnist", "fashion-mnist"] = "mnist5k"
    path: str | None = Field(None, description="input folder or file for imagefolder, mnist-idx, cifar10; for mnist "
                             "and fashion-mnist (optional): a folder of the four official IDX files, instead of the "
                             "copy ./setup.sh installs in the ganops cache")
    resolution: int = Field(32, description="side of the square images; a power of two from 8 to 128")
    channels: Literal[1, 3] = 1
    test_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="held-out share for sources without a split")
    seed: int = Field(0, ge=0)
    skip_invalid: bool = False
    shard_size: int = Field(8192, ge=1, description="images per shard of data/prepared/ (the last one of a split holds the rest)")
    workers: int = Field(0, ge=0, le=1024, description="processes decoding image files in prepare; 0: one per CPU core")
    max_file_bytes: int = Field(256 * 2**20, ge=1024, description="most bytes prepare reads of one input file (an "
                                "image, an IDX file after decompression, a CIFAR batch); larger: a named DataError")
    max_image_pixels: int = Field(4096 * 4096, ge=64, description="most pixels one image file may decode to, checked "
                                  "from its header before decoding; larger: a named DataError")

    @field_validator("resolution")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value not in (8, 16, 32, 64, 128):
            raise ValueError(
                f"must be a power of two from 8 to 128, got {value} (28x28 sources are padded to 32)"
            )
        return value

    @model_validator(mode="after")
    def _path_when_needed(self) -> DataParams:
        if self.source in SOURCES_READING_A_PATH and not self.path:
            raise ValueError(f"data.path is required when data.source is {self.source!r}")
        return self


class ModelParams(_Section):
    arch: Literal["dcgan", "resnet"] = Field(
        "dcgan", description="the networks: dcgan (strided convolutions, ganops.models.dcgan) | resnet (SNGAN/BigGAN "
        "pre-activation residual blocks, ganops.models.resnet); both with conditional batch norm in G and a projection D "
        "when conditional")
    latent_dim: int = Field(64, ge=1, le=1024)
    g_channels: int = Field(32, ge=4, le=2048, description="generator width one block below full resolution; doubles towards 4x4")
    d_channels: int = Field(32, ge=4, le=2048, description="discriminator width after its first layer; doubles towards 4x4")
    max_channels: int = Field(512, ge=4, le=4096)
    conditional: bool = True
    spectral_norm: bool = True


class TrainParams(_Section):
    steps: int = Field(4000, ge=1, description="generator steps")
    batch_size: int = Field(64, ge=2, le=65536)
    loss: Literal["minimax", "hinge", "wgan-gp", "rpgan"] = Field(
        "minimax", description="minimax (non-saturating G step) | hinge | wgan-gp | rpgan (relativistic pairing; with "
        "r1_gamma > 0 it is R3GAN's objective: R1 on real and R2 on generated images, both at r1_gamma)")
    lr_g: float = Field(1.5e-3, gt=0.0, le=1.0)
    lr_d: float = Field(1.5e-4, gt=0.0, le=1.0)
    beta1: float = Field(0.0, ge=0.0, lt=1.0)
    beta2: float = Field(0.99, ge=0.0, lt=1.0)
    d_steps: int = Field(1, ge=1, le=100, description="discriminator steps per generator step")
    r1_gamma: float = Field(0.0, ge=0.0, description="R1 penalty weight on real images (and R2 on generated ones "
                            "for a loss that declares it: rpgan); 0 disables")
    gp_weight: float = Field(10.0, ge=0.0, description="gradient penalty weight for wgan-gp")
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0, description="EMA of generator weights; 0 keeps a plain copy")
    ema_start: int = Field(0, ge=0, description="steps before the EMA starts averaging")
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    nproc: int = Field(1, ge=1, le=1024, description="processes (GPUs) for DDP; >1 launches through torchrun")
    compile: bool = Field(False, description="torch.compile the networks (worth it on GPUs, for long runs)")
    cuda_graphs: bool = Field(True, description="on one GPU, capture each training step as one CUDA graph and replay it "
                              "(no effect on CPU, under DDP or with compile)")
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(2, ge=1, description="newest checkpoints kept per training setup")
    checkpoint_retention_days: float = Field(
        14.0, ge=0.0, description="other setups' checkpoint folders untouched this long are removed; 0 keeps all")
    log_every: int = Field(25, ge=1)
    in_memory_max_mb: float = Field(2048.0, ge=0.0, description="a training split up to this size is held in memory "
                                    "(on the GPU when it fits there); a larger one is read from its shards batch by batch")
    augment: Literal["auto", "none", "diffaugment", "ada"] = Field(
        "auto", description="what the discriminator sees, real and generated alike: none | diffaugment (colour, "
        "translation, cutout on every image) | ada (the same, each with a probability p adapted during training) | "
        "auto (diffaugment for an imagefolder with fewer than augment_auto_below training images, else none)")
    augment_auto_below: int = Field(1000, ge=0, description="auto: the training-image count below which an "
                                    "imagefolder is augmented")
    ada_target: float = Field(0.6, gt=0.0, lt=1.0, description="ada: the E[sign(D(real))] that p is steered to")
    ada_kimg: float = Field(100.0, gt=0.0, description="ada: thousands of real images over which p can go from 0 to 1")
    ada_interval: int = Field(4, ge=1, description="ada: steps between adjustments of p")
    eval_every: int = Field(1000, ge=0, description="steps between in-training evaluations of the EMA generator "
                            "(and one at the last step); 0 disables them")
    eval_samples: int = Field(200, ge=8, description="generated images per in-training evaluation (the metric "
                              "fid200_tf_train at 200), against the reference statistics of the reference_stats stage")
    keep_best: int = Field(1, ge=1, le=16, description="EMA snapshots kept: those of this many lowest in-training "
                           "scores, beside the last step; they are re-scored on fresh seeds before one is shipped")
    early_stop_patience: int = Field(0, ge=0, description="stop once this many evaluations pass without a new best "
                                     "beyond noise; 0 never stops early for that")
    diverge_factor: float = Field(3.0, gt=1.0, description="stop when the in-training score rises above this "
                                  "multiple of its best (the best snapshot then ships)")
    noise_z: float = Field(1.96, ge=0.0, description="standard deviations of a difference that count as noise, "
                           "when choosing the snapshot and when stopping early")


# The train keys that say how a run is executed, checkpointed or logged, not what it computes.
TRAIN_RUN_KNOBS = ("device", "nproc", "compile", "cuda_graphs", "checkpoint_every", "keep_checkpoints",
                   "checkpoint_retention_days", "log_every", "in_memory_max_mb")
# The others are the training recipe: recorded in the exported model, and the export stage's train params.
TRAIN_RECIPE = tuple(key for key in TrainParams.model_fields if key not in TRAIN_RUN_KNOBS)


class EvaluatorParams(_Section):
    """The domain classifier trained by the train_evaluator stage."""

    epochs: int = Field(4, ge=1, le=1000)
    batch_size: int = Field(128, ge=2)
    lr: float = Field(3e-3, gt=0.0, le=1.0)
    width: int = Field(32, ge=4, le=512, description="features are 4 x width")
    seed: int = Field(0, ge=0)


class EvalParams(_Section):
    backbone: Literal["auto", "inception", "domain"] = Field(
        "auto", description="auto: the FID Inception network when its weights are installed, else the domain classifier")
    fid_protocol: Literal["tf", "pytorch-fid", "clean"] = Field(
        "tf", description="how images reach the Inception network: tf (torch-fidelity's, the original TF code's), "
        "pytorch-fid (its bilinear resize), clean (clean-fid's PIL bicubic resize)")
    inception_weights: str | None = Field(
        None, description="FID Inception-v3 weights (.safetensors from setup, or torch-fidelity's / pytorch-fid's .pth); "
        "default: the file ./setup.sh installs in the ganops cache")
    num_samples: int = Field(2000, ge=4, description="generated images compared with the reference split")
    draws: int = Field(10, ge=2, description="the generated images come in this many draws, each with its own seed")
    reference: Literal["train", "validation", "test"] = Field(
        "train", description="the split generated images are compared with; validation: the one the source ships or "
        "carves from its training images (mnist, fashion-mnist), for choosing recipes without touching test")
    reference_max_features: int = Field(
        10000, ge=10, description="the reference's mean and covariance are over all its images; beyond this many, "
        "the features kept for KID, precision/recall and the half-sample spreads are a seeded subset of this size")
    native_size: int | None = Field(
        None, ge=4, le=128, description="the data's native side (28 for MNIST, Fashion-MNIST): generated and reference "
        "images are cropped to their centre this size (undoing prepare's zero padding) before the Inception network, "
        "as the literature scores them; the names say it (fid10k_tf_test_28x28); null: scored as generated")
    batch_size: int = Field(250, ge=1)
    seed: int = Field(0, ge=0)
    spread_rounds: int = Field(10, ge=0, description="half-samples per side for the Fréchet distance's std and "
                               "95% interval; 0 skips them")
    kid_subsets: int = Field(100, ge=1)
    kid_subset_size: int = Field(1000, ge=2)
    prc_neighborhood: int = Field(3, ge=1, description="k of the k-NN manifolds for precision/recall")
    dc_neighborhood: int = Field(5, ge=1, description="k of the k-NN balls for density/coverage (Naeem et al.'s 5)")
    fid_inf_points: int = Field(5, ge=2, le=50, description="subset sizes the FD-infinity line is fitted on")
    memorisation_quantile: float = Field(
        0.01, gt=0.0, lt=0.5, description="a generated image nearer its nearest training image than this quantile "
        "of the training images' own nearest-neighbour distances counts as suspiciously close")
    memorisation_max_share: float = Field(
        0.05, gt=0.0, le=1.0, description="memorisation is suspected when more generated images than this share are "
        "suspiciously close")
    truncation: list[float] = Field(
        [0.5, 0.7, 1.0], description="truncation psi values of the report's curve (plus none); [] skips the curve")
    truncation_samples: int = Field(100, ge=10, description="generated images per point of the truncation curve")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    evaluator: EvaluatorParams = EvaluatorParams()

    @model_validator(mode="after")
    def _draws_fit(self) -> EvalParams:
        if self.num_samples < 2 * self.draws:
            raise ValueError(f"eval.num_samples ({self.num_samples}) must be at least 2 x eval.draws ({self.draws})")
        if self.spread_rounds == 1:
            raise ValueError("eval.spread_rounds must be 0 (no interval) or at least 2")
        for psi in self.truncation:
            check_truncation(psi, "eval.truncation")
        if len({f"{psi:g}" for psi in self.truncation}) != len(self.truncation):
            raise ValueError(f"eval.truncation holds a psi twice (values equal to 6 significant digits): {self.truncation}")
        if self.memorisation_max_share <= self.memorisation_quantile:
            raise ValueError(f"eval.memorisation_max_share ({self.memorisation_max_share}) must exceed "
                             f"eval.memorisation_quantile ({self.memorisation_quantile}): images fresh from the data "
                             "distribution are that close this often")
        return self


class ExportParams(_Section):
    opset: int = Field(18, ge=13, le=23, description="ONNX opset of the exported generator")
    fp16: bool = Field(False, description="also write models/fp16/generator.onnx for GPU serving")
    parity_samples: int = Field(64, ge=1)
    parity_tolerance: float = Field(1e-4, gt=0.0, description="max |onnxruntime - torch| for the fp32 model")
    fp16_tolerance: float = Field(1e-2, gt=0.0, description="max |onnxruntime - torch| for the fp16 model")
    fp16_unverified: bool = Field(False, description="write the fp16 model even where its parity can't be measured "
                                  "(recorded as fp16_verified: false in reports/export.json)")


class ServeParams(_Section):
    model: str = Field("models/generator.onnx", description="ONNX file (or, with the registry, a models:/ URI)")
    host: str = Field("127.0.0.1", description="loopback by default; any other address needs an API key (api_key_env)")
    allow_public_without_key: bool = Field(False, description="serve on a non-loopback address without an API key "
                                           "(only when another layer guards the port)")
    port: int = Field(8000, ge=1, le=65535)
    max_batch: int = Field(64, ge=1, le=4096, description="most images one request may ask for")
    max_body_bytes: int = Field(1_048_576, ge=256, description="larger request bodies get 413 (explicit latent vectors "
                                "as JSON take about 20 bytes per number)")
    api_key_env: str = Field("GANOPS_API_KEY", description="when this variable is set, requests need its value as X-API-Key")
    reload_interval_s: float = Field(2.0, gt=0.0, description="how often the model file is checked for a new version")
    reload_retry_max_s: float = Field(60.0, gt=0.0, description="a new model that fails to load is tried again after "
                                      "reload_interval_s, doubling each time up to this")
    ready_when_stale: bool = Field(True, description="/readyz answers 200 (status stale) while an older model serves "
                                   "because the new one fails to load; false: 503, so a balancer drains this replica")
    max_concurrent: int = Field(2, ge=1, le=256, description="generations running at once")
    max_queue: int = Field(16, ge=0, le=4096, description="requests waiting for a generation slot; beyond: 503")
    request_timeout_s: float = Field(30.0, gt=0.0, description="longest wait for a slot plus generation; beyond: 503")
    retry_after_s: int = Field(1, ge=0, description="the Retry-After header's seconds on a 503 for load")
    max_response_bytes: int = Field(16_777_216, ge=1024, description="requests whose response could be larger get 422 "
                                    "before generating (format floats takes about 16 bytes per pixel value)")
    intra_op_threads: int | None = Field(None, ge=1, description="onnxruntime threads per request; default: all cores")


class MlflowParams(_Section):
    """Where runs and models are recorded. Not listed as a DVC param of the train stage: where results
    are tracked does not change what is trained."""

    enabled: bool = True
    tracking_uri: str | None = Field(None, description="null: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the project")
    experiment: str = Field("ganops", min_length=1)
    max_retries: int = Field(3, ge=0, le=10, description="HTTP retries before a tracking server counts as unreachable")
    timeout_s: int = Field(10, ge=1, le=600, description="per HTTP request to the tracking server")


class RegisterParams(_Section):
    model_name: str = Field("ganops-generator", min_length=1)
    min_improvement: float = Field(0.0, ge=0.0, description="how much lower the primary metric (standard FID) must be, at least")
    noise_z: float = Field(1.96, ge=0.0, description="standard deviations of the difference that count as noise")
    per_class_gate: bool = Field(True, description="conditional generators: a version better overall but worse beyond "
                                 "noise on any class is not promoted")


class FlowParams(_Section):
    """Prefect orchestration of the DVC stages (pipelines/)."""

    cron: str = Field("0 2 * * *", description="schedule of `ganops flow serve`; the command line can override it")
    timezone: str = "UTC"
    deployment: str = Field("ganops-nightly", min_length=1)
    retries: int = Field(2, ge=0, le=20, description="retries of a stage that failed for a transient reason")
    retry_delay_s: float = Field(10.0, ge=0.0, description="first retry delay; doubles on each retry")


# "register" is also the name of ABCMeta.register on the class; instances read the field, and the
# section keeps the name it has in params.yaml and dvc.yaml.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)

    class Params(_Section):
        data: DataParams = DataParams()
        model: ModelParams = ModelParams()
        train: TrainParams = TrainParams()
        eval: EvalParams = EvalParams()
        export: ExportParams = ExportParams()
        serve: ServeParams = ServeParams()
        mlflow: MlflowParams = MlflowParams()
        register: RegisterParams = RegisterParams()
        flow: FlowParams = FlowParams()

        @model_validator(mode="after")
        def _watch_fits(self) -> Params:
            if self.train.eval_every and self.train.eval_samples < 2 * self.eval.draws:
                raise ValueError(f"train.eval_samples ({self.train.eval_samples}) must be at least 2 x eval.draws "
                                 f"({self.eval.draws}): each in-training evaluation comes in eval.draws seeded draws")
            return self


def _format_errors(source: str, error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        reason = item["msg"]
        if item["type"] == "extra_forbidden":
            reason = "unknown key (not a ganops parameter; check its spelling)"
        elif item["type"] == "value_error":
            reason = reason.removeprefix("Value error, ")
        lines.append(f"  {where}: {reason} (got {item.get('input')!r})" if item["type"] != "extra_forbidden"
                     else f"  {where}: {reason}")
    return f"invalid parameters in {source}:\n" + "\n".join(lines)


def validate_params(raw: object, source: str = "params") -> Params:
    """Validate an already-parsed mapping; raises :class:`ConfigError` naming each bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must hold a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_errors(source, error)) from None


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"parameters file not found: {path}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    return validate_params(raw, str(path))
