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


def layer_decay_steps(name, depth=2, steps=3, layer_decay=0.5, weight_decay=0.05, lr=0.05, seed=0, amsgrad=False):
    """The recipe's optimizer with layer decay (`keras_vitnt.train.make_optimizer`: LayerDecayAdamW and its
    weight-decay exclusions) against timm's (`timm.optim.create_optimizer_v2(model, "adamw", layer_decay=...)`,
    whose scheduler sets each group's lr to lr x its lr_scale) on the same weights and gradients (random, new
    each step, |g| >= 0.5 so that the epsilon, which Keras adds to sqrt(v) and torch to sqrt(v / bias
    correction), moves nothing measurable), on this Keras backend: {weight path: relative error of its total
    change after `steps` steps of the recipe's cosine schedule}. timm's tensors (weights, gradients, the
    stepped weights) reach Keras's layout through the weight loader. The learning rate is large so that the
    float32 rounding of the weights stays far below the steps. `amsgrad=True`: both with AMSGrad (on PyTorch
    that takes Keras's own update, as weights on a GPU do, instead of the package's in-place one)."""
    import types

    import keras
    import timm.optim
    import torch

    import keras_vitnt
    from keras_vitnt.models.tags import ARCHS
    from keras_vitnt.train import make_optimizer
    from keras_vitnt.weights.convert import load_state_dict

    def state(tensors):
        return {k: v.detach().numpy().copy() for k, v in tensors.items()}

    def keras_layout(tensors):  # timm's tensors -> Keras's weights, in the model's order
        load_state_dict(scratch, state(tensors), family=ARCHS[name][0])
        return [keras.ops.convert_to_numpy(v.value).copy() for v in scratch.trainable_variables]

    tm = perturbed_timm_model(name, seed=seed, depth=depth)
    model, scratch = (keras_vitnt.create_model(name, weights=None, depth=depth, include_preprocessing=False,
                                               classifier_activation=None) for _ in range(2))
    start = keras_layout(tm.state_dict())
    for v, value in zip(model.trainable_variables, start):
        v.assign(value)
    cfg = types.SimpleNamespace(epochs=2, lr=lr, min_lr=lr / 100, warmup_epochs=0, layer_decay=layer_decay,
                                weight_decay=weight_decay)
    opt = make_optimizer(cfg, steps, depth)
    opt.amsgrad = amsgrad  # before build, which makes its slots
    opt.build(model.trainable_variables)
    reference = timm.optim.create_optimizer_v2(tm, "adamw", lr=lr, weight_decay=weight_decay, layer_decay=layer_decay,
                                               eps=opt.epsilon, amsgrad=amsgrad)
    g = torch.Generator().manual_seed(seed + 2)
    for _ in range(steps):
        grads = {k: torch.randn(v.shape, generator=g) for k, v in tm.state_dict().items()}
        grads = {k: v.sign() * (v.abs() + 0.5) for k, v in grads.items()}
        lr_now = float(keras.ops.convert_to_numpy(opt.learning_rate))
        for group in reference.param_groups:  # timm's Scheduler.update_groups
            group["lr"] = lr_now * group["lr_scale"]
        for k, p in tm.named_parameters():
            p.grad = grads[k]
        reference.step()
        opt.apply([keras.ops.convert_to_tensor(a) for a in keras_layout(grads)], model.trainable_variables)
    stepped = keras_layout(tm.state_dict())
    return {v.path: relative_error(keras.ops.convert_to_numpy(v.value) - s, w - s)
            for v, w, s in zip(model.trainable_variables, stepped, start)}
