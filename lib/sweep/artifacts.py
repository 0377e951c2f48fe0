"""Where a study keeps its trials' files: an Optuna artifact store that every machine can read.

A runner started with ``--artifacts LOCATION`` uploads, when a trial ends, its ``run.json`` and
``metrics.jsonl`` (and, for a finished run, its best weights ``model.safetensors``) with
``optuna.artifacts.upload_artifact``, and records their ids in the trial's user attribute
``artifacts`` ({file name: id}). The study remembers the location (user attribute ``artifact_store``), so
`report URL` and `export URL` find the files from a machine that ran none of the trials.

What a study says is input, not truth: `report` and `export` read only from a store the user names
(``--artifacts``) or confirms at a terminal, and every id is resolved inside the store (realpath: a
symlink is followed to where it leads) or refused in one line.

LOCATION is a folder that every machine mounts (the same path, or pass ``--artifacts`` where it differs),
``s3://BUCKET`` (Boto3: credentials and endpoint from the usual AWS environment or config files) or
``gs://BUCKET`` (google-cloud-storage: application default credentials). Nothing secret is stored.
"""
from __future__ import annotations

import os
from pathlib import Path

import optuna
from optuna.artifacts import download_artifact, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound

from lib.errors import SweepError
from lib.records import METRICS_FILE, RUN_FILE, WEIGHTS_FILE

STUDY_ATTR, TRIAL_ATTR = "artifact_store", "artifacts"
RUN_FILES = (RUN_FILE, METRICS_FILE)   # every ended trial: what the report reads
WEIGHTS = WEIGHTS_FILE                 # finished trials: the best epoch's weights, what export reads


def _s3(bucket: str):
    try:
        import boto3  # noqa: F401 - the store imports it lazily: fail here, in one line
        from optuna.artifacts import Boto3ArtifactStore
    except ImportError:
        raise SweepError("s3:// artifact store: boto3 is not installed here (pip install boto3)") from None
    return Boto3ArtifactStore(bucket)


def _gcs(bucket: str):
    try:
        import google.cloud.storage  # noqa: F401 - as for boto3
        from optuna.artifacts import GCSArtifactStore
    except ImportError:
        raise SweepError("gs:// artifact store: google-cloud-storage is not installed here "
                         "(pip install google-cloud-storage)") from None
    return GCSArtifactStore(bucket)


# Object stores by URL scheme; anything else is a folder. Optuna's stores key objects by artifact id
# alone, so a bucket is the whole location (a key prefix would be silently ignored: refused instead).
CLOUD = {"s3": _s3, "gs": _gcs}


