import re
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = re.search(r'__version__ = "([^"]+)"', (here / "vift_plugin" / "_version.py").read_text()).group(1)

extras = {
    "train": ["peft>=0.17", "datasets>=3.0", "accelerate>=1.0", "pyyaml>=6.0", "tqdm>=4.60"],
    "quant": ["bitsandbytes>=0.45"],
    "plot": ["matplotlib>=3.7"],
}
extras["dev"] = sorted(
    {*extras["train"], *extras["quant"], *extras["plot"], "pytest>=8", "hypothesis>=6.100", "ruff>=0.6", "mypy>=1.11"}
)

setup(
    name="vift-plugin",
    version=version,
    description="ViFT (visual instruction-free fine-tuning) for any Hugging Face vision-language model",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["vift_plugin", "vift_plugin.*"]),
    package_data={"vift_plugin": ["py.typed"]},
    install_requires=[
        "torch>=2.4",
        "transformers>=5.15,<6",
        "tokenizers>=0.21",
        "safetensors>=0.4",
        "huggingface_hub>=1.0",
        "numpy>=1.24",
        "pillow>=10.0",
    ],
    extras_require=extras,
    entry_points={"console_scripts": ["vift=vift_plugin.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
