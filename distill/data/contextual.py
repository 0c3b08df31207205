"""Contextual replacement candidates: mask a word, take the masked-LM's top-K whole words (TinyBERT).

TinyBERT's ``data_augmentation.py`` masks one word at a time: one encoder forward per word of every
sentence. Here a sentence takes ``mask_every`` forwards instead: forward p masks the eligible words
whose rank is p modulo ``mask_every``, so every word still gets its own candidates while at least
(mask_every − 1)/mask_every of the other eligible words stay visible (4: three of four — BERT itself is
trained with 15% masked). Rows are sorted by length and batched on the model's device.

Candidates are whole words of the vocabulary (alphabetic, not ``##`` pieces, not specials), never the
original word; only words that are a single vocabulary token are asked (the rest go to
``neighbours.py``, as TinyBERT sends them to GloVe).

``pool`` > 0 ranks only the word's ``pool`` nearest neighbours in the teacher's embedding space by
the masked-LM's score in context, instead of the whole vocabulary. Measured on MR, a masked-LM head
fitted on 6k sentences to the packaged sentence-embedding encoder predicts only 10-21% of masked
words (held-out top-1), and its whole-vocabulary top-15 is mostly function words ("s", "and", "the");
the embedding neighbours are related words ("boring" → dull, bland, mundane) that the masked-LM then
orders by context. ``pool=0`` is TinyBERT's rule, for a checkpoint with a real masked-LM head.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from distill.models.heads import BertForMaskedLM


def whole_word_ids(tokenizer) -> torch.Tensor:
    """Ids (V',) of vocabulary entries that are whole alphabetic words: what a replacement may be."""
    vocab = tokenizer.get_vocab()
    vocab = tokenizer.get_vocab()
    specials = set(tokenizer.all_special_tokens)
    keep = (i for t, i in vocab.items() if t.isalpha() and t not in specials and (len(t) > 1 or t in "ai"))
    return torch.tensor(sorted(keep))  # single letters other than "a" / "i" are pieces of words, not words


def single_piece(tokenizer, sentences: list[list[str]], max_length: int):
    """The encoding of word lists, and per sentence {word index: token position} for words that are
    exactly one known token within ``max_length`` (the words the masked-LM can be asked about)."""
    enc = tokenizer(sentences, is_split_into_words=True, truncation=True, max_length=max_length)
    positions = []
    for i in range(len(sentences)):
        count, first = {}, {}
        for t, w in enumerate(enc.word_ids(i)):
            if w is not None:
                count[w] = count.get(w, 0) + 1
                first.setdefault(w, t)
        ids = enc["input_ids"][i]
        positions.append({w: t for w, t in first.items() if count[w] == 1 and ids[t] != tokenizer.unk_token_id})
    return enc, positions


def _jobs(enc, positions, eligible, mask_id: int, mask_every: int) -> list[tuple[list[int], list[tuple]]]:
    """(masked input ids, [(sentence, word, token position, original id)]) per forward pass."""
    jobs = []
    for i, pos in enumerate(positions):
        words = [w for w in sorted(pos) if eligible[i][w]]
        for p in range(mask_every):
            chosen = words[p::mask_every]
            if not chosen:
                continue
            ids = list(enc["input_ids"][i])
            targets = []
            for w in chosen:
                targets.append((i, w, pos[w], ids[pos[w]]))
                ids[pos[w]] = mask_id
            jobs.append((ids, targets))
    return jobs


def _scores(mlm: BertForMaskedLM, hidden: torch.Tensor, original: torch.Tensor, allowed: torch.Tensor,
            pools: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked-LM scores (N, M) of the candidate ids (N, M) for masked positions ``hidden`` (N, H)."""
    head = mlm.cls.predictions
    if pools is None:  # the whole vocabulary of whole words
        logits = head(hidden)[:, allowed]  # (N, V')
        logits[allowed[None, :] == original[:, None]] = float("-inf")  # never "replace" a word by itself
        return logits, allowed.expand(len(hidden), -1)
    ids = pools[original]  # (N, M)
    x = head.transform(hidden)  # (N, H)
    logits = torch.einsum("nh,nmh->nm", x, head.decoder.weight[ids]) + head.bias[ids]  # (N, M)
    return logits.masked_fill(ids == original[:, None], float("-inf")), ids


@torch.no_grad()
def contextual_candidates(mlm: BertForMaskedLM, tokenizer, sentences: list[list[str]], eligible: list[list[bool]],
                          top_k: int = 15, mask_every: int = 4, batch_size: int = 64, max_length: int = 128,
                          pool: int = 50) -> dict[tuple[int, int], list[str]]:
    """{(sentence, word): top-K replacement words} for eligible single-token words."""
    from distill.data.neighbours import neighbour_pools

    enc, positions = single_piece(tokenizer, sentences, max_length)
    jobs = sorted(_jobs(enc, positions, eligible, tokenizer.mask_token_id, mask_every), key=lambda j: len(j[0]))
    device = next(mlm.parameters()).device
    allowed = whole_word_ids(tokenizer).to(device)  # (V',)
    pools = None
    if pool:
        asked = sorted({t[3] for _, targets in jobs for t in targets})
        pools = neighbour_pools(mlm.bert.embeddings.word_embeddings.weight, allowed, asked, pool + 1)
    words = tokenizer.convert_ids_to_tokens(list(range(mlm.config.vocab_size)))
    out: dict[tuple[int, int], list[str]] = {}
    mlm.eval()
    for start in tqdm(range(0, len(jobs), batch_size), desc="masked-LM candidates", disable=len(jobs) < batch_size):
        chunk = jobs[start:start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, (row, _) in enumerate(chunk):
            ids[b, :len(row)], mask[b, :len(row)] = torch.tensor(row), 1
        hidden = mlm.bert(ids.to(device), mask.to(device)).last_hidden_state  # (B, T, H)
        rows = [b for b, (_, targets) in enumerate(chunk) for _ in targets]
        cols = [t[2] for _, targets in chunk for t in targets]
        original = torch.tensor([t[3] for _, targets in chunk for t in targets], device=device)
        logits, ids = _scores(mlm, hidden[rows, cols], original, allowed, pools)  # (N, M) each
        top = logits.topk(min(top_k, logits.shape[1]), dim=-1).indices  # (N, K)
        best = ids.gather(1, top).tolist()
        targets = [t for _, ts in chunk for t in ts]
        for (i, w, _, _), picked in zip(targets, best):
            out[(i, w)] = [words[c] for c in picked]
    return out
