"""The demo's cache: keyed by parameters, reused, never a half-written folder."""

from __future__ import annotations

import json

from rtrecon.demo.cache import cache_key, cache_root, cached_dataset


def test_keys_follow_the_parameters():
    assert cache_key(a=1, b="x") == cache_key(b="x", a=1)
    assert cache_key(a=1) != cache_key(a=2)


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RTRECON_CACHE", str(tmp_path))
    assert cache_root() == tmp_path


def test_the_demo_dataset_is_reused_and_partial_folders_are_ignored(demo_run):
    (demo_run.cache / "synthetic" / "0000.partial").mkdir()
    folder, hit = cached_dataset(2, 2, 1, "small", 0, root=demo_run.cache, progress=False)
    assert hit and folder == demo_run.dataset
    assert (folder / "rtrecon_cache.json").is_file()
    decoders = list((demo_run.cache / "decoders").iterdir())
    assert len(decoders) == 1 and (decoders[0] / "finetune" / "last.pth").is_file()


def test_a_cache_entry_appears_whole_with_its_manifest(tmp_path):
    from rtrecon.demo.cache import _publish

    partial = tmp_path / "abc.partial"
    (partial / "finetune").mkdir(parents=True)
    (partial / "finetune" / "last.pth").write_bytes(b"weights")
    _publish(partial, tmp_path / "abc", {"kind": "decoder"})
    assert not partial.exists() and (tmp_path / "abc" / "finetune" / "last.pth").read_bytes() == b"weights"
    assert json.loads((tmp_path / "abc" / "rtrecon_cache.json").read_text()) == {"kind": "decoder"}
