"""Chat templates in each family's own prompt format.

They render the same strings as the templates shipped with the families' public checkpoints for the
message shapes the plugin uses (``{"type": "image"}`` / ``{"type": "text"}`` parts, or plain string
content). Templates render with ``trim_blocks``: no literal newline may follow a block tag, so every
newline is written as a ``'\\n'`` expression or sits before a tag.
"""

from __future__ import annotations

_TEXT_OF = (
    "{%- macro text_of(message) -%}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
)

_IMAGES_OF = (
    "{%- macro images_of(message, token) -%}"
    "{%- if message['content'] is not string -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ token }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
)


def _chatml(image_markup: str, default_system: str | None) -> str:
    """ChatML with images inline where they appear (Qwen2-VL, Qwen2.5-VL, InternVL-hf)."""
    system = (
        "{%- if loop.first and message['role'] != 'system' -%}"
        "{{ '<|im_start|>system\\n" + default_system + "<|im_end|>\\n' }}{%- endif -%}"
        if default_system
        else ""
    )
    return (
        "{%- for message in messages -%}" + system + "{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{%- if message['content'] is string -%}{{ message['content'] }}"
        "{%- else -%}{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'image' -%}{{ '" + image_markup + "' }}"
        "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}"
        "{{ '<|im_end|>\\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
    )


QWEN2_VL = _chatml("<|vision_start|><|image_pad|><|vision_end|>", "You are a helpful assistant.")

INTERNVL = _chatml("<IMG_CONTEXT>\\n", None)

LLAVA = (
    _TEXT_OF + _IMAGES_OF + "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ text_of(message) + ' ' }}"
    "{%- else -%}{{ message['role'].upper() + ': ' }}{{ images_of(message, '<image>\\n') }}"
    "{{ text_of(message) + ' ' }}{%- if message['role'] == 'assistant' -%}{{ eos_token }}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)

LLAVA_NEXT = (
    _TEXT_OF + _IMAGES_OF + "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ '<<SYS>>\\n' + text_of(message) + '\\n<</SYS>>\\n\\n' }}"
    "{%- elif message['role'] == 'user' -%}"
    "{{ '[INST] ' }}{{ images_of(message, '<image>\\n') }}{{ text_of(message) + ' [/INST]' }}"
    "{%- else -%}{{ ' ' + text_of(message) + eos_token }}{%- endif -%}"
    "{%- endfor -%}"
)

IDEFICS3 = (
    "{{ '<|begin_of_text|>' }}"
    "{%- for message in messages -%}"
    "{{ message['role'] | capitalize }}"
    "{%- if message['content'] is not string and message['content'][0]['type'] == 'image' -%}{{ ':' }}"
    "{%- else -%}{{ ': ' }}{%- endif -%}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- elif part['type'] == 'image' -%}{{ '<image>' }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<end_of_utterance>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
)

GEMMA3 = (
    _TEXT_OF + "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_prefix = text_of(messages[0]) + '\\n\\n' -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\\n' }}"
    "{%- if loop.first -%}{{ first_prefix }}{%- endif -%}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)

PALIGEMMA = (
    _TEXT_OF + _IMAGES_OF + "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{ images_of(message, '<image>') }}{{ text_of(message) }}"
    "{%- elif message['role'] == 'assistant' -%}{{ '\\n' + text_of(message) + eos_token }}{%- endif -%}"
    "{%- endfor -%}"
)

MISTRAL3 = (
    _TEXT_OF + _IMAGES_OF + "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ '[SYSTEM_PROMPT]' + text_of(message) + '[/SYSTEM_PROMPT]' }}"
    "{%- elif message['role'] == 'user' -%}{{ '[INST]' }}{{ images_of(message, '[IMG]') }}"
    "{{ text_of(message) + '[/INST]' }}"
    "{%- else -%}{{ text_of(message) + eos_token }}{%- endif -%}"
    "{%- endfor -%}"
)

CHATML_NO_SYSTEM_IMAGE_TOKEN = _chatml("<image>", None)
