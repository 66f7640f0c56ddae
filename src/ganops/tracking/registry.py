"""The model registry: registering a generator version, the champion decision, and the `ganops
models` commands. The register stage calls ``register_onnx``.

Every pipeline run registers its ONNX generator as a new version of ``register.model_name``. The
alias ``champion`` moves to it only when its primary metric (the standard FID, when the Inception
weights are installed) beats the champion's by more than the noise: more than
``register.min_improvement`` and more than ``register.noise_z`` standard deviations of the
difference, from both versions' half-sampling spreads. Versions measured differently are never
compared: another metric name, FID protocol, weights, sample count, reference split or data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from ganops import GanopsError
from ganops.config import MlflowParams, RegisterParams
from ganops.io import file_sha256, write_bytes_atomic
from ganops.metrics.report import EvaluationReport
from ganops.noise import beyond_noise, bonferroni_z, noise_threshold
from ganops.tracking.store import ONNX_DIGEST_TAG, TrackingError, connect, http_settings, lock_path, tracking_uri

if TYPE_CHECKING:  # the type only: the prepared data format is the stage's to read
    from ganops.data.prepare import Manifest

log = logging.getLogger(__name__)
CHAMPION = "champion"
HISTORY_TAG = "ganops.champion_history"  # JSON list of champion versions, oldest first
ATTEMPT_TAG = "ganops.registration"  # which registration (run, model file, evaluation) made a version


def evaluation_signature(report: EvaluationReport, manifest: Manifest) -> str:
    """Numbers are comparable only under the same protocol (metric, weights, sample count, reference),
    interval settings (the draws and the half-sampling that give the std: eval.draws, eval.spread_rounds,
    as eval.json's ``draws`` and ``interval_method`` say) and data; a domain metric also only under the
    same domain evaluator (the weights file eval.json names: the register stage has checked that it is
    the one in place)."""
    parts = {"metric": report.primary_metric, "backbone": report.backbone, "num_samples": report.num_samples,
             "reference": report.reference, "fid_protocol": report.fid_protocol,
             "weights": report.weights_digest, "data": manifest.checksum(report.reference),
             "draws": report.draws, "intervals": report.interval_method}
    if report.primary_metric.endswith(f"_domain_{report.reference}"):
        parts["evaluator"] = report.evaluator_sha256
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ModelInterface:
    """What the registry records of how a model is called, computed where the model is written
    (ganops.serving.export.model_interface): MLflow's signature, an input example, the class count."""

    signature: Any  # mlflow.models.ModelSignature
    input_example: dict[str, Any]
    num_classes: int


class RegistryDecision(BaseModel):
    """reports/register.json: the version registered and whether (and why) it became champion."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_name: str
    version: str
    promoted: bool
    reason: str
    previous_champion: str | None
    champion: str | None
    metric: str
    metric_value: float
    run_id: str
    model_uri: str

    @classmethod
    def load(cls, path: Path) -> RegistryDecision:
        return cls.model_validate_json(Path(path).read_text())


GET_INTERVALS = "set eval.spread_rounds > 0 and re-run evaluate (`dvc repro evaluate`), then register"


def _decide(cfg: RegisterParams, new: dict, champion) -> tuple[bool, str]:
    if champion is None:
        return True, "first registered version: no champion yet"
    tags = champion.tags
    if tags.get("eval_signature") != new["eval_signature"]:
        return False, (f"not comparable with champion v{champion.version}: it was judged by {tags.get('metric')} "
                       f"(signature {tags.get('eval_signature')}), this version by {new['metric']} "
                       f"(signature {new['eval_signature']}): another protocol, interval settings, weights or data")
    old, value = float(tags["metric_value"]), new["metric_value"]
    if not math.isfinite(old):  # a champion registered before non-finite metrics were refused
        return True, (f"champion v{champion.version}'s {tags.get('metric')} is {old}, not a finite number: "
                      f"{new['metric']} {value:.4f} replaces it")
    std, old_std = new["metric_std"], tags.get("metric_std")
    missing = ([f"this version's evaluation has no {new['metric']}_std"] if std is None else []) + (
        [f"champion v{champion.version} has no metric_std"] if old_std is None else [])
    if missing:
        return False, (f"{new['metric']} {value:.4f} vs champion v{champion.version} {old:.4f}: the noise cannot be "
                       f"judged, {' and '.join(missing)} (a missing std is never taken as 0): not promoted; "
                       f"{GET_INTERVALS}")
    old_std = float(old_std)
    better = beyond_noise(value, std, old, old_std, cfg.noise_z, cfg.min_improvement)
    needed, gain = noise_threshold(std, old_std, cfg.noise_z, cfg.min_improvement), old - value
    verdict = (f"{new['metric']} {value:.4f} vs champion v{champion.version} {old:.4f}: improvement {gain:.4f} "
               f"{'>' if better else '<='} required {needed:.4f} (max of min_improvement "
               f"{cfg.min_improvement:g} and {cfg.noise_z:g} x std of the difference)")
    if not better:
        return False, verdict
    ours, theirs = json.loads(new["per_class"]), json.loads(tags.get("per_class") or "{}")
    if not (ours or theirs or new["classes"] or int(tags.get("classes") or 0)):
        return True, verdict  # unconditional on both sides: no classes to gate
    if not cfg.per_class_gate:
        return True, f"{verdict}; per-class gate off (register.per_class_gate: false): promoted on the overall metric alone"
    return _per_class_gate(cfg, new, ours, champion, theirs, verdict)


def _per_class_gate(cfg: RegisterParams, new: dict, ours: dict, champion, theirs: dict, verdict: str) -> tuple[bool, str]:
    """Better overall, but is any class worse beyond noise? Each class's distance against the
    champion's (its ``per_class`` tag), the noise from both std's at the Bonferroni z. A gate that
    cannot be computed (a class or its interval missing on either side) refuses."""
    missing = []
    for side, mine, other in (("this version's evaluation", ours, theirs),
                              (f"champion v{champion.version}'s evaluation", theirs, ours)):
        if not mine:
            missing.append(f"no per-class metrics in {side}")
            continue
        named = {**mine, **other}  # a class unscored on both sides is named on each (per_class_tag)
        if unscored := [name for name in named if name not in mine or mine[name][0] is None]:
            missing.append(f"{_classes(unscored, named)} not scored in {side}")
        if no_interval := [name for name in mine if mine[name][0] is not None and mine[name][1] is None]:
            missing.append(f"no per-class interval in {side} for {_classes(no_interval, mine)}")
    if missing:
        return False, (f"{verdict}, but the per-class gate cannot be computed: {'; '.join(missing)}: not promoted; "
                       f"{GET_INTERVALS}, with eval.num_samples large enough that every class gets more than "
                       "eval.prc_neighborhood + 1 images (the champion's side: promote a version scored so, with "
                       "`ganops models promote`); register.per_class_gate: false promotes on the overall metric alone, "
                       "and the version records it")
    shared = list(ours)
    z = bonferroni_z(cfg.noise_z, len(shared))
    worst = None
    for name in shared:
        (value, std), (old, old_std) = ours[name], theirs[name]
        loss, noise = value - old, noise_threshold(old_std, std, z)
        if beyond_noise(old, old_std, value, std, z) and (worst is None or loss - noise > worst[0]):
            worst = (loss - noise, name, value, old, loss, noise)
    if worst is None:
        return True, (f"{verdict}; per-class gate: no class of {len(shared)} worse beyond noise "
                      f"({z:.2f} x std of each class's difference, Bonferroni over the classes)")
    _, name, value, old, loss, noise = worst
    return False, (f"{verdict}, but class {name!r} is worse beyond noise: its {new['metric']}_class "
                   f"{value:.4f} vs champion v{champion.version} {old:.4f} (worse by {loss:.4f} > {noise:.4f} = "
                   f"{z:.2f} x std of the difference, Bonferroni over {len(shared)} classes): not promoted "
                   "(register.per_class_gate)")


def per_class_tag(report: EvaluationReport) -> dict[str, list]:
    """Each class's [distance, std] by name, every class of the data: [None, None] for a class that was
    not scored (too few images on a side), so that a class missing on both sides is still seen."""
    scored = report.per_class()
    return {name: [scored[name]["value"], scored[name]["std"]] if name in scored else [None, None]
            for name in report.class_names or []}


def _classes(names: list[str], of: dict) -> str:
    """Some classes by name, for a reason: "every class", "class 'a'", "classes 'a', 'b' and 3 more"."""
    if len(names) == len(of) > 1:
        return "every class"
    shown = ", ".join(repr(name) for name in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return f"class {shown}" if len(names) == 1 else f"classes {shown}"


MAX_TAG_CHARS = 8000  # MLflow's longest tag value


def evaluation_tag(report: EvaluationReport) -> str:
    """The version's ``evaluation`` tag: the report's summary as JSON; with so many classes that it
    would not fit a tag, the per-class rows are left to the version's eval_per_class.json."""
    summary = report.summary()
    text = json.dumps(summary)
    if len(text) > MAX_TAG_CHARS:
        summary["per_class"] = f"{len(summary['per_class'])} classes: see the version's eval_per_class.json artifact"
        text = json.dumps(summary)
    return text


def _registry_lock(cfg: MlflowParams, root: Path, client, name: str) -> FileRegistryLock | RegistryLock:
    """One registry change at a time (read the champion, decide, move the alias): for a local store
    (sqlite, files), a lock file on this machine; for a tracking server, a lock held in the registry
    itself, so register processes on different hosts exclude each other too. Either way the holder
    calls ``check_held()`` right before it moves the alias (``_set_champion``): a holder whose lock was
    taken over meanwhile gives up, having moved nothing (``LockLost``)."""
    uri = tracking_uri(cfg, root)
    if uri.startswith(("http://", "https://")):
        return RegistryLock(client, name)
    return FileRegistryLock(lock_path(uri))


LOCK_TIMEOUT_S = 600.0
FENCE_MARGIN_S = 60.0  # the alias moves only with this much of the lease left (at most a quarter of it)


class LockLost(TrackingError):
    """This process no longer holds the registry lock it took: another holder may be changing the registry."""


def _lock_token() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class FileRegistryLock:
    """A lock file on this machine (an OS lock, held while the process lives) for a local store. Once
    it holds the lock the process writes its token to ``<lock file>.holder``; ``check_held`` confirms
    that the lock file is still the one it locked and the token still its own, so a holder whose lock
    file was removed (and taken by another process on a fresh file) gives up."""

    def __init__(self, path: Path, timeout_s: float = LOCK_TIMEOUT_S) -> None:
        from filelock import FileLock

        self.path, self.holder = Path(path), Path(f"{path}.holder")
        self.lock, self.token, self.inode = FileLock(str(path), timeout=timeout_s), _lock_token(), -1

    def __enter__(self) -> FileRegistryLock:
        self.lock.acquire()
        try:
            self.inode = os.stat(self.path).st_ino
            write_bytes_atomic(self.holder, self.token.encode())
        except BaseException:
            self.lock.release()
            raise
        return self

    def check_held(self) -> None:
        try:
            inode, holder = os.stat(self.path).st_ino, self.holder.read_text()
        except OSError as error:
            raise LockLost(f"the registry lock file {self.path} is gone ({error.strerror}): another process may hold "
                           "the registry now; nothing moved (run it again)") from None
        if inode != self.inode or holder != self.token:
            raise LockLost(f"the registry lock file {self.path} was replaced and taken over by {holder} while this "
                           f"process ({self.token}) held it: nothing moved (run it again)")

    def __exit__(self, *exc) -> None:
        try:
            if self.holder.read_text() == self.token:
                self.holder.unlink()
        except OSError:
            pass
        self.lock.release()


class RegistryLock:
    """A mutex kept by the tracking server: the registered model ``<name>.lock``, whose creation the
    server's database makes atomic (a second create fails with RESOURCE_ALREADY_EXISTS), tagged with its
    holder's token and when its lease ``expires``. The holder deletes it when done; one left by a
    crashed (or paused) holder is taken over once its lease has run out, so ``check_held`` confirms
    before the alias moves that the token is still this holder's and enough of the lease is left that
    no one can take it over meanwhile. ``clock`` (seconds since the epoch) is the lease's clock."""

    def __init__(self, client, name: str, hold_s: float = LOCK_TIMEOUT_S, timeout_s: float = LOCK_TIMEOUT_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.client, self.name, self.hold_s, self.timeout_s = client, f"{name}.lock", hold_s, timeout_s
        self.clock, self.token = clock, _lock_token()

    def __enter__(self) -> RegistryLock:
        from mlflow.exceptions import MlflowException

        deadline, wait = time.monotonic() + self.timeout_s, 0.05
        while True:
            try:
                self.client.create_registered_model(
                    self.name, tags={"holder": self.token, "expires": str(self.clock() + self.hold_s)},
                    description="ganops: held while a register process decides the champion; deleted after")
                return self
            except MlflowException as error:
                if error.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise TrackingError(f"could not take the registry lock {self.name}: {str(error)[:300]}") from None
            self._take_over_if_expired()
            if time.monotonic() > deadline:
                raise TrackingError(f"the registry lock {self.name} stayed taken for {self.timeout_s:g} s")
            time.sleep(wait)  # waiting for another process: the server has no blocking lock to wait on
            wait = min(wait * 2, 2.0)

    def _take_over_if_expired(self) -> None:
        try:
            tags = self.client.get_registered_model(self.name).tags
            if float(tags.get("expires", "inf")) < self.clock():
                log.warning("the registry lock %s of %s expired: taking it over", self.name, tags.get("holder"))
                self.client.delete_registered_model(self.name)
        except Exception:  # deleted meanwhile, or taken over by another waiter: try to create it again
            pass

    def check_held(self) -> None:
        try:
            tags = self.client.get_registered_model(self.name).tags
        except Exception as error:
            raise LockLost(f"could not confirm that this process still holds the registry lock {self.name} "
                           f"({type(error).__name__}: {str(error)[:300]}): nothing moved (run it again)") from None
        if tags.get("holder") != self.token:
            raise LockLost(f"the registry lock {self.name} was taken over by {tags.get('holder')} while this process "
                           f"({self.token}) held it (its lease of {self.hold_s:g} s ran out: a paused process?): "
                           "nothing moved (run it again)")
        left = float(tags.get("expires", "-inf")) - self.clock()
        if left < min(FENCE_MARGIN_S, self.hold_s / 4):
            raise LockLost(f"the lease on the registry lock {self.name} has {max(left, 0):.0f} s left of "
                           f"{self.hold_s:g} s: too little to move the alias before another process may take it "
                           "over; nothing moved (run it again)")

    def __exit__(self, *exc) -> None:
        try:
            if self.client.get_registered_model(self.name).tags.get("holder") == self.token:
                self.client.delete_registered_model(self.name)
        except Exception as error:
            log.warning("could not release the registry lock %s (it expires by itself): %s", self.name, error)


def _champion(client, name: str):
    """The champion version, or None only when the registry says there is none.

    A missing model or a model without the alias means "no champion yet"; any other failure (a timeout,
    a 5xx, an auth error) stops the stage with the registry's own message and leaves the alias alone,
    so a transient outage can never make the new version champion by default."""
    from mlflow.exceptions import MlflowException

    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise TrackingError(f"could not read the champion of {name} from the registry: {str(error)[:300]}") from None
    except Exception as error:
        raise TrackingError(f"could not read the champion of {name} from the registry: "
                            f"{type(error).__name__}: {str(error)[:300]}") from None
    if CHAMPION not in aliases:
        return None
    try:
        return client.get_model_version(name, str(aliases[CHAMPION]))
    except Exception as error:
        raise TrackingError(f"could not read champion v{aliases[CHAMPION]} of {name}: {str(error)[:300]}") from None


def _history(client, name: str, champion) -> list[str]:
    """The champion history, oldest first, as the alias ``champion`` has it: the alias says who is
    champion, the history tag who held it before. ``_set_champion`` writes the tag before it moves the
    alias, so an alias write that failed leaves the tag out of step with it: a promotion's champion-to-be
    after the champion's last entry (cut off), or a rollback's shortened history without the champion
    (put back at the end, as is an alias moved by hand to a version the history lacks). One case reads
    wrong: a rollback from a champion that held it before ([1, 2, 3, 2]) whose alias write failed leaves
    a tag ([1, 2, 3]) that reads as a failed promotion (of 3)."""
    history = json.loads(client.get_registered_model(name).tags.get(HISTORY_TAG, "[]"))
    if champion is None:  # no alias: no champion yet, or MLflow dropped the alias with its deleted version
        return history
    version = str(champion.version)
    if version not in history:
        return [*history, version]
    return history[:len(history) - history[::-1].index(version)]  # up to the champion's last entry


def _exists(client, name: str, version: str) -> bool:
    """Whether ``version`` is still in the registry; a failure to tell stops, moving nothing."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(name, version)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):  # or not a version number
            return False
        raise TrackingError(f"could not read v{version} of {name} from the registry: {str(error)[:300]}") from None
    return True


def _set_champion(client, name: str, version: str, history: list[str], lock: FileRegistryLock | RegistryLock) -> None:
    lock.check_held()  # the fence: a holder whose lock was taken over moves nothing (LockLost)
    # history first: if the alias write then fails, the alias still names the champion and _history
    # reads the tag against it; the other order could move the alias with no record of the way back
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    client.set_registered_model_alias(name, CHAMPION, version)


def register_onnx(onnx_path: Path, interface: ModelInterface, report: EvaluationReport, eval_signature: str, run_id: str,
                  mlflow_cfg: MlflowParams, cfg: RegisterParams, root: Path) -> RegistryDecision:
    """Log the ONNX generator (called as ``interface`` says) to the pipeline's run ``run_id``, register it
    as a new version, tag it with its evaluation (``report``, judged under ``eval_signature``) and its
    sha256, and move ``champion`` to it only on a real improvement. Returns the decision."""
    client = connect(mlflow_cfg, root)
    import mlflow
    import mlflow.onnx
    import onnx

    metric, low, high = report.primary_metric, *report.ci95
    new = {
        "metric": metric, "metric_value": float(report.value),
        "metric_ci95_low": float(report.value if low is None else low),
        "metric_ci95_high": float(report.value if high is None else high),
        "metric_std": None if report.std is None else float(report.std),  # None: no tag, never 0
        "backbone": report.backbone, "num_samples": report.num_samples, "reference": report.reference,
        "eval_signature": eval_signature, "classes": interface.num_classes,
        "per_class": json.dumps(per_class_tag(report), separators=(",", ":")),
        "per_class_gate": "on" if cfg.per_class_gate else "off",  # off: promoted, if at all, without it
    }
    name = cfg.model_name
    digest, evaluation = file_sha256(onnx_path), evaluation_tag(report)
    # a retry of this same registration (same run, model file and evaluation) reuses its version
    attempt = hashlib.sha256(f"{run_id}|{digest}|{evaluation}".encode()).hexdigest()[:16]
    with _registry_lock(mlflow_cfg, root, client, name) as lock:
        version = _version_of_attempt(client, name, run_id, attempt)
        if version is None:
            with http_settings(mlflow_cfg), mlflow.start_run(run_id=run_id):
                info = mlflow.onnx.log_model(
                    onnx.load(str(onnx_path)), name="generator", signature=interface.signature,
                    input_example=interface.input_example,
                    registered_model_name=name, save_as_external_data=False, await_registration_for=120,
                )
            version = str(info.registered_model_version)
            client.set_model_version_tag(name, version, ATTEMPT_TAG, attempt)
        else:
            log.info("%s v%s is this registration's own version (a retry): reusing it", name, version)
        for key, value in {**new, "run_id": run_id, "evaluation": evaluation, ONNX_DIGEST_TAG: digest}.items():
            if value is not None:
                client.set_model_version_tag(name, version, key, str(value))
        try:
            champion = _champion(client, name)
            history = _history(client, name, champion)
            if champion is not None and str(champion.version) == version:  # the first try got as far as the alias
                reason = client.get_model_version(name, version).tags.get("promotion_reason")
                promoted, reason = True, reason or "promoted by an earlier try of this registration"
                earlier = [v for v in history if v != version]
                previous = earlier[-1] if earlier else None
            else:
                promoted, reason = _decide(cfg, new, champion)
                previous = str(champion.version) if champion else None
                if promoted:
                    _set_champion(client, name, version, history + [version], lock)
        except TrackingError as error:
            try:  # say why this version was left out, where the registry still answers
                client.set_model_version_tag(name, version, "promoted", "false")
                client.set_model_version_tag(name, version, "promotion_reason", f"not decided: {error}"[:5000])
            except Exception:
                pass
            raise
        client.set_model_version_tag(name, version, "promoted", str(promoted).lower())
        client.set_model_version_tag(name, version, "promotion_reason", reason)
    log.info("registered %s v%s: %s — %s", name, version, "promoted to champion" if promoted else "not promoted", reason)
    return RegistryDecision(model_name=name, version=version, promoted=promoted, reason=reason,
                            previous_champion=previous, champion=version if promoted else previous, metric=metric,
                            metric_value=new["metric_value"], run_id=run_id, model_uri=f"models:/{name}/{version}")


def _version_of_attempt(client, name: str, run_id: str, attempt: str) -> str | None:
    """The version an earlier try of this registration created, if any."""
    for found in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
        if found.tags.get(ATTEMPT_TAG) == attempt:
            return str(found.version)
    return None


# --- the `ganops models` commands ------------------------------------------------------------------


def list_versions(mlflow_cfg: MlflowParams, cfg: RegisterParams, root: Path = Path(".")) -> list[dict]:
    client = connect(mlflow_cfg, root)
    name = cfg.model_name
    versions = client.search_model_versions(f"name = '{name}'")
    aliases: dict[str, list[str]] = {}
    if versions:
        for alias, version in client.get_registered_model(name).aliases.items():
            aliases.setdefault(str(version), []).append(alias)
    rows = []
    for v in sorted(versions, key=lambda v: int(v.version)):
        rows.append({"version": str(v.version), "metric": v.tags.get("metric", ""), "value": v.tags.get("metric_value", ""),
                     "ci95": f"[{float(v.tags['metric_ci95_low']):.3f}, {float(v.tags['metric_ci95_high']):.3f}]"
                     if "metric_ci95_low" in v.tags else "", "aliases": ",".join(aliases.get(str(v.version), [])),
                     "promoted": v.tags.get("promoted", ""), "created": time.strftime(
                         "%Y-%m-%d %H:%M", time.localtime(v.creation_timestamp / 1000)), "run_id": v.run_id or ""})
    return rows


def promote(mlflow_cfg: MlflowParams, cfg: RegisterParams, version: str, root: Path = Path(".")) -> dict:
    """Make ``version`` the champion by hand (recorded in its tags and the champion history)."""
    client = connect(mlflow_cfg, root)
    name = cfg.model_name
    with _registry_lock(mlflow_cfg, root, client, name) as lock:
        if not _exists(client, name, str(version)):
            raise GanopsError(f"{name} has no version {version}")
        previous = _champion(client, name)
        _set_champion(client, name, str(version), _history(client, name, previous) + [str(version)], lock)
        client.set_model_version_tag(name, str(version), "promotion_reason",
                                     f"promoted by hand on {time.strftime('%Y-%m-%d %H:%M:%S')}")
    return {"champion": str(version), "previous_champion": str(previous.version) if previous else None}


def model_card(mlflow_cfg: MlflowParams, cfg: RegisterParams, version: str, out: Path, root: Path = Path(".")) -> Path:
    """Write ``version``'s model card into ``out`` (ganops.tracking.card)."""
    from ganops.tracking.card import download_model_card

    return download_model_card(connect(mlflow_cfg, root), cfg.model_name, version, out)


def rollback(mlflow_cfg: MlflowParams, cfg: RegisterParams, root: Path = Path(".")) -> dict:
    """Move champion back to the version that held it before the current one (the history as the alias
    has it, ``_history``). With no such version, or one deleted since, it refuses and moves nothing."""
    client = connect(mlflow_cfg, root)
    name = cfg.model_name
    with _registry_lock(mlflow_cfg, root, client, name) as lock:
        history = _history(client, name, _champion(client, name))
        if len(history) < 2:
            raise GanopsError(f"{name} has no earlier champion to roll back to (history: {history or 'empty'})")
        current, previous = history[-1], history[-2]
        if not _exists(client, name, previous):
            raise GanopsError(f"{name} v{previous}, the champion before v{current}, was deleted from the registry: "
                              "nothing moved; make another version champion with `ganops models promote <version>`")
        current_exists = _exists(client, name, current)  # deleted, it lost its alias and takes no tag
        _set_champion(client, name, previous, history[:-1], lock)
        when = time.strftime("%Y-%m-%d %H:%M:%S")
        if current_exists:
            client.set_model_version_tag(name, current, "rolled_back", f"replaced by v{previous} on {when}")
        client.set_model_version_tag(name, previous, "restored_by_rollback_from", current)
    return {"champion": previous, "rolled_back_from": current}
