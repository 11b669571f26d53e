"""ViFT training for haotian-liu/LLaVA and Bunny: this file re-exports :mod:`vift_plugin.integrations.llava`.

Import it (``patches/llava`` on ``sys.path``, or copied next to LLaVA's ``train.py``) and call ``apply()``
before ``train()``, or run it in place of ``llava/train/train_mem.py``::

    deepspeed patches/llava/vift_llava.py --vift-vision-lr 2e-6 --deepspeed scripts/zero3.json ...

See patches/llava/README.md. ``apply_vift_to_llava``, ``patch_llava_trainer`` and ``vift_llava_patch``
are the older names of ``apply``, kept because that README names them.
"""

from __future__ import annotations

from vift_plugin.integrations.llava import *  # noqa: F403
from vift_plugin.integrations.llava import __all__ as _all
from vift_plugin.integrations.llava import apply, main

apply_vift_to_llava = patch_llava_trainer = vift_llava_patch = apply

__all__ = [*_all, "apply_vift_to_llava", "patch_llava_trainer", "vift_llava_patch"]

if __name__ == "__main__":
    main()
