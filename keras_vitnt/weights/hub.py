"""Pretrained checkpoints from the Hugging Face hub (`timm/<model>.<tag>/model.safetensors`)
and the cache of their conversions.

- Download: `huggingface_hub.hf_hub_download`, so the cache is the one timm uses (a
  checkpoint already fetched with timm is not downloaded again), a progress bar shows,
  `HF_ENDPOINT` selects a mirror and `HF_HUB_OFFLINE=1` forbids network access. A file
  already in the cache is used without any network call. An unreachable hub is detected
  with one metadata request (no retry loop) so the failure comes in seconds.
- Conversion cache: the checkpoint in Keras layout (float32, keyed by timm tensor name,
  before any position-embedding resampling), written atomically to
  `$KERAS_HOME/keras_vitnt/<model>.<tag>.h5` once a load has consumed every tensor. One
  file serves every head / input-size variant of the model, which a Keras `.weights.h5`
  (tied to one layer structure) could not.
- Failures raise WeightsUnavailableError naming the repository, the file, the cache
  directories and the ways out. Weights are never silently left random.
"""

import logging
import os

import numpy as np

log = logging.getLogger("keras_vitnt")

FILENAME = "model.safetensors"


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be downloaded or found in the cache."""


def keras_home():
    return os.path.expanduser(os.environ.get("KERAS_HOME", os.path.join("~", ".keras")))


def converted_path(tag):
    return os.path.join(keras_home(), "keras_vitnt", f"{tag.model}.{tag.tag}.h5")


def repo_cache_dir(repo_id):
    from huggingface_hub import constants

    return os.path.join(constants.HF_HUB_CACHE, "models--" + repo_id.replace("/", "--"))


def _unavailable(tag, reason):
    from huggingface_hub import constants

    offline = " (HF_HUB_OFFLINE=1 is set)" if constants.HF_HUB_OFFLINE else ""
    return WeightsUnavailableError(
        f"Could not get the pretrained weights {tag.hub_id}/{FILENAME}: {reason}\n"
        f"  hub endpoint: {constants.ENDPOINT}{offline}\n"
        f"  Hugging Face cache (shared with timm): {constants.HF_HUB_CACHE}\n"
        f"  keras_vitnt conversion cache: {os.path.dirname(converted_path(tag))}\n"
        "Ways out:\n"
        f"  1. pass weights=<path to a local copy of {FILENAME} (or a timm .pth)>;\n"
        f"  2. on a machine with access, fetch https://huggingface.co/{tag.hub_id}/resolve/main/{FILENAME} "
        f"(e.g. `hf download {tag.hub_id} {FILENAME}`) and copy its Hugging Face cache folder "
        f"{repo_cache_dir(tag.hub_id)} here, or set HF_ENDPOINT to a mirror you can reach."
    )


def download(tag):
    """Local path of the tag's `model.safetensors`, downloading it if it is not cached."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url

    try:
        return hf_hub_download(tag.hub_id, FILENAME, local_files_only=True)
    except Exception:  # not cached (or a half entry): go to the network below
        pass
    if constants.HF_HUB_OFFLINE:
        raise _unavailable(tag, "it is not in the cache and HF_HUB_OFFLINE forbids downloading it.")
    try:
        # one request without retries: an unreachable hub fails in seconds, not minutes
        get_hf_file_metadata(hf_hub_url(tag.hub_id, FILENAME), timeout=15)
        log.info("downloading %s/%s", tag.hub_id, FILENAME)
        return hf_hub_download(tag.hub_id, FILENAME)
    except Exception as e:
        raise _unavailable(tag, f"{type(e).__name__}: {e}") from e


def read_converted(tag):
    """The cached Keras-layout checkpoint of a tag, or None if there is none."""
    path = converted_path(tag)
    if not os.path.isfile(path):
        return None
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("layout") != "keras" or f.attrs.get("hub_id") != tag.hub_id:
                raise ValueError("not a keras_vitnt conversion of this checkpoint")
            return {k: np.asarray(f["tensors"][k]) for k in f["tensors"]}
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(
            f"The cached conversion {path!r} is unreadable ({e}). Delete it (rm {path!r}); the next load "
            "converts the checkpoint again."
        ) from e


def write_converted(tag, tensors):
    """Write a Keras-layout checkpoint atomically (temporary file + rename)."""
    import h5py

    path = converted_path(tag)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["layout"] = "keras"
            f.attrs["hub_id"] = tag.hub_id
            group = f.create_group("tensors")
            for key, value in tensors.items():
                group.create_dataset(key, data=np.asarray(value, dtype="float32"))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    log.info("cached the converted checkpoint at %s", path)
    return path


def load_pretrained(model, tag, family):
    """Load a registry Tag into the model: from the conversion cache if present, else
    download (or take from the HF cache), convert, load, and cache the conversion."""
    from keras_vitnt.weights.convert import load_state_dict, read_state_dict

    converted = read_converted(tag)
    if converted is not None:
        source = f"{converted_path(tag)!r} (cached conversion of {tag.hub_id})"
        try:
            return load_state_dict(model, converted, family=family, source=source, keras_layout=True)
        except ValueError as e:
            raise type(e)(f"{e}\nDelete {converted_path(tag)!r} to convert the checkpoint again.") from e
    path = download(tag)
    try:
        result = load_state_dict(model, read_state_dict(path), family=family, source=f"{path!r} ({tag.hub_id})")
    except ValueError as e:
        raise type(e)(
            f"{e}\nThis file came from the Hugging Face cache: if it is damaged, delete "
            f"{repo_cache_dir(tag.hub_id)!r} and load again to download it anew."
        ) from e
    if result.complete:
        try:
            write_converted(tag, result.converted)
        except OSError as e:  # a read-only KERAS_HOME only costs the next load a conversion
            log.warning("could not cache the converted checkpoint at %s: %s", converted_path(tag), e)
    return result
