"""W&B's server, for a real trainer process (put this folder on its PYTHONPATH): the run believes it is
online (WANDB_MODE=online), the real SDK records it offline (there is no server here), and ``wandb.Api()``
is the stand-in of tests/fakes/wandb_api.py holding the artifacts named in FAKE_WANDB_ARTIFACTS (JSON:
{"NAME:ALIAS": {"files": [...], "metadata": {...}}}, matched on the name's last path part: the entity and project
of an offline run are not the server's). Each artifact asked for is appended to FAKE_WANDB_LOG."""
import json
import os
import sys
from pathlib import Path

if "FAKE_WANDB_ARTIFACTS" in os.environ:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import wandb
    from wandb_api import FakeApi, FakeArtifact

    class _Server(FakeApi):
        def artifact(self, name, type=None):
            with open(os.environ["FAKE_WANDB_LOG"], "a") as log:
                log.write(json.dumps([name, type]) + "\n")
            return super().artifact(name.rsplit("/", 1)[-1], type)

    _artifacts = {}
    for _name, _held in json.loads(os.environ["FAKE_WANDB_ARTIFACTS"]).items():
        _artifacts[_name] = FakeArtifact([Path(f) for f in _held["files"]])
        _artifacts[_name].metadata = _held.get("metadata", {})
    wandb.Api = lambda *args, **kwargs: _Server([], _artifacts)
    _init = wandb.init

    def _offline_init(*args, **kwargs):
        kwargs["mode"] = "offline"
        return _init(*args, **kwargs)

    wandb.init = _offline_init
