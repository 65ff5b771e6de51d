"""MNIST: the four IDX files, checksummed, decoded once into memory, with the papers' shift augmentation."""

from collections.abc import Mapping

from capsules.datasets.idx_digits import IDXDigits

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
# MD5 of the decompressed files: the .gz bytes differ between mirrors and recompressed copies.
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
MNIST_CLASSES = tuple(str(digit) for digit in range(10))


class MNIST(IDXDigits):
    """MNIST as (image float [1, 28, 28], label int) items (the digit); see `IDXDigits` for the options.

    Defaults: root `$CAPSULES_DATA/mnist`, mirrors MNIST_MIRRORS, normalisation mean 0.1307 and std 0.3081 (of the
    60,000 training images).
    """

    folder, title, mirrors = "mnist", "MNIST", MNIST_MIRRORS
    mean, std, class_names = MNIST_MEAN, MNIST_STD, MNIST_CLASSES

    @classmethod
    def checksums(cls) -> Mapping[str, str]:
        return MNIST_MD5
