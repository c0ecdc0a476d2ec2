"""The two Hugging Face calls the workspace makes itself, kept this small on purpose: everything around them
(what is uploaded where, what a failure means) lives with the callers and is tested with a stand-in library.

musubi-tuner uploads LoRAs and states itself; the workspace adds the run record beside them and lists the
states for `make resume`. The token comes from the environment (HF_TOKEN, or .env), never a command line.
"""

from __future__ import annotations

from pathlib import Path


def upload_folder(folder: Path, repo_id: str, repo_type: str, path_in_repo: str, token: str | None) -> None:
    from huggingface_hub import HfApi

    HfApi(token=token).upload_folder(
        repo_id=repo_id,
        repo_type=repo_type,
        folder_path=str(folder),
        path_in_repo=path_in_repo,
        commit_message=f"run record {folder.name}",
    )


def list_files(repo_id: str, repo_type: str, token: str | None) -> list[str]:
    from huggingface_hub import HfApi

    return list(HfApi(token=token).list_repo_files(repo_id, repo_type=repo_type))
