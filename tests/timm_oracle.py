"""The reference oracle: timm models with every tensor perturbed, saved as a checkpoint
file, and their logits on a fixed input; the error and distribution measures of the tests."""

import numpy as np


def perturbed_timm_model(name, seed=0, **kwargs):
    """A timm model (random init) with noise on every tensor, so that a wrong mapping of
    a zero- or one-initialised tensor (biases, LayerNorm scales) cannot go unnoticed."""
    import timm
    import torch

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if pname.endswith("bias"):
                p.add_(0.1 * noise)
            elif p.ndim == 1:  # LayerNorm scales
                p.mul_(1.0 + 0.2 * noise)
            else:
                p.add_(0.02 * noise)
    return model


def save_checkpoint(model, path):
    """Save the state dict as timm's hub does (.safetensors) or as torch (.pth)."""
    import torch

    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save(sd, str(path))
    return path


def timm_logits(model, images_nhwc):
    import torch

    with torch.inference_mode():
        return model(torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))).numpy()


def grad_weights(n_classes, n=2, seed=1):
    """The fixed output weights r of the gradient checks' loss sum(logits * r)."""
    return np.random.default_rng(seed).standard_normal((n, n_classes)).astype("float32")


def save_timm_gradients(model, images_nhwc, path):
    """d sum(logits * grad_weights) / d every parameter of the timm model, in training mode, saved under
    the state dict's names (.safetensors): a checkpoint of gradients, which the weight loader maps to
    Keras's layout as it maps the weights."""
    import torch
    from safetensors.torch import save_file

    model.train()
    model.zero_grad()
    out = model(torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2))))
    (out * torch.from_numpy(grad_weights(out.shape[1], len(out)))).sum().backward()
    model.eval()
    grads = {k: p.grad.detach().contiguous() for k, p in model.named_parameters()}
    save_file({k: grads.get(k, torch.zeros_like(v)) for k, v in model.state_dict().items()}, str(path))


def normalised_images(n, h, w, seed=0):
    """Inputs as timm sees them after normalisation (roughly unit scale)."""
    return np.random.default_rng(seed).standard_normal((n, h, w, 3)).astype("float32")


def relative_error(a, b):
    """max |a - b| / max |b|: the parity measure of the test suite."""
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def ks_distance(a, b):
    """Two-sample Kolmogorov-Smirnov statistic, max |F_a - F_b|: are two initialisations draws
    of one distribution? Reject above c * sqrt((n + m) / (n m)) (c = 2.2: p ~ 1e-4)."""
    a, b = np.sort(np.ravel(a)), np.sort(np.ravel(b))
    pooled = np.concatenate([a, b])
    cdf = lambda x: np.searchsorted(x, pooled, "right") / x.size  # noqa: E731
    return float(np.max(np.abs(cdf(a) - cdf(b))))
