"""Vocabulary trimming: keep only the WordPiece tokens a corpus uses, remap tokenizer and embeddings.

A 30k-token vocabulary at hidden 384 is 11.7M parameters, most of a small student. Keeping the
tokens the training corpus produces (plus the special tokens) and slicing the embedding rows in the
same order gives a model that computes *exactly* the same thing on that corpus:

  * WordPiece is greedy longest-match-first, so a word whose pieces are all kept is split the same
    way by the smaller vocabulary (every longer match was absent before, too);
  * row ``new_id`` of the new embedding is row ``old_id`` of the old one, so each token's vector
    is unchanged.

Words the corpus never produced now become ``[UNK]`` (WordPiece maps a word it cannot fully split
to one ``[UNK]``); :func:`trim_vocab` reports how often that happens on held-out texts.

A student trained on more rows than the training split (``data.augment``'s variants) has trained embedding
rows for their words too: a run writes how often each token id occurred in its training rows
(``student/trained_tokens.json``, ``distill.data.tokenize.write_trained_tokens``) and trimming keeps those
tokens as well when given a ``max_vocab`` (a parameter budget): the most frequent first up to it. MR's
compact student trained on about 6,700 tokens beyond the training split's 11,558; kept up to 16,800 tokens they
gave back part of what trimming had cost on the test split (README, "Pruned compact students").
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import BertTokenizerFast

from distill import evaluate as ev
from distill.errors import DistillError

log = logging.getLogger(__name__)


def _word_embeddings(model: nn.Module) -> nn.Embedding:
    encoder = getattr(model, "bert", model)
    return encoder.embeddings.word_embeddings


def used_token_ids(tokenizer, texts: Sequence[str]) -> set[int]:
    """Every token id the tokenizer produces on ``texts`` (pairs: pass both sides as texts)."""
    ids = set()
    for start in range(0, len(texts), 1000):
        for row in tokenizer(list(texts[start : start + 1000]), add_special_tokens=False)["input_ids"]:
            ids.update(row)
    return ids


def kept_ids(tokenizer, texts: Sequence[str], keep_tokens: Sequence[str] = (),
             trained: Mapping[int, int] | None = None, max_vocab: int | None = None) -> tuple[list[int], int]:
    """The ids trimming keeps (sorted) and how many of them came from ``trained`` alone: every token ``texts``
    use, the special tokens and ``keep_tokens``; then the tokens the model was ``trained`` on (id → count),
    most frequent first, until ``max_vocab`` ids (None: none of them, the training texts' tokens alone)."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in keep_tokens if t not in vocab]
    if missing:
        raise DistillError(f"keep_tokens {missing[:5]} are not in the tokenizer's vocabulary; remove them")
    if max_vocab is not None and (type(max_vocab) is not int or max_vocab < 1):
        raise DistillError(f"export.vocab_size={max_vocab!r}: give a number of tokens, or null to keep the "
                           "training split's tokens alone")
    keep = used_token_ids(tokenizer, texts) | set(tokenizer.all_special_ids) | {vocab[t] for t in keep_tokens}
    if max_vocab is not None and max_vocab < len(keep):
        raise DistillError(f"export.vocab_size={max_vocab} is below the {len(keep)} tokens the training split "
                           f"uses; set it to at least {len(keep)}, or to null to keep them alone")
    if max_vocab is None:
        return sorted(keep), 0
    extra = sorted((i for i, n in (trained or {}).items() if i not in keep and 0 <= i < len(vocab) and n > 0),
                   key=lambda i: (-trained[i], i))
    room = max_vocab - len(keep)
    return sorted(keep | set(extra[:room])), min(room, len(extra))


def trimmed_tokenizer(tokenizer, keep: Sequence[int]) -> BertTokenizerFast:
    """A BERT WordPiece tokenizer over the tokens ``keep`` (old ids, in new-id order), with the
    original's normalisation (lower-casing, accents, Chinese characters) and special tokens."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"].get("type") != "WordPiece":
        raise DistillError(f"vocabulary trimming supports WordPiece (BERT) tokenizers, not "
                           f"{spec['model'].get('type')}; export without trim_vocab")
    norm = spec.get("normalizer") or {}
    inverse = {i: t for t, i in tokenizer.get_vocab().items()}
    return BertTokenizerFast(
        vocab={inverse[old]: new for new, old in enumerate(keep)},
        do_lower_case=bool(norm.get("lowercase", True)),
        tokenize_chinese_chars=bool(norm.get("handle_chinese_chars", True)),
        strip_accents=norm.get("strip_accents"),
        unk_token=tokenizer.unk_token, sep_token=tokenizer.sep_token, pad_token=tokenizer.pad_token,
        cls_token=tokenizer.cls_token, mask_token=tokenizer.mask_token,
        model_max_length=tokenizer.model_max_length,
    )


def trimmed_model(model: nn.Module, keep: Sequence[int], pad_id: int) -> nn.Module:
    """A copy of ``model`` whose embedding (and tied MLM decoder/bias) keeps rows ``keep``."""
    model = copy.deepcopy(model)
    old = _word_embeddings(model)
    index = torch.as_tensor(list(keep), dtype=torch.long)
    new = nn.Embedding(len(keep), old.embedding_dim, padding_idx=pad_id)
    with torch.no_grad():
        new.weight.copy_(old.weight.index_select(0, index))  # (V_new, H)
    getattr(model, "bert", model).embeddings.word_embeddings = new
    head = getattr(getattr(model, "cls", None), "predictions", None)
    if head is not None:  # masked-LM: the decoder is tied to the embedding, its bias is per token
        head.decoder.weight = new.weight
        head.bias = nn.Parameter(head.bias.detach().index_select(0, index))
    model.config.vocab_size = len(keep)
    model.config.pad_token_id = pad_id
    return model


def _logits(model, tokenizer, texts: Sequence[str]) -> list[torch.Tensor]:
    """Per-text logits at real positions: (C,) or (T_i, C)."""
    forward, out = ev.torch_forward(model), []
    enc = tokenizer(list(texts), truncation=True, max_length=min(512, model.config.max_position_embeddings))
    rows = [dict(zip(enc, vals)) for vals in zip(*enc.values())]
    for batch in ev.batches(rows, 32):
        logits = forward(batch)
        for i in range(len(logits)):
            out.append(logits[i] if logits.dim() == 2 else logits[i][batch["attention_mask"][i].bool()])
    return out


def trim_vocab(model: nn.Module, tokenizer, texts: Sequence[str], check_texts: Sequence[str] | None = None,
               keep_tokens: Sequence[str] = (), trained: Mapping[int, int] | None = None,
               max_vocab: int | None = None) -> tuple[nn.Module, BertTokenizerFast, dict]:
    """Trim to the tokens ``texts`` use (+ special tokens, + ``keep_tokens``, + the ``trained`` tokens up to
    ``max_vocab``: :func:`kept_ids`) and verify.

    Returns (model, tokenizer, report). Predictions on ``texts`` must be identical (else a
    DistillError); on ``check_texts`` (e.g. the validation split) the report gives the share of
    unchanged predictions and of tokens that became ``[UNK]``.
    """
    if not texts:
        raise DistillError("trim_vocab needs the training texts the vocabulary is trimmed for; pass texts=")
    vocab = tokenizer.get_vocab()
    keep, n_trained = kept_ids(tokenizer, texts, keep_tokens, trained, max_vocab)
    new_tok = trimmed_tokenizer(tokenizer, keep)
    new_model = trimmed_model(model, keep, pad_id=keep.index(tokenizer.pad_token_id)).eval()

    before, after = _logits(model, tokenizer, texts), _logits(new_model, new_tok, texts)
    if hasattr(model, "cls"):  # masked-LM logits are over the vocabulary: compare the kept tokens
        before = [x[..., keep] for x in before]
    diff = max(float((a - b).abs().max()) for a, b in zip(before, after))
    same = all(torch.equal(a.argmax(-1), b.argmax(-1)) for a, b in zip(before, after))
    if not same or diff > 1e-5:
        raise DistillError(f"vocabulary trimming changed predictions on the texts it was trimmed for (max "
                           f"|Δlogit| {diff:.2e}); the tokenizer is not plain WordPiece — export without trim_vocab")
    old_emb = _word_embeddings(model).weight
    report = {
        "vocab_before": len(vocab), "vocab_after": len(keep),
        "bytes_saved": (len(vocab) - len(keep)) * old_emb.shape[1] * old_emb.element_size(),
        "params_saved": (len(vocab) - len(keep)) * old_emb.shape[1],
        "max_abs_diff": diff, "identical_predictions": same, "n_texts": len(texts),
        "trained_extra": n_trained,  # kept because the model was trained on them, beyond ``texts``
    }
    if check_texts:
        a, b = _logits(model, tokenizer, check_texts), _logits(new_model, new_tok, check_texts)
        agree = [bool(torch.equal(x.argmax(-1), y.argmax(-1))) for x, y in zip(a, b)]
        ids = [i for row in new_tok(list(check_texts), add_special_tokens=False)["input_ids"] for i in row]
        report.update(check_n_texts=len(check_texts), check_unchanged=float(np.mean(agree)),
                      check_unk_rate=float(np.mean([i == new_tok.unk_token_id for i in ids])) if ids else 0.0)
    log.info("vocabulary trimmed %d → %d tokens, %.1f MB saved", len(vocab), len(keep), report["bytes_saved"] / 2**20)
    return new_model, new_tok, report


def write_vocab(tokenizer, out_dir: str | Path) -> Path:
    """vocab.txt (one token per line, id order) next to tokenizer.json, for non-transformers readers."""
    path = Path(out_dir) / "vocab.txt"
    tokens = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    path.write_text("".join(t + "\n" for t, _ in tokens))
    return path
