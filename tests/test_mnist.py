import gzip
import hashlib
import shutil

import pytest
import torch

import mnist
from conftest import ROOT


def test_shipped_files_verify_and_hold_mnist():
    images, labels = mnist.load(ROOT / "data", "test")
    assert images.shape == (10_000, 28, 28) and images.dtype == torch.uint8
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]
    train_images, train_labels = mnist.load(ROOT / "data", "train")
    assert train_images.shape == (60_000, 28, 28)
    assert torch.bincount(train_labels).tolist()[:2] == [5923, 6742]
    for spec in mnist.FILES.values():     # the extracted files are the canonical ones
        path = mnist.raw_dir(ROOT / "data") / spec.name
        assert hashlib.md5(path.read_bytes()).hexdigest() == spec.md5


def test_first_use_extracts_next_to_the_archives_for_torchvision(data_copy):
    mnist.verify(data_copy)
    for spec in mnist.FILES.values():
        assert (mnist.raw_dir(data_copy) / spec.name).stat().st_size == spec.size
    from torchvision.datasets import MNIST
    assert len(MNIST(data_copy, train=False)) == 10_000


def test_verified_files_are_not_extracted_again(data_copy):
    mnist.verify(data_copy)
    extracted = mnist.raw_dir(data_copy) / "t10k-labels-idx1-ubyte"
    before = extracted.stat().st_mtime_ns
    (mnist.raw_dir(data_copy) / "t10k-labels-idx1-ubyte.gz").unlink()  # would fail if needed
    mnist.load(data_copy, "test")
    assert extracted.stat().st_mtime_ns == before


def damage(path, offset=1000):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_damaged_archive_is_reported_by_name(data_copy):
    damage(mnist.raw_dir(data_copy) / "train-labels-idx1-ubyte.gz", offset=2000)
    with pytest.raises(mnist.DataError, match="train-labels-idx1-ubyte.gz .*git checkout"):
        mnist.load(data_copy, "train")


def test_damaged_extracted_file_is_rebuilt_from_its_archive(data_copy):
    mnist.verify(data_copy)
    extracted = mnist.raw_dir(data_copy) / "t10k-images-idx3-ubyte"
    damage(extracted)
    images, _ = mnist.load(data_copy, "test")
    assert hashlib.md5(extracted.read_bytes()).hexdigest() == mnist.FILES[("test", "images")].md5
    assert images.shape == (10_000, 28, 28)


