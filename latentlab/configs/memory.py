"""Config sections of the latent-memory task: compressor, generator, losses, QA data, the index and its evaluation.

Torch- and FAISS-free. ``IndexConfig`` is both the YAML's `index:` section and what a built memory records.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, get_args

from latentlab.configs.common import BackboneConfig, EvalConfig, LoraSpec, ModelSpec, positive_or_null, require

COMPRESSOR_PARTS = (
    "compress_lora",
    "query_lora",
    "decode_lora",
    "memory_slot",
    "retrieval_head",
    "projector",
    "read_lora",
    "vision_tower",
    "vision_projector",
    "image_embed_head",
)
"""The separately trainable parts of a compressor (``compressor.train_parts``); the last three exist only with
``compressor.vision`` (``vision_tower`` only when the tower is not frozen; ``vision_projector`` covers the patch
projector only when it is not frozen, and the pooled token's Linear)."""

VISION_MODEL_KEYS = ("embed_dim", "vision_cfg", "quick_gelu")
"""Keys of a custom open_clip model config (``compressor.vision.model`` as a mapping): only the vision tower is built."""


@dataclass
class VisionConfig:
    """The image path of the compressor: an open_clip vision tower whose patch tokens pass a projector into the
    compressor's input embeddings, followed by the title's tokens and the memory slot (one latent per image + title)."""

    model: ModelSpec = "ViT-L-14-336-quickgelu"
    """An open_clip model name (`ViT-B-32`, `ViT-L-14-336-quickgelu`: the reference's CLIP tower, with the QuickGELU
    its OpenAI weights were trained with; only the vision tower is kept) or a custom open_clip model config
    `{embed_dim: E, vision_cfg: {image_size, patch_size, width, layers, head_width, ...}}` (the tiny random ViT of
    tests and tiny twins). The tower must be a ViT. A pretrained tag whose weights were trained with another
    activation than the model config's (OpenAI's `ViT-L-14-336` needs `-quickgelu`) is refused."""
    pretrained: str | None = None
    """Weights of a named model: an open_clip pretrained tag (`openai`, `laion2b_s34b_b79k`; read from the hub
    cache, so offline runs need it there) or a local weights file. null: random initialisation."""
    image_size: int | None = None
    """Side the images are resized to (open_clip's own preprocessing transform); null: the tower's own size."""
    resize_mode: Literal["shortest", "longest", "squash"] | None = None
    """How a picture of another shape becomes the tower's square (open_clip's ``resize_mode``): `shortest` resizes
    the short side and crops the middle, `longest` resizes the long side and pads, `squash` stretches the whole
    picture. null: the tower's own setting (`shortest` for open_clip's models), which would cut NLVR's wide
    three-box renderings down to the middle box."""
    frozen: bool | None = None
    """Whether the tower's weights stay fixed. null: frozen when pretrained, trained when randomly initialised (a
    random tower that is never trained would be other noise at every load: no checkpoint stores a frozen tower)."""
    patch_features: Literal["final", "penultimate"] = "final"
    """Which patch tokens the projector reads (the class token is never among them). `final`: the last block's
    output after the tower's final LayerNorm (open_clip's ``output_tokens=True``). `penultimate`: the second-last
    block's output, before any LayerNorm (open_clip's ``forward_intermediates``): the features LLaVA-1.5's projector
    was trained on (``vision_feature_layer: -2``, ``vision_feature_select_strategy: default``). The pooled embedding
    is the tower's own in both cases."""
    projector: Literal["linear", "mlp"] = "mlp"
    """Patch tokens (tower width W) into the compressor's embeddings H: `linear` Linear(W->H); `mlp` Linear(W->H),
    GELU, Linear(H->H) (LLaVA-1.5's projector)."""
    projector_from: str | None = None
    """A LLaVA checkpoint (hub id or local folder, e.g. `llava-hf/llava-1.5-7b-hf`) whose ``multi_modal_projector``
    initialises the `mlp` projector; only its projector's tensors are read. Needs `projector: mlp` and a pretrained
    tower; its shapes must be [H, W] and [H, H] for this tower's width W and the compressor's hidden size H. How
    close this comes to LLaVA also depends on ``patch_features`` (LLaVA reads `penultimate`) and on the tower being
    the checkpoint's CLIP. null: a randomly initialised projector."""
    projector_frozen: bool | None = None
    """Whether the patch projector's weights stay fixed. null: frozen when loaded from ``projector_from`` (as the
    reference keeps LLaVA's projector), trained otherwise; a frozen random projector is refused (no checkpoint stores
    it). The pooled token's Linear is new in every case, so it is always trained."""
    pooled_token: bool = True
    """Put the tower's pooled embedding (through its own Linear(E->H)) before the patch tokens (LLaVA has none)."""

    def __post_init__(self) -> None:
        if isinstance(self.model, str):
            require(bool(self.model.strip()), "model", "must be an open_clip model name such as 'ViT-B-32'")
        else:
            for key in self.model:
                require(
                    key in VISION_MODEL_KEYS,
                    f"model.{key}",
                    f"unknown key of a custom open_clip model config (known: {', '.join(VISION_MODEL_KEYS)}; "
                    "only the vision tower is built, so no text_cfg)",
                )
            embed = self.model.get("embed_dim")
            require(
                isinstance(embed, int) and not isinstance(embed, bool) and embed >= 1,
                "model.embed_dim",
                f"must be a positive integer (the pooled embedding size), got {embed!r}",
            )
            require(
                isinstance(self.model.get("vision_cfg"), dict),
                "model.vision_cfg",
                f"must be a mapping of open_clip CLIPVisionCfg fields, got {self.model.get('vision_cfg')!r}",
            )
            require(
                self.pretrained is None,
                "pretrained",
                "needs an open_clip model name in 'model' (a custom config has no pretrained tags)",
            )
        require(
            self.pretrained is None or bool(self.pretrained.strip()),
            "pretrained",
            "must be a pretrained tag, a weights file or null",
        )
        positive_or_null(self.image_size, "image_size")
        require(
            not (self.frozen and self.pretrained is None),
            "frozen",
            "a randomly initialised tower cannot be frozen (nothing would store it); set pretrained, or frozen: "
            "false / null",
        )
        if self.projector_from is not None:
            require(
                bool(self.projector_from.strip()), "projector_from", "must be a LLaVA checkpoint (hub id or folder)"
            )
            require(
                self.projector == "mlp",
                "projector_from",
                f"LLaVA-1.5's projector is Linear-GELU-Linear: set projector: mlp (got {self.projector!r})",
            )
            require(
                self.pretrained is not None,
                "projector_from",
                "LLaVA's projector reads a pretrained CLIP tower's patch features; with a random tower (pretrained: "
                "null) it would project noise: set pretrained (e.g. openai) or drop projector_from",
            )
        require(
            not (self.projector_frozen and self.projector_from is None),
            "projector_frozen",
            "a randomly initialised projector cannot be frozen (nothing would store it); set projector_from, or "
            "projector_frozen: false / null",
        )

    @property
    def trains_tower(self) -> bool:
        """Whether the tower is trained: ``frozen`` when given, else only a randomly initialised one."""
        return not self.frozen if self.frozen is not None else self.pretrained is None

    @property
    def trains_projector(self) -> bool:
        """Whether the patch projector is trained: ``projector_frozen`` when given, else only a random one."""
        return not self.projector_frozen if self.projector_frozen is not None else self.projector_from is None


MemoryMethod = Literal[
    "latent",
    "latent_compact",
    "latent_shuffled",
    "latent_no_images",
    "bm25",
    "dense",
    "no_retrieval",
    "full_context",
    "majority",
]
"""Rows a latent-memory table can have; ``latentlab.memory.evaluate.METHODS`` runs each (a test keeps both equal)."""


@dataclass
class CompressorConfig:
    """The compressor LLM: compress/query/decode adapters, memory slot, retrieval head and projector."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    """Base model shared by the compress, query and decode adapters."""
    compress_lora: LoraSpec = field(default_factory=LoraSpec)
    """Adapter that turns evidence into its latent."""
    query_lora: LoraSpec = field(default_factory=LoraSpec)
    """Adapter that turns a question into its retrieval key."""
    decode_lora: LoraSpec = field(
        default_factory=lambda: LoraSpec(
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"]
        )
    )
    """Adapter of the reconstruction decoder ([z, BOS, x...] -> x)."""
    read_lora: LoraSpec | None = None
    """Adapter on the generator, active only while it reads latent slots (null, the paper: the generator stays
    frozen). Raw-text prompts (the teacher, the baselines) always run on the bare base. Needs the generator to
    share the compressor's base model. Meant for small generators that do not read a lone soft token
    (``experiments/reader_oracle.py`` measures that)."""
    key_dim: int = 512
    """Retrieval key size d of the head Linear(H->d) + LayerNorm + L2."""
    max_evidence_tokens: int = 128
    """Evidence longer than this is truncated before the memory slot."""
    max_query_tokens: int = 64
    """Questions longer than this are truncated before the memory slot."""
    train_parts: list[str] = field(default_factory=lambda: list(COMPRESSOR_PARTS))
    """What this run trains, from: compress_lora, query_lora, decode_lora, memory_slot, retrieval_head, projector,
    read_lora (and with ``vision``: vision_tower, vision_projector, image_embed_head).
    The others stay as they are (and still go into checkpoints). Without compress_lora and memory_slot the
    evidence latents are fixed: each text is compressed once (dropout off) and cached for the whole run."""
    init_from: str | None = None
    """Start from a trained compressor: an exported folder (weights.safetensors) or a run directory (last.ckpt);
    relative to the project. A second stage (say, the projector alone) continues a first this way."""
    init_fresh_decoder: bool = False
    """With ``init_from``: do not load its reconstruction adapter (an inference export has none) but start it as a
    new run does, so that a stage can reconstruct again from a shipped compressor. Needs decode_lora in
    ``train_parts`` and ``loss.recon_weight`` > 0."""
    vision: VisionConfig | None = None
    """The image path (an open_clip tower and a projector in front of the compressor); null: text evidence only."""

    def __post_init__(self) -> None:
        require(self.key_dim >= 1, "key_dim", f"must be >= 1, got {self.key_dim}")
        for name in ("max_evidence_tokens", "max_query_tokens"):
            require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        for i, part in enumerate(self.train_parts):
            require(
                part in COMPRESSOR_PARTS,
                f"train_parts[{i}]",
                f"unknown part {part!r} (known: {', '.join(COMPRESSOR_PARTS)})",
            )


@dataclass
class GeneratorConfig:
    """The frozen generator that reads latents (through the projector, and ``compressor.read_lora`` if set) or raw
    text (always on the bare base)."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    """Generator model; when equal to the compressor's, the base weights are shared (adapters disabled)."""
    slot_format: Literal["paper", "compact"] = "paper"
    """`paper`: `\\nLatent context i: <z>` per item; `compact`: one header then the latents back to back."""
    max_new_tokens: int = 32
    """Greedy decoding budget for answers."""
    max_item_tokens: int = 512
    """Each raw-text evidence item a generator prompt holds (the teacher's, the baselines') is cut to this many
    tokens, so that one huge text cannot make a prompt no model fits; evaluation reports how many items were cut."""
    system_prompt: str = (
        "You are a helpful assistant. Answer the question concisely "
        "(a few words or a short phrase) based on the provided context."
    )
    """System message of the generator's chat template."""

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "max_item_tokens"):
            require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")