def location(text: str) -> str:
    """The location as the study records it: a bucket URL as given, a folder as an absolute path (a
    relative one means nothing on the next machine)."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        return str(Path(text).expanduser().resolve())
    bucket = rest.strip("/")
    if scheme not in CLOUD or not bucket or "/" in bucket:
        raise SweepError(f"--artifacts {text}: expected a folder, s3://BUCKET or gs://BUCKET")
    return f"{scheme}://{bucket}"


def open_store(where: str, create: bool = False):
    """The artifact store at a recorded location. A folder must exist, unless this runner is the one
    choosing it (``create``): a shared folder missing here is an unmounted share, and uploading into a
    fresh local folder would hide the files from every other machine."""
    scheme, sep, bucket = where.partition("://")
    if sep:
        return CLOUD[scheme](bucket)
    folder = Path(where)
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    if not folder.is_dir():
        raise SweepError(f"the artifact store {where} is not a folder on this machine: mount the shared folder, "
                         f"or pass --artifacts with the path where it is mounted here")
    return FolderStore(folder)


class FolderStore(optuna.artifacts.FileSystemArtifactStore):
    """Optuna's folder store, reading only inside its folder: Optuna checks an id's path, not where a
    symlink in it leads."""

    def __init__(self, folder: Path):
        super().__init__(folder)
        self.folder = Path(folder)

    def path_of(self, artifact_id: str) -> Path:
        root = os.path.realpath(self.folder)
        target = os.path.realpath(os.path.join(root, artifact_id))
        if os.path.commonpath([root, target]) != root or target == root:
            raise SweepError(f"artifact id {artifact_id[:80]!r} names a file outside the artifact store {self.folder}:"
                             " refused (a damaged or edited study)")
        return Path(target)

    def open_reader(self, artifact_id: str):
        try:
            return open(self.path_of(artifact_id), "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            raise ArtifactNotFound(f"{artifact_id} not found") from e


def attach(study: optuna.Study, given: str | None):
    """The runner's store: the one given (recorded in the study if it has none yet), else the study's
    own; None when neither exists (the trials' files then stay on the machine that ran them)."""
    recorded = study.user_attrs.get(STUDY_ATTR)
    if given is None and recorded is None:
        return None
    where = location(given) if given else recorded
    if recorded is None:
        store = open_store(where, create=True)   # before recording it: a bad location is not remembered
        study.set_user_attr(STUDY_ATTR, where)
        return store
    return open_store(where)


def recorded(study: optuna.Study) -> str | None:
    """The store the study says its trials' files are in (text, else None)."""
    where = study.user_attrs.get(STUDY_ATTR)
    return where if isinstance(where, str) and where else None


def reader(study: optuna.Study, given: str | None, confirm=None):
    """The store `report`/`export` read: ``--artifacts`` if given (where the share is mounted here); the
    study's recorded one only if ``confirm(location)`` says yes (a question at a terminal): a study decides
    nothing about which local files are copied. None otherwise."""
    if given:
        return open_store(location(given))
    where = recorded(study)
    if where and confirm is not None and confirm(where):
        return open_store(location(where))
    return None


def upload_run(store, trial: optuna.Trial, run_dir: Path, finished: bool) -> dict[str, str]:
    """Upload a trial's files; their ids go into its user attributes only once every file is written,
    so a reader never follows an id to a half-written file. A heartbeat before each file keeps a slow
    upload of large weights from passing for a dead runner."""
    names = RUN_FILES + ((WEIGHTS,) if finished else ())
    ids = {}
    for name in names:
        path = run_dir / name
        if path.is_file():
            trial.storage.record_heartbeat(trial._trial_id)
            ids[name] = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
    if ids:
        trial.set_user_attr(TRIAL_ATTR, ids)
    return ids


def download(store, ids: dict[str, str], names: tuple[str, ...], dest: Path) -> list[str]:
    """The named files of a trial into ``dest`` (a fresh folder); returns those it has. An id that is
    not text, names a file outside a folder store, or is not in the store is one line (SweepError)."""
    if not isinstance(ids, dict):
        raise SweepError(f"a trial's artifact ids are not a mapping ({type(ids).__name__}): a damaged study")
    for name in names:   # every id checked before anything is written
        artifact_id = ids.get(name, "")
        if name in ids and (not isinstance(artifact_id, str) or not artifact_id or "\0" in artifact_id):
            raise SweepError(f"the artifact id of {name} is {str(artifact_id)[:80]!r}, not an id: a damaged study")
        if name in ids and isinstance(store, FolderStore):
            store.path_of(artifact_id)
    dest.mkdir(parents=True, exist_ok=True)
    got = []
    for name in names:
        if name in ids:
            artifact_id = ids[name]
            target = dest / name
            if target.exists():
                os.remove(target)   # download_artifact refuses to overwrite
            try:
                download_artifact(artifact_store=store, file_path=str(target), artifact_id=artifact_id)
            except ArtifactNotFound:
                raise SweepError(f"{name} of a trial (artifact {artifact_id[:80]!r}) is not in the artifact store: "
                                 "removed from it, or --artifacts names another store") from None
            got.append(name)
    return got
