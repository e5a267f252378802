"""LM-only tiny job (the foundation demo): a 2-layer LLaMA on the bundled captions, on 8 simulated CPU devices.

Pretrains a tiny base (full parameters), exports it as an HF folder, reloads it and LoRA-fine-tunes it.

Runs in well under a minute on a laptop CPU. Override anything from the command line, e.g.
``python train.py --config configs/tiny_lm.py --config.train.steps=50 --config.mesh.tensor=1``.
Point ``base_model`` at a local HF LLaMA folder (and ``tokenizer`` at its tokenizer) for a real model.
"""

import ml_collections

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.job = "lm"
    c.seed = 0
    c.output_dir = "runs/tiny_lm"
    c.cpu_devices = 8  # simulated devices when running on CPU (ignored on GPU/TPU)
    c.base_model = ""  # local HF LLaMA folder; empty = random base with the shape below
    c.tokenizer = ""  # tokenizer.model / folder; empty = train a sentencepiece model on the corpus
    c.tokenizer_vocab_size = 320

    c.model = ml_collections.ConfigDict(
        dict(
            hidden_size=64,
            intermediate_size=172,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            dtype="float32",
            param_dtype="float32",
            scan_layers=True,
            remat_policy="none",
        )
    )
    c.lora = ml_collections.ConfigDict(dict(rank=8, alpha=16.0, dropout=0.05, targets=ALL_PROJECTIONS))

    c.data = ml_collections.ConfigDict(
        dict(corpus="data/tiny_captions.txt", heldout_fraction=0.1, seq_len=64, batch_size=8)  # global batch
    )
    # Only used when base_model is empty: full-parameter training of the random base, exported as an HF folder
    # that the LoRA phase then loads through the converter (no real LLaMA can be downloaded here).
    c.pretrain = ml_collections.ConfigDict(
        dict(
            steps=300,
            optim=dict(learning_rate=3e-3, warmup_steps=20, weight_decay=1e-3, grad_clip_norm=1.0, b1=0.9, b2=0.999),
        )
    )
    # LoRA phase
    c.optim = ml_collections.ConfigDict(
        dict(learning_rate=2e-3, warmup_steps=10, weight_decay=1e-3, grad_clip_norm=1.0, b1=0.9, b2=0.999)
    )
    c.train = ml_collections.ConfigDict(
        dict(
            steps=150,
            log_every=25,
            checkpoint_every=50,
            keep_checkpoints=2,
            sample_prompt="A dog",
            sample_tokens=24,
            export_merged=True,
        )
    )
    c.mesh = ml_collections.ConfigDict(dict(data=2, fsdp=2, tensor=2))
    return c
