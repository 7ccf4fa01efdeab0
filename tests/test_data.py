"""The data layer (fuse.data, fuse.normalisation) against direct reads of tiny synthetic caches."""
from __future__ import annotations

import numpy as np
import torch
import pytest

from cache_schema import open_cache
from fuse.batch import future_key
from fuse.data import DataError, FeatureData, inspect_task, resolve_splits
from fuse.data.dialogue import context_rows, future_context_rows
from fuse.data.selection import dialogue_keys, speaker_keys
from fuse.testing.synthetic_cache import make_synthetic_cache


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return open_cache(make_synthetic_cache(tmp_path_factory.mktemp("data") / "c.zarr", test_speaker="Gunther"))


def _data(cache, **kw):
    kw.setdefault("normalisation", "none")
    return FeatureData.for_training(cache, {}, **kw)


def _raw(fs, row, cap=None):
    values = np.asarray(fs.get(row), dtype=np.float32)
    return values if cap is None else values[:cap]


def test_batches_match_direct_feature_set_reads(cache):
    data = _data(cache, max_len={"audio": 15})
    train = data.indices("train")
    batches = list(data.batches(train, 7, shuffle=False, bucket=False))
    assert np.concatenate([b.index.numpy() for b in batches]).tolist() == train.tolist()
    for batch in batches:
        for modality, fs in data.feature_sets.items():
            item = batch.modalities[modality]
            values, mask = item.values.numpy(), item.mask.numpy()
            for i, row in enumerate(batch.index.numpy()):
                expected = _raw(fs, row, 15 if modality == "audio" else None)
                n = len(expected)
                assert item.present[i].item() == bool(fs.present[row])
                assert mask[i].sum() == n and mask[i, :n].all()
                np.testing.assert_array_equal(values[i, :n], expected)
                assert not values[i, n:].any(), "padding must be zero"
        assert batch.label.tolist() == [int(cache.column("label")[r]) for r in batch.index.numpy()]


def test_truncation_caps_every_modality(cache):
    data = _data(cache, max_len={"audio": 15, "text": 4})
    batch = next(iter(data.batches(data.indices("train"), 48)))
    assert batch.modalities["audio"].mask.sum(1).max() <= 15
    assert batch.modalities["text"].mask.sum(1).max() <= 4
    assert data.summary()["truncated_utterances"]["audio"] > 0


def test_missing_modality_rows_are_masked_out(cache):
    data = _data(cache)
    video = data.feature_sets["video"]
    rows = np.nonzero(~video.present)[0][:3]
    assert len(rows) == 3
    batch = data.batch_for_rows(rows)
    item = batch.modalities["video"]
    assert not item.present.any() and not item.mask.any() and not item.values.any()
    assert batch.modalities["text"].present.all()


def _frames(fs, rows):
    return np.concatenate([_raw(fs, r).astype(np.float64) for r in rows if fs.present[r]])


