"""Stand-in for the huggingface_hub library (tests put tests/pylib first on PYTHONPATH): the workspace's own
calls (hub.py) are recorded in $WS_RECORD as prog "huggingface_hub"; nothing touches the network.

  STANDIN_HF_FAIL=1          every call raises (a network or auth error)
  STANDIN_HF_FILES=<json>    what list_repo_files returns (a JSON list of paths)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def _record(call: str, **fields) -> None:
    path = os.environ.get("WS_RECORD")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(
                json.dumps({"prog": "huggingface_hub", "argv": [call], "call": call, "time": time.time(), **fields})
                + "\n"
            )


class HfApi:
    def __init__(self, token=None, **kwargs):
        self.token = token

    def upload_folder(self, *, repo_id, folder_path, path_in_repo=None, repo_type=None, commit_message=None, **kwargs):
        files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        _record(
            "upload_folder",
            repo_id=repo_id,
            repo_type=repo_type,
            path_in_repo=path_in_repo,
            files=files,
            token=self.token,
        )
        if os.environ.get("STANDIN_HF_FAIL"):
            raise RuntimeError(
                f"503 Server Error: Service Unavailable for url: https://huggingface.co/api/{repo_id} token={self.token}"
            )

    def list_repo_files(self, repo_id, repo_type=None, **kwargs):
        _record("list_repo_files", repo_id=repo_id, repo_type=repo_type, token=self.token)
        if os.environ.get("STANDIN_HF_FAIL"):
            raise RuntimeError("503 Server Error: Service Unavailable")
        return json.loads(os.environ.get("STANDIN_HF_FILES", "[]"))
