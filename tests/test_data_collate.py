"""Batches: dynamic padding, seeded shuffles, length grouping, and sharding by accelerate."""

import datasets
import pytest
import torch
from accelerate.data_loader import prepare_data_loader, skip_first_batches

from distill.data.collate import Collator, make_dataloader
from distill.data.samplers import LengthGroupedBatchSampler
from distill.errors import DistillError


def rows_of(lengths, token_labels=False):
    """A tokenized-looking dataset: row i has ``lengths[i]`` ids, all equal to i + 1."""
    data = {
        "input_ids": [[i + 1] * n for i, n in enumerate(lengths)],
        "attention_mask": [[1] * n for n in lengths],
        "token_type_ids": [[0] * n for n in lengths],
        "labels": [[i % 3] * n for i, n in enumerate(lengths)] if token_labels
        else [i % 2 for i in range(len(lengths))],
        "idx": list(range(len(lengths))),
        "truncated": [False] * len(lengths),
    }
    if token_labels:
        data["word_ids"] = [list(range(n)) for n in lengths]
    return datasets.Dataset.from_dict(data)


LENGTHS = [(7 * i) % 23 + 2 for i in range(100)]  # 2..24, scrambled


def test_collator_pads_to_the_longest_row():
    ds = rows_of([3, 5], token_labels=True)
    batch = Collator(pad_token_id=9)([ds[0], ds[1]])
    assert sorted(batch) == ["attention_mask", "idx", "input_ids", "labels", "token_type_ids"]  # word_ids dropped
    assert all(t.dtype == torch.long for t in batch.values())
    assert batch["input_ids"].tolist() == [[1, 1, 1, 9, 9], [2, 2, 2, 2, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1] * 5]
    assert batch["labels"].tolist() == [[0, 0, 0, -100, -100], [1] * 5]
    assert batch["idx"].tolist() == [0, 1]

    seq = rows_of([3, 5])
    batch = Collator(pad_token_id=0, pad_to_multiple_of=8)([seq[0], seq[1]])
    assert batch["input_ids"].shape == (2, 8) and batch["labels"].tolist() == [0, 1]


def test_collator_takes_the_pad_id_from_the_tokenizer():
    class Tok:
        pad_token_id = 3

    assert Collator(Tok()).pad_token_id == 3
    Tok.pad_token_id = None
    with pytest.raises(DistillError, match="no pad token"):
        Collator(Tok())


def epoch_order(loader):
    return [b["idx"].tolist() for b in loader]


def test_shuffle_is_seeded_and_changes_per_epoch():
    ds = rows_of(LENGTHS)
    loader = make_dataloader(ds, Collator(), batch_size=8, shuffle=True, seed=1)
    first, second = epoch_order(loader), epoch_order(loader)
    assert sorted(sum(first, [])) == list(range(100)) and first != second
    again = make_dataloader(ds, Collator(), batch_size=8, shuffle=True, seed=1)
    assert epoch_order(again) == first
    assert epoch_order(make_dataloader(ds, Collator(), batch_size=8, shuffle=False))[0] == list(range(8))


def padding(order):
    return sum(max(LENGTHS[i] for i in b) * len(b) - sum(LENGTHS[i] for i in b) for b in order)


def test_group_by_length_cuts_padding_and_covers_every_row():
    ds = rows_of(LENGTHS)
    grouped = make_dataloader(ds, Collator(), batch_size=8, shuffle=True, seed=0, group_by_length=True)
    plain = make_dataloader(ds, Collator(), batch_size=8, shuffle=True, seed=0)
    order = epoch_order(grouped)
    assert sorted(sum(order, [])) == list(range(100)) and len(order) == 13
    assert max(LENGTHS[i] for i in order[0]) == 24  # the longest batch first: OOM shows on step 1
    assert padding(order) < padding(epoch_order(plain)) / 5
    assert epoch_order(grouped) != order  # next epoch, new order
    dropped = make_dataloader(ds, Collator(), batch_size=8, shuffle=True, group_by_length=True, drop_last=True)
    assert all(len(b) == 8 for b in epoch_order(dropped)) and len(dropped) == 12


def test_resume_replays_the_same_epoch():
    sampler = LengthGroupedBatchSampler(LENGTHS, batch_size=8, seed=3)
    epochs = [list(sampler) for _ in range(3)]
    fresh = LengthGroupedBatchSampler(LENGTHS, batch_size=8, seed=3)
    fresh.set_epoch(2)
    assert list(fresh) == epochs[2] != epochs[1]


@pytest.mark.parametrize("group_by_length", [False, True])
def test_accelerate_shards_the_same_batches(group_by_length):
    ds = rows_of(LENGTHS)
    make = lambda: make_dataloader(ds, Collator(), batch_size=5, shuffle=True, seed=5,  # noqa: E731
                                   group_by_length=group_by_length, drop_last=True)
    whole = epoch_order(make())
    shards = [prepare_data_loader(make(), num_processes=2, process_index=p, put_on_device=False,
                                  use_seedable_sampler=True) for p in (0, 1)]
    per_process = [epoch_order(s) for s in shards]
    assert per_process[0] == whole[0::2] and per_process[1] == whole[1::2]
    # accelerate sets the epoch on the shards: the second pass is the sampler's epoch 1
    second = [epoch_order(s) for s in shards]
    reference = make()
    epoch_order(reference)
    assert second[0] == epoch_order(reference)[0::2]
    # mid-epoch resume: skip what was seen, get the rest of the same epoch
    resumed = skip_first_batches(prepare_data_loader(make(), put_on_device=False, use_seedable_sampler=True), 5)
    assert epoch_order(resumed) == whole[5:]


def test_bad_loader_arguments():
    with pytest.raises(DistillError, match="batch_size=0"):
        make_dataloader(rows_of([3]), Collator(), batch_size=0, shuffle=False)
    with pytest.raises(DistillError, match="empty dataset"):
        make_dataloader(rows_of([3]).select([]), Collator(), batch_size=2, shuffle=False)
