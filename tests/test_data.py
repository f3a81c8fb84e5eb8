"""frernn.data: real-format files through torchvision's readers, verification, import, batches."""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.server
import json
import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import FAKE_TEST, FAKE_TRAIN, fake_images, write_fake_dataset
from torchvision import datasets as tvd

from frernn import cli, data
from frernn.data import catalog, download
from frernn.errors import FrernnError

pytestmark = pytest.mark.usefixtures("own_cache_dir")
DEBIAN = Path("/usr/share/datasets/fashion-mnist")
FOLDERS = {
    "mnist": "MNIST/raw",
    "fashion_mnist": "FashionMNIST/raw",
    "cifar10": "cifar-10-batches-py",
}


def _tree(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*")) if root.exists() else []


def _expected(name: str, n: int, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``fake_images`` wrote, as the uint8 (N, C, H, W) images and int64 labels."""
    images, labels = fake_images(name, n, train)
    x = torch.from_numpy(images)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return x, torch.from_numpy(labels).long()


@pytest.fixture(scope="module")
def debian_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir into which ensure() imported Debian's Fashion-MNIST by itself."""
    data_dir = tmp_path_factory.mktemp("debian") / "data"
    data.ensure("fashion_mnist", data_dir, download=False)
    return data_dir


def test_dataset_info_and_unknown_dataset(tmp_path: Path) -> None:
    assert data.dataset_info("mnist") == data.DatasetInfo("mnist", (1, 28, 28), 10)
    assert data.dataset_info("cifar10").shape == (3, 32, 32)
    calls = (
        lambda: data.dataset_info("imagenet"),
        lambda: data.load("imagenet", tmp_path),
        lambda: data.ensure("imagenet", tmp_path),
        lambda: data.import_dir("imagenet", tmp_path, tmp_path / "data"),
    )
    for call in calls:
        with pytest.raises(FrernnError, match=r"unknown dataset 'imagenet' \(choose from mnist, "):
            call()
    assert _tree(tmp_path) == []


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FRERNN_DATA_DIR", raising=False)
    assert data.default_data_dir() == Path("data")
    monkeypatch.setenv("FRERNN_DATA_DIR", "/srv/datasets")
    assert data.default_data_dir() == Path("/srv/datasets")


@pytest.mark.parametrize("name", data.DATASET_NAMES)
def test_load_returns_the_written_images(fake_data_dir: Path, name: str) -> None:
    loaded = data.load(name, fake_data_dir)
    assert loaded.info == data.dataset_info(name)
    splits = ((loaded.train_x, loaded.train_y, True), (loaded.test_x, loaded.test_y, False))
    for x, y, train in splits:
        want_x, want_y = _expected(name, FAKE_TRAIN if train else FAKE_TEST, train)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape == want_x.shape and float(x.min()) >= 0 and float(x.max()) <= 1
        assert torch.equal((x * 255).round().to(torch.uint8), want_x)
        assert torch.equal(y, want_y)


@pytest.mark.parametrize("name,reader", [("mnist", tvd.MNIST), ("fashion_mnist", tvd.FashionMNIST)])
def test_data_dir_is_torchvisions_own_layout(fake_data_dir: Path, name: str, reader: type) -> None:
    direct = reader(root=fake_data_dir, train=False, download=False)
    loaded = data.load(name, fake_data_dir)
    assert torch.equal(direct.data.unsqueeze(1), (loaded.test_x * 255).round().to(torch.uint8))


def test_normalize_is_cifar10_only(fake_data_dir: Path) -> None:
    raw = data.load("cifar10", fake_data_dir)
    norm = data.load("cifar10", fake_data_dir, normalize=True)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = 3 * torch.tensor([0.2023, 0.1994, 0.2010]).view(1, 3, 1, 1)
    torch.testing.assert_close(norm.train_x, (raw.train_x - mean) / std)
    with pytest.raises(FrernnError, match="normalize applies to cifar10 only"):
        data.load("mnist", fake_data_dir, normalize=True)


def test_subsets_are_deterministic_and_seed_independent(fake_data_dir: Path) -> None:
    full = data.load("mnist", fake_data_dir)
    torch.manual_seed(1)
    a = data.load("mnist", fake_data_dir, train_subset=100, test_subset=50)
    torch.manual_seed(2)
    b = data.load("mnist", fake_data_dir, train_subset=100, test_subset=50)
    assert (len(a.train_x), len(a.test_x)) == (100, 50)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, full.train_x[:100])
    rows, pool = a.train_x.flatten(1), full.train_x.flatten(1)
    assert (rows[:, None] == pool[None]).all(-1).any(1).all()
    assert torch.equal(data.load("mnist", fake_data_dir, train_subset=200).train_x[:100], a.train_x)
    assert len(data.load("mnist", fake_data_dir, train_subset=10**6).train_x) == FAKE_TRAIN
    with pytest.raises(FrernnError, match="train_subset must be a positive number"):
        data.load("mnist", fake_data_dir, train_subset=0)


def test_batches_reshuffle_each_epoch_deterministically() -> None:
    x, y = torch.arange(10.0).view(10, 1, 1, 1), torch.arange(10)

    def epochs(seed: int, count: int) -> list[list[list[int]]]:
        generator = torch.Generator().manual_seed(seed)
        return [[by.tolist() for _, by in data.batches(x, y, 4, generator)] for _ in range(count)]

    first = epochs(0, 3)
    assert first == epochs(0, 3)
    assert first != epochs(1, 3)
    assert first[0] != first[1] != first[2]
    assert [len(batch) for batch in first[0]] == [4, 4, 2]
    assert all(sorted(sum(epoch, [])) == list(range(10)) for epoch in first)
    for bx, by in data.batches(x, y, 3, torch.Generator().manual_seed(0)):
        assert torch.equal(bx.flatten().long(), by)
    with pytest.raises(FrernnError, match="batch size must be positive"):
        data.batches(x, y, 0, torch.Generator())


@pytest.mark.parametrize(
    "name,compressed",
    [
        ("mnist", True),
        ("mnist", False),
        ("fashion_mnist", True),
        ("cifar10", True),
        ("cifar10", False),
    ],
)
def test_offline_import_of_gz_and_raw_files(tmp_path: Path, name: str, compressed: bool) -> None:
    checksums = write_fake_dataset(name, tmp_path / "src", compressed=compressed)
    data.import_dir(name, tmp_path / "src", tmp_path / "data", checksums=checksums)
    manifest = json.loads((tmp_path / "data" / FOLDERS[name] / data.MANIFEST).read_text())
    assert manifest["md5"] == checksums
    loaded = data.load(name, tmp_path / "data")
    want_x, want_y = _expected(name, FAKE_TEST, train=False)
    assert torch.equal(loaded.test_y, want_y)
    assert torch.equal((loaded.test_x * 255).round().to(torch.uint8), want_x)
    assert [p.name for p in (tmp_path / "data").iterdir()] == [FOLDERS[name].split("/")[0]]


def test_import_checks_the_real_checksum_table(tmp_path: Path) -> None:
    write_fake_dataset("mnist", tmp_path / "src")
    message = r"train-images-idx3-ubyte\.gz: checksum mismatch for mnist .* expected 6bbc9ace"
    with pytest.raises(FrernnError, match=message):
        data.import_dir("mnist", tmp_path / "src", tmp_path / "data")
    assert _tree(tmp_path / "data") == []


def test_checksum_mismatch_leaves_an_existing_install_intact(fake_data_dir: Path, tmp_path: Path):
    before = data.load("fashion_mnist", fake_data_dir)
    checksums = write_fake_dataset("fashion_mnist", tmp_path / "src", seed=1)
    wrong = {**checksums, "t10k-labels-idx1-ubyte": "0" * 32}
    with pytest.raises(FrernnError, match=r"t10k-labels-idx1-ubyte\.gz: checksum mismatch .*0{32}"):
        data.import_dir("fashion_mnist", tmp_path / "src", fake_data_dir, checksums=wrong)
    after = data.load("fashion_mnist", fake_data_dir)
    assert torch.equal(before.train_x, after.train_x)
    assert not [p for p in fake_data_dir.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("damage", ["truncated", "garbled", "not gzip"])
def test_corrupt_or_truncated_gz_is_rejected(tmp_path: Path, damage: str) -> None:
    checksums = write_fake_dataset("mnist", tmp_path / "src")
    victim = tmp_path / "src" / "t10k-images-idx3-ubyte.gz"
    content = victim.read_bytes()
    middle = len(content) // 2
    victim.write_bytes(
        {
            "truncated": content[:middle],
            "garbled": content[:middle] + bytes(b ^ 0x5A for b in content[middle:]),
            "not gzip": b"<html>404 not found</html>",
        }[damage]
    )
    with pytest.raises(FrernnError, match=rf"^{re.escape(str(victim))}: corrupt or truncated \("):
        data.import_dir("mnist", tmp_path / "src", tmp_path / "data", checksums=checksums)
    assert _tree(tmp_path / "data") == []


def test_truncated_raw_file_and_tarball_are_rejected(tmp_path: Path) -> None:
    checksums = write_fake_dataset("mnist", tmp_path / "raw", compressed=False)
    victim = tmp_path / "raw" / "train-labels-idx1-ubyte"
    victim.write_bytes(victim.read_bytes()[:-7])
    with pytest.raises(FrernnError, match=rf"^{re.escape(str(victim))}: checksum mismatch"):
        data.import_dir("mnist", tmp_path / "raw", tmp_path / "data", checksums=checksums)
    checksums = write_fake_dataset("cifar10", tmp_path / "tar")
    tarball = tmp_path / "tar" / "cifar-10-python.tar.gz"
    tarball.write_bytes(tarball.read_bytes()[:-1000])
    with pytest.raises(FrernnError, match=rf"^{re.escape(str(tarball))}: corrupt or truncated"):
        data.import_dir("cifar10", tmp_path / "tar", tmp_path / "data", checksums=checksums)
    assert _tree(tmp_path / "data") == []


def test_wrong_or_incomplete_source_directory(tmp_path: Path) -> None:
    with pytest.raises(FrernnError, match=r"/nowhere: no such directory \(expected the original"):
        data.import_dir("mnist", tmp_path / "nowhere", tmp_path / "data")
    checksums = write_fake_dataset("fashion_mnist", tmp_path / "src")
    (tmp_path / "src" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FrernnError, match="neither train-labels-idx1-ubyte nor .*gz found"):
        data.import_dir("fashion_mnist", tmp_path / "src", tmp_path / "data", checksums=checksums)
    with pytest.raises(FrernnError, match="neither cifar-10-python.tar.gz nor the"):
        data.import_dir("cifar10", tmp_path / "src", tmp_path / "data")
    assert _tree(tmp_path / "data") == []


@pytest.mark.parametrize("name", data.DATASET_NAMES)
@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_load_rejects_a_damaged_install_naming_the_file_and_the_fix(
    fake_data_dir: Path, monkeypatch: pytest.MonkeyPatch, name: str, damage: str
) -> None:
    monkeypatch.setattr(catalog, "SYSTEM_DIRS", {})
    victim = fake_data_dir / FOLDERS[name] / sorted(data.CHECKSUMS[name])[-1]
    if damage == "truncated":
        victim.write_bytes(victim.read_bytes()[:-100])
    else:
        victim.unlink()
    problem = "fails its checksum" if damage == "truncated" else "is missing"
    with pytest.raises(
        FrernnError, match=rf"{re.escape(str(victim))} {problem}.*data import {name}"
    ):
        data.load(name, fake_data_dir)


@pytest.mark.parametrize(
    "flaw,message",
    [
        ("label count", r"mnist test split has images \(200, 1, 28, 28\) and 199 labels"),
        ("float pixels", r"torchvision cannot read mnist \(x should be of dtype torch\.uint8"),
    ],
)
def test_well_formed_files_with_wrong_content_fail_at_load(
    tmp_path: Path, flaw: str, message: str
) -> None:
    src = tmp_path / "src"
    write_fake_dataset("mnist", src, compressed=False)
    if flaw == "label count":
        labels = (src / "t10k-labels-idx1-ubyte").read_bytes()
        (src / "t10k-labels-idx1-ubyte").write_bytes(
            labels[:4] + (199).to_bytes(4, "big") + labels[8:-1]
        )
    else:
        images = (src / "t10k-images-idx3-ubyte").read_bytes()
        floats = bytes([0, 0, 0x0D, 3]) + images[4:16] + bytes(4 * 200 * 28 * 28)
        (src / "t10k-images-idx3-ubyte").write_bytes(floats)
    checksums = {
        f: hashlib.md5((src / f).read_bytes()).hexdigest() for f in data.CHECKSUMS["mnist"]
    }
    data.import_dir("mnist", src, tmp_path / "data", checksums=checksums)
    with pytest.raises(FrernnError, match=message):
        data.load("mnist", tmp_path / "data")


def test_files_without_a_record_are_checked_against_the_table(tmp_path: Path) -> None:
    checksums = write_fake_dataset("mnist", tmp_path / "data" / "MNIST" / "raw", compressed=False)
    with pytest.raises(FrernnError, match=r"train-images-idx3-ubyte fails its checksum"):
        data.ensure("mnist", tmp_path / "data", download=False)
    data.ensure("mnist", tmp_path / "data", download=False, checksums=checksums)
    assert (tmp_path / "data" / "MNIST" / "raw" / data.MANIFEST).is_file()
    assert len(data.load("mnist", tmp_path / "data").train_x) == FAKE_TRAIN


def test_debian_fashion_mnist_is_found_automatically(debian_data_dir: Path) -> None:
    manifest = json.loads((debian_data_dir / "FashionMNIST/raw" / data.MANIFEST).read_text())
    assert manifest["md5"] == data.CHECKSUMS["fashion_mnist"]
    full = data.load("fashion_mnist", debian_data_dir)
    assert full.train_x.shape == (60000, 1, 28, 28) and full.test_x.shape == (10000, 1, 28, 28)
    assert torch.equal(torch.bincount(full.train_y), torch.full((10,), 6000))
    assert abs(float(full.train_x.mean()) - 0.2860) < 1e-3  # Fashion-MNIST's known pixel mean
    sub = data.load("fashion_mnist", debian_data_dir, train_subset=1000, test_subset=300)
    assert sub.train_x.shape == (1000, 1, 28, 28) and len(sub.test_y) == 300
    assert len(torch.unique(sub.train_y)) == 10


def test_damaged_fashion_mnist_is_repaired_from_debian(fake_data_dir: Path) -> None:
    victim = fake_data_dir / "FashionMNIST/raw/train-images-idx3-ubyte"
    victim.write_bytes(b"garbage")
    data.ensure("fashion_mnist", fake_data_dir, download=False)
    assert (
        hashlib.md5(victim.read_bytes()).hexdigest() == data.CHECKSUMS["fashion_mnist"][victim.name]
    )


@pytest.mark.parametrize(
    "name,hint",
    [
        ("mnist", "`frernn data import mnist DIR --data-dir"),
        ("fashion_mnist", "`apt-get install dataset-fashion-mnist`"),
        ("cifar10", "put cifar-10-python.tar.gz (https://www.cs.toronto.edu"),
    ],
)
def test_missing_dataset_names_what_provides_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, hint: str
) -> None:
    monkeypatch.setattr(catalog, "SYSTEM_DIRS", {"fashion_mnist": tmp_path / "not-installed"})
    message = f"{name} is not available in .*is missing.*data fetch {name} .*{re.escape(hint)}"
    with pytest.raises(FrernnError, match=message):
        data.ensure(name, tmp_path / "data", download=False)
    with pytest.raises(FrernnError, match=f"{name} is not available in /wrong/path"):
        data.load(name, Path("/wrong/path"))


@pytest.fixture
def http_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """A directory served over HTTP on localhost, and its URL."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    root = tmp_path / "mirror"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_download_goes_through_torchvision_with_retries(
    http_mirror: tuple[Path, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    mirror, url = http_mirror
    checksums = write_fake_dataset("mnist", mirror / "mnist")
    resources = [
        (f"{f}.gz", hashlib.md5((mirror / "mnist" / f"{f}.gz").read_bytes()).hexdigest())
        for f in checksums
    ]
    monkeypatch.setattr(tvd.MNIST, "mirrors", [f"{url}absent/"])
    monkeypatch.setattr(tvd.MNIST, "resources", resources)
    monkeypatch.setattr(download, "RETRY_DELAY_S", 0.0)
    message = r"cannot download mnist \(Error downloading .*without network: put the four"
    with caplog.at_level(logging.WARNING), pytest.raises(FrernnError, match=message):
        data.ensure("mnist", tmp_path / "data", checksums=checksums)
    retries = [r for r in caplog.records if "retrying" in r.message]
    assert len(retries) == download.DOWNLOAD_ATTEMPTS - 1
    assert _tree(tmp_path / "data") == []
    monkeypatch.setattr(tvd.MNIST, "mirrors", [f"{url}mnist/"])
    data.ensure("mnist", tmp_path / "data", checksums=checksums)
    loaded = data.load("mnist", tmp_path / "data")
    assert torch.equal(loaded.test_y, _expected("mnist", FAKE_TEST, False)[1])
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["MNIST"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="frernn")
    data.register_cli(parser.add_subparsers(dest="command", required=True))
    return parser


def test_register_cli_import_and_fetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    target = tmp_path / "data"
    args = _parser().parse_args(
        ["data", "import", "fashion_mnist", str(DEBIAN), "--data-dir", str(target)]
    )
    assert args.func(args) == 0
    assert (target / "FashionMNIST/raw" / data.MANIFEST).is_file()
    monkeypatch.setenv("FRERNN_DATA_DIR", str(target))
    args = _parser().parse_args(["data", "fetch", "fashion_mnist"])
    assert args.data_dir == target and args.func(args) == 0
    assert f"fashion_mnist: ready in {target}" in capsys.readouterr().out
    write_fake_dataset("mnist", tmp_path / "src")
    args = _parser().parse_args(["data", "import", "mnist", str(tmp_path / "src")])
    with pytest.raises(FrernnError, match="checksum mismatch"):
        args.func(args)


def test_frernn_cli_data_commands(
    debian_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    assert cli.main(["data", "fetch", "fashion_mnist", "--data-dir", str(debian_data_dir)]) == 0
    assert "fashion_mnist: ready" in capsys.readouterr().out
    write_fake_dataset("mnist", tmp_path / "src")
    for argv, message in (
        (["data", "import", "mnist", str(tmp_path / "src")], "checksum mismatch for mnist"),
        (["data", "fetch", "imagenet"], "unknown dataset 'imagenet'"),
    ):
        assert cli.main([*argv, "--data-dir", str(tmp_path / "data")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("frernn: error: ") and err.count("\n") == 1 and message in err
    assert _tree(tmp_path / "data") == []


@pytest.mark.parametrize("name", data.DATASET_NAMES)
def test_fake_datasets_are_learnable(fake_data_dir: Path, name: str) -> None:
    torch.manual_seed(0)
    loaded = data.load(name, fake_data_dir)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(loaded.train_x[0].numel(), 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        for x, y in data.batches(loaded.train_x, loaded.train_y, 50, generator):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    accuracy = (model(loaded.test_x).argmax(1) == loaded.test_y).float().mean()
    assert accuracy > 0.9


def test_cifar_checksums_match_torchvision():
    """The CIFAR-10 digests frernn keeps are torchvision's own list."""
    listed = dict(tvd.CIFAR10.train_list + tvd.CIFAR10.test_list)
    listed[tvd.CIFAR10.meta["filename"]] = tvd.CIFAR10.meta["md5"]
    assert data.CHECKSUMS["cifar10"] == listed


def test_tensor_cache_is_used_and_rebuilt_when_corrupt(fake_data_dir, caplog):
    first = data.load("mnist", fake_data_dir)
    cache = fake_data_dir / "MNIST" / "raw" / "frernn-train-tensors.pt"
    assert cache.exists()
    cache.write_bytes(b"garbage")
    again = data.load("mnist", fake_data_dir)
    assert "ignoring unreadable tensor cache" in caplog.text
    assert torch.equal(first.train_x, again.train_x) and torch.equal(first.test_y, again.test_y)
