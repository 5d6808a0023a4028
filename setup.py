"""keras_vitnt: ViT, DeiT and TNT for Keras 3 with timm-identical numbers."""

import pathlib
import re

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "keras_vitnt" / "__init__.py").read_text()).group(1)

setup(
    name="keras_vitnt",
    version=VERSION,
    description="Vision Transformers (ViT, DeiT) and Transformer-in-Transformer (TNT) for Keras 3, "
    "numerically identical to timm, with pretrained weights and mobile export",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["keras_vitnt", "keras_vitnt.*"]),
    package_data={"keras_vitnt": ["data/*.json", "data/*.json.gz"]},
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3.8",
        "numpy",
        "safetensors>=0.4",
        "huggingface_hub>=0.23",
        "ml_dtypes",
        "pillow",
        "scikit-learn",  # bundled real data: sample photos, handwritten digits; t-SNE
        "ai-edge-litert",  # runs every exported .tflite for the parity report
        "matplotlib",  # training curves, attention and t-SNE figures
    ],
    extras_require={
        # the reference oracle (timm on PyTorch) and the LiteRT interpreter for export checks;
        # torch/torchvision pinned to the pair that installs from these machines' local wheels
        "test": [
            # make test runs two pytest-xdist workers with --dist loadgroup, which pytest 9.2 broke silently
            # (pytest-dev/pytest-xdist#1386: no group is kept; tests/conftest.py refuses to run then)
            "pytest>=8,<9.2",
            "pytest-xdist>=3.5",
            "timm>=1.0.20",
            "torch==2.14.1",
            "torchvision==0.29.1",
            "ai-edge-litert",
            "tf2onnx",
            "onnx",
            "onnxruntime",
            "nbclient",  # executes the Colab notebook in the test suite
            "nbformat",
            "ipykernel",
            "jax[cpu]>=0.4.30",  # the JAX backend's tests (tests/test_backends.py, JAX distribution)
            "openvino>=2025.1",  # format="openvino" and OpenVINOModel, and the benchmark's OpenVINO columns
        ],
        # Keras 3 backends besides TensorFlow (KERAS_BACKEND=jax / torch); TensorFlow stays installed for
        # the tf.data recipe and for export, which rebuilds the model on TensorFlow
        "jax": ["jax[cpu]>=0.4.30"],
        "jax-cuda": ["jax[cuda12]>=0.4.30"],
        "torch": ["torch>=2.4"],
        "onnx": ["tf2onnx", "onnx", "onnxruntime"],
        # fast CPU inference: export(model, path, format="openvino") run by keras_vitnt.OpenVINOModel
        "openvino": ["openvino>=2025.1"],
        "datasets": ["tensorflow-datasets"],
        "litert": ["ai-edge-litert"],
    },
    entry_points={"console_scripts": ["keras-vitnt=keras_vitnt.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
