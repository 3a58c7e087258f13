"""CLIP-style model directories for tests, in Hugging Face's `save_pretrained` layout (what
multi2vec-clip's download.py stores), with seeded random weights: no download here.

The CLIP tokenizer is the real one: its BPE vocabulary ships in the open_clip_torch package
(img2vec/inputs/openclip.py's `openai_bpe`), from which transformers' `CLIPTokenizer` files are
derived. SigLIP's SentencePiece
model is not shipped anywhere offline, so the SigLIP directory gets a small word-level
tokenizer written here: enough to check padding, pooling and truncation, which is where the
families differ.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from img2vec.inputs.openclip import openai_bpe

# Small towers: the real ones' structure (ViT-B/32 patches at 224, a causal text
# transformer), a width that runs in milliseconds on 2 cores.
TOWER = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 2}  # fmt: skip


# One layer of ViT-B/32's width: wide enough that OpenVINO's AVX2 kernels give an image other
# bits batched than alone (as ViT-B/32's whole image tower does on an AVX2-only CPU), small
# enough to convert in seconds.
WIDE_VISION = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 1,
    "num_attention_heads": 12,
}


def write_clip(root: Path, seed: int = 0, patch: int = 32, vision: dict | None = None) -> Path:
    """A random CLIP (ViT image tower, projection 32) with the real tokenizer; `vision`: the
    image tower's sizes, if not the small TOWER."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    vocab, merges = openai_bpe()
    files = root / "bpe"
    files.mkdir(parents=True, exist_ok=True)
    (files / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
    (files / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(
        str(files / "vocab.json"), str(files / "merges.txt"), model_max_length=77
    )
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={**TOWER, "vocab_size": len(vocab), "max_position_embeddings": 77},
        vision_config={**(vision or TOWER), "image_size": 224, "patch_size": patch},
        projection_dim=32,
    )
    model = CLIPModel(config).eval()
    out = root / "clip"
    model.save_pretrained(out)
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer).save_pretrained(out)
    return out


