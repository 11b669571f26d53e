"""ViFT training for hiyouga/LLaMA-Factory: this file re-exports :mod:`vift_plugin.integrations.llamafactory`.

Import it (``patches/llama_factory`` on ``sys.path``) and call ``apply()`` before ``run_exp()``, or run it in
place of ``llamafactory-cli train``::

    VIFT_VISION_LR=2e-6 torchrun --nproc_per_node 4 patches/llama_factory/vift_llamafactory.py qwen2vl_sft.yaml

See patches/llama_factory/README.md.
"""

from __future__ import annotations

from vift_plugin.integrations.llamafactory import *  # noqa: F403
from vift_plugin.integrations.llamafactory import __all__ as __all__
from vift_plugin.integrations.llamafactory import main

if __name__ == "__main__":
    main()
