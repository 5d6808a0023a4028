import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# timm (through torchvision) imports triton, whose native library crashes the process
# when it is loaded after TensorFlow. Load the oracle first.
import timm  # noqa: E402,F401
import torch  # noqa: E402

torch.set_num_threads(max(1, os.cpu_count() or 1))
sys.path.insert(0, os.path.dirname(__file__))

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session()


@pytest.fixture(scope="session")
def digits_vit():
    """A small ViT trained on the bundled digits (8x8 RGB), with its held-out test split:
    a real fine-tuned model for checks that need meaningful predictions."""
    import numpy as np
    import tensorflow as tf

    import keras_vitnt
    from keras_vitnt.data.digits import load_digits

    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = load_digits(size=8)
    model = keras_vitnt.ViT("Ti/2", weights=None, input_shape=(8, 8, 3), classes=10, depth=3, embed_dim=96,
                            num_heads=3, name="digits_vit")
    epochs, steps = 12, int(np.ceil(len(x_train) / 64))
    schedule = keras.optimizers.schedules.CosineDecay(0.0, epochs * steps - 20, warmup_target=3e-3, warmup_steps=20)
    model.compile(keras.optimizers.AdamW(schedule, weight_decay=0.05), "sparse_categorical_crossentropy",
                  metrics=["accuracy"], jit_compile=True)
    train = tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(2048, seed=0).batch(64).prefetch(2)
    model.fit(train, epochs=epochs, verbose=0)
    accuracy = float(np.mean(model.predict(x_test, verbose=0).argmax(1) == y_test))
    return model, (x_test, y_test), accuracy
