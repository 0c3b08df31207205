"""Embedding-neighbour candidates for words the masked-LM cannot be asked about (several pieces).

TinyBERT replaces such words by their GloVe neighbours; no GloVe ships here, but the teacher's own
input embeddings serve: a word's vector is the mean of its pieces' embeddings, and its candidates
are the ``top_k`` whole-word vocabulary entries of highest cosine similarity (never the word itself).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.data.contextual import whole_word_ids


@torch.no_grad()
def embedding_neighbours(embeddings: torch.Tensor, tokenizer, words: set[str], top_k: int = 15,
                         batch_size: int = 512) -> dict[str, list[str]]:
    """{word: its ``top_k`` nearest whole words by cosine of mean piece embeddings}; ``embeddings`` (V, H)."""
    allowed = whole_word_ids(tokenizer).to(embeddings.device)  # (V',)
    table = F.normalize(embeddings[allowed].float(), dim=-1)  # (V', H)
    names = tokenizer.convert_ids_to_tokens(allowed.tolist())
    words = sorted(w for w in words if w)
    pieces = tokenizer(words, add_special_tokens=False)["input_ids"] if words else []
    out: dict[str, list[str]] = {}
    for start in range(0, len(words), batch_size):
        chunk = [(w, p) for w, p in zip(words[start:start + batch_size], pieces[start:start + batch_size]) if p]
        if not chunk:
            continue
        vectors = torch.stack([embeddings[torch.tensor(p, device=embeddings.device)].float().mean(0) for _, p in chunk])
        scores = F.normalize(vectors, dim=-1) @ table.T  # (n, V')
        top = scores.topk(min(top_k + 1, scores.shape[1]), dim=-1).indices.tolist()
        for (word, _), best in zip(chunk, top):
            lowered = word.lower()
            out[word] = [names[c] for c in best if names[c] != lowered][:top_k]
    return out


@torch.no_grad()
def neighbour_pools(embeddings: torch.Tensor, allowed: torch.Tensor, ids: list[int], pool: int,
                    batch_size: int = 1024) -> torch.Tensor:
    """(V, pool) ids: row ``i`` (for each ``i`` in ``ids``) holds the ``pool`` whole words nearest to token
    ``i`` by embedding cosine (itself included when it is a whole word); other rows are 0."""
    table = F.normalize(embeddings[allowed].float(), dim=-1)  # (V', H)
    out = torch.zeros(embeddings.shape[0], min(pool, len(allowed)), dtype=torch.long, device=embeddings.device)
    for start in range(0, len(ids), batch_size):
        chunk = torch.tensor(ids[start:start + batch_size], device=embeddings.device)
        scores = F.normalize(embeddings[chunk].float(), dim=-1) @ table.T  # (n, V')
        out[chunk] = allowed[scores.topk(out.shape[1], dim=-1).indices]
    return out
