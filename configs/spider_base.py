"""Shared pieces of the Spider configs: the paper's setting (Tab. 22) at LLaMA-2-7B shapes.

Not a config file itself: ``stage1_pretrain.py``, ``stage2_finetune.py``, ``stage3_instruct.py`` and ``tiny.py``
build on :func:`spider_config`.
"""

import ml_collections

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
STAGE_TRAINABLES = {
    # Paper §2.5 / Tab. 22: stage 1 trains encoder projectors, LoRA and the Decoders-Controller; stages 2-3 LoRA.
    # The added template tokens' rows train in every stage (without them the LLM cannot emit the template).
    "stage1": ("projectors", "lora", "controller", "new_tokens"),
    "stage2": ("lora", "new_tokens"),
    "stage3": ("lora", "new_tokens"),
}


def optim(learning_rate=1e-4, warmup_steps=100, weight_decay=1e-3, grad_clip_norm=1.0, b1=0.9, b2=0.999):
    return ml_collections.ConfigDict(
        dict(
            learning_rate=learning_rate,
            warmup_steps=warmup_steps,
            weight_decay=weight_decay,
            grad_clip_norm=grad_clip_norm,
            b1=b1,
            b2=b2,
        )
    )


def stage(name: str, steps: int, **optim_overrides) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            name=name,
            mixture=name,  # key of tmm.STAGE_MIXTURES (Tab. 21b)
            steps=steps,
            trainable=STAGE_TRAINABLES[name],
            accumulation_steps=1,
            optim=optim(**optim_overrides),
        )
    )


def spider_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.job = "spider"
    c.seed = 0
    c.output_dir = "runs/spider"
    c.cpu_devices = 0
    c.base_model = ""  # local HF LLaMA-2 folder (config.json + safetensors + tokenizer.model)
    c.tokenizer = ""  # default: the tokenizer saved in base_model
    c.tokenizer_vocab_size = 320  # only when a tokenizer is trained (tiny demo)
    c.model = ml_collections.ConfigDict(
        dict(
            vocab_size=32000,
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            max_position_embeddings=4096,
            dtype="bfloat16",
            param_dtype="bfloat16",  # frozen base in bf16; trainables are fp32 (see spider_train)
            scan_layers=True,
            remat_policy="dots_with_no_batch_dims",
        )
    )
    c.lora = ml_collections.ConfigDict(dict(rank=32, alpha=32.0, dropout=0.1, targets=ATTENTION_PROJECTIONS))
    c.encoder_width = 1024  # ImageBind
    c.shared_projector = False
    c.add_input_embedding = True
    c.mprompt_layer = -1  # M_e from this hidden state (HF numbering: 0 = embeddings, i = after layer i, -1 = final)
    c.controller = ml_collections.ConfigDict(
        dict(
            width=512,
            num_layers=4,
            num_heads=4,
            mlp_dim=2048,
            num_experts=2,
            router_hidden=1024,
            router="softmax",
            variant="udp",
            alpha=0.2,
            reconstruction_width=1024,
            outputs=dict(
                IMAGE=dict(num_queries=1, width=768, text_length=77),  # SD1.5 CLIP-L/14
                VIDEO=dict(num_queries=1, width=1024, text_length=77),  # Zeroscope CLIP (OpenCLIP-H)
                AUDIO=dict(num_queries=1, width=512, text_length=1),  # AudioLDM CLAP text embedding
            ),
        )
    )
    c.loss = ml_collections.ConfigDict(dict(lm=1.0, alignment=1.0, reconstruction=1.0))
    c.data = ml_collections.ConfigDict(
        dict(
            samples_dir="data/samples",  # sources.load_layout root (real data: point at your layout)
            max_length=1024,
            max_inputs=4,
            max_groups=16,
            groups_per_modality=4,
            packing=False,
            max_concat=5,  # SmMI / SpMI: at most this many requests concatenated into one instance
            batch_size=256,  # global (Tab. 22: 4 per GPU)
            allow_missing_embeddings=False,
        )
    )
    # Embedding stores (embedding_store.py): T_e per output modality, E (ImageBind) for media; "" = term off.
    c.stores = ml_collections.ConfigDict(dict(text=dict(IMAGE="", VIDEO="", AUDIO=""), media=""))
    c.train = ml_collections.ConfigDict(
        dict(
            log_every=50,
            checkpoint_every=1000,
            keep_checkpoints=3,
            async_checkpoints=True,
            nonfinite="skip",  # skip | halt
            max_nonfinite_in_a_row=20,
            metrics_file="",  # optional JSONL of every logged step's metrics (exact floats)
        )
    )
    c.stages = ml_collections.ConfigDict(
        dict(stage1=stage("stage1", 400_000), stage2=stage("stage2", 20_000), stage3=stage("stage3", 20_000))
    )
    c.run_stages = "stage1,stage2,stage3"  # which of ``stages`` this config runs, in order
    c.eval = ml_collections.ConfigDict(dict(questions=200, max_new_tokens=256, seed=10_000, batch_size=8))
    # Generation (python -m spider_jax.generate): decoding, the decoders S conditions, grounding, input encoder.
    c.generate = ml_collections.ConfigDict(
        # mesh_decode: split the LLM over ``mesh`` for decoding (models that do not fit one chip)
        dict(max_new_tokens=512, temperature=0.0, top_k=0, top_p=1.0, seed=0, batch_size=4, mesh_decode=False)
    )
    c.decoders = ml_collections.ConfigDict(
        dict(
            # local diffusers folders; steps / guidance as NExT-GPT's and diffusers' defaults for each model
            image=dict(folder="", scheduler="", dtype="float32", steps=50, guidance_scale=7.5, height=0, width=0),
            audio=dict(folder="", scheduler="", dtype="float32", steps=200, guidance_scale=2.5, seconds=5.0),
            video=dict(
                folder="", scheduler="", dtype="float32", steps=40, guidance_scale=9.0, frames=24, height=320,
                width=576,
            ),
            fps=8,
        )
    )
    c.grounding = ml_collections.ConfigDict(  # <BOX>/<MASK> groups: GroundingDINO + SAM (PyTorch, grounding/)
        dict(
            dino="",  # hf download IDEA-Research/grounding-dino-tiny (or -base) --local-dir <folder>
            sam="",  # hf download facebook/sam-vit-base (or -huge) --local-dir <folder>
            box_threshold=0.35,  # Grounded-SAM's defaults
            text_threshold=0.25,
            max_boxes=10,
            multimask_output=False,
            mask_threshold=0.0,
            device="cpu",
            dtype="float32",
            batch_size=8,
        )
    )
    c.imagebind = ml_collections.ConfigDict(dict(checkpoint="", config="imagebind_huge"))  # E^X of input media
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=8, tensor=1))
    return c
