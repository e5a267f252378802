"""Embedded tiny default: Spider's three training stages on the bundled samples, on 8 simulated CPU devices.

What ``make demo`` runs. No real weights exist here, so the job makes every part it would otherwise load, in the
formats a real run reads: a tiny LLaMA base (pretrained on the caption corpus, exported as an HF folder and
loaded back through the converter), tiny random decoder text encoders saved as transformers folders (their
outputs fill the T_e stores), and a media store (see ``spider_train.build_demo_stores``). Then stage 1 -> 2 -> 3,
each resuming from its checkpoints, and a held-out check that the answers follow the template.

Override anything: ``python train.py --config configs/tiny.py --config.stages.stage1.steps=20``.
"""

from configs import spider_base
from configs.tiny_lm import ALL_PROJECTIONS


def get_config():
    c = spider_base.spider_config()
    c.output_dir = "runs/tiny"
    c.cpu_devices = 8
    c.tokenizer_vocab_size = 600  # trained on captions + instructions: "image", "audio", "video" get own pieces
    c.model.update(
        dict(
            vocab_size=0,  # from the tokenizer
            hidden_size=64,
            intermediate_size=172,
            num_hidden_layers=4,  # 2 layers learn the template's shape but not which modalities a request names
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            dtype="float32",
            param_dtype="float32",
            scan_layers=True,
            remat_policy="none",
        )
    )
    c.lora.update(dict(rank=8, alpha=16.0, dropout=0.0, targets=ALL_PROJECTIONS))
    c.encoder_width = 32
    c.controller.update(
        dict(width=32, num_layers=1, num_heads=2, mlp_dim=64, router_hidden=64, reconstruction_width=32)
    )
    c.controller.outputs.IMAGE.update(dict(width=32, text_length=16))
    c.controller.outputs.VIDEO.update(dict(width=48, text_length=16))
    c.controller.outputs.AUDIO.update(dict(width=24, text_length=1))
    c.data.update(dict(max_length=384, batch_size=16, max_groups=16, groups_per_modality=6))
    c.data.max_concat = 2  # SmMI/SpMI requests per question (paper-scale configs: 5); see benchmarks/RESULTS.md
    # The tiny base LLaMA, pretrained on the caption corpus (as lm_finetune.pretrain_base).
    c.data.corpus = "data/tiny_captions.txt"
    c.data.heldout_fraction = 0.1
    c.data.seq_len = 64
    c.pretrain = dict(steps=300, optim=spider_base.optim(3e-3, 20).to_dict())
    c.demo_stores = True  # build T_e / E stores with tiny random encoders when c.stores are empty
    c.stages.stage1.update(dict(steps=250))
    c.stages.stage1.optim.update(dict(learning_rate=3e-3, warmup_steps=20))
    c.stages.stage2.update(dict(steps=100))
    c.stages.stage2.optim.update(dict(learning_rate=2e-3, warmup_steps=10))
    c.stages.stage3.update(dict(steps=1500))  # 1000 steps: 80% exact template following; 1500: 92.5%
    c.stages.stage3.optim.update(dict(learning_rate=3e-3, warmup_steps=10))
    c.train.update(dict(log_every=25, checkpoint_every=50, keep_checkpoints=2))
    c.eval.update(dict(questions=40, max_new_tokens=320, batch_size=8))  # answers ≤ 158 tokens at max_concat 2
    c.mesh.update(dict(data=2, fsdp=2, tensor=2))
    # Generation: tiny random decoders around the demo's text encoders (demo_decoders.py), a few steps each.
    c.demo_decoders = True  # build them under output_dir/demo_assets when decoders.*.folder are empty
    c.generate.update(dict(max_new_tokens=320, batch_size=8))
    c.decoders.image.update(dict(steps=4, guidance_scale=3.0, height=64, width=64))
    c.decoders.audio.update(dict(steps=4, seconds=1.0))
    c.decoders.video.update(dict(steps=4, guidance_scale=3.0, frames=6, height=32, width=32))
    c.grounding.update(dict(box_threshold=0.0, text_threshold=0.0, max_boxes=3))  # random heads: show top boxes
    return c
