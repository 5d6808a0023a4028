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
- Failures raise WeightsUnavailableError (network, HTTP, offline) naming the repository, the
  file, the cache directories and the ways out; a full or unwritable disk under the cache is
  an OSError with the same errno, naming the cache folder and how to move it (HF_HOME,
  KERAS_HOME). Weights are never silently left random.
"""

import errno
import logging
import os
import socket
import ssl

import numpy as np

from keras_vitnt.io_utils import atomic_path
from keras_vitnt.weights import convert

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


# errnos of the local file system (the cache's disk); a network failure never carries these from our side
_LOCAL_ERRNOS = {
    getattr(errno, name)
    for name in ("ENOSPC", "EDQUOT", "EFBIG", "EACCES", "EPERM", "EROFS", "EIO", "ENOTDIR", "EISDIR", "ENAMETOOLONG",
                 "EMFILE", "ENFILE", "EXDEV", "ELOOP")
    if hasattr(errno, name)
}
# exceptions of HTTP / socket libraries are network failures whatever their errno (a firewall's EPERM)
_NETWORK_MODULES = ("httpx", "httpx2", "httpcore", "httpcore2", "requests", "urllib3", "h11", "h2", "ssl", "socket")


def _is_network_error(e):
    from huggingface_hub.utils import HfHubHTTPError

    network_types = (ConnectionError, TimeoutError, ssl.SSLError, socket.gaierror, socket.herror, HfHubHTTPError)
    return isinstance(e, network_types) or type(e).__module__.split(".")[0] in _NETWORK_MODULES


def _local_os_error(e):
    """The file-system OSError (full disk, unwritable or read-only cache) behind a failed download, or None when
    it failed on the network side."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if _is_network_error(e):
            return None
        if isinstance(e, OSError) and (e.errno in _LOCAL_ERRNOS or e.filename is not None):
            return e
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return None


def _cache_os_error(tag, e, action):
    """An OSError with the errno of `e` (so callers can tell a full disk from a permission problem) that names the
    cache folders and how to move them."""
    from huggingface_hub import constants

    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EFBIG):
        fix = "free space on that disk, or point the caches at a disk with room"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make that folder writable by this user, or point the caches at a writable folder"
    else:
        fix = "check that disk and folder, or point the caches at another disk"
    msg = (
        f"Could not {action} the pretrained weights {tag.hub_id}/{FILENAME} in the Hugging Face cache folder "
        f"{repo_cache_dir(tag.hub_id)}: {type(e).__name__}: {e}\n"
        f"  Hugging Face cache (shared with timm): {constants.HF_HUB_CACHE}\n"
        f"  keras_vitnt conversion cache: {os.path.dirname(converted_path(tag))}\n"
        f"Way out: {fix}: set HF_HOME (the Hugging Face cache) and KERAS_HOME (the conversion cache) to folders "
        f"there, e.g. HF_HOME=/other/disk/hf KERAS_HOME=/other/disk/keras; or pass weights=<path to a local copy of "
        f"{FILENAME}>."
    )
    return OSError(e.errno, msg) if e.errno is not None else OSError(msg)


def download(tag):
    """Local path of the tag's `model.safetensors`, downloading it if it is not cached."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.utils import LocalEntryNotFoundError

    try:
        return hf_hub_download(tag.hub_id, FILENAME, local_files_only=True)
    except LocalEntryNotFoundError as e:  # not cached (an interrupted download leaves no entry): network below
        not_cached = e
    except OSError as e:  # the cache exists but cannot be read (permissions, a file where a folder should be)
        raise _cache_os_error(tag, e, "read") from e
    except ValueError as e:  # a damaged entry (e.g. a refs file naming no snapshot folder)
        raise ValueError(
            f"The Hugging Face cache folder {repo_cache_dir(tag.hub_id)!r} of {tag.hub_id} is damaged "
            f"({type(e).__name__}: {e}). Delete it and load again to download the checkpoint anew."
        ) from e
    if constants.HF_HUB_OFFLINE:
        raise _unavailable(tag, "it is not in the cache and HF_HUB_OFFLINE forbids downloading it.") from not_cached
    try:
        # one request without retries: an unreachable hub fails in seconds, not minutes
        get_hf_file_metadata(hf_hub_url(tag.hub_id, FILENAME), timeout=15)
        log.info("downloading %s/%s", tag.hub_id, FILENAME)
        return hf_hub_download(tag.hub_id, FILENAME)
    except Exception as e:  # broad on purpose: what a failed download raises depends on huggingface_hub's HTTP
        # backend (requests, httpx, hf_xet); the cause is kept and its type named either way
        local = _local_os_error(e)
        if local is not None:
            raise _cache_os_error(tag, local, "write") from e
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
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM):  # not damaged, only closed to this user: deleting is no answer
            raise OSError(e.errno, f"Cannot read the cached conversion {path!r} ({e}): make it readable by this "
                                   "user, or set KERAS_HOME to a folder of your own.") from e
        raise _damaged_conversion(path, e) from e
    except (ValueError, KeyError) as e:
        raise _damaged_conversion(path, e) from e


def _damaged_conversion(path, e):
    return ValueError(
        f"The cached conversion {path!r} is unreadable ({type(e).__name__}: {e}). Delete it (rm {path!r}); the next "
        "load converts the checkpoint again."
    )


def write_converted(tag, tensors):
    """Write a Keras-layout checkpoint atomically (temporary file + rename)."""
    import h5py

    path = converted_path(tag)
    with atomic_path(path, suffix=".h5") as tmp:  # a unique name: two processes converting at once both succeed
        with h5py.File(tmp, "w") as f:
            f.attrs["layout"] = "keras"
            f.attrs["hub_id"] = tag.hub_id
            group = f.create_group("tensors")
            for key, value in tensors.items():
                group.create_dataset(key, data=np.asarray(value, dtype="float32"))
    log.info("cached the converted checkpoint at %s", path)
    return path


def _with_hint(e, hint):
    """`e`'s message plus a line of what to do, as the same type where it takes a message (CheckpointMismatchError
    does; a UnicodeDecodeError does not, and becomes a ValueError rather than a TypeError hiding it)."""
    try:
        return type(e)(f"{e}\n{hint}")
    except TypeError:
        return ValueError(f"{type(e).__name__}: {e}\n{hint}")


def load_pretrained(model, tag, family):
    """Load a registry Tag into the model: from the conversion cache if present, else
    download (or take from the HF cache), convert, load, and cache the conversion."""
    converted = read_converted(tag)
    if converted is not None:
        source = f"{converted_path(tag)!r} (cached conversion of {tag.hub_id})"
        try:
            return convert.load_state_dict(model, converted, family=family, source=source, keras_layout=True)
        except ValueError as e:
            raise _with_hint(e, f"Delete {converted_path(tag)!r} to convert the checkpoint again.") from e
    path = download(tag)
    try:
        result = convert.load_state_dict(model, convert.read_state_dict(path), family=family,
                                         source=f"{path!r} ({tag.hub_id})")
    except ValueError as e:
        raise _with_hint(
            e,
            f"This file came from the Hugging Face cache: if it is damaged, delete {repo_cache_dir(tag.hub_id)!r} "
            "and load again to download it anew.",
        ) from e
    if result.complete:
        try:
            write_converted(tag, result.converted)
        except OSError as e:  # a read-only or full KERAS_HOME only costs the next load a conversion
            log.warning("could not cache the converted checkpoint at %s (%s: %s); set KERAS_HOME to a writable folder "
                        "with room to keep conversions", converted_path(tag), type(e).__name__, e)
    return result
