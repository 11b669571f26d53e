"""ViFT inside existing training codebases, as removable runtime patches of their trainers.

- :mod:`vift_plugin.integrations.llava`: haotian-liu/LLaVA and BAAI-DCAI/Bunny (``LLaVATrainer``,
  ``BunnyTrainer``); ``python -m vift_plugin.integrations.llava`` runs upstream's ``train()``.
- :mod:`vift_plugin.integrations.llamafactory`: hiyouga/LLaMA-Factory 0.9.x (``CustomSeq2SeqTrainer``,
  ``CustomTrainer``); ``python -m vift_plugin.integrations.llamafactory`` runs its ``run_exp()``.
- :mod:`vift_plugin.integrations.base`: what both share (symbol checks, the registry of applied
  patches, the sampler, optimizer and log replacements).

Each integration has one ``apply()`` returning a handle (``remove()`` or a ``with`` block). The files
``patches/llava/vift_llava.py`` and ``patches/llama_factory/vift_llamafactory.py`` re-export them,
for use by path or copied next to upstream's ``train.py``. Nothing here imports transformers or the
integrations at package import: they are installed with ``pip install --no-deps`` beside upstream's
own, older transformers.
"""
