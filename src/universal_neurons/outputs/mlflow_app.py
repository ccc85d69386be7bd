"""The MLflow server app that ``universal-neurons ui`` serves: MLflow's own, with a page that
opens in the classic-ML view.

MLflow 3.17.2's UI picks its workflow (the sidebar: classic ML's runs, or GenAI's traces) from
a ``workflowType`` URL parameter of the current page, else from the browser's
``localStorage['mlflow.workflowType_v1']`` (a JSON string, ``"genai"`` when unset). The runs
table address that ``ui`` prints carries the parameter, but the UI's own links (its Compare
button goes to ``#/compare-runs?...``) do not, so a fresh browser flipped to GenAI there.

:func:`create_app` is MLflow's server app with one change: the page (``index.html``) first
stores ``"machine_learning"`` under that key when the browser has no choice stored yet (a choice
made in the UI stays). ``mlflow server --app-name universal-neurons`` finds it through the
``mlflow.app`` entry point of this package (pyproject.toml), as MLflow's own ``basic-auth``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

APP_NAME = "universal-neurons"
ENTRY_POINT_GROUP = "mlflow.app"
WORKFLOW_KEY = "mlflow.workflowType_v1"
WORKFLOW = "machine_learning"


def app_installed() -> bool:
    """Whether ``mlflow server`` can find :data:`APP_NAME` (the package's entry point is
    installed: ``pip install -e .`` after pyproject.toml gained it)."""
    from importlib.metadata import entry_points

    return any(point.name == APP_NAME for point in entry_points(group=ENTRY_POINT_GROUP))


def workflow_script() -> str:
    """The inline script that makes classic ML the browser's default workflow."""
    key, value = json.dumps(WORKFLOW_KEY), json.dumps(json.dumps(WORKFLOW))
    return (
        f"<script>try{{if(localStorage.getItem({key})===null)"
        f"localStorage.setItem({key},{value})}}catch(e){{}}</script>"
    )


def classic_page(index_html: str) -> str:
    """``index_html`` with :func:`workflow_script` first in its head, before the app's bundle."""
    head = index_html.find("<head>")
    if head < 0:
        return workflow_script() + index_html
    cut = head + len("<head>")
    return index_html[:cut] + workflow_script() + index_html[cut:]


def _serve_classic_page(static_folder: str) -> Any:
    """The Flask view of the UI's page: MLflow's ``index.html`` through :func:`classic_page`."""
    from flask import Response

    index = Path(static_folder) / "index.html"
    page = classic_page(index.read_text(encoding="utf-8"))
    return lambda: Response(page, mimetype="text/html")


def create_app() -> Any:
    """MLflow's server app whose page starts a fresh browser in the classic-ML view: the Flask
    app, inside MLflow's FastAPI app when served by uvicorn (MLflow's default), as
    ``mlflow.server.auth.create_app`` does."""
    from mlflow.environment_variables import _MLFLOW_SGI_NAME
    from mlflow.server import app

    if (Path(app.static_folder) / "index.html").is_file():  # not in a source install
        app.view_functions["serve"] = _serve_classic_page(app.static_folder)
    if _MLFLOW_SGI_NAME.get() == "uvicorn":
        from mlflow.server.fastapi_app import create_fastapi_app

        return create_fastapi_app(app)
    return app
