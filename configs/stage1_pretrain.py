"""Stage 1 (X-to-X pretraining: encoder projectors, LoRA and Decoders-Controller) at LLaMA-2-7B shapes, paper Tab. 22.

Runs the stages of this file after the earlier ones found in the same ``output_dir`` (each stage starts from the
previous stage's final checkpoint). Example::

    python train.py --config configs/stage1_pretrain.py --config.base_model=/path/llama-2-7b-hf \
        --config.stores.media=/path/imagebind_store --config.stores.text.IMAGE=/path/sd15_te_store ...
    python train.py --config configs/stage1_pretrain.py --compile_only --topology v5p:4x4x4
"""

from configs import spider_base


def get_config():
    c = spider_base.spider_config()
    c.run_stages = "stage1"
    return c
