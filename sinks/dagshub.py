"""DagsHub: an MLflow sink with DagsHub's environment conventions.

DagsHub serves the MLflow REST API at ``https://dagshub.com/<owner>/<repo>.mlflow``, so metrics,
params, tags, status and checkpoints travel exactly as in ``MLflowSink`` and no DagsHub SDK is
needed. A local store whose path ends the same way (``sqlite:///.../<owner>/<repo>.mlflow``)
goes through the mlflow client, like any URI that is not http(s): that is how it runs offline.
What Hugging Face's ``DagsHubCallback`` adds on top of its MLflow parent, and how it maps
here:

* ``MLFLOW_TRACKING_URI`` is required and names the repository: owner and repository come from
  its last two path segments (``<repo>.mlflow``). A URI of another shape is refused with a
  sentence, where HF failed with an attribute error.
* ``HF_DAGSHUB_LOG_ARTIFACTS`` uploads each ``Artifact`` event (checkpoints, and the final model,
  which the sink asks the trainer for: ``wants_final_model``) under ``artifacts/`` in the run's
  artifact store. HF instead pushed the whole ``output_dir`` to
  the repository's ``artifacts`` directory on ``BRANCH`` at train end, through the DagsHub SDK;
  that git/DVC upload is not done here.
* ``HF_DAGSHUB_MODEL_NAME`` (default ``main``) and ``BRANCH`` (default ``main``) are read and
  kept on the sink (``model_name``, ``branch``); HF stores the first without using it and uses
  the second only for that repository upload.
* Credentials: ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` (DagsHub user and
  token) or ``MLFLOW_TRACKING_TOKEN`` as for MLflow, else ``DAGSHUB_USER_TOKEN`` (the DagsHub
  client's variable), sent as basic auth with the token as user and password, as DagsHub's
  own client does. Tokens never reach a log line.

Every other ``MLFLOW_*`` variable means what it means for the MLflow sink. The run id is kept in
``<run_dir>/dagshub/mlflow.json``, apart from the MLflow sink's, so both can run side by side.

Unlike HF, ``report_to="all"`` does not add this sink: the MLflow sink is chosen there whenever
``MLFLOW_TRACKING_URI`` is set and already logs the run to DagsHub, and a second sink would
send every point twice. Name ``dagshub`` in ``report_to`` to get it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import httpx

from trainbus.bus._env import env_flag, env_str
from trainbus.bus._errors import ConfigurationError
from trainbus.bus._events import Artifact
from trainbus.bus._paths import output_root
from trainbus.bus._secrets import redact_url
from trainbus.sinks.mlflow import MLflowSink

try:
    from typing import Self
except ImportError:  # Python 3.10
    from typing_extensions import Self

__all__ = ["DagsHubSink", "parse_repo"]

ARTIFACTS_DIR: Final = "artifacts"
_SUFFIX: Final = ".mlflow"


def parse_repo(tracking_uri: str) -> tuple[str, str]:
    """Owner and repository named by a DagsHub tracking URI (``.../<owner>/<repo>.mlflow``)."""
    segments = [s for s in httpx.URL(tracking_uri).path.split("/") if s]
    if len(segments) < 2 or not segments[-1].endswith(_SUFFIX) or segments[-1] == _SUFFIX:
        raise ConfigurationError(
            "MLFLOW_TRACKING_URI must name a DagsHub repository as "
            f"https://<host>/<owner>/<repo>.mlflow, got {redact_url(tracking_uri)!r}."
        )
    return segments[-2], segments[-1][: -len(_SUFFIX)]


class DagsHubSink(MLflowSink):
    """Deliver a run to a DagsHub repository's MLflow server; see the module docstring."""

    name = "dagshub"
    artifact_kinds = ("checkpoint", "model")

    def __init__(
        self,
        tracking_uri: str,
        *,
        run_dir: Path,
        run_name: str = "",
        branch: str = "main",
        model_name: str = "main",
        **mlflow_options: Any,
    ) -> None:
        self.owner, self.repo = parse_repo(tracking_uri)
        self.branch = branch
        self.model_name = model_name
        # The parent keeps its state file in run_dir; a subfolder keeps ours apart from it.
        super().__init__(
            tracking_uri, run_dir=run_dir / "dagshub", run_name=run_name, **mlflow_options
        )
        # HF pushes output_dir at train end to ship the model; here the trainer writes the
        # final model and the sink uploads it with the checkpoints.
        self.wants_final_model = self.log_artifacts

    @classmethod
    def is_available(cls, env: Mapping[str, str]) -> bool:
        """Never for ``report_to="all"``: the MLflow sink already covers a DagsHub URI there."""
        return False

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, run_dir: Path, run_name: str) -> Self:
        """Build the sink from HF's DagsHub and MLflow variables (see the module docstring)."""
        uri = env_str(env, "MLFLOW_TRACKING_URI")
        if uri is None:
            raise ConfigurationError(
                "MLFLOW_TRACKING_URI must name the DagsHub repository's tracking server "
                "(https://dagshub.com/<owner>/<repo>.mlflow) for the dagshub sink."
            )
        parse_repo(uri)
        sink = super().from_env(_as_mlflow_env(env), run_dir=run_dir, run_name=run_name)
        sink.branch = env_str(env, "BRANCH") or "main"
        sink.model_name = env_str(env, "HF_DAGSHUB_MODEL_NAME") or "main"
        return sink

    def _artifact_root(self) -> Path:
        """The run's output directory, found from the run directory above our subfolder."""
        return output_root(self.run_dir.parent)

    def _artifact_name(self, event: Artifact) -> str:
        """Under the repository's artifacts folder, as DagsHub's callback puts them."""
        return _under(super()._artifact_name(event))


def _under(name: str) -> str:
    return f"{ARTIFACTS_DIR}/{name.lstrip('/')}"


def _as_mlflow_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` in the MLflow sink's terms: DagsHub's artifact switch replaces MLflow's,
    ``DISABLE_MLFLOW_INTEGRATION`` does not apply (HF's DagsHub ignores it too), and
    ``DAGSHUB_USER_TOKEN`` becomes basic-auth credentials when no MLflow ones are set."""
    out = dict(env)
    out.pop("DISABLE_MLFLOW_INTEGRATION", None)  # switches off the mlflow name, not this one
    out["HF_MLFLOW_LOG_ARTIFACTS"] = str(env_flag(env, "HF_DAGSHUB_LOG_ARTIFACTS"))
    token = env_str(env, "DAGSHUB_USER_TOKEN")
    has_own = env_str(env, "MLFLOW_TRACKING_USERNAME") or env_str(env, "MLFLOW_TRACKING_TOKEN")
    if token is not None and not has_own:
        out["MLFLOW_TRACKING_USERNAME"] = token
        out["MLFLOW_TRACKING_PASSWORD"] = token
    return out
