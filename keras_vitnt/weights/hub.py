"""Downloading pretrained checkpoints from the Hugging Face hub (`timm/<model>.<tag>`).

Uses `huggingface_hub.hf_hub_download`, so the cache is the one timm uses (a checkpoint
already fetched by timm is not downloaded again), `HF_ENDPOINT` selects a mirror and
`HF_HUB_OFFLINE=1` forbids network access. Failures raise WeightsUnavailableError naming
the repository, the file, the cache directory and the ways out; never random weights.
"""

import logging

log = logging.getLogger("keras_vitnt")

FILENAME = "model.safetensors"


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be downloaded or found in the cache."""


def download(tag, cache_dir=None):
    """Path of the local `model.safetensors` of a registry Tag, downloading it if needed."""
    from huggingface_hub import constants, hf_hub_download

    cache = cache_dir or constants.HF_HUB_CACHE
    try:
        return hf_hub_download(repo_id=tag.hub_id, filename=FILENAME, cache_dir=cache_dir)
    except Exception as e:  # offline, DNS, HTTP errors, missing repo: all end the same way
        raise WeightsUnavailableError(
            f"Could not get the pretrained weights {tag.hub_id}/{FILENAME} ({type(e).__name__}: {e}).\n"
            f"Hub endpoint: {constants.ENDPOINT}; cache directory: {cache}"
            f"{' (HF_HUB_OFFLINE is set)' if constants.HF_HUB_OFFLINE else ''}.\n"
            "Ways out: pass weights=<path to a local model.safetensors/.pth>; or download "
            f"https://huggingface.co/{tag.hub_id}/resolve/main/{FILENAME} on a machine with access and "
            "place it in the cache (or point HF_ENDPOINT at a reachable mirror)."
        ) from e