def test_global_normalisation_is_fit_on_training_rows_only(cache):
    data = _data(cache, normalisation="global")
    train = data.splits.train
    for modality, fs in data.feature_sets.items():
        norm = data.normaliser.norms[fs.name]
        frames = _frames(fs, train)
        np.testing.assert_allclose(norm.mean[0], frames.mean(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(norm.std[0], frames.std(0), rtol=1e-4)
        everything = _frames(fs, np.arange(len(fs)))
        assert not np.allclose(norm.mean[0], everything.mean(0), atol=1e-4)
    # and the batches carry standardised values
    batch = data.batch_for_rows(train[:2])
    fs = data.feature_sets["text"]
    norm = data.normaliser.norms[fs.name]
    expected = (_raw(fs, train[0]) - norm.mean[0]) / norm.std[0]
    np.testing.assert_allclose(batch.modalities["text"].values[0, : len(expected)].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_speaker_normalisation_per_speaker_and_unseen_speakers(cache):
    data = _data(cache, normalisation="speaker")
    speakers = data.speakers
    fs = data.feature_sets["audio"]
    norm = data.normaliser.norms[fs.name]
    train = data.splits.train
    for speaker in ("Ross", "Joey"):
        rows = train[speakers[train] == speaker]
        frames = _frames(fs, rows)
        g = norm.groups.index(speaker)
        assert norm.fit_on[g] == "train"
        np.testing.assert_allclose(norm.mean[g], frames.mean(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(norm.std[g], frames.std(0), rtol=1e-4)
    # Gunther speaks only in test: his statistics come from his own utterances, at evaluation time.
    g = norm.groups.index("Gunther")
    assert norm.fit_on[g] == "evaluation"
    rows = np.nonzero(speakers == "Gunther")[0]
    np.testing.assert_allclose(norm.mean[g], _frames(fs, rows).mean(0), rtol=1e-5, atol=1e-5)
    assert "Gunther" not in data.normaliser.training_only().norms[fs.name].groups
    batch = data.batch_for_rows(rows[:1])
    got = batch.modalities["audio"].values[0].numpy()[: len(_raw(fs, rows[0]))]
    np.testing.assert_allclose(got, (_raw(fs, rows[0]) - norm.mean[g]) / norm.std[g], rtol=1e-5, atol=1e-5)
    # standardised per speaker: each training speaker's frames have mean ~0 and std ~1
    ross = train[speakers[train] == "Ross"]
    audio = data.batch_for_rows(ross).modalities["audio"]
    values = audio.values.numpy()[audio.mask.numpy()]
    np.testing.assert_allclose(values.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(values.std(0), 1, atol=1e-3)


def test_context_windows_follow_turn_order_within_dialogues(cache):
    data = _data(cache, context_turns=3, normalisation="global")
    turns = cache.column("turn")
    dialogue = cache.column("dialogue_id")
    for row in range(data.n):
        window = data.context_index[row]
        real = window[window >= 0]
        assert real[-1] == row
        assert len(real) == min(4, turns[row] + 1)
        assert (dialogue[real] == dialogue[row]).all(), "context never crosses dialogues"
        assert turns[real].tolist() == list(range(turns[row] - len(real) + 1, turns[row] + 1))
        assert (window[: len(window) - len(real)] == -1).all(), "left padding"
    rows = np.array([int(np.nonzero((dialogue == "dia0") & (turns == 5))[0][0])])
    batch = data.batch_for_rows(rows)
    ctx = batch.context["text"]
    assert ctx.values.shape == (1, 4, 8) and ctx.mask.all()
    fs = data.feature_sets["text"]
    norm = data.normaliser.norms[fs.name]
    previous = data.context_index[rows[0]][0]
    expected = ((_raw(fs, previous) - norm.mean[0]) / norm.std[0]).mean(0)
    np.testing.assert_allclose(ctx.values[0, 0].numpy(), expected, rtol=1e-4, atol=1e-5)
    # a turn missing the video modality is masked in the video context
    video_ctx = data.batch_for_rows(np.arange(data.n)).context["video"]
    assert (video_ctx.mask.numpy() == (data.context_index[:, -video_ctx.mask.shape[1] :] >= 0) & data.feature_sets["video"].present[np.maximum(data.context_index[:, -video_ctx.mask.shape[1] :], 0)]).all()


def test_context_rows_keys_by_split_and_caps_history():
    keys = dialogue_keys({"dataset": np.array(["m"] * 5, dtype=object), "split": np.array(["train", "train", "train", "dev", "dev"], dtype=object), "dialogue_id": np.array(["d0", "d0", "d0", "d0", ""], dtype=object)})
    rows = context_rows(keys, np.array([2, 0, 1, 0, 0]), n_preceding=1)
    assert rows.tolist() == [[2, 0], [-1, 1], [1, 2], [-1, 3], [-1, 4]]


def test_streaming_yields_each_training_utterance_once_and_mixes_blocks(cache):
    data = _data(cache, block_rows=120, pool_blocks=2)
    assert len(data._blocks) > 4
    train = data.indices("train")
    orders = []
    for epoch in range(2):
        batches = list(data.batches(train, 5, shuffle=True, seed=3, epoch=epoch))
        seen = np.concatenate([b.index.numpy() for b in batches])
        assert sorted(seen.tolist()) == train.tolist() and len(seen) == len(train)
        assert len(batches) == data.n_batches(train, 5, True, 3, epoch)
        orders.append(seen.tolist())
    assert orders[0] != orders[1], "each epoch is shuffled differently"
    assert orders[0] == [int(i) for b in data.batches(train, 5, shuffle=True, seed=3, epoch=0) for i in b.index]
    # a batch can hold utterances of different blocks
    blocks = data._blocks
    block_of = {u: k for k, (a, b) in enumerate(blocks) for u in range(a, b)}
    assert any(len({block_of[int(u)] for u in b.index}) > 1 for b in data.batches(train, 5, shuffle=True, seed=3))


@pytest.mark.parametrize("shuffle", [False, True])
def test_in_memory_and_streaming_give_the_same_batches(cache, shuffle):
    streaming = _data(cache, block_rows=120, normalisation="global")
    memory = _data(cache, block_rows=120, normalisation="global", in_memory=True)
    prefetching = _data(cache, block_rows=120, normalisation="global")
    streaming.prefetch, prefetching.prefetch = False, True
    train = streaming.indices("train")
    for epoch in range(2):  # epoch 1 of the in-memory data is served from memory
        a = list(streaming.batches(train, 6, shuffle=shuffle, seed=1, epoch=epoch))
        b = list(memory.batches(train, 6, shuffle=shuffle, seed=1, epoch=epoch))
        c = list(prefetching.batches(train, 6, shuffle=shuffle, seed=1, epoch=epoch))
        assert len(a) == len(b) == len(c)
        for x, y in [*zip(a, b), *zip(a, c)]:
            assert x.index.tolist() == y.index.tolist()
            for m in x.modalities:
                assert (x.modalities[m].values == y.modalities[m].values).all()
                assert (x.modalities[m].mask == y.modalities[m].mask).all()
    # in memory = the feature sets as stored (float16, not float32 copies), one copy per opened cache
    resident = memory._memory_frames()["audio"].values
    assert resident.dtype == np.float16 and resident.shape == cache["audio.synthetic"].values.shape
    other = _data(cache, block_rows=64, normalisation="speaker", in_memory=True)
    next(iter(other.batches(train, 6)))
    assert other._memory_frames()["audio"].values is resident


def test_metadata_vocabulary_from_train_and_numeric_standardised(cache):
    data = _data(cache, metadata=["speaker", "season"])
    assert data.metadata.categorical["speaker"] == ["Joey", "Monica", "Rachel", "Ross"]
    test = data.splits.test
    assert (data.metadata_categorical[test, 0] == 0).all(), "Gunther (test only) is unknown"
    train = data.splits.train
    np.testing.assert_allclose(data.metadata_numeric[train, 0].mean(), 0, atol=1e-6)
    spec = data.metadata.spec()
    assert spec.categorical == (("speaker", 4),) and spec.n_numeric == 1
    assert _data(cache).spec.metadata == ["speaker"]  # default
    with pytest.raises(DataError, match="no metadata column 'nope'"):
        _data(cache, metadata=["nope"])


def test_dev_is_carved_from_train_by_dialogue_when_absent(tmp_path):
    c = open_cache(make_synthetic_cache(tmp_path / "c.zarr", n_dialogues=20, with_dev=False))
    data = _data(c)
    assert data.splits.dev_source == "carved from train"
    assert "carved 2 of 16 training dialogues" in data.splits.note
    dialogue = c.column("dialogue_id")
    assert not set(dialogue[data.splits.dev]) & set(dialogue[data.splits.train])
    again = _data(c, normalisation="global")
    assert again.splits.dev.tolist() == data.splits.dev.tolist()


def test_speaker_independent_split_carves_dev_as_whole_speakers(tmp_path):
    # Gunther speaks every test utterance and none in train: a speaker-independent split.
    c = open_cache(make_synthetic_cache(tmp_path / "c.zarr", n_dialogues=20, with_dev=False, test_speaker="Gunther"))
    data = _data(c)
    speaker = np.asarray(c.column("speaker"), dtype=object)
    dev_speakers, train_speakers = set(speaker[data.splits.dev]), set(speaker[data.splits.train])
    assert data.splits.dev_rule == "speakers" and len(dev_speakers) == 1
    assert not dev_speakers & train_speakers, "a carved dev speaker must have no training utterance"
    assert len(data.splits.dev) == int(np.isin(speaker, list(dev_speakers)).sum()), "the whole speaker, every utterance"
    assert "speaker-independent" in data.splits.note and "carved 1 of 4 training speakers" in data.splits.note
    assert data.summary()["dev_split"] == data.splits.note  # the run records the rule
    assert _data(c, normalisation="global").splits.dev.tolist() == data.splits.dev.tolist()  # fixed seed


def test_dev_is_carved_by_dialogue_when_test_speakers_are_seen_in_train(tmp_path):
    c = open_cache(make_synthetic_cache(tmp_path / "c.zarr", n_dialogues=20, with_dev=False))
    splits = _data(c).splits
    assert splits.dev_rule == "dialogues"
    assert "not by speaker:" in splits.note and "test speakers are also in train" in splits.note


def test_speaker_carving_needs_named_speakers_and_two_of_them():
    split = np.array(["train"] * 6 + ["test"] * 2, dtype=object)
    no_dialogue = np.array([""] * 8, dtype=object)
    columns = {"dataset": np.array(["d"] * 8, dtype=object), "speaker": np.array(["a", "a", "b", "b", "c", "c", "t", "t"], dtype=object)}
    by_speaker = resolve_splits(split, no_dialogue, speakers=speaker_keys(columns))
    assert by_speaker.dev_rule == "speakers" and len(by_speaker.dev) == 2
    columns["speaker"][0] = ""  # one training utterance of unknown speaker could be a test speaker
    assert resolve_splits(split, no_dialogue, speakers=speaker_keys(columns)).dev_rule == "utterances"
    single = {"dataset": columns["dataset"], "speaker": np.array(["a"] * 6 + ["t"] * 2, dtype=object)}
    assert "single speaker" in resolve_splits(split, no_dialogue, speakers=speaker_keys(single)).note
    # The same speaker name in two datasets is two people: test "a" of dataset e is unseen.
    other = {"dataset": np.array(["d"] * 6 + ["e"] * 2, dtype=object), "speaker": np.array(["a", "a", "b", "b", "c", "c", "a", "a"], dtype=object)}
    assert resolve_splits(split, no_dialogue, speakers=speaker_keys(other)).dev_rule == "speakers"


def test_split_aliases_and_utterance_carving():
    splits = resolve_splits(np.array(["train", "VALID", "test", "train"], dtype=object), np.array([""] * 4, dtype=object))
    assert splits.dev.tolist() == [1] and splits.dev_source == "dev"
    carved = resolve_splits(np.array(["train"] * 20, dtype=object), np.array([""] * 20, dtype=object))
    assert len(carved.dev) == 2 and "utterances" in carved.note


def test_valid_split_name_is_dev(tmp_path):
    c = open_cache(make_synthetic_cache(tmp_path / "c.zarr", split_names=("train", "valid", "test")))
    assert len(_data(c).indices("dev")) == 12


def test_multi_label_task_and_presence(tmp_path):
    c = open_cache(make_synthetic_cache(tmp_path / "c.zarr", multi_label=True, classes=("happy", "sad", "anger")))
    data = _data(c)
    assert data.spec.task == "multi_label"
    intensities = c.column("labels_multi")
    np.testing.assert_array_equal(data.labels, (intensities > 0).astype(np.float32))
    batch = next(iter(data.batches(data.indices("train"), 4)))
    assert batch.labels_multi.shape == (4, 3) and batch.label is None
    with pytest.raises(DataError, match="handles only single_label"):
        inspect_task(c, "auto", {"single_label"})


def test_feature_set_selection_errors(tmp_path):
    sets = {
        "text.a": ("text", 4, 2, 5),
        "text.b": ("text", 4, 2, 5),
        "audio.a": ("audio", 3, 2, 5),
    }
    c = open_cache(make_synthetic_cache(tmp_path / "c.zarr", feature_sets=sets, missing_every={}))
    with pytest.raises(DataError, match=r"2 text feature sets, choose one with --text \(text.a, text.b\)"):
        FeatureData.for_training(c, {})
    with pytest.raises(DataError, match=r"no feature set 'text.c' .*text: text.a, text.b; audio: audio.a"):
        FeatureData.for_training(c, {"text": "text.c"})
    with pytest.raises(DataError, match="holds audio features, not text"):
        FeatureData.for_training(c, {"text": "audio.a"})
    data = FeatureData.for_training(c, {"text": "text.b", "audio": "none"})
    assert data.spec.feature_sets == {"text": "text.b"}


@pytest.mark.parametrize("scale", [1.0, 1e30, 3e38])
def test_statistics_and_standardisation_survive_extreme_scales(scale):
    from fuse.data.normalisation import GroupStats, _finish

    rng = np.random.default_rng(0)
    rows = np.clip(rng.normal(size=(500, 3)) * scale, -3.4e38, 3.4e38).astype(np.float32)
    stats = GroupStats(1, 3)
    for part in np.array_split(rows, 4):  # streamed in blocks
        stats.update(part, np.zeros(len(part), dtype=np.int64))
    expected = rows.astype(np.float64)
    np.testing.assert_allclose(stats.mean[0], expected.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats.std()[0], expected.std(0), rtol=1e-6)
    out = _finish(stats, ["<global>"], "train").standardise(rows, np.zeros(len(rows), dtype=np.int64))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(out.std(0), 1, atol=1e-4)


def test_future_context_rows_follow_the_dialogue_and_right_pad():
    keys = dialogue_keys({"dataset": np.array(["m"] * 5, dtype=object), "split": np.array(["train", "train", "train", "dev", "dev"], dtype=object), "dialogue_id": np.array(["d0", "d0", "d0", "d0", ""], dtype=object)})
    rows = future_context_rows(keys, np.array([2, 0, 1, 0, 0]), n_following=2)
    # train/d0 in turn order is rows 1, 2, 0; dev/d0 (same id, other split) and a dialogue-less row have none
    assert rows.tolist() == [[-1, -1], [2, 0], [0, -1], [-1, -1], [-1, -1]]


def test_batches_carry_the_following_turns(cache):
    data = _data(cache, context_turns=3, normalisation="global")
    assert data.spec.n_future_turns == 3  # default: as many following as preceding turns
    turns = cache.column("turn")
    dialogue = cache.column("dialogue_id")
    row = int(np.nonzero((dialogue == "dia0") & (turns == 1))[0][0])
    future = data.batch_for_rows(np.array([row])).context[future_key("text")]
    following = data.future_index[row]
    real = following[following >= 0]
    assert len(real) == 3 and (dialogue[real] == "dia0").all()
    assert turns[real].tolist() == [2, 3, 4]
    fs = data.feature_sets["text"]
    norm = data.normaliser.norms[fs.name]
    expected = ((_raw(fs, real[0]) - norm.mean[0]) / norm.std[0]).mean(0)
    np.testing.assert_allclose(future.values[0, 0].numpy(), expected, rtol=1e-4, atol=1e-5)
    # the last turn of a dialogue has no following turn: all masked
    last = int(np.nonzero(dialogue == "dia0")[0][np.argmax(turns[dialogue == "dia0"])])
    batch = data.batch_for_rows(np.array([row, last]))
    assert not batch.context[future_key("text")].mask[1].any()
    assert (batch.context[future_key("text")].values[1] == 0).all()
    # context_future_turns=0 switches them off; past context is unchanged
    past_only = _data(cache, context_turns=3, context_future_turns=0, normalisation="global")
    only = past_only.batch_for_rows(np.array([row, last]))
    assert future_key("text") not in only.context
    torch.testing.assert_close(only.context["text"].values, batch.context["text"].values)


def test_auto_normalisation_resolves_by_speaker_counts():
    from fuse.data.normalisation import AUTO_MIN_UTTERANCES_PER_SPEAKER as K, resolve_mode

    recurring = np.array(["a"] * K + ["b"] * K + ["c"])  # "c" only outside training
    train = np.arange(2 * K)
    assert resolve_mode("auto", recurring, train)[0] == "speaker"
    one_rare = np.array(["a"] * K + ["b"] * (K - 1))  # MELD-like: a speaker with few lines
    mode, note = resolve_mode("auto", one_rare, np.arange(len(one_rare)))
    assert mode == "global" and "1 of 2 training speakers" in note
    unnamed = np.array(["a"] * K + [""] * K)
    assert resolve_mode("auto", unnamed, np.arange(2 * K))[0] == "global"
    assert resolve_mode("global", recurring, train) == ("global", "as requested")


def test_auto_normalisation_is_stored_resolved(cache):
    data = FeatureData.for_training(cache, {}, normalisation="auto")
    counts = np.unique(data.speakers[data.splits.train], return_counts=True)[1]
    expected = "speaker" if counts.min() >= 20 else "global"
    assert data.normaliser.mode == data.spec.normalisation == expected
    assert data.summary()["normalisation_note"].startswith("auto:")
    with pytest.raises(DataError, match="not one of"):
        FeatureData.for_training(cache, {}, normalisation="per-speaker")


# -- the vectorised hot path against the simple per-utterance one -------------------------------
def test_coalesce_merges_touching_ranges_and_never_bridges_a_gap():
    from cache_schema.ragged import coalesce

    assert coalesce([0, 1, 2, 5, 6, 9]).tolist() == [[0, 3], [5, 7], [9, 10]]
    assert coalesce([]).shape == (0, 2)
    # ranges: empty ones dropped, touching ones merged, a gap (even of one frame) splits
    assert coalesce([0, 4, 4, 8, 12], [4, 4, 7, 12, 13]).tolist() == [[0, 7], [8, 13]]
    rng = np.random.default_rng(0)
    for _ in range(50):
        rows = np.sort(rng.choice(200, size=int(rng.integers(1, 120)), replace=False))
        runs = coalesce(rows)
        covered = np.concatenate([np.arange(a, b) for a, b in runs])
        assert covered.tolist() == rows.tolist()  # exactly the wanted rows, nothing between
        assert (runs[1:, 0] > runs[:-1, 1]).all()  # maximal: no two runs touch


def test_gather_padded_equals_padding_item_by_item():
    from cache_schema.ragged import gather_padded

    rng = np.random.default_rng(1)
    values = rng.normal(size=(300, 5)).astype(np.float16)
    starts = np.array([0, 40, 40, 100, 297])
    lengths = np.array([7, 0, 12, 30, 3])
    out, mask = gather_padded(values, starts, lengths, 20, np.float32)
    assert out.shape == (5, 20, 5) and out.dtype == np.float32
    for b, (s, n) in enumerate(zip(starts, lengths)):
        n = min(n, 20)  # longer items are cut at `width`
        assert mask[b].sum() == n and mask[b, :n].all()
        np.testing.assert_array_equal(out[b, :n], values[s : s + n].astype(np.float32))
        assert not out[b, n:].any()
    assert gather_padded(values, starts[:0], lengths[:0])[0].shape == (0, 0, 5)


def test_apply_padded_is_bitwise_the_per_utterance_standardisation(cache):
    from cache_schema.ragged import gather_padded

    data = _data(cache, normalisation="speaker")
    fs = data.feature_sets["audio"]
    norm = data.normaliser.norms[fs.name]
    rows = np.arange(0, data.n, 3)
    rows = rows[fs.present[rows]]
    groups = data._group_rows["audio"][rows]
    assert len(set(groups.tolist())) > 2  # several speakers' statistics in one batch
    values = np.asarray(fs.values[...])
    lengths = np.diff(fs.offsets)[rows]
    padded, mask = gather_padded(values, fs.offsets[rows], lengths, None, np.float32)
    out = data.normaliser.apply_padded(fs.name, torch.from_numpy(padded), torch.from_numpy(mask), groups).numpy()
    for b, row in enumerate(rows):
        expected = norm.standardise(fs.get(row), groups[b])
        np.testing.assert_array_equal(out[b, : lengths[b]], expected)
        assert not out[b, lengths[b] :].any() and not np.signbit(out[b, lengths[b] :]).any()  # +0.0, not -0.0


def _simple_batch_values(data, fs, modality, rows):
    """The per-utterance reference: read, truncate, standardise, pad one utterance at a time."""
    norm = data.normaliser.norms.get(fs.name)
    items = []
    for row in rows:
        x = np.asarray(fs.get(row))[: data.frame_limit[modality]] if fs.present[row] else np.zeros((0, fs.dim), np.float16)
        x = x.astype(np.float32) if norm is None else norm.standardise(x, data._group_rows[modality][row])
        items.append(x)
    width = max(1, max(len(x) for x in items))
    out = np.zeros((len(rows), width, fs.dim), dtype=np.float32)
    for b, x in enumerate(items):
        out[b, : len(x)] = x
    return out


@pytest.mark.parametrize("in_memory", [False, True])
def test_batches_equal_the_per_utterance_path(cache, in_memory):
    data = _data(cache, normalisation="speaker", max_len={"audio": 15}, block_rows=90, in_memory=in_memory)
    rows = data.indices("test")
    for batch in data.batches(rows, 5, shuffle=True, seed=2, epoch=1):
        index = batch.index.numpy()
        for modality, fs in data.feature_sets.items():
            expected = _simple_batch_values(data, fs, modality, index)
            np.testing.assert_array_equal(batch.modalities[modality].values.numpy(), expected)
            assert batch.modalities[modality].present.numpy().tolist() == fs.present[index].tolist()


def test_streaming_reads_only_the_wanted_frames(cache, monkeypatch):
    """Wanted rows interleaved with unwanted ones (as a fold or carved dev set is): every read is
    a run of wanted rows' kept frames, never the rows between them nor truncated tails."""
    data = _data(cache, max_len={"audio": 15}, block_rows=200)
    train = data.indices("train")
    rows = train[train % 3 != 2]  # pairs of neighbours, then a row of another split/fold
    reads = []
    for fs in data.feature_sets.values():
        original = fs.block_rows
        monkeypatch.setattr(fs, "block_rows", lambda lo, hi, fs=fs, original=original: reads.append((fs.name, lo, hi)) or original(lo, hi))
    batches = list(data.batches(rows, 4, shuffle=True, seed=0))
    assert sum(b.size for b in batches) == len(rows)
    for modality, fs in data.feature_sets.items():
        kept = data._kept_lengths(modality, rows)
        wanted = np.concatenate([np.arange(fs.offsets[r], fs.offsets[r] + n) for r, n in zip(rows, kept)])
        got = np.concatenate([np.arange(lo, hi) for name, lo, hi in reads if name == fs.name])
        assert sorted(got.tolist()) == wanted.tolist()  # each wanted frame once, nothing else
        runs = [(lo, hi) for name, lo, hi in reads if name == fs.name]
        if modality == "text":  # untruncated: neighbours are read together
            assert len(runs) < len(rows)


def test_each_rank_reads_and_yields_only_its_part_of_each_batch(cache):
    data = _data(cache, normalisation="global", block_rows=120)
    rows = data.indices("train")
    kwargs = dict(shuffle=True, seed=4, epoch=2)
    whole = list(data.batches(rows, 7, **kwargs))
    for rank in range(3):
        plan = data.plan(rows, 7, shard=(rank, 3), **kwargs)
        mine = np.concatenate([np.concatenate(p.batches) for p in plan])
        assert sorted(mine.tolist()) == sorted(np.concatenate([p.rows for p in plan]).tolist())  # reads only its rows
        parts = list(data.batches(rows, 7, shard=(rank, 3), **kwargs))
        assert len(parts) == len(whole)
        for full, part in zip(whole, parts):
            assert part.index.tolist() == full.index[rank::3].tolist()
            for m in full.modalities:
                width = part.modalities[m].values.shape[1]
                assert torch.equal(part.modalities[m].values, full.modalities[m].values[rank::3, :width])


def test_read_ahead_keeps_order_raises_where_it_failed_and_stops_when_closed():
    import threading

    from fuse.data.readahead import read_ahead

    assert list(read_ahead(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("bad block")

    got = []
    with pytest.raises(ValueError, match="bad block"):
        for x in read_ahead(failing()):
            got.append(x)
    assert got == [1]
    produced = []

    def endless():
        for i in range(10**9):
            produced.append(i)
            yield i

    stream = read_ahead(endless(), depth=2)
    assert next(stream) == 0
    stream.close()  # a consumer's break: the producer stops
    assert len(produced) < 10 and not any(t.name == "fuse-read-ahead" for t in threading.enumerate())


def test_a_loop_left_early_stops_both_loader_threads(cache):
    import threading

    data = _data(cache, block_rows=60)
    data.prefetch = True
    batches = data.batches(data.indices("train"), 4, shuffle=True)
    assert next(batches).size >= 1
    names = {t.name for t in threading.enumerate()}
    assert {"fuse-read-ahead", "fuse-read-pools"} <= names  # assembling ahead, and reading the next pool
    batches.close()
    assert not {"fuse-read-ahead", "fuse-read-pools"} & {t.name for t in threading.enumerate()}
