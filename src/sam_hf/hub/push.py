"""Push a sam_hf model to the Hub in one commit: weights, config, processor, model card, and optionally remote code.

transformers' `PreTrainedModel.push_to_hub` uploads what `save_pretrained` writes (for `SamHfModel` that
includes the processor) but replaces README.md with the repository's current card or a generic one. `push_to_hub`
here writes the card you give, and with `remote_code=True` the flat modules and `auto_map` of
`sam_hf.hub.remote_code`, so that `AutoModel.from_pretrained(repo_id, trust_remote_code=True)` works where sam_hf
is not installed.
"""

from __future__ import annotations

import os
import tempfile

from huggingface_hub import CommitInfo, HfApi, ModelCard

from .remote_code import add_remote_code


def push_to_hub(
    *,
    model,
    repo_id: str,
    processor=None,
    model_card: ModelCard | None = None,
    remote_code: bool = False,
    commit_message: str = "Upload sam_hf model",
    commit_description: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    max_shard_size: int | str = "50GB",
) -> CommitInfo:
    """Create `repo_id` if needed and upload `model` (a `SamHfModel`) with its processor and card in one commit.

    `processor`: the `SamHfProcessor` to save (default: the one `SamHfModel.save_pretrained` builds for the model's
    input size). `model_card`: a `huggingface_hub.ModelCard`, e.g. from `training_model_card` or
    `conversion_model_card`, written as README.md; without it the repository's README.md is left as it is.
    `remote_code`: also upload self-contained modeling/processing code and `auto_map` (see `remote_code`).
    Returns the `CommitInfo` of the commit.
    """
    from ..modeling import SamHfPreTrainedModel

    if not isinstance(model, SamHfPreTrainedModel):
        raise TypeError(f"model must be a SamHfModel, got {type(model).__name__}")
    if not isinstance(repo_id, str) or not repo_id.strip() or repo_id.count("/") > 1:
        raise ValueError(f"repo_id must be 'name' or 'namespace/name', got {repo_id!r}")
    if model_card is not None and not isinstance(model_card, ModelCard):
        raise TypeError(f"model_card must be a huggingface_hub.ModelCard or None, got {type(model_card).__name__}")
    if not isinstance(remote_code, bool):
        raise TypeError(f"remote_code must be a bool, got {type(remote_code).__name__}")
    if not isinstance(commit_message, str) or not commit_message.strip():
        raise ValueError(f"commit_message must be a non-empty string, got {commit_message!r}")

    api = HfApi(library_name="sam_hf")
    repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder, processor=processor, max_shard_size=max_shard_size)
        if model_card is not None:
            model_card.save(os.path.join(folder, "README.md"))
        if remote_code:
            add_remote_code(folder=folder)
        return api.upload_folder(
            repo_id=repo_id, folder_path=folder, commit_message=commit_message, commit_description=commit_description,
            token=token, revision=revision, create_pr=create_pr,
        )