@dataclass
class ImageLossConfig:
    """Weights of the losses of image items (read only with ``compressor.vision``); the reference's multimodal values.

    A question is an image question when one of its positives is an image; its contrastive and distillation terms
    take these weights in place of the text ones.
    """

    embed_recon_weight: float = 5.0
    """MSE of a head on each image latent against the tower's pooled embedding of that image (a detached target)."""
    title_recon_weight: float = 0.5
    """CE of the decoder rebuilding an image's title from its latent (pixels are never rebuilt)."""
    caption_recon_weight: float = 0.0
    """CE of the decoder rebuilding an image's text description (its caption) from its latent, for images that have
    one; 0 = off (the reference rebuilds titles only). A caption names what the picture shows, so this term asks the
    latent for every colour, shape and position at once, where an answer loss asks for one a question."""
    contrast_weight: float = 0.2
    """Multi-positive InfoNCE of image questions (other scenes in the pool are their image hard negatives)."""
    distill_weight: float = 2.0
    """KL(teacher || student) over the answer tokens of image questions; the teacher reads each image's text
    description, so image questions whose positives lack one are left out of this term."""

    def __post_init__(self) -> None:
        for name in (
            "embed_recon_weight",
            "title_recon_weight",
            "caption_recon_weight",
            "contrast_weight",
            "distill_weight",
        ):
            require(getattr(self, name) >= 0, name, "must be >= 0")


