"""The recorder's compiled kernels are cached in gradscope's cache folder, not torch's /tmp default."""
import os

from gradscope.record.accumulate import compile_cache_dir


def test_compile_cache_goes_to_gradscope_cache_folder_unless_set(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("GRADSCOPE_CACHE", str(tmp_path / "gs"))
    assert compile_cache_dir() == str(tmp_path / "gs" / "inductor")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "gs" / "inductor")  # what Inductor reads
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert compile_cache_dir() == str(tmp_path / "mine")  # the user's choice wins
