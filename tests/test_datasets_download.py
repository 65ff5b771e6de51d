"""Downloads, offline: a fake URL opener serves small MNIST files written in the real formats (conftest's
`small_mnist`, checked against their own MD5s) or damaged copies; file:// URLs use the real opener."""

import gzip
import io
from urllib.error import URLError

import pytest
import torch
from helpers_smallnorb import file_name, write_split

from capsules.datasets import MNIST, DatasetDownloadError, DatasetFileError, SmallNORB
from capsules.datasets import download as download_module
from capsules.datasets import smallnorb as smallnorb_module
from capsules.datasets.files import md5_hex
from capsules.datasets.idx_format import read_idx

TEST_FILES = ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


class FakeOpener:
    """Stands in for urllib's urlopen: serves files of `served` by name; `fail` maps a URL prefix to an error."""

    def __init__(
        self, served: dict[str, bytes], fail: dict[str, Exception] | None = None, cut_after: int | None = None
    ) -> None:
        self.served, self.fail, self.cut_after = served, fail or {}, cut_after
        self.requests: list[tuple[str, float]] = []

    def __call__(self, url: str, timeout: float) -> io.BytesIO:
        self.requests.append((url, timeout))
        for prefix, error in self.fail.items():
            if url.startswith(prefix):
                raise error
        data = self.served[url.rsplit("/", 1)[1]]
        return _Interrupted(data, self.cut_after) if self.cut_after is not None else io.BytesIO(data)


class _Interrupted(io.BytesIO):
    """A response that delivers `cut_after` bytes, then loses the connection."""

    def __init__(self, data: bytes, cut_after: int):
        super().__init__(data[:cut_after])

    def read(self, size: int = -1) -> bytes:
        chunk = super().read(size)
        if not chunk:
            raise ConnectionResetError("connection lost mid-download")
        return chunk


def _test_files(directory) -> dict[str, bytes]:
    """The t10k files of `directory`, by name, as a mirror would serve them."""
    return {name: (directory / name).read_bytes() for name in TEST_FILES}


def test_download_writes_verified_files_atomically(tmp_path, monkeypatch, small_mnist):
    served = _test_files(small_mnist)
    opener = FakeOpener(served)
    monkeypatch.setattr(download_module, "urlopen", opener)
    root = tmp_path / "new" / "mnist"
    dataset = MNIST(root, train=False, mirrors=["https://mirror.test/mnist/"], timeout=7.0)
    assert sorted(p.name for p in root.iterdir()) == TEST_FILES  # no temporary files left behind
    assert all((root / name).read_bytes() == served[name] for name in TEST_FILES)
    assert sorted(opener.requests) == [(f"https://mirror.test/mnist/{name}", 7.0) for name in TEST_FILES]
    assert dataset.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    MNIST(root, train=False)  # present now: no second download
    assert len(opener.requests) == 2


def test_download_falls_back_to_the_next_mirror(tmp_path, monkeypatch, small_mnist):
    opener = FakeOpener(_test_files(small_mnist), fail={"https://down.test/": URLError("Name or service not known")})
    monkeypatch.setattr(download_module, "urlopen", opener)
    MNIST(tmp_path, train=False, mirrors=["https://down.test/", "https://up.test/"])
    assert [url for url, _ in opener.requests].count("https://up.test/t10k-images-idx3-ubyte.gz") == 1


def test_file_urls_use_the_real_opener(tmp_path, small_mnist):
    dataset = MNIST(tmp_path, train=False, mirrors=[small_mnist.as_uri() + "/"])
    assert len(dataset) == len(read_idx(small_mnist / "t10k-labels-idx1-ubyte.gz"))
    assert sorted(p.name for p in tmp_path.iterdir()) == TEST_FILES


def test_no_network_names_the_files_and_the_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(download_module, "urlopen", FakeOpener({}, fail={"": URLError("no network")}))
    with pytest.raises(DatasetDownloadError) as caught:
        MNIST(tmp_path / "mnist", train=False)
    message = str(caught.value)
    assert "no network" in message and "No network?" in message and str(tmp_path / "mnist") in message
    assert "t10k-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert list((tmp_path / "mnist").iterdir()) == []


def test_interrupted_download_leaves_no_file(tmp_path, monkeypatch, small_mnist):
    served = _test_files(small_mnist)
    assert len(served["t10k-images-idx3-ubyte.gz"]) > 5000  # cut mid-file
    monkeypatch.setattr(download_module, "urlopen", FakeOpener(served, cut_after=5000))
    with pytest.raises(DatasetDownloadError, match="connection lost"):
        MNIST(tmp_path, train=False)
    assert list(tmp_path.iterdir()) == []


def test_checksum_mismatch_on_download_keeps_nothing(tmp_path, monkeypatch, small_mnist):
    served = _test_files(small_mnist)
    labels = bytearray(gzip.decompress(served["t10k-labels-idx1-ubyte.gz"]))
    labels[8] ^= 1
    served["t10k-labels-idx1-ubyte.gz"] = gzip.compress(bytes(labels))
    monkeypatch.setattr(download_module, "urlopen", FakeOpener(served))
    with pytest.raises(DatasetFileError, match="checksum mismatch") as caught:
        MNIST(tmp_path, train=False, mirrors=["https://a.test/", "https://b.test/"])
    assert "https://a.test/t10k-labels" in str(caught.value) and "https://b.test/t10k-labels" in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t10k-images-idx3-ubyte.gz"]


def test_smallnorb_download_checks_the_gz_md5(tmp_path, monkeypatch):
    split = write_split(tmp_path / "source", train=False, pairs=20, gzip=True)
    served = {path.name: path.read_bytes() for path in split.paths.values()}
    monkeypatch.setattr(download_module, "urlopen", FakeOpener(served))
    monkeypatch.setattr(smallnorb_module, "SMALLNORB_MD5", {name[:-3]: md5_hex(data) for name, data in served.items()})
    dataset = SmallNORB(tmp_path / "norb", train=False)
    assert len(dataset) == 20 and torch.equal(dataset.labels, torch.from_numpy(split.cat).long())
    assert sorted(p.name for p in (tmp_path / "norb").iterdir()) == sorted(served)

    bad = dict(served, **{file_name(False, "cat") + ".gz": served[file_name(False, "info") + ".gz"]})
    monkeypatch.setattr(download_module, "urlopen", FakeOpener(bad))
    with pytest.raises(DatasetFileError, match="checksum mismatch"):
        SmallNORB(tmp_path / "norb2", train=False)
    assert file_name(False, "cat") + ".gz" not in [p.name for p in (tmp_path / "norb2").iterdir()]
