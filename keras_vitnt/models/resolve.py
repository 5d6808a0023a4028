"""The one resolver of the `weights` argument (constructors, `keras-vitnt predict/export/
train`): what the weights are (no weights, a pretrained tag, a file), their head's class
count, the normalisation and input size that go with them, and how to load them."""

import dataclasses
import functools
import logging
import os

from keras_vitnt.weights.convert import KERAS_WEIGHTS, load_weights_file, read_weights_file
from keras_vitnt.weights.hub import load_pretrained

log = logging.getLogger("keras_vitnt")

DEFAULT_CROP_PCT = 0.9  # timm's default crop for weights without a pretrained config


@dataclasses.dataclass(frozen=True)
class ResolvedWeights:
    """`kind` is "none", "tag" (a registry Tag, downloaded on load) or "file" (a local path).
    `config` is the architecture they are for, `info` its registry entry (None for an
    architecture timm does not register)."""

    kind: str
    config: object
    info: object = None
    tag: object = None
    path: str = None

    @property
    def family(self):
        return self.config.family

    @functools.cached_property
    def checkpoint(self):
        """(state dict, position-table interpolation) of a timm/torch/npz file, read once;
        None for a tag, no weights or a Keras .weights.h5 file (which fits one model only)."""
        if self.kind != "file" or self.path.endswith(KERAS_WEIGHTS):
            return None
        return read_weights_file(self.path, family=self.family)

    @property
    def num_classes(self):
        """Class count of the weights' head: 0 for a headless (feature) checkpoint, None when
        unknown (no weights, or a .weights.h5 file)."""
        if self.kind == "tag":
            return self.tag.num_classes
        if self.checkpoint is not None:
            state_dict = self.checkpoint[0]
            head = state_dict.get("head.bias", state_dict.get("head.weight"))
            return int(head.shape[0]) if head is not None else 0
        return None

    @property
    def reference_tag(self):
        """The tag whose evaluation settings (input size, crop) apply: the weights' own, else
        the model's default tag (None for an architecture without one)."""
        return self.tag or (self.info.default_tag if self.info else None)

    @property
    def input_size(self):
        """The input size the weights were made for (the config's for a file or no weights)."""
        return self.tag.input_size if self.tag is not None else self.config.img_size[0]

    @property
    def crop_pct(self):
        ref = self.reference_tag
        return ref.crop_pct if ref else DEFAULT_CROP_PCT

    @property
    def interpolation(self):
        ref = self.reference_tag
        return ref.interpolation if ref else "bicubic"

    @property
    def description(self):
        return {"tag": lambda: self.tag.hub_id, "file": lambda: self.path, "none": lambda: "none"}[self.kind]()

    def mean_std(self, mean=None, std=None):
        """(mean, std) the model normalises with: the caller's if given, else the tag's, else
        (a file or no weights) those of the registered model's default weights (0.5/0.5 for an
        architecture timm does not register). A file gets a logged note: its normalisation
        cannot be read from it."""
        if (mean is None) != (std is None):
            raise ValueError("pass mean and std together (3 values each, for RGB in 0..1), or neither")
        if mean is not None:
            mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
            if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
                raise ValueError(f"mean and std need 3 values each (std > 0), got mean={mean}, std={std}")
            return mean, std
        if self.kind == "tag":
            return self.tag.mean, self.tag.std
        mean, std = self.info.mean_std if self.info else self.config.mean_std
        if self.kind == "file":
            source = f"the default weights of {self.info.name}" if self.info else "timm's default for unregistered ViTs"
            log.warning(
                "weights file %r: the model normalises inputs with mean=%s, std=%s (%s). If the file was trained "
                "with another normalisation (e.g. DeiT's ImageNet mean/std), pass mean= and std=.",
                self.path, mean, std, source,
            )
        return mean, std

    def head_classes(self, classes):
        """timm's rule: without `classes`, the head is the checkpoint's."""
        if classes is not None:
            return classes  # a class count the weights lack gets a fresh head, logged by the loader
        ckpt = self.num_classes
        if ckpt is None:
            return 1000
        if ckpt == 0:
            what = self.tag.hub_id if self.kind == "tag" else repr(self.path)
            raise ValueError(
                f"The weights {what} have no classifier head (a feature checkpoint), so include_top=True would "
                "predict from a random head. Pass include_top=False (with pooling='token' or 'avg') for features, or "
                "classes=N for a fresh N-class head to fine-tune."
            )
        return ckpt

    def read(self):
        """Read (and so check) a weights file now, before a model is built for it; returns self."""
        _ = self.checkpoint
        return self

    def load(self, model):
        """Load the weights into a built model (nothing for kind "none")."""
        if self.kind == "tag":
            return load_pretrained(model, self.tag, self.family)
        if self.kind == "file":
            return load_weights_file(model, self.path, family=self.family, checkpoint=self.checkpoint)
        return None


def resolve_weights(weights, config, info=None):
    """`weights` for a model of `config` (registry entry `info`, None if timm does not register
    it) -> ResolvedWeights. Accepts None or "none" (no weights), "imagenet" (the default tag), a
    tag name of `info`, or a path to a .safetensors/.pth/.bin/.npz/.weights.h5 file."""
    if weights is None or weights == "none":
        return ResolvedWeights("none", config, info)
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"weights must be None, 'imagenet', a tag name or a file path, got {type(weights).__name__}")
    weights = os.fspath(weights)
    if info is not None and (weights == "imagenet" or any(t.tag == weights for t in info.tags)):
        if weights == "imagenet":
            if info.default_tag is None:
                raise ValueError(f"{info.name} has no pretrained weights on the hub; use weights=None or a file.")
            return ResolvedWeights("tag", config, info, info.default_tag)
        return ResolvedWeights("tag", config, info, info.get_tag(weights))
    if os.path.exists(weights) or os.sep in weights or "." in os.path.basename(weights):
        if not os.path.isfile(weights):
            raise FileNotFoundError(
                f"weights file {weights!r} does not exist. Pass an existing .safetensors/.pth/.bin/.weights.h5 "
                "file, 'imagenet', or None."
            )
        return ResolvedWeights("file", config, info, path=weights)
    if info is None:
        raise ValueError(
            f"weights={weights!r}: this architecture is not a registered timm model, so only None or a "
            "local file can be loaded. Use create_model('<timm name>') for pretrained tags."
        )
    tags = ", ".join(t.tag for t in info.tags) or "none"
    raise ValueError(
        f"weights={weights!r} is neither 'imagenet', a tag of {info.name} ({tags}), nor an existing file."
    )