def write_siglip(root: Path, seed: int = 0) -> Path:
    """A random SigLIP with a small word-level tokenizer (context 64, pad id 1)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import (
        PreTrainedTokenizerFast,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
    )

    words = "a photo of the cat dog rocket coffee astronaut man on in with red blue big small"
    vocab = {"<unk>": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate(words.split())}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        eos_token="</s>",
        pad_token="</s>",
        model_max_length=64,
    )
    torch.manual_seed(seed)
    config = SiglipConfig(
        text_config={
            **TOWER,
            "vocab_size": len(vocab),
            "max_position_embeddings": 64,
            "pad_token_id": 1,
            "eos_token_id": 1,
            "bos_token_id": None,
        },
        vision_config={**TOWER, "image_size": 224, "patch_size": 32},
    )
    model = SiglipModel(config).eval()
    out = root / "siglip"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    SiglipImageProcessor().save_pretrained(out)
    return out


def write_multilingual(root: Path, seed: int = 0) -> Path:
    """multi2vec-clip's default layout, as its download.py saves it from the hub: `clip/`, a
    sentence-transformers CLIP (the random CLIP above), and `text/`, a sentence-transformers
    text model shaped like clip-ViT-B-32-multilingual-v1 (a DistilBERT, mean pooling, a dense
    layer without bias to the CLIP's width), in the hub's file layout, with a small WordPiece
    vocabulary written here."""
    from transformers import DistilBertConfig, DistilBertModel, DistilBertTokenizerFast

    out = root / "multilingual"
    clip = write_clip(root / "image-tower")
    (out / "clip").mkdir(parents=True)
    (out / "clip" / "0_CLIPModel").symlink_to(clip, target_is_directory=True)
    _modules(out / "clip", [("0_CLIPModel", "CLIPModel")])
    text = out / "text"
    text.mkdir()
    words = ("[PAD] [UNK] [CLS] [SEP] [MASK] a photo of the cat dog rocket coffee astronaut "
             "katze foto einer ein une chat café ##s ##e ##n")  # fmt: skip
    (root / "vocab.txt").write_text("\n".join(words.split()) + "\n")
    tokenizer = DistilBertTokenizerFast(str(root / "vocab.txt"), model_max_length=512)
    torch.manual_seed(seed)
    config = DistilBertConfig(
        vocab_size=len(words.split()), dim=64, hidden_dim=128, n_layers=2, n_heads=2
    )
    DistilBertModel(config).eval().save_pretrained(text)
    tokenizer.save_pretrained(text)
    (text / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 128, "do_lower_case": False})
    )
    _modules(text, [("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Dense", "Dense")])
    (text / "1_Pooling").mkdir()
    (text / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": 64,
                "pooling_mode_cls_token": False,
                "pooling_mode_mean_tokens": True,
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
            }
        )
    )
    (text / "2_Dense").mkdir()
    (text / "2_Dense" / "config.json").write_text(
        json.dumps(
            {
                "in_features": 64,
                "out_features": 32,
                "bias": False,
                "activation_function": "torch.nn.modules.linear.Identity",
            }
        )
    )
    torch.save({"linear.weight": torch.randn(32, 64) / 8}, text / "2_Dense" / "pytorch_model.bin")
    return out


def _modules(root: Path, modules: list[tuple[str, str]]) -> None:
    """modules.json as the hub's sentence-transformers models have it."""
    entries = [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (path, kind) in enumerate(modules)
    ]
    (root / "modules.json").write_text(json.dumps(entries))


def _word_tokenizer(specials: list[str], template: str, **named: str) -> object:
    """A small lower-casing word-level fast tokenizer: `specials` first (ids 0, 1, ...), then
    a few words; `template` (tokenizers' TemplateProcessing) adds the special tokens."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = "a photo of the cat dog rocket coffee astronaut man on in with red blue big small"
    vocab = {**{t: i for i, t in enumerate(specials)}}
    vocab.update({w: len(specials) + i for i, w in enumerate(words.split())})
    backend = Tokenizer(models.WordLevel(vocab, unk_token=named["unk_token"]))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    used = [t for t in specials if t in template]
    backend.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, vocab[t]) for t in used]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, **named)


def write_metaclip(root: Path, seed: int = 0) -> Path:
    """MetaCLIP 1 as the hub has it (`facebook/metaclip-b32-400m`): a `CLIPModel` with
    QuickGELU and OpenAI CLIP's tokenizer, here random and small, ViT-B/16 patches."""
    from transformers import CLIPConfig, CLIPModel

    clip = write_clip(root / "metaclip-base", seed=seed, patch=16)
    config = CLIPConfig.from_pretrained(clip)
    config.text_config.hidden_act = config.vision_config.hidden_act = "quick_gelu"
    torch.manual_seed(seed + 1)
    out = root / "metaclip"
    CLIPModel(config).eval().save_pretrained(out)
    for name in clip.iterdir():
        if not name.name.startswith(("model", "config")):
            (out / name.name).write_bytes(name.read_bytes())
    return out


def write_metaclip2(
    root: Path, seed: int = 0, vision: dict = TOWER, text: dict = TOWER, patch: int = 32
) -> Path:
    """A random MetaCLIP 2 (`MetaClip2Model`: CLIP's towers, a multilingual XLM-V tokenizer
    whose pad, start and end tokens are 1, 0 and 2) with a small tokenizer of that shape."""
    from transformers import CLIPImageProcessor, MetaClip2Config, MetaClip2Model

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    tokenizer = _word_tokenizer(
        specials, "<s> $A </s>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", model_max_length=77,
    )  # fmt: skip
    torch.manual_seed(seed)
    config = MetaClip2Config(
        text_config={**text, "vocab_size": 40, "max_position_embeddings": 77,
                     "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2},
        vision_config={**vision, "image_size": 224, "patch_size": patch},
        projection_dim=32,
    )  # fmt: skip
    out = root / "metaclip2"
    MetaClip2Model(config).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    CLIPImageProcessor().save_pretrained(out)
    return out


def write_siglip2(
    root: Path, seed: int = 0, vision: dict = TOWER, text: dict = TOWER, size: int = 256
) -> Path:
    """SigLIP 2 at a fixed resolution as the hub has it (`google/siglip2-so400m-patch16-256`):
    a `SiglipModel` (model_type "siglip"), 256 px in patches of 16, with Gemma's special
    tokens (pad 0, end 1: unlike SigLIP, where both are 1), here with a small tokenizer."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    tokenizer = _word_tokenizer(
        specials, "$A <eos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        model_max_length=64,
    )  # fmt: skip
    torch.manual_seed(seed)
    config = SiglipConfig(
        text_config={**text, "vocab_size": 40, "max_position_embeddings": 64,
                     "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2},
        vision_config={**vision, "image_size": size, "patch_size": 16},
    )  # fmt: skip
    out = root / "siglip2"
    SiglipModel(config).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    SiglipImageProcessor(size={"height": size, "width": size}).save_pretrained(out)
    return out


def write_openclip(
    root: Path, seed: int = 0, model_cfg: dict | None = None, text: str = "bpe"
) -> Path:
    """multi2vec-clip's OpenCLIP layout with a random, small open_clip CLIP: `config.json`
    naming the model (`local-dir:` a directory of open_clip's own format beside it: its
    `open_clip_config.json` and safetensors weights) and `model_config`, as download.py writes
    it. open_clip's defaults otherwise: OpenAI's BPE and mean/std, bicubic, shorter side
    scaled and the centre cropped, context 77. `text="xlmr"`: the text tower is a Hugging Face
    XLM-RoBERTa with its own tokenizer, as in open_clip's xlm-roberta-base-ViT-B-32
    (`write_xlmr`)."""
    import open_clip
    from safetensors.torch import save_file

    model_cfg = model_cfg or {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32,
                       "patch_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2,
                     "layers": 2},
    }  # fmt: skip
    out = root / "openclip"
    weights = out / "tiny"
    weights.mkdir(parents=True, exist_ok=True)
    if text == "xlmr":
        model_cfg = {**model_cfg, "text_cfg": write_xlmr(weights)}
    (weights / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {"interpolation": "bicubic"}})
    )
    torch.manual_seed(seed)
    hf_text = "hf_model_name" in model_cfg["text_cfg"]
    model = (open_clip.CustomTextCLIP if hf_text else open_clip.CLIP)(**model_cfg).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              weights / "open_clip_model.safetensors")  # fmt: skip
    (out / "config.json").write_text(
        json.dumps({"model_name": "local-dir:tiny", "pretrained": "", "model_config": model_cfg})
    )
    return out


# A small SentencePiece-style vocabulary: every character the tests' texts use, alone and
# word-initial ("▁"), and a few whole words; what is not in it is <unk>.
XLMR_SPECIAL = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
XLMR_CHARS = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"()[]<>/&-_|"
    "äöüßéèçñΣΑσαςκτεινόфотокшиЖ猫の写真"
)
XLMR_WORDS = ("▁a", "▁photo", "▁of", "▁the", "▁cat", "▁dog", "▁fish", "▁chips", "▁schön")


def write_xlmr(directory: Path) -> dict:
    """An XLM-RoBERTa-shaped text tower in `directory`, as open_clip reads one: its fast
    tokenizer (SentencePiece unigram, <s> text </s>, pad 1) and a tiny random model config;
    returns open_clip's `text_cfg` naming both (open_clip's xlm-roberta-base-ViT-B-32 names
    "xlm-roberta-base" for both, with the mean pooler)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import XLMRobertaConfig, XLMRobertaTokenizerFast

    pieces = [*((t, 0.0) for t in XLMR_SPECIAL), *((w, -2.0) for w in XLMR_WORDS)]
    chars = list(dict.fromkeys(XLMR_CHARS))
    pieces += [(c, -6.0) for c in chars] + [("▁" + c, -5.0) for c in chars]
    pieces += [("▁", -4.0)]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=3))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    fast = XLMRobertaTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", sep_token="</s>",
        cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
    )  # fmt: skip
    fast.save_pretrained(directory)
    XLMRobertaConfig(
        vocab_size=len(pieces), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=80, pad_token_id=1, bos_token_id=0,
        eos_token_id=2,
    ).save_pretrained(directory)  # fmt: skip
    return {
        "hf_model_name": str(directory),
        "hf_tokenizer_name": str(directory),
        "hf_pooler_type": "mean_pooler",
        "hf_model_pretrained": False,
    }
