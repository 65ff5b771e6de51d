"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, Zalando Research): MNIST's IDX format and file names, 28x28 grey
pictures of ten kinds of clothing."""

from collections.abc import Mapping

from capsules.datasets.idx_digits import IDXDigits

# The bucket Zalando publishes the files from (named in their repository's README and used by well-known loaders).
FASHION_MNIST_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
# MD5 of the decompressed files (REFERENCE.md, "Fashion-MNIST"): the .gz bytes differ between mirrors.
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
# Mean and standard deviation of the 60,000 training images' pixels scaled to [0, 1] (the values in common use;
# tests/test_datasets_fashion_mnist.py recomputes them when the real files are present).
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
FASHION_MNIST_CLASSES = ("T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                         "ankle boot")


class FashionMNIST(IDXDigits):
    """Fashion-MNIST as (image float [1, 28, 28], label int) items; label indexes FASHION_MNIST_CLASSES. Same options
    and augmentation as MNIST (see `IDXDigits`); root defaults to `$CAPSULES_DATA/fashion-mnist`."""

    folder, title, mirrors = "fashion-mnist", "Fashion-MNIST", FASHION_MNIST_MIRRORS
    mean, std, class_names = FASHION_MNIST_MEAN, FASHION_MNIST_STD, FASHION_MNIST_CLASSES

    @classmethod
    def checksums(cls) -> Mapping[str, str]:
        return FASHION_MNIST_MD5