@dataclass
class LossConfig:
    """Weights and settings of the three latent-memory losses (and of the image terms, ``image``)."""

    recon_weight: float = 0.5
    """Weight of the reconstruction CE."""
    contrast_weight: float = 0.2
    """Weight of the multi-positive InfoNCE."""
    distill_weight: float = 1.0
    """Weight of KL(teacher || student) over the answer tokens."""
    temperature: float = 0.07
    """InfoNCE temperature."""
    hard_negatives: int = 8
    """Hard negatives per question (see ``negatives``)."""
    negatives: Literal["pool", "mined"] = "pool"
    """Where hard negatives come from. `pool`: drawn at random from the question's own non-supporting evidence.
    `mined`: the question's highest-scoring non-supporting items of the whole corpus (`corpus_of`) under the
    starting compressor's retrieval, mined once before training: what a global memory returns beside the
    positives. Exact while the retrieval side (query/compress adapters, memory slot, retrieval head) is frozen."""
    student_context: Literal["sampled", "retrieved"] = "sampled"
    """What the student reads. `sampled`: its positives and 0..student_distractors_max random hard negatives, in
    random order. `retrieved` (needs `negatives: mined`): the question's `eval.k` best items of the mined ranking
    in rank order, as a memory returns them; a positive outside them takes the place of the lowest negative."""
    recon_negatives: bool = True
    """Reconstruct the hard negatives too, not only the positives."""
    unlabelled_per_step: int = 0
    """Items of ``data.unlabelled`` each training step compresses and rebuilds, drawn with the step's seed; their CE
    is logged as ``recon_unlabelled`` and weighted by ``recon_weight``. 0 = off (then ``data.unlabelled`` must be
    null)."""
    distill_tokens: int = 16
    """Teacher answer tokens (greedy) over which the KL is taken."""
    student_distractors_max: int = 3
    """The student also reads 0..this many random hard-negative latents."""
    answer_weight: float = 0.0
    """Weight of the gold-answer cross-entropy of the student (the generator reading latents, teacher-forced on the
    first gold answer + end of turn). Not in the reference (0 = off): it puts the whole gradient on the answer
    tokens, where the 16-token KL spreads it over words the question already gives."""
    student_slot_formats: list[Literal["paper", "compact"]] = field(default_factory=list)
    """Slot formats the student reads in training, one drawn per question; empty = `generator.slot_format` only.
    Both: the generator learns to read latents with labels (`Latent context i:`) and back to back."""
    paraphrase_weight: float = 0.0
    """Weight of the generator rebuilding each positive's text from its projected latent (xRAG's paraphrase
    pretraining; not in the reference, 0 = off). It teaches the projector what the frozen generator can read with
    every token of every positive, where the answer losses see a few tokens a question. An image positive is
    rebuilt as its text description where it has one (and left out where it has none)."""
    image: ImageLossConfig = field(default_factory=ImageLossConfig)
    """Weights of the image items' terms (only with ``compressor.vision``)."""

    def __post_init__(self) -> None:
        require(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        for name in ("recon_weight", "contrast_weight", "distill_weight", "answer_weight", "paraphrase_weight"):
            require(getattr(self, name) >= 0, name, "must be >= 0")
        require(
            self.student_context != "retrieved" or self.negatives == "mined",
            "student_context",
            "'retrieved' reads the mined ranking: set loss.negatives to 'mined'",
        )
        for name in ("hard_negatives", "student_distractors_max", "unlabelled_per_step"):
            require(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        require(self.distill_tokens >= 1, "distill_tokens", f"must be >= 1, got {self.distill_tokens}")


@dataclass
class SyntheticQAConfig:
    """Seeded fictional-entity multi-hop QA (no pre-training leakage)."""

    num_people: int = 400
    """People in the fictional world; each gets a handful of one-sentence facts."""
    seed: int = 0
    """Seed of the world and of the splits."""
    distractors: int = 8
    """Non-supporting sentences added to each question's evidence pool."""
    two_hop_fraction: float = 0.5
    """Share of 2-hop questions."""
    train_questions_per_person: int = 2
    """Questions drawn per training person (validation and test people get one; the facts do not change)."""

    def __post_init__(self) -> None:
        require(self.num_people >= 1, "num_people", f"must be >= 1, got {self.num_people}")
        require(self.distractors >= 0, "distractors", f"must be >= 0, got {self.distractors}")
        require(
            0.0 <= self.two_hop_fraction <= 1.0, "two_hop_fraction", f"must be in [0, 1], got {self.two_hop_fraction}"
        )
        require(self.train_questions_per_person >= 1, "train_questions_per_person", "must be >= 1")


@dataclass
class SyntheticImageQAConfig:
    """Seeded image QA (``latentlab.data.synthetic_images``): pillow-rendered scenes of coloured shapes, each titled
    with a fictional person or place; the answers are in the pictures only."""

    num_scenes: int = 300
    """Scenes (one image and one question each), split 80/10/10 into train/validation/test by scene."""
    seed: int = 0
    """Seed of the scenes, their titles, the questions and the splits."""
    image_size: int = 64
    """Side of the rendered PNGs, in pixels (the vision path resizes them to its own size)."""
    max_shapes: int = 4
    """Shapes per scene: 1 to this many."""
    image_distractors: int = 3
    """Other scenes in each question's pool (the image hard negatives)."""
    text_distractors: int = 3
    """Text facts in each question's pool (about its title and others'; none holds an answer)."""
    cache_dir: str = "data/synthetic/images"
    """Where the PNGs are written once (relative to the project); a file already there must hold the same bytes."""
    text_questions: float = 0.0
    """Fraction of each split's scenes that also get a text question (who made the picture, which gallery holds
    it), answered by a fact and not by the picture: a mixed memory is then measured on text questions too."""

    def __post_init__(self) -> None:
        require(0.0 <= self.text_questions <= 1.0, "text_questions", f"must be in [0, 1], got {self.text_questions}")
        require(
            self.num_scenes >= 10, "num_scenes", f"must be >= 10 (every split needs a scene), got {self.num_scenes}"
        )
        require(self.image_size >= 16, "image_size", f"must be >= 16 pixels, got {self.image_size}")
        require(1 <= self.max_shapes <= 6, "max_shapes", f"must be in 1..6, got {self.max_shapes}")
        for name in ("image_distractors", "text_distractors"):
            require(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        require(bool(self.cache_dir.strip()), "cache_dir", "must be a folder path")


@dataclass
class DataConfig:
    """Where the QA-with-evidence examples come from."""

    source: Literal["synthetic", "synthetic_images", "jsonl", "hotpotqa"] = "synthetic"
    """`synthetic` (generated text QA), `synthetic_images` (generated image QA; needs ``compressor.vision``),
    `jsonl` (latentlab schema, text and image items) or `hotpotqa` (official JSON, converted on load)."""
    train: str | None = None
    """Training file (jsonl/hotpotqa sources)."""
    val: str | None = None
    """Validation file (jsonl/hotpotqa sources)."""
    test: str | None = None
    """Test file (jsonl/hotpotqa sources)."""
    unlabelled: str | None = None
    """Corpus JSONL (``read_corpus``) of text no question asks about, for the reconstruction loss only: each training
    step rebuilds ``loss.unlabelled_per_step`` of its items (`latentlab data hotpotqa-splits` writes
    ``unlabelled.jsonl``). Null: none."""
    synthetic: SyntheticQAConfig = field(default_factory=SyntheticQAConfig)
    """Settings of the synthetic generator (synthetic source)."""
    synthetic_images: SyntheticImageQAConfig = field(default_factory=SyntheticImageQAConfig)
    """Settings of the synthetic image-QA generator (synthetic_images source)."""
    batch_size: int = 4
    """Questions per micro-batch."""
    max_positives: int = 4
    """At most this many supporting items per question are used in a step."""
    limit_train: int | None = None
    """Use only the first N training questions (null: all)."""
    limit_val: int | None = None
    """Validate on only the first N validation questions during training (null: all; `evaluate` uses `eval.limit`)."""

    def __post_init__(self) -> None:
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.max_positives >= 1, "max_positives", f"must be >= 1, got {self.max_positives}")
        positive_or_null(self.limit_train, "limit_train")
        positive_or_null(self.limit_val, "limit_val")


LatentCodecName = Literal["float32", "float16", "int8", "pq"]
LATENT_CODECS = get_args(LatentCodecName)
"""How a memory can store its latents (``IndexConfig.latent_dtype``); ``latentlab.memory.latent_store`` codes each."""


def training_keys_needed(factory: str) -> int:
    """Fewest keys FAISS needs to train ``factory``: one per IVF list, 2**nbits per PQ codebook (0: no training)."""
    needed = 0
    if match := re.search(r"IVF(\d+)", factory):
        needed = max(needed, int(match.group(1)))
    if match := re.search(r"PQ\d+(?:x(\d+))?", factory):
        needed = max(needed, 2 ** int(match.group(1) or 8))
    return needed


@dataclass(frozen=True)
class IndexConfig:
    """Which FAISS index a memory uses, how it searches, how it stores latents, and how it is built."""

    factory: str = "Flat"
    """``faiss.index_factory`` string, always over inner product: "Flat" (exact), "IVF256,Flat", "HNSW32,Flat",
    "IVF256,PQ32". IVF and PQ are trained on the keys of the first ``add``; it must hold at least nlist keys
    (and 2**nbits for PQ), otherwise ``add`` raises rather than silently shrinking nlist."""
    nprobe: int = 16
    """IVF lists visited per query (ignored by index types without IVF)."""
    ef_search: int = 320
    """HNSW candidate-list size per query (ignored by index types without HNSW). 320: the smallest tried that reaches
    recall@10 >= 0.95 on ``benchmarks/hnsw_sweep.py`` (HNSW32, 50k clustered keys, d=256: 0.959; 64 gave 0.882);
    recall at a given ef falls as the memory grows, so measure yours with that script."""
    latent_dtype: LatentCodecName = "float32"
    """How the latents are stored; ``latents_for`` always decodes them to float32. `float32` (exact), `float16`,
    `int8` (FAISS scalar quantiser, 1 byte a value, per-dimension min/max of the first ``add``'s latents; later
    values outside that range are clipped), `pq` (FAISS product quantiser: ``latent_pq_m`` codes of
    ``latent_pq_nbits`` bits a latent, codebooks trained on the first ``add``'s latents)."""
    latent_pq_m: int | None = None
    """`pq` only (and required there): sub-quantizers M; must divide the latent size H. Bytes a latent:
    M * nbits / 8 (M=72, nbits=8: 72 bytes for H=576, against 2304 in float32)."""
    latent_pq_nbits: int = 8
    """`pq` only: bits of each sub-quantizer's code, 1..16; the first ``add`` needs at least 2**nbits items."""
    max_train_keys: int | None = None
    """IVF/PQ keys and `pq` latents train on a seeded sample of at most this many rows (k-means time grows with
    it); None = all of the first ``add``'s, which FAISS itself caps at 256 per centroid."""
    batch_size: int = 32
    """Evidence items compressed per batch while building (not part of what a memory records)."""

    def __post_init__(self) -> None:
        require(
            isinstance(self.factory, str) and bool(self.factory.strip()),
            "factory",
            f"must be a FAISS factory string such as 'Flat', got {self.factory!r}",
        )
        require(
            not self.factory.replace(" ", "").upper().startswith("IDMAP"),
            "factory",
            f"'{self.factory}': drop the IDMap prefix; LatentIndex maps FAISS labels to item ids itself",
        )
        for name in ("nprobe", "ef_search", "batch_size"):
            value = getattr(self, name)
            require(
                isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                name,
                f"must be a positive integer, got {value!r}",
            )
        require(
            self.latent_dtype in LATENT_CODECS,
            "latent_dtype",
            f"must be one of {', '.join(LATENT_CODECS)}, got {self.latent_dtype!r}",
        )
        if self.latent_dtype == "pq":
            require(
                isinstance(self.latent_pq_m, int) and not isinstance(self.latent_pq_m, bool) and self.latent_pq_m >= 1,
                "latent_pq_m",
                f"must be a positive integer dividing the latent size with latent_dtype 'pq', got {self.latent_pq_m!r}",
            )
            require(
                isinstance(self.latent_pq_nbits, int) and 1 <= self.latent_pq_nbits <= 16,
                "latent_pq_nbits",
                f"must be an integer in 1..16, got {self.latent_pq_nbits!r}",
            )
        else:  # a pq setting that nothing reads would be a silently ignored key
            for name, unused in (("latent_pq_m", None), ("latent_pq_nbits", 8)):
                require(
                    getattr(self, name) == unused,
                    name,
                    f"is only read with latent_dtype 'pq' (latent_dtype is '{self.latent_dtype}'); "
                    f"set latent_dtype: pq or drop {name}",
                )
        fewest = max(1, training_keys_needed(self.factory), self.latent_training_rows_needed())
        require(
            self.max_train_keys is None or (isinstance(self.max_train_keys, int) and self.max_train_keys >= fewest),
            "max_train_keys",
            f"must be null or an integer >= {fewest} (what '{self.factory}' and latent_dtype '{self.latent_dtype}' "
            f"need to train), got {self.max_train_keys!r}",
        )

    def latent_training_rows_needed(self) -> int:
        """Fewest latents the first ``add`` must hold to train the latent codec: 2**nbits for `pq`, else 0."""
        return 2**self.latent_pq_nbits if self.latent_dtype == "pq" else 0

    def latent_codec_params(self) -> dict:
        """The latent codec's parameters beside ``latent_dtype`` (only `pq` has any)."""
        if self.latent_dtype != "pq":
            return {}
        return {"latent_pq_m": self.latent_pq_m, "latent_pq_nbits": self.latent_pq_nbits}

    def searched_as(self) -> dict:
        """What a built memory records of this section (the build batch size leaves no trace in the files)."""
        return {
            "factory": self.factory,
            "nprobe": self.nprobe,
            "ef_search": self.ef_search,
            "latent_dtype": self.latent_dtype,
            "latent_pq_m": self.latent_pq_m,
            "latent_pq_nbits": self.latent_pq_nbits,
            "max_train_keys": self.max_train_keys,
        }


@dataclass
class MemoryEvalConfig(EvalConfig):
    """`latentlab evaluate` of a latent memory: which rows, which retrieval protocol, k."""

    methods: list[MemoryMethod] = field(default_factory=lambda: ["latent", "bm25", "dense", "no_retrieval"])
    """Rows of the table: latent (generator.slot_format), latent_compact (one header, latents back to back),
    latent_shuffled (a control: compact slots, each question reading the latents retrieved for the next one; an F1
    near latent_compact's means the answers do not come from the latents), latent_no_images (a control: the same
    memory with each image replaced by its title as a text item, so it cannot see the pictures), bm25, dense,
    no_retrieval, full_context, majority (no model: each question gets the training split's most frequent answer
    of its question type, the majority class of a true/false or yes/no set)."""
    k: int = 5
    """Items retrieved per question."""
    retrieval: Literal["pool", "global"] = "pool"
    """`pool`: rank each question's own evidence (the paper's protocol); `global`: one index of the corpus."""
    f1: Literal["squad", "hotpotqa", "webqa"] = "squad"
    """Answer score of the tables' headline column: `squad` (token F1, SQuAD 2.0's empty-answer rule), `hotpotqa`
    (the official HotpotQA script: 0 when either side normalises to yes / no / noanswer and they differ) or `webqa`
    (WebQA's accuracy by question category, ``latentlab.eval.webqa.webqa_accuracy``; each question's
    ``question_type`` must be its WebQA ``Qcate``, as `latentlab data webqa` writes it). Tables name the rule."""
    bootstrap_resamples: int = 1000
    """Resamples of the 95% percentile bootstrap intervals (over questions) in every table, seeded from ``seed``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.k >= 1, "k", f"must be >= 1, got {self.k}")
        require(
            isinstance(self.bootstrap_resamples, int)
            and not isinstance(self.bootstrap_resamples, bool)
            and self.bootstrap_resamples >= 1,
            "bootstrap_resamples",
            f"must be a positive integer, got {self.bootstrap_resamples!r}",
        )
        require(bool(self.methods), "methods", "must name at least one method")
        seen = set()
        for i, method in enumerate(self.methods):
            require(method not in seen, f"methods[{i}]", f"{method!r} is listed twice")
            seen.add(method)
