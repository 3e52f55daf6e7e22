import gzip
import hashlib
import shutil
from pathlib import Path

import pytest
import torch

import datasets
from conftest import ROOT

MNIST_FILES = datasets.DATASETS["mnist"].files


def test_shipped_files_verify_and_hold_mnist():
    images, labels = datasets.load(ROOT / "data", "test")
    assert images.shape == (10_000, 28, 28) and images.dtype == torch.uint8
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]
    train_images, train_labels = datasets.load(ROOT / "data", "train")
    assert train_images.shape == (60_000, 28, 28)
    assert torch.bincount(train_labels).tolist()[:2] == [5923, 6742]
    for spec in MNIST_FILES.values():     # the extracted files are the canonical ones
        path = datasets.raw_dir(ROOT / "data") / spec.name
        assert hashlib.md5(path.read_bytes()).hexdigest() == spec.md5


def test_first_use_extracts_next_to_the_archives_for_torchvision(data_copy):
    datasets.verify(data_copy)
    for spec in MNIST_FILES.values():
        assert (datasets.raw_dir(data_copy) / spec.name).stat().st_size == spec.size
    from torchvision.datasets import MNIST
    assert len(MNIST(data_copy, train=False)) == 10_000


def test_verified_files_are_not_extracted_again(data_copy):
    datasets.verify(data_copy)
    extracted = datasets.raw_dir(data_copy) / "t10k-labels-idx1-ubyte"
    before = extracted.stat().st_mtime_ns
    (datasets.raw_dir(data_copy) / "t10k-labels-idx1-ubyte.gz").unlink()  # would fail if needed
    datasets.load(data_copy, "test")
    assert extracted.stat().st_mtime_ns == before


def damage(path, offset=1000):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_damaged_archive_is_reported_by_name(data_copy):
    damage(datasets.raw_dir(data_copy) / "train-labels-idx1-ubyte.gz", offset=2000)
    with pytest.raises(datasets.DataError, match="train-labels-idx1-ubyte.gz .*git checkout"):
        datasets.load(data_copy, "train")


def test_damaged_extracted_file_is_rebuilt_from_its_archive(data_copy):
    datasets.verify(data_copy)
    extracted = datasets.raw_dir(data_copy) / "t10k-images-idx3-ubyte"
    damage(extracted)
    images, _ = datasets.load(data_copy, "test")
    assert hashlib.md5(extracted.read_bytes()).hexdigest() == MNIST_FILES[("test", "images")].md5
    assert images.shape == (10_000, 28, 28)


