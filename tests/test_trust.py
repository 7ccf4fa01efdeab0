"""Runs you can trust (issue 13, stage 1): provenance fingerprints, media identity in the
workflow, removed utterances, label case. Each test injects the fault and asserts the outcome."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cache_schema import SCHEMA_MINOR, compute_fingerprint, diff_params, open_cache, validate, write_feature_set, UtteranceTable, create_cache
from extract.config import feature_specs, load_config
from extract.run import run_merge, run_part, run_table
from tests.test_workflow import (
    audio_config,
    bad_media_corpus,
    jobs_run,
    run_snakemake,
    text_config,
    text_rows,
    tiny_bert,  # noqa: F401 - fixture
    write_config,
    write_manifest,
    write_wav,
)


def extract_by_hand(config: dict) -> None:
    """table -> part per shard -> merge, in-process (no Snakemake)."""
    config = load_config(config)
    work = config["work_dir"]
    index_file = f"{work}/index.json"
    index = run_table(config["corpus"], config["cache"], work, config["shard_size"], index_file)
    for spec in feature_specs(config).values():
        for entry in index["shards"]:
            run_part(spec.value_config(), spec.runtime().as_dict(), f"{work}/shards/shard-{entry['name']}.json",
                     f"{work}/parts/{spec.name}/shard-{entry['name']}.zarr")
        run_merge(spec.value_config(), config["cache"], index_file, work, "none", f"{work}/merged-{spec.name}.json")


# ------------------------------------------------------------------------------ fingerprint


def test_diff_params_names_each_difference():
    a = {"encoder": {"layers": [-1], "max_length": 512}, "dtype": "float16", "code": {"x.py": "aa"}}
    b = {"encoder": {"layers": [-2], "max_length": 512, "new": 1}, "dtype": "float16", "code": {"x.py": "bb"}}
    assert diff_params(a, b) == ["code.x.py: aa -> bb", "encoder.layers: [-1] -> [-2]", "encoder.new: (absent) -> 1"]
    assert diff_params(a, json.loads(json.dumps(a))) == []
    assert diff_params(None, a) == ["fingerprint parameters unknown (expected side written before cache schema 1.1)"]
    assert compute_fingerprint(a) == compute_fingerprint(json.loads(json.dumps(a))) != compute_fingerprint(b)
    assert compute_fingerprint(a).startswith("sha256:") and len(compute_fingerprint(a)) == 7 + 64


def test_changed_layers_change_the_fingerprint_and_are_named(tmp_path, tiny_bert):
    """Reproduction (1): the same feature-set name re-extracted with layers [-2] instead of [-1]."""
    manifest = write_manifest(tmp_path / "m.csv", text_rows(3))
    config = text_config(tmp_path, manifest, tiny_bert, shard_size=2)
    extract_by_hand(config)
    first = open_cache(tmp_path / "feats.zarr")["text.tiny-bert"]
    fingerprint, params = first.fingerprint, first.fingerprint_params
    assert fingerprint == compute_fingerprint(params) and fingerprint.startswith("sha256:")
    assert params["encoder"]["layers"] == [-1] and params["encoder"]["max_length"] == 64
    assert params["encoder"]["layer_pooling"] == "concat"  # a default, recorded all the same
    assert set(params["code"]) >= {"extract/encoders/text_hf.py", "extract/encoders/base.py"}
    assert params["utterances"]["n"] == 3 and params["weights_sha256"] == first.attrs["weights_sha256"]
    assert len(params["checkpoint_files_sha256"]) == 64  # the tokenizer/config files of the local checkpoint

    extract_by_hand(text_config(tmp_path, manifest, tiny_bert, shard_size=2,
                                feature={"encoder": {"kind": "hf-text", "checkpoint": str(tiny_bert), "max_length": 64, "layers": [-2]}}))
    second = open_cache(tmp_path / "feats.zarr")["text.tiny-bert"]
    assert second.fingerprint != fingerprint
    assert diff_params(params, second.fingerprint_params) == ["encoder.layers: [-1] -> [-2]", "layers: [-1] -> [-2]"]
    validate(tmp_path / "feats.zarr")  # the stored hash matches its parameters


def test_old_feature_sets_have_unknown_fingerprints_and_edited_ones_fail_validation(tmp_path):
    import zarr

    path = tmp_path / "c.zarr"
    create_cache(path, UtteranceTable.from_records([{"id": "a", "text": "x"}]))
    write_feature_set(path, "audio.a", [np.ones((2, 3), np.float32)], {"modality": "audio"}, dtype="float32")
    cache = open_cache(path)
    assert cache.schema_version == 1 and cache.schema_minor == SCHEMA_MINOR >= 1  # written at the current layout (1.2)
    assert cache["audio.a"].fingerprint is None and cache["audio.a"].fingerprint_params is None  # unknown, not an error
    group = zarr.open_group(str(path / "features" / "audio.a"), mode="a")
    group.attrs.update({"fingerprint_params": {"layers": [-1]}, "fingerprint": compute_fingerprint({"layers": [-2]})})
    with pytest.raises(Exception, match="not the hash of fingerprint_params"):
        validate(path)


# ------------------------------------------------------------------------------ media identity


@pytest.mark.slow
def test_a_replaced_or_added_clip_reextracts_only_its_shard(tmp_path):
    """Reproduction (4): fixing a failed clip and re-running used to say "Nothing to be done"."""
    manifest, files = bad_media_corpus(tmp_path)  # good0, corrupt | missing, good1 | empty  (shard_size 2)
    config = write_config(tmp_path / "c.yaml", {**audio_config(tmp_path, manifest, strict=False), "shard_size": 2})
    run_snakemake(tmp_path, config)
    before = open_cache(tmp_path / "feats.zarr")["audio.egemaps-lld"]
    assert {f["utterance_id"] for f in before.failures()} == {"corrupt", "missing", "empty"}
    fingerprint = before.fingerprint

    write_wav(files["corrupt"], 1.2, 5)  # the failed clip replaced in place by a good file
    write_wav(files["missing"], 0.8, 6)  # and the missing one added
    second = run_snakemake(tmp_path, config)
    assert jobs_run(second, "part") == ["feature=audio.egemaps-lld, group=00000"]  # the job of the three shards...
    report = json.loads((tmp_path / "work" / "parts" / "audio.egemaps-lld" / "job-00000.json").read_text())
    assert [e["extracted"] for e in report["parts"]] == [True, True, False]  # ...re-extracts only shards 0 and 1
    after = validate(tmp_path / "feats.zarr")["audio.egemaps-lld"]
    assert after.present.tolist() == [True, True, True, True, False]
    assert [f["utterance_id"] for f in after.failures()] == ["empty"]  # the failure records were replaced
    assert after.fingerprint != fingerprint
    assert [line.split(":")[0] for line in diff_params(before.fingerprint_params, after.fingerprint_params)] == ["utterances.sha256"]

    third = run_snakemake(tmp_path, config)
    assert "Nothing to be done" in third.stdout + third.stderr


# ------------------------------------------------------------------------------ corpus changes


def test_utterances_removed_from_the_manifest_are_reported(tmp_path, tiny_bert, caplog):
    """Reproduction (9a): ids in the cache that the corpus no longer has."""
    manifest = write_manifest(tmp_path / "m.csv", text_rows(4))
    config = load_config(text_config(tmp_path, manifest, tiny_bert))
    run_table(config["corpus"], config["cache"], config["work_dir"], 2, str(tmp_path / "index.json"))
    write_manifest(manifest, [r for r in text_rows(4) if r["id"] not in ("u0001", "u0002")])
    with caplog.at_level("WARNING", logger="extract.run"):
        index = run_table(config["corpus"], config["cache"], config["work_dir"], 2, str(tmp_path / "index.json"))
    assert index["removed_from_corpus"] == {"n": 2, "first": ["u0001", "u0002"]}
    assert "2 utterance(s) in the cache are no longer in the corpus (u0001, u0002); they stay in the cache" in caplog.text
    report = json.loads((tmp_path / "work" / "removed_utterances.json").read_text())
    assert report["ids"] == ["u0001", "u0002"]
    assert open_cache(config["cache"]).n_utterances == 4  # kept, as said


# ------------------------------------------------------------------------------ video timestamps


def write_vfr_video(path, width: int = 64, height: int = 48) -> dict:
    """25 fps for 5 s (frames at 0, 0.04, ... 4.96 s), then 1 fps (frames at 6, 7, 8, 9 s); mean
    grey level of each frame by its presentation time."""
    import fractions

    import av

    times = [k / 25 for k in range(125)] + [6.0, 7.0, 8.0, 9.0]
    levels = {}
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = stream.time_base = fractions.Fraction(1, 1000)
        for i, t in enumerate(times):
            level = 2 * i if i < 125 else 30 + 60 * (i - 125)  # the slow frames: 30, 90, 150, 210
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), level, np.uint8), format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), fractions.Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
            levels[round(t, 3)] = level
        for packet in stream.encode(None):
            container.mux(packet)
    return levels


@pytest.mark.parametrize("reader", ["auto", "opencv"])
def test_variable_frame_rate_video_gives_the_frames_showing_at_the_sampled_times(tmp_path, reader):
    """Reproduction (6): frame index = time x average fps picked 0.8-1.7 s for 1.25-2.75 s and
    refused 6.5-9.5 s as past the end of an "8.120 s" file."""
    from extract.media import load_video_frames

    levels = write_vfr_video(tmp_path / "vfr.mp4")
    frames, info = load_video_frames(tmp_path / "vfr.mp4", start=1.25, end=2.75, normalize="none", reader=reader, return_info=True)
    expected = [np.floor(t * 25 + 1e-6) / 25 for t in info["timestamps"]]  # the 25 fps frame showing at t
    np.testing.assert_allclose(info["frame_times"], expected, atol=1e-4)
    assert info["reader"] == ("decord" if reader == "auto" else "opencv")
    np.testing.assert_allclose(frames.mean(axis=(1, 2, 3)) * 255, [levels[round(t, 3)] for t in expected], atol=2.5)

    frames, info = load_video_frames(tmp_path / "vfr.mp4", start=6.5, end=9.5, normalize="none", reader=reader, return_info=True)
    assert [round(t, 3) for t in info["frame_times"]] == [6.0, 6.0, 7.0, 7.0, 7.0, 8.0, 8.0, 8.0]
    np.testing.assert_allclose(frames.mean(axis=(1, 2, 3)) * 255, [30, 30, 90, 90, 90, 150, 150, 150], atol=2.5)


def test_decord_failure_on_a_16_px_wide_video_falls_back_to_opencv(tmp_path, caplog):
    from extract.media import load_video_frames

    levels = write_vfr_video(tmp_path / "narrow.mp4", width=16, height=16)
    with caplog.at_level("WARNING"):
        frames, info = load_video_frames(tmp_path / "narrow.mp4", start=1.0, end=2.0, size=32, normalize="none", return_info=True)
    assert info["reader"] == "opencv" and info["decord_error"]  # decord opens it, then fails to copy the frames
    assert "reading it with OpenCV" in caplog.text
    expected = [np.floor(t * 25 + 1e-6) / 25 for t in info["timestamps"]]
    np.testing.assert_allclose(info["frame_times"], expected, atol=1e-4)
    np.testing.assert_allclose(frames.mean(axis=(1, 2, 3)) * 255, [levels[round(t, 3)] for t in expected], atol=3)


# ------------------------------------------------------------------------------ label case


def test_label_case_is_folded_the_same_way_in_every_adapter(tmp_path):
    """Reproduction (9b): a manifest made `Joy` and `joy` two classes; MELD folded case."""
    from extract.corpora import CorpusError, load_audio_folder, load_manifest, load_meld

    manifest = write_manifest(tmp_path / "m.csv", [{"id": "a", "text": "x", "label": "Joy"}, {"id": "b", "text": "y", "label": "joy "},
                                                   {"id": "c", "text": "z", "label": "ANGER"}])
    table = load_manifest(manifest)
    assert table.label_names == ["anger", "joy"] and table.columns["label"].tolist() == [1, 1, 0]
    assert load_manifest(manifest, label_names=["Joy", "Anger"]).columns["label"].tolist() == [0, 0, 1]
    with pytest.raises(CorpusError, match=r"label names \['JOY', 'joy'\] are the same class once case is folded"):
        load_manifest(manifest, label_names=["joy", "JOY", "anger"])
    multi = write_manifest(tmp_path / "multi.csv", [{"id": "a", "labels": "Joy;Anger"}, {"id": "b", "labels": "joy"}])
    table = load_manifest(multi)
    assert table.labels_multi_names == ["anger", "joy"] and table.columns["labels_multi"].tolist() == [[1, 1], [0, 1]]

    folder = tmp_path / "emo"
    folder.mkdir()
    for stem in ("01a01Wa", "01a01Fb"):
        write_wav(folder / f"{stem}.wav", 0.1, 0)
    table = load_audio_folder(str(folder), preset="emodb", label_map={"W": "Anger", "F": "HAPPINESS"})
    assert table.label_names == ["anger", "happiness"] and sorted(table.columns["label"].tolist()) == [0, 1]

    meld = tmp_path / "meld"
    meld.mkdir()
    header = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"
    (meld / "train_sent_emo.csv").write_text(header + "1,Hi,A,Joy,positive,0,0,1,1,\"00:00:01,000\",\"00:00:02,000\"\n"
                                             "2,Yo,B,joy,positive,0,1,1,1,\"00:00:02,000\",\"00:00:03,000\"\n")
    table = load_meld(str(meld), splits=["train"])
    assert table.columns["label"].tolist() == [table.label_names.index("joy")] * 2
