"""``hf://`` weights: download a weights folder from the Hugging Face Hub into its local cache.

:func:`download_weights` turns ``hf://OWNER/REPO[@REVISION][/PATH]`` into a folder of the local Hugging
Face cache (``model.safetensors`` and, if the repository has one, ``config.json``).
:func:`polypseg.weights.resolve` calls it, so every ``--weights`` and :func:`polypseg.load_pretrained`
accept such a reference. The cache, ``HF_HUB_OFFLINE=1``, ``HF_ENDPOINT`` and the login token are
huggingface_hub's own. This module knows nothing of model cards or pushing (:mod:`polypseg.publish`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

from huggingface_hub import _CACHED_NO_EXIST, constants, hf_hub_download, try_to_load_from_cache
from huggingface_hub.utils import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
    validate_repo_id,
)

from polypseg.errors import WeightsError, one_line
from polypseg.version import __version__
from polypseg.weights.config import WEIGHTS_NAME

__all__ = ["CARD_REPO", "HUB_PREFIX", "HubReference", "download_weights", "parse_hub_reference"]

HUB_PREFIX = "hf://"
#: The model card's own repository (the card's weights, with its own tensor names).
CARD_REPO = "sebastiao-teixeira/week04-polyp-segmentation-unet-multiclass"

_REFERENCE = re.compile(r"(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>refs/pr/\d+|[^/]+))?(?:/(?P<path>.*))?")


@dataclass(frozen=True)
class HubReference:
    """A parsed ``hf://OWNER/REPO[@REVISION][/PATH]``: which file of which repository, at which revision."""

    repo_id: str
    revision: str | None
    filename: str  # path of the safetensors file inside the repository

    @property
    def config_filename(self) -> str:
        """The ``config.json`` beside the weights file."""
        return str(PurePosixPath(self.filename).with_name("config.json"))


def parse_hub_reference(uri: str) -> HubReference:
    """Parse ``hf://OWNER/REPO[@REVISION][/PATH]`` (the ``hf://`` syntax of huggingface_hub, models only).

    ``PATH`` is a ``.safetensors`` file or a folder holding ``model.safetensors``; without it the weights
    are the repository's ``model.safetensors``. ``REVISION`` is a branch, tag or commit (default ``main``).

    Example:
        >>> parse_hub_reference("hf://owner/unet@v1.0/small/model.safetensors")
        HubReference(repo_id='owner/unet', revision='v1.0', filename='small/model.safetensors')
    """
    body = uri[len(HUB_PREFIX) :] if uri.startswith(HUB_PREFIX) else ""
    if body.startswith("models/"):
        body = body[len("models/") :]
    match = _REFERENCE.fullmatch(body)
    if not match or body.startswith(("datasets/", "spaces/")):
        raise WeightsError(f"{uri}: not a Hub model reference; expected {HUB_PREFIX}OWNER/REPO[@REVISION][/PATH]")
    try:
        validate_repo_id(match["repo"])  # the Hub's own rules: no "--" or "..", no leading "-", 96 characters
    except HFValidationError as error:
        raise WeightsError(f"{uri}: not a Hub repository name ({one_line(error)})") from None
    path = (match["path"] or "").strip("/")
    if ".." in PurePosixPath(path).parts:
        raise WeightsError(f"{uri}: the path inside the repository must not contain '..'")
    filename = path if path.endswith(".safetensors") else str(PurePosixPath(path or ".") / WEIGHTS_NAME)
    revision = unquote(match["revision"]) if match["revision"] else None  # "feature%2Fx" is branch "feature/x"
    return HubReference(match["repo"], revision, filename)


# One process resolves one reference once: the weights and config of a command come from the same commit,
# and the Hub is asked once, however often the command resolves its --weights.
_downloaded: dict[tuple[str, str, str, bool], Path] = {}


def download_weights(uri: str, token: str | bool | None = None, force_download: bool = False) -> Path:
    """Download weights from the Hub into the Hugging Face cache and return their local path.

    The weights file is fetched first; ``config.json`` is then fetched from the same commit if the
    repository has one (a checkpoint without it is loaded by structure, see
    :func:`polypseg.weights.map_foreign_state_dict`). With ``HF_HUB_OFFLINE=1`` only the cache is used.

    Args:
        uri: ``hf://OWNER/REPO[@REVISION][/PATH]`` (see :func:`parse_hub_reference`).
        token: Hub token for private or gated repositories (default: ``HF_TOKEN`` or the saved login).
        force_download: Download again even if the files are cached.

    Returns:
        The cached folder holding ``model.safetensors`` (and ``config.json``), or the cached file when
        the reference names a file with another name.

    Raises:
        WeightsError: One line saying what is missing (repository, revision, file, or network and cache).

    Example:
        >>> folder = download_weights(f"hf://{CARD_REPO}")  # doctest: +SKIP
    """
    reference = parse_hub_reference(uri)
    key = (uri, constants.ENDPOINT, str(constants.HF_HUB_CACHE), constants.HF_HUB_OFFLINE)
    if not force_download and key in _downloaded and _downloaded[key].exists():
        return _downloaded[key]
    weights = Path(_download(uri, reference, reference.filename, reference.revision, token, force_download))
    # The cache stores files as snapshots/<commit>/<path in repo>: pin the config to the weights' commit.
    commit = weights.parents[len(PurePosixPath(reference.filename).parts) - 1].name
    cached_config = try_to_load_from_cache(reference.repo_id, reference.config_filename, revision=commit)
    if cached_config is not _CACHED_NO_EXIST:
        try:
            _download(uri, reference, reference.config_filename, commit, token, force_download)
        except _NoSuchFile:
            pass
    result = weights.parent if weights.name == WEIGHTS_NAME else weights
    _downloaded[key] = result
    return result


class _NoSuchFile(WeightsError):
    """The file is not in the repository (or, offline, not in the cache)."""


def _download(
    uri: str, reference: HubReference, filename: str, revision: str | None, token: str | bool | None, force: bool
) -> str:
    try:
        return hf_hub_download(
            reference.repo_id,
            filename,
            revision=revision,
            token=token,
            force_download=force,
            library_name="polypseg",
            library_version=__version__,
        )
    except LocalEntryNotFoundError:
        where = (
            "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else f"the Hub ({constants.ENDPOINT}) cannot be reached"
        )
        raise _NoSuchFile(
            f"{uri}: '{filename}' is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {where}"
        ) from None
    except EntryNotFoundError:
        raise _NoSuchFile(f"{uri}: the repository {reference.repo_id} has no file '{filename}'") from None
    except RevisionNotFoundError:
        raise WeightsError(f"{uri}: revision '{revision}' not found in {reference.repo_id}") from None
    except RepositoryNotFoundError:
        raise WeightsError(
            f"{uri}: repository {reference.repo_id} not found on {constants.ENDPOINT}, or it is private or gated "
            "(log in with `hf auth login` or set HF_TOKEN)"
        ) from None
    except (HfHubHTTPError, HFValidationError, OSError) as error:  # HFValidationError: e.g. the revision
        raise WeightsError(f"{uri}: {one_line(error)}") from None