@pytest.mark.parametrize("change, message", [
    (lambda b: b[:len(b) // 2], "truncated"),
    (lambda b: b[:3], "truncated"),
    (lambda b: b"\x00\x00\x08\x01" + b[4:], "magic number 2049, expected 2051"),
    (lambda b: b[:4] + (59_999).to_bytes(4, "big") + b[8:], "59,999 items, expected 60,000"),
    (lambda b: b[:5000] + bytes([b[5000] ^ 1]) + b[5001:], "MD5"),
])
def test_bad_extracted_file_without_archive_is_reported(data_copy, change, message):
    datasets.verify(data_copy)
    raw = datasets.raw_dir(data_copy)
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(change(path.read_bytes()))
    (raw / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(datasets.DataError, match=message) as error:
        datasets.load(data_copy, "train")
    assert str(path) in str(error.value)


def test_archive_with_wrong_contents_is_reported(data_copy):
    raw = datasets.raw_dir(data_copy)
    labels = gzip.decompress((raw / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(labels))
    with pytest.raises(datasets.DataError, match="t10k-images-idx3-ubyte.gz has magic number"):
        datasets.load(data_copy, "test")


def test_missing_files_fall_back_to_torchvision_download(tmp_path, monkeypatch):
    calls = []

    class FakeMNIST:    # stands in for the network: "downloads" the shipped archives
        def __init__(self, root, train, download):
            calls.append((train, download))
            raw = datasets.raw_dir(root)
            raw.mkdir(parents=True, exist_ok=True)
            for archive in datasets.raw_dir(ROOT / "data").glob("*.gz"):
                shutil.copy(archive, raw / archive.name)

    monkeypatch.setattr("torchvision.datasets.MNIST", FakeMNIST)
    images, _ = datasets.load(tmp_path, "test")
    assert calls == [(True, True), (False, True)]
    assert images.shape == (10_000, 28, 28)


def test_failed_download_says_what_to_do_and_leaves_no_folders(tmp_path, monkeypatch):
    def offline(root, train, download):    # torchvision's message spans several lines
        datasets.raw_dir(root).mkdir(parents=True, exist_ok=True)    # as torchvision does
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://...,"
                           " got:\n<urlopen error [Errno -2] Name or service not known>\n")

    monkeypatch.setattr("torchvision.datasets.MNIST", offline)
    with pytest.raises(datasets.DataError, match="downloading them failed .*--data-dir.*git "
                       "checkout") as error:
        datasets.load(tmp_path / "mistyped" / "folder", "train")
    assert "\n" not in str(error.value) and "Name or service not known" in str(error.value)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "mine").mkdir()    # a folder that was there before stays
    with pytest.raises(datasets.DataError):
        datasets.load(tmp_path / "mine", "train")
    assert list(tmp_path.iterdir()) == [tmp_path / "mine"]


def test_split_is_seeded_disjoint_and_complete():
    train, val = datasets.train_val_split(1000, 100, seed=3)
    assert len(val) == 100 and len(train) == 900
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(1000))
    again, val_again = datasets.train_val_split(1000, 100, seed=3)
    assert torch.equal(train, again) and torch.equal(val, val_again)
    assert not torch.equal(val, datasets.train_val_split(1000, 100, seed=4)[1])
    train, val = datasets.train_val_split(1000, 0, seed=3)
    assert len(val) == 0 and len(train) == 1000


def test_subset_keeps_the_validation_proportion():
    assert datasets.scaled_val_size(5000, 60_000) == 5000
    assert datasets.scaled_val_size(5000, 12_000) == 1000


@pytest.mark.parametrize("augment", [False, True])
def test_every_training_image_appears_exactly_once_per_epoch(augment):
    n = 1003                                  # the last batch is short
    images = torch.zeros(n, 28, 28, dtype=torch.uint8)
    labels = torch.arange(n)                  # labels name the images
    batches = datasets.Batches(images, labels, 64, torch.device("cpu"), shuffle=True,
                               augment=augment, generator=torch.Generator().manual_seed(0))
    assert len(batches) == 16
    orders = []
    for _ in range(2):
        seen = torch.cat([y for _, y in batches])
        assert sorted(seen.tolist()) == list(range(n))
        orders.append(seen)
    assert not torch.equal(*orders)           # a new permutation each epoch


def test_batches_are_normalized_pixels():
    images, labels = datasets.load(ROOT / "data", "test")
    x, y = next(iter(datasets.Batches(images[:50], labels[:50], 50, torch.device("cpu"))))
    expected = (images[:50].float() / 255 - datasets.MEAN) / datasets.STD
    assert torch.allclose(x.squeeze(1), expected)
    assert torch.equal(y, labels[:50])
    raw, _ = next(iter(datasets.Batches(images[:50], labels[:50], 50, torch.device("cpu"),
                                        mean=0.0, std=1.0)))
    assert raw.min() == 0 and raw.max() == 1


def augmented(x, strength=1.0):
    """``x`` warped by a seeded draw of augmentation matrices, as Batches does per pass."""
    theta = datasets.random_affine_matrices(len(x), torch.Generator().manual_seed(0), strength)
    return datasets.warp(x, theta)


def test_augmentation_moves_each_image_differently_and_keeps_the_digit():
    images, _ = datasets.load(ROOT / "data", "test")
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
    images, _ = datasets.load(ROOT / "data", "test")
    x = images[:256].unsqueeze(1).float() / 255

    def change(strength):
        out = augmented(x, strength)
        return (out - x).abs().mean().item()

    assert change(0.0) < 1e-5                     # no movement at all: the image itself
    assert 0 < change(0.25) < change(0.5) < change(1.0)


# ---- The other sets: Fashion-MNIST and KMNIST, on small files written in their layout ----

@pytest.mark.parametrize("name", ["fashion-mnist", "kmnist"])
def test_a_small_set_in_torchvision_layout_loads_and_is_extracted(small_sets, name):
    images, labels = datasets.load(small_sets, "train", name)
    assert images.shape == (300, 28, 28) and labels.tolist()[:12] == [*range(10), 0, 1]
    raw = datasets.raw_dir(small_sets, name)
    assert raw.parent.name == {"fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}[name]
    assert (raw / "train-images-idx3-ubyte").stat().st_size == 300 * 784 + 16


def rewrite(path, change):
    """Replace the .gz at ``path`` by one holding ``change(its contents)``."""
    path.write_bytes(gzip.compress(change(gzip.decompress(path.read_bytes()))))


@pytest.mark.parametrize("change, fashion_message", [
    (lambda b: b[:len(b) // 2], "truncated"),
    (lambda b: b"\x00\x00\x08\x01" + b[4:], "magic number 2049, expected 2051"),
    (lambda b: b[:4] + (299).to_bytes(4, "big") + b[8:], "299 items, expected 300"),
    (lambda b: b[:5000] + bytes([b[5000] ^ 1]) + b[5001:], "fails its MD5 checksum"),
])
@pytest.mark.parametrize("name", ["fashion-mnist", "kmnist"])
def test_bad_files_of_the_other_sets_are_named_with_where_to_get_them(small_sets, name, change,
                                                                      fashion_message):
    archive = datasets.raw_dir(small_sets, name) / "train-images-idx3-ubyte.gz"
    rewrite(archive, change)
    with pytest.raises(datasets.DataError) as error:
        datasets.load(small_sets, "train", name)
    message = str(error.value)
    assert str(archive) in message and datasets.DATASETS[name].get in message
    # KMNIST's uncompressed files have no published checksum: its archive's fails first.
    assert (fashion_message if name == "fashion-mnist" else "fails its MD5 checksum") in message


def test_kmnist_is_not_trusted_without_its_checked_archive(small_sets):
    datasets.verify(small_sets, "kmnist")
    archive = datasets.raw_dir(small_sets, "kmnist") / "t10k-labels-idx1-ubyte.gz"
    archive.unlink()
    with pytest.raises(datasets.DataError, match="t10k-labels-idx1-ubyte.gz is missing: put "
                                                 "the four .gz files of github.com/rois-codh"):
        datasets.load(small_sets, "test", "kmnist")


@pytest.mark.parametrize("name", ["fashion-mnist", "kmnist"])
def test_missing_set_without_network_says_which_files_to_put_where(tmp_path, monkeypatch, name):
    def offline(root, train, download):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\n<urlopen error>\n")

    monkeypatch.setattr(f"torchvision.datasets.{datasets.DATASETS[name].folder}", offline)
    with pytest.raises(datasets.DataError) as error:
        datasets.load(tmp_path, "train", name)
    message = str(error.value)
    assert "\n" not in message and "downloading them failed (<urlopen error>)" in message
    assert str(datasets.raw_dir(tmp_path, name)) in message
    assert datasets.DATASETS[name].get in message


DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not DEBIAN_FASHION.exists(),
                    reason="needs Debian's dataset-fashion-mnist (apt-get install "
                           "dataset-fashion-mnist)")
def test_debian_fashion_mnist_is_the_canonical_content(tmp_path):
    """Debian recompressed the archives (other .gz checksums); the files inside must be the
    canonical ones, which is what is checked."""
    raw = datasets.raw_dir(tmp_path, "fashion-mnist")
    raw.mkdir(parents=True)
    for archive in DEBIAN_FASHION.glob("*.gz"):
        shutil.copy(archive, raw / archive.name)
    images, labels = datasets.load(tmp_path, "train", "fashion-mnist")
    assert images.shape == (60_000, 28, 28) and torch.bincount(labels).tolist() == [6000] * 10
    assert datasets.normalization(images) == (0.2860, 0.3530)
    test_images, _ = datasets.load(tmp_path, "test", "fashion-mnist")
    assert test_images.shape == (10_000, 28, 28)


def test_mnist_normalization_is_that_of_its_training_images():
    images, _ = datasets.load(ROOT / "data", "train")
    assert datasets.normalization(images) == (datasets.MEAN, datasets.STD) == (0.1307, 0.3081)


def test_flip_mirrors_about_half_of_the_images_and_nothing_else():
    x = torch.rand(400, 1, 28, 28)
    theta = datasets.random_affine_matrices(400, torch.Generator().manual_seed(0), 0.0,
                                            flip=True)
    out = datasets.warp(x, theta)
    mirrored = torch.tensor([torch.allclose(o, i.flip(-1), atol=1e-5) for o, i in zip(out, x)])
    same = torch.tensor([torch.allclose(o, i, atol=1e-5) for o, i in zip(out, x)])
    assert (mirrored ^ same).all()                    # each image one or the other, exactly
    assert 150 < mirrored.sum() < 250


def test_without_flips_the_augmentation_stream_is_unchanged():
    """Runs that do not flip (MNIST, KMNIST) draw the same random numbers as before flips."""
    draw = [datasets.random_affine_matrices(64, torch.Generator().manual_seed(0), 1.0, flip=f)
            for f in (False, True)]
    assert torch.equal(draw[0][:, :, 1:], draw[1][:, :, 1:])   # only what x reads is mirrored
    assert torch.equal(draw[0][:, :, 0].abs(), draw[1][:, :, 0].abs())
    assert not torch.equal(draw[0], draw[1])


def test_elastic_fields_are_smooth_centred_and_scale_with_their_strength():
    fields = [datasets.random_displacements(256, torch.Generator().manual_seed(0), alpha)
              for alpha in (10.0, 20.0)]
    assert fields[0].shape == (256, 28, 28, 2)
    assert torch.allclose(fields[1], 2 * fields[0])            # the strength is a plain factor
    pixels = fields[0] * 28 / 2                                 # grid units to pixels
    rms = pixels.pow(2).sum(-1).mean().sqrt()
    assert 0.3 < rms < 1.5                                      # "mild": about a pixel
    assert pixels.mean((0, 1, 2)).abs().max() < 0.1 * rms       # no drift in either direction
    # Blurred by 4 px, neighbours move almost alike; unblurred noise would differ by ~1.4 rms.
    step = (pixels[:, 1:] - pixels[:, :-1]).pow(2).sum(-1).mean().sqrt()
    assert step < 0.25 * rms                                    # (measured 0.17)
    images, _ = datasets.load(ROOT / "data", "test")
    x = images[:256].unsqueeze(1).float() / 255
    identity = datasets.random_affine_matrices(256, torch.Generator(), 0.0)
    out = datasets.warp(x, identity, fields[0])
    assert torch.allclose(datasets.warp(x, identity, torch.zeros_like(fields[0])), x, atol=1e-5)
    changed = (out - x).abs().flatten(1).mean(1)
    assert (changed > 0.005).all()                              # every image moved
    ink_ratio = out.flatten(1).sum(1) / x.flatten(1).sum(1)
    assert ((ink_ratio > 0.8) & (ink_ratio < 1.25)).all()     # and stayed the same digit's ink


@pytest.mark.parametrize("elastic", [0.0, 10.0])
def test_two_processes_see_one_process_batches_with_any_augmentation(elastic):
    images, labels = datasets.load(ROOT / "data", "test")

    def passes(part):
        batches = datasets.Batches(images[:300], labels[:300], 64, torch.device("cpu"),
                                   shuffle=True, augment=1.0, elastic=elastic, part=part,
                                   generator=torch.Generator().manual_seed(3))
        return [list(batches) for _ in range(2)]

    whole, first, second = passes((0, 1)), passes((0, 2)), passes((1, 2))
    for one, a, b in zip(whole, first, second):
        for (x, y), (xa, ya), (xb, yb) in zip(one, a, b):
            assert torch.equal(torch.cat([ya, yb]), y)
            assert torch.allclose(torch.cat([xa, xb]), x, atol=1e-6)


def test_the_elastic_distortion_is_drawn_only_when_asked_for():
    """Without it, the data stream is the permutation and the affine matrices of each pass
    and nothing else, as every run without it has drawn them."""
    images, labels = datasets.load(ROOT / "data", "test")
    x = images[:100].unsqueeze(1).float() / 255
    batches = datasets.Batches(images[:100], labels[:100], 100, torch.device("cpu"), mean=0.0,
                               std=1.0, shuffle=True, augment=1.0,
                               generator=torch.Generator().manual_seed(5))
    by_hand = torch.Generator().manual_seed(5)
    expected = []
    for _ in range(2):
        order = torch.randperm(100, generator=by_hand)
        expected.append(datasets.warp(x[order], datasets.random_affine_matrices(100, by_hand)))
        (got, _), = list(batches)
        assert torch.equal(got, expected[-1])
    distorted = datasets.Batches(images[:100], labels[:100], 100, torch.device("cpu"),
                                 mean=0.0, std=1.0, shuffle=True, augment=1.0, elastic=10.0,
                                 generator=torch.Generator().manual_seed(5))
    (got, _), = list(distorted)
    assert (got - expected[0]).abs().mean() > 0.005