@pytest.mark.parametrize("change, message", [
    (lambda b: b[:len(b) // 2], "truncated"),
    (lambda b: b[:3], "truncated"),
    (lambda b: b"\x00\x00\x08\x01" + b[4:], "magic number 2049, expected 2051"),
    (lambda b: b[:4] + (59_999).to_bytes(4, "big") + b[8:], "59,999 items, expected 60,000"),
    (lambda b: b[:5000] + bytes([b[5000] ^ 1]) + b[5001:], "MD5"),
])
def test_bad_extracted_file_without_archive_is_reported(data_copy, change, message):
    mnist.verify(data_copy)
    raw = mnist.raw_dir(data_copy)
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(change(path.read_bytes()))
    (raw / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(mnist.DataError, match=message) as error:
        mnist.load(data_copy, "train")
    assert str(path) in str(error.value)


def test_archive_with_wrong_contents_is_reported(data_copy):
    raw = mnist.raw_dir(data_copy)
    labels = gzip.decompress((raw / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(labels))
    with pytest.raises(mnist.DataError, match="t10k-images-idx3-ubyte.gz has magic number"):
        mnist.load(data_copy, "test")


def test_missing_files_fall_back_to_torchvision_download(tmp_path, monkeypatch):
    calls = []

    class FakeMNIST:    # stands in for the network: "downloads" the shipped archives
        def __init__(self, root, train, download):
            calls.append((train, download))
            raw = mnist.raw_dir(root)
            raw.mkdir(parents=True, exist_ok=True)
            for archive in mnist.raw_dir(ROOT / "data").glob("*.gz"):
                shutil.copy(archive, raw / archive.name)

    monkeypatch.setattr("torchvision.datasets.MNIST", FakeMNIST)
    images, _ = mnist.load(tmp_path, "test")
    assert calls == [(True, True), (False, True)]
    assert images.shape == (10_000, 28, 28)


def test_failed_download_says_what_to_do(tmp_path, monkeypatch):
    def offline(root, train, download):    # torchvision's message spans several lines
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://...,"
                           " got:\n<urlopen error [Errno -2] Name or service not known>\n")

    monkeypatch.setattr("torchvision.datasets.MNIST", offline)
    with pytest.raises(mnist.DataError, match="downloading them failed .*--data-dir.*git "
                                              "checkout") as error:
        mnist.load(tmp_path, "train")
    assert "\n" not in str(error.value) and "Name or service not known" in str(error.value)


def test_split_is_seeded_disjoint_and_complete():
    train, val = mnist.train_val_split(1000, 100, seed=3)
    assert len(val) == 100 and len(train) == 900
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(1000))
    again, val_again = mnist.train_val_split(1000, 100, seed=3)
    assert torch.equal(train, again) and torch.equal(val, val_again)
    assert not torch.equal(val, mnist.train_val_split(1000, 100, seed=4)[1])
    train, val = mnist.train_val_split(1000, 0, seed=3)
    assert len(val) == 0 and len(train) == 1000


def test_subset_keeps_the_validation_proportion():
    assert mnist.scaled_val_size(5000, 60_000) == 5000
    assert mnist.scaled_val_size(5000, 12_000) == 1000


@pytest.mark.parametrize("augment", [False, True])
def test_every_training_image_appears_exactly_once_per_epoch(augment):
    n = 1003                                  # the last batch is short
    images = torch.zeros(n, 28, 28, dtype=torch.uint8)
    labels = torch.arange(n)                  # labels name the images
    batches = mnist.Batches(images, labels, 64, torch.device("cpu"), shuffle=True,
                            augment=augment, generator=torch.Generator().manual_seed(0))
    assert len(batches) == 16
    orders = []
    for _ in range(2):
        seen = torch.cat([y for _, y in batches])
        assert sorted(seen.tolist()) == list(range(n))
        orders.append(seen)
    assert not torch.equal(*orders)           # a new permutation each epoch


def test_batches_are_normalized_pixels():
    images, labels = mnist.load(ROOT / "data", "test")
    x, y = next(iter(mnist.Batches(images[:50], labels[:50], 50, torch.device("cpu"))))
    expected = (images[:50].float() / 255 - mnist.MEAN) / mnist.STD
    assert torch.allclose(x.squeeze(1), expected)
    assert torch.equal(y, labels[:50])
    raw, _ = next(iter(mnist.Batches(images[:50], labels[:50], 50, torch.device("cpu"),
                                     mean=0.0, std=1.0)))
    assert raw.min() == 0 and raw.max() == 1


def augmented(x, strength=1.0):
    """``x`` warped by a seeded draw of augmentation matrices, as Batches does per pass."""
    theta = mnist.random_affine_matrices(len(x), torch.Generator().manual_seed(0), strength)
    return mnist.warp(x, theta)


def test_augmentation_moves_each_image_differently_and_keeps_the_digit():
    images, _ = mnist.load(ROOT / "data", "test")
    x = images[:64].unsqueeze(1).float() / 255
    out = augmented(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    changed = (out - x).abs().flatten(1).mean(1)
    assert (changed > 0.01).all()                       # every image was transformed
    assert len(set(changed.tolist())) == 64             # each by its own amount
    ink_ratio = out.flatten(1).sum(1) / x.flatten(1).sum(1)
    assert ((ink_ratio > 0.6) & (ink_ratio < 1.5)).all()  # the digit stays in the picture
    again = augmented(x)
    assert torch.equal(out, again)


def test_augmentation_strength_scales_the_ranges():
    images, _ = mnist.load(ROOT / "data", "test")
    x = images[:256].unsqueeze(1).float() / 255

    def change(strength):
        out = augmented(x, strength)
        return (out - x).abs().mean().item()

    assert change(0.0) < 1e-5                     # no movement at all: the image itself
    assert 0 < change(0.25) < change(0.5) < change(1.0)
